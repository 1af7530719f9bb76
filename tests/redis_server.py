"""
Real ``redis-server`` processes for the tests: a free loopback port each, no persistence, a
temporary directory, and helpers to kill, stop and restart one (on the same port) mid-test.

Fixtures ``redis_server`` and ``redis_servers``, registered for every test by
``tests/conftest.py`` (``pytest_plugins``).

``REDIS_SERVER`` in the environment names the binary (default: ``redis-server`` on PATH).
Sentinel runs as ``redis-server FILE --sentinel``, which every redis-server build supports.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from mediaproxy.testing import wait_for

STARTUP_TIMEOUT = 10.0


def redis_binary() -> str:
    binary = os.environ.get("REDIS_SERVER") or shutil.which("redis-server")
    if not binary:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server), "
                           "or set REDIS_SERVER to its path")
    return binary


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RespError(Exception):
    """An error reply from Redis."""


class ServerExited(RuntimeError):
    """The server process ended while it was expected to start."""


def _read_reply(f):
    line = f.readline()
    if not line:
        raise ConnectionError("connection closed")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RespError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)
        return data[:-2]
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_read_reply(f) for _ in range(n)]
    raise ConnectionError(f"unexpected reply {line!r}")


def command(port: int, *args, timeout: float = 5.0):
    """Send one command to 127.0.0.1:``port`` with a throwaway blocking socket (test thread
    only) and return the reply: str, int, bytes, None or a list of those."""
    parts = [a if isinstance(a, bytes) else str(a).encode() for a in args]
    payload = b"*%d\r\n" % len(parts) + b"".join(
        b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(payload)
        with s.makefile("rb") as f:
            return _read_reply(f)


class RedisServer:
    """One redis-server (or sentinel) process; :meth:`start` again after :meth:`kill` or
    :meth:`stop` reuses the port."""

    def __init__(self, directory: Path, port: int | None = None, sentinel_conf: str = ""):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.sentinel_conf = sentinel_conf
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _argv(self) -> list[str]:
        if self.sentinel_conf:
            conf = self.directory / "sentinel.conf"
            conf.write_text(f"port {self.port}\nbind 127.0.0.1\ndir {self.directory}\n"
                            f"{self.sentinel_conf}")
            return [redis_binary(), str(conf), "--sentinel"]
        return [redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(self.directory),
                "--daemonize", "no", "--loglevel", "warning"]

    def start(self) -> "RedisServer":
        log = open(self.directory / f"redis-{self.port}.log", "ab")
        self.process = subprocess.Popen(self._argv(), stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL)
        log.close()

        def ready():
            if self.process.poll() is not None:
                raise ServerExited(f"redis-server on port {self.port} exited with "
                                   f"{self.process.returncode} (see {log.name})")
            return self.ping()

        try:
            wait_for(ready, STARTUP_TIMEOUT, what=f"redis-server on port {self.port} "
                     "answering PING", ignore=(OSError, RespError))
        except (TimeoutError, ServerExited):
            self.kill()
            raise
        return self

    def ping(self) -> bool:
        return command(self.port, "PING", timeout=1.0) == "PONG"

    def command(self, *args):
        return command(self.port, *args)

    def kill(self) -> None:
        """SIGKILL: the server vanishes mid-whatever, like a crash."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(STARTUP_TIMEOUT)
        self.process = None

    def stop(self) -> None:
        """SIGTERM and wait (SIGKILL after the startup timeout)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STARTUP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STARTUP_TIMEOUT)
        self.process = None

    def restart(self) -> "RedisServer":
        self.kill()
        return self.start()


def start_server(directory: Path, attempts: int = 3, **kwargs) -> RedisServer:
    """Start a server on a free port, retrying with another port if it was taken meanwhile."""
    for attempt in range(attempts):
        server = RedisServer(directory, **kwargs)
        try:
            return server.start()
        except ServerExited:  # most likely the port was taken between pick and bind
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def start_sentinel(directory: Path, master: RedisServer, service: str,
                   down_after_ms: int = 1000) -> RedisServer:
    """A Sentinel monitoring ``master`` as ``service``; returns once it knows the master."""
    conf = (f"sentinel monitor {service} 127.0.0.1 {master.port} 1\n"
            f"sentinel down-after-milliseconds {service} {down_after_ms}\n")
    sentinel = start_server(directory, sentinel_conf=conf)
    wait_for(lambda: sentinel.command("SENTINEL", "get-master-addr-by-name", service),
             STARTUP_TIMEOUT, what="sentinel knowing its master", ignore=(OSError, RespError))
    return sentinel


@pytest.fixture
def redis_server(tmp_path):
    """One fresh redis-server, killed after the test."""
    server = start_server(tmp_path / "redis")
    yield server
    server.kill()


@pytest.fixture
def redis_servers(tmp_path):
    """A factory: ``redis_servers(n)`` starts n fresh servers; all are killed after the test."""
    started: list[RedisServer] = []

    def start(n: int) -> list[RedisServer]:
        servers = [start_server(tmp_path / f"redis{len(started) + i}") for i in range(n)]
        started.extend(servers)
        return servers

    yield start
    for server in started:
        server.kill()
