"""
The parts every reliability case is made of, all real and all on loopback:

* :class:`Origin` - the backend process (:mod:`tests.reliability.origin`), killable and
  restartable on the same port, with a fault mode (slow, flapping, failing).
* :class:`Proxy` - ``python -m mediaproxy run`` with a TOML config written to a temp dir,
  killable (SIGKILL) and restartable on the same port.
* :class:`Sampler` - the proxy's RSS (the process and its children) and open fds, every 100 ms.
* :class:`NormalTraffic` - a few client threads doing cache hits, cold transforms and
  pass-through while the attack runs, recording status and latency of every request.
* :func:`fetch` - one request on a fresh connection that reports a dropped connection or a
  timeout as such instead of raising.

Clients are threads with blocking ``http.client``: simple, and honest at the modest
concurrency used here (4 normal clients, each pausing 20 ms between requests, so the load is
set by the clients' pace and not by the client process competing for the 2 cores). Every
loop is bounded by a deadline and a count.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import attrs
import psutil

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
GiB = 1024 ** 3
MiB = 1024 ** 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            raise RuntimeError(f"process exited ({proc.returncode}): {out[-2000:]}")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {port} after {timeout} s")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIAPROXY_")}
    env["PYTHONPATH"] = str(ROOT)
    return env


# -- processes --------------------------------------------------------------------------------

class Origin:
    """The backend process serving ``root``; ``port`` stays the same across restarts."""

    def __init__(self, root: Path):
        self.root, self.port, self.proc = root, free_port(), None

    def start(self) -> "Origin":
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.reliability.origin", "--port", str(self.port),
             "--root", str(self.root)], cwd=ROOT, env=_env(),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        wait_listening(self.port, self.proc)
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def set_mode(self, mode: str, delay: float = 0.0) -> None:
        status, _, _ = fetch(self.port, f"/_control?mode={mode}&delay={delay}", timeout=5)
        if status != 200:
            raise RuntimeError(f"origin control answered {status}")


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_toml(settings: dict[str, Any]) -> str:
    """``{"cache.file.dir": "/x", "backend.url": ...}`` as TOML tables."""
    tables: dict[str, list[str]] = {}
    for key, value in settings.items():
        table, _, name = key.rpartition(".")
        tables.setdefault(table, []).append(f"{name} = {toml_value(value)}")
    return "\n".join(f"[{table}]\n" + "\n".join(lines) + "\n" for table, lines in tables.items())


#: What every case's proxy runs with, under its own overrides. The rate limiter is off: all the
#: traffic comes from one loopback address, and the limiter is not what is measured here.
BASE_SETTINGS = {
    "monitoring.log_level": "warn",
    "ratelimit.enabled": False,
    "plugins.load_entrypoints": False,
}


class Proxy:
    """``python -m mediaproxy run`` in front of ``backend_port`` with ``settings`` (dotted keys)
    written as TOML into ``workdir``; ``port`` stays the same across restarts."""

    def __init__(self, workdir: Path, backend_port: int, settings: dict[str, Any] | None = None):
        self.workdir, self.port, self.proc = workdir, free_port(), None
        self.settings = {**BASE_SETTINGS, "backend.url": f"http://{HOST}:{backend_port}",
                         **(settings or {})}
        self.config = workdir / "mediaproxy.toml"
        self.log = workdir / "proxy.log"

    def start(self) -> "Proxy":
        self.config.write_text(to_toml(self.settings))
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mediaproxy", "run", "--config", str(self.config),
                 "--listen", f"tcp:{self.port}:interface={HOST}"],
                cwd=ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_listening(self.port, self.proc)
        except RuntimeError as e:
            raise RuntimeError(f"{e}\n{self.log.read_text()[-3000:]}") from None
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, chars: int = 2000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


# -- requests ---------------------------------------------------------------------------------

DROPPED = "dropped"
TIMEOUT = "timeout"


def fetch(port: int, path: str, method: str = "GET", headers: dict | None = None,
          body: bytes | None = None, timeout: float = 10.0):
    """``(status, headers, body)`` of one request on a fresh connection; ``status`` is
    :data:`DROPPED` when the connection was refused, reset or closed before a whole answer,
    :data:`TIMEOUT` when no whole answer came within ``timeout``."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data
    except (socket.timeout, TimeoutError):
        return TIMEOUT, {}, b""
    except (OSError, http.client.HTTPException):
        return DROPPED, {}, b""
    finally:
        conn.close()


