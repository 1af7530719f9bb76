"""Proxy processes for multi-process and multi-node tests: ``mediaproxy run`` subprocesses
configured by the environment, each on a free loopback port."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from .redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT = 30.0


class ProxyProcess:
    def __init__(self, backend_port: int, env: dict | None = None):
        self.port = free_port()
        environ = {k: v for k, v in os.environ.items() if not k.startswith("MEDIAPROXY_")}
        environ.update({
            "MEDIAPROXY_BACKEND__URL": f"http://127.0.0.1:{backend_port}",
            "MEDIAPROXY_MONITORING__LOG_LEVEL": "warn",
            "PYTHONPATH": str(ROOT),
        })
        environ.update(env or {})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mediaproxy", "run", "--listen",
             f"tcp:{self.port}:interface=127.0.0.1"],
            cwd=ROOT, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self._wait_ready()

    def _wait_ready(self):
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"proxy exited: {self.output()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)  # polling a starting process, bounded by the deadline
        raise RuntimeError("proxy did not start listening")

    def get(self, path, headers=None, timeout=30):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path, headers=headers or {})
            response = conn.getresponse()
            body = response.read()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, body
        finally:
            conn.close()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def output(self) -> str:
        if self.proc.poll() is None:
            return ""
        return (self.proc.stdout.read() or b"").decode(errors="replace")[-3000:]


def terminate(proc: subprocess.Popen) -> None:
    """Stop ``proc`` gracefully (SIGTERM, 20 s), else kill it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def total(series, name):
    """The sum of every sample of ``name`` in ``series`` ((name, labels) -> value)."""
    return sum(v for (n, _), v in series.items() if n == name)
