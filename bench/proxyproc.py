"""
What the bench scripts share to run a proxy of their own: a free loopback port, the
environment of a ``mediaproxy run`` from a given checkout (no ``MEDIAPROXY_*`` of the caller
leaks in), and a start that waits, bounded, until it listens. Imported by the scripts beside
it (``python bench/x.py`` puts this folder first on ``sys.path``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proxy_env(code: Path, backend: str, **settings: str) -> dict[str, str]:
    """The environment of a proxy from ``code`` in front of ``backend`` (``host:port``): one
    process, warnings only, plus ``settings`` (``SECTION__KEY="value"``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIAPROXY_")}
    env.update({"MEDIAPROXY_BACKEND__URL": f"http://{backend}",
                "MEDIAPROXY_MONITORING__LOG_LEVEL": "warn",
                "MEDIAPROXY_SERVER__WORKERS": "1", "PYTHONPATH": str(code)})
    env.update({f"MEDIAPROXY_{key}": value for key, value in settings.items()})
    return env


def run_command(port: int) -> list[str]:
    """``python -m mediaproxy run`` listening on 127.0.0.1:``port``."""
    return [sys.executable, "-m", "mediaproxy", "run", "--listen",
            f"tcp:{port}:interface=127.0.0.1"]


def start(cmd: list[str], code: Path, env: dict[str, str], port: int,
          timeout: float = 30.0) -> tuple[subprocess.Popen, int]:
    """Start ``cmd`` in ``code`` and wait until 127.0.0.1:``port`` accepts (at most
    ``timeout`` seconds; then it is killed and the script stops)."""
    proc = subprocess.Popen(cmd, cwd=code, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"{code}: the proxy did not start")


def stop(*procs: subprocess.Popen, grace: float = 15.0) -> None:
    """Terminate ``procs``; kill any still running after ``grace`` seconds."""
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