def raw_request(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send ``data`` as is (for requests http.client refuses to write) and read until the
    server closes or ``timeout``; ``b""`` when the connection was dropped."""
    chunks = []
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as s:
            s.sendall(data)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                chunk = s.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks) and _complete(b"".join(chunks)):
                    break
    except OSError:
        pass
    return b"".join(chunks)


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


# -- measuring --------------------------------------------------------------------------------

class Sampler:
    """RSS (the proxy process and its children) and open fds of ``pid``, every ``every`` s,
    in a thread, until :meth:`stop`. ``follow`` may be given a new pid after a restart."""

    def __init__(self, pid: int, every: float = 0.1):
        self.pid, self.every = pid, every
        self.peak_rss = 0
        self.samples: list[tuple[float, int, int]] = []     # (time, rss, fds)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def follow(self, pid: int) -> None:
        self.pid = pid

    def sample(self) -> tuple[int, int] | None:
        try:
            process = psutil.Process(self.pid)
            procs = [process, *process.children(recursive=True)]
            rss = sum(p.memory_info().rss for p in procs)
            fds = sum(p.num_fds() for p in procs)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            return None
        return rss, fds

    def _run(self) -> None:
        deadline = time.monotonic() + 3600           # bounded even if stop() is forgotten
        while not self._stop.is_set() and time.monotonic() < deadline:
            got = self.sample()
            if got:
                self.samples.append((time.monotonic(), *got))
                self.peak_rss = max(self.peak_rss, got[0])
            self._stop.wait(self.every)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)


@attrs.define
class Outcome:
    """One normal request: when it started, its status (or DROPPED/TIMEOUT), latency, kind,
    and whether its body was what it should be."""

    started: float
    status: Any
    latency: float
    kind: str
    correct: bool


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


class NormalTraffic:
    """``clients`` threads sending the normal mix to ``port`` until :meth:`stop`, in turn: one
    cache hit URL, a cold transform (a new width of a cached source each time, so each is a
    render), and a pass-through request (``mix`` chooses which). A request succeeds when it
    is a 200 within ``within`` seconds whose body is right (an image of the asked width, or
    the backend's JSON)."""

    def __init__(self, port: int, clients: int = 4, pause: float = 0.02, within: float = 5.0,
                 source: str = "/media/normal/photo.jpg",
                 mix: tuple[str, ...] = ("hit", "cold", "pass")):
        self.port, self.clients, self.pause, self.within = port, clients, pause, within
        self.source, self.mix = source, mix
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._width = iter(range(50, 100_000))
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                         for i in range(clients)]

    def __enter__(self) -> "NormalTraffic":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _next(self, n: int) -> tuple[str, str, int | None]:
        turn = self.mix[n % len(self.mix)]
        if turn == "hit":
            return "hit", f"{self.source}?w=200&fmt=webp", 200
        if turn == "cold":
            with self._lock:
                width = 50 + next(self._width) % 700
            return "cold", f"{self.source}?w={width}&fmt=jpeg", width
        return "pass", "/api/ok", None

    def _run(self, index: int) -> None:
        deadline = time.monotonic() + 3600
        n = index
        while not self._stop.is_set() and time.monotonic() < deadline:
            kind, path, width = self._next(n)
            n += 1
            start = time.monotonic()
            status, headers, body = fetch(self.port, path, timeout=max(self.within * 2, 10))
            latency = time.monotonic() - start
            correct = status == 200 and _body_ok(kind, body, width)
            with self._lock:
                self.outcomes.append(Outcome(start, status, latency, kind, correct))
            self._stop.wait(self.pause)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            if t.is_alive():
                t.join(30)

    def between(self, start: float = 0.0, end: float = float("inf")) -> list[Outcome]:
        with self._lock:
            return [o for o in self.outcomes if start <= o.started < end]

    def summary(self, start: float = 0.0, end: float = float("inf")) -> dict[str, Any]:
        outcomes = self.between(start, end)
        good = [o for o in outcomes if o.correct and o.latency <= self.within]
        latencies = [o.latency for o in outcomes]
        return {
            "requests": len(outcomes),
            "success": len(good) / len(outcomes) if outcomes else 0.0,
            "p99": percentile(latencies, 99),
            "statuses": Counter(o.status for o in outcomes),
            "wrong": sum(1 for o in outcomes if o.status == 200 and not o.correct),
        }


def _body_ok(kind: str, body: bytes, width: int | None) -> bool:
    if kind == "pass":
        return body == b'{"ok": true}'
    return image_width(body) == width


def image_width(body: bytes) -> int | None:
    """The width of a whole, decodable image in ``body`` (decoded fully: a truncated or
    corrupt body is ``None``)."""
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(body)) as image:
            image.load()
            return image.size[0]
    except Exception:
        return None
