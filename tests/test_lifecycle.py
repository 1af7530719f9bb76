"""
The daemon's lifecycle as an operator meets it, with real processes on loopback: SIGTERM
drains the requests in flight (docs/operations.md "Signals and graceful stop"), a listener
that cannot bind ends the process with one line, and the commands that only talk to a running
proxy never bind its ports.

The origin is a small threading HTTP server in the test process whose ``/slow`` holds its
answer until the test releases it, so "the request is in flight" is a fact the test waits for,
not a guess about time.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from twisted.internet.testing import MemoryReactorClock

from mediaproxy.cli import main as cli_main
from mediaproxy.config import load_config
from mediaproxy.tap import ThreadPoolService, build_service

from .processes import ROOT
from .redis_server import free_port

BODY = bytes(range(256)) * 512          # 128 KiB the slow answer carries
WAIT = 30.0                             # the bound of every wait below (a hang guard)
TWISTD = str(Path(sys.executable).parent / "twistd")


class HeldOrigin:
    """``/slow`` answers 200 with :data:`BODY` once :meth:`release` is called; ``/fast`` at
    once. ``arrived`` is set when a ``/slow`` request came in."""

    def __init__(self):
        self.arrived = threading.Event()
        self.released = threading.Event()
        self.slow_requests = 0
        self._counted = threading.Condition()
        origin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                if self.path == "/slow":
                    with origin._counted:
                        origin.slow_requests += 1
                        origin._counted.notify_all()
                    origin.arrived.set()
                    origin.released.wait(WAIT)
                body = BODY if self.path == "/slow" else b"fast\n"
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    def wait_slow(self, n: int) -> bool:
        """Until ``n`` ``/slow`` requests came in (False after WAIT)."""
        with self._counted:
            return self._counted.wait_for(lambda: self.slow_requests >= n, WAIT)

    def release(self):
        self.released.set()

    def close(self):
        self.release()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def origin():
    held = HeldOrigin()
    yield held
    held.close()


def environment(**settings) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIAPROXY_")}
    env["PYTHONPATH"] = str(ROOT)
    env.update({f"MEDIAPROXY_{k.upper()}": str(v) for k, v in settings.items()})
    return env


# -- the stop's order, in process (a MemoryReactorClock: no socket, time advanced by hand) --

def started_tree(**server):
    config = load_config(environ={}, overrides={"server": {
        "listen": ["tcp:0:interface=127.0.0.1"], **server}})
    top = build_service(config, MemoryReactorClock())
    top.privilegedStartService()
    top.startService()
    return top


def record_stops(top) -> list[str]:
    """Which services stop, in order (each real service's stopService, noted then run)."""
    order = []
    for svc in top:
        def noting(svc=svc, stop=svc.stopService):
            order.append(type(svc).__name__)
            return stop()
        svc.stopService = noting
    return order


def test_the_stop_closes_the_ports_then_waits_for_the_requests_then_stops_the_rest():
    top = started_tree()
    order = record_stops(top)
    runtime = top.runtime
    runtime.inflight.start("image")
    stopped = top.stopService()
    # the port closed and readiness says draining; everything else still serves the request
    assert order == ["ListeningService"] and runtime.draining
    assert not stopped.called
    assert all(svc.running for svc in top if svc not in top.ports)
    runtime.inflight.end("image")
    assert stopped.called
    # the rest, last started first: the transform pool last
    assert order[1:] == [type(svc).__name__ for svc in reversed(list(top))
                         if svc not in top.ports]
    assert order[-1] == ThreadPoolService.__name__
    assert not any(svc.running for svc in top)


def test_the_drain_gives_up_after_server_drain_timeout():
    top = started_tree(drain_timeout=3)
    top.runtime.inflight.start("passthrough")
    stopped = top.stopService()
    clock = top.runtime.reactor
    clock.advance(2.9)
    assert not stopped.called
    clock.advance(0.1)
    assert stopped.called and not any(svc.running for svc in top)
    assert top.runtime.inflight.total == 1     # cut, not finished


def test_the_supervisor_gives_a_worker_the_drain_timeout_and_a_margin_before_kill():
    from mediaproxy.workers import STOP_GRACE

    config = load_config(environ={}, overrides={"server": {
        "listen": ["tcp:0:interface=127.0.0.1"], "workers": 2, "drain_timeout": 7}})
    top = build_service(config, MemoryReactorClock())
    supervisor, clock = top.supervisor, top.runtime.reactor

    class StuckWorker:
        """A worker that never exits: the fault the kill exists for (a real one would have
        to be made to hang)."""
        def __init__(self):
            self.signals = []

        def signalProcess(self, name):
            self.signals.append(name)

    worker = StuckWorker()
    supervisor.processes = {1: worker}
    supervisor.stopService()
    clock.advance(7 + STOP_GRACE - 0.1)
    assert worker.signals == ["TERM"]
    clock.advance(0.1)
    assert worker.signals == ["TERM", "KILL"]


# -- real processes ---------------------------------------------------------------------------

def start_twistd(port: int, **settings) -> subprocess.Popen:
    proc = subprocess.Popen(
        [TWISTD, "-n", "--pidfile=", "mediaproxy", "--listen", f"tcp:{port}:interface=127.0.0.1"],
        cwd=ROOT, env=environment(**settings), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT)
    wait_listening(proc, port)
    return proc


def wait_listening(proc, port):
    """Poll the starting process's port, bounded by WAIT (it has no other way to say so)."""
    import time

    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"exited: {proc.stdout.read().decode(errors='replace')}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("the proxy did not start listening")


def send_get(port: int, path: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: shop.example\r\n\r\n".encode())
    return sock


def read_response(sock: socket.socket) -> http.client.HTTPResponse:
    response = http.client.HTTPResponse(sock)
    response.begin()
    return response


def finish(proc) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=WAIT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"the process did not exit: {out.decode(errors='replace')}") from None
    return proc.returncode, out.decode(errors="replace")


def test_sigterm_lets_the_request_in_flight_finish_and_refuses_new_connections(origin):
    port = free_port()
    proc = start_twistd(port, backend__url=f"http://127.0.0.1:{origin.port}")
    try:
        idle = send_get(port, "/fast")             # a keep-alive connection, then idle
        first = read_response(idle)
        assert (first.status, first.read()) == (200, b"fast\n")
        slow = send_get(port, "/slow")
        assert origin.arrived.wait(WAIT)
        proc.send_signal(signal.SIGTERM)
        # The drain starts once the ports are closed, by closing the idle connection.
        assert idle.recv(1) == b""
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        origin.release()
        response = read_response(slow)
        assert response.status == 200
        assert response.getheader("Connection") == "close"   # finished during the drain
        assert response.read() == BODY
        assert slow.recv(1) == b""                 # and its connection closed after it
        idle.close()
        slow.close()
        code, out = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 0, out
    assert "graceful stop: ports closed, draining 1 request(s) in flight" in out
    assert "graceful stop: drained in" in out
    assert "Traceback" not in out


def test_a_request_that_outlives_the_drain_timeout_is_cut_and_the_process_exits_0(origin):
    port = free_port()
    proc = start_twistd(port, backend__url=f"http://127.0.0.1:{origin.port}",
                        server__drain_timeout=1)
    try:
        slow = send_get(port, "/slow")
        assert origin.arrived.wait(WAIT)
        proc.send_signal(signal.SIGTERM)
        code, out = finish(proc)                   # never released: the timeout ends it
        assert slow.recv(1) == b""                 # cut: the connection closed, no answer
        slow.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 0, out
    assert ("graceful stop: drain timed out after 1.0 s with 1 request(s) still in flight"
            in out)


def test_workers_under_the_supervisor_drain_too(origin):
    from mediaproxy.testing import wait_for

    from .processes import ProxyProcess

    proxy = ProxyProcess(origin.port, {"MEDIAPROXY_SERVER__WORKERS": "2",
                                       "MEDIAPROXY_MONITORING__LOG_LEVEL": "info"})
    try:
        # both processes answer (a correlation ID starts with a per-process prefix)
        wait_for(lambda: len({proxy.get("/fast")[1]["x-correlation-id"][:16]
                              for _ in range(20)}) == 2, 20, what="both workers answering")
        slow = [send_get(proxy.port, "/slow") for _ in range(4)]
        assert origin.wait_slow(4)
        proxy.proc.send_signal(signal.SIGTERM)
        origin.release()
        for sock in slow:                    # wherever the kernel sent them, all finish
            response = read_response(sock)
            assert (response.status, response.read()) == (200, BODY)
            sock.close()
        code, out = finish(proxy.proc)
    finally:
        proxy.kill()
    assert code == 0, out
    assert out.count("graceful stop: drained in") == 2, out   # the supervisor and worker 1


@pytest.fixture
def taken_port():
    """A port another socket holds (bound and listening)."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        yield holder.getsockname()[1]


@pytest.mark.parametrize("command", ["twistd", "run", "demo"])
def test_a_port_that_is_taken_ends_the_process_with_one_line(command, taken_port):
    endpoint = f"tcp:{taken_port}:interface=127.0.0.1"
    argv = {"twistd": [TWISTD, "-n", "--pidfile=", "mediaproxy", "--listen", endpoint],
            "run": [sys.executable, "-m", "mediaproxy", "run", "--listen", endpoint],
            "demo": [sys.executable, "-m", "mediaproxy", "demo", "--port", str(taken_port),
                     "--origin-port", str(free_port())]}[command]
    result = subprocess.run(argv, cwd=ROOT, env=environment(), capture_output=True, text=True,
                            timeout=WAIT)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    lines = [line for line in out.splitlines() if "cannot listen" in line]
    assert len(lines) == 1, out
    assert lines[0].endswith(f"proxy: cannot listen on {endpoint}: address already in use")
    assert "Traceback" not in out
    assert "mediaproxy 0" not in out and "try:  curl" not in out   # never said "listening"


def test_a_side_listener_that_cannot_bind_ends_the_process_too(taken_port):
    endpoint = f"tcp:{taken_port}:interface=127.0.0.1"
    result = subprocess.run(
        [sys.executable, "-m", "mediaproxy", "run", "--listen",
         f"tcp:{free_port()}:interface=127.0.0.1"], cwd=ROOT,
        env=environment(monitoring__listen=endpoint), capture_output=True, text=True,
        timeout=WAIT)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert [line for line in out.splitlines() if "cannot listen" in line][0].endswith(
        f"monitoring (/metrics, /health): cannot listen on {endpoint}: address already in use")


def test_purge_and_warm_never_bind_the_proxys_ports(taken_port, origin, tmp_path):
    taken = f"tcp:{taken_port}:interface=127.0.0.1"
    env = environment(server__listen=taken, monitoring__listen=taken, admin__listen=taken,
                      admin__token="t0ken", cache__file__dir=tmp_path / "cache")
    purged = subprocess.run([sys.executable, "-m", "mediaproxy", "purge", "--all"], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=WAIT)
    assert purged.returncode == 0, purged.stdout + purged.stderr
    assert "listen" not in purged.stdout + purged.stderr     # not even tried
    assert json.loads(purged.stdout)["scope"] == {"kind": "all", "value": ""}
    urls = tmp_path / "urls.txt"
    urls.write_text("/fast\n")
    warmed = subprocess.run([sys.executable, "-m", "mediaproxy", "warm", str(urls),
                             "--proxy", f"http://127.0.0.1:{origin.port}"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=WAIT)
    assert warmed.returncode == 0, warmed.stdout + warmed.stderr
    assert warmed.stderr.strip() == "warmed 1 of 1"


@pytest.mark.parametrize("key, value, why", [
    ("server__listen", "tcp:notaport", "invalid literal for int()"),
    ("monitoring__listen", "tcp:9108:bogus=1", "unexpected keyword argument 'bogus'"),
    ("admin__listen", "carrier-pigeon:9109", "Unknown endpoint type: 'carrier-pigeon'"),
])
def test_check_config_refuses_an_endpoint_twisted_cannot_parse(key, value, why, monkeypatch,
                                                               capsys):
    for name in [n for n in os.environ if n.startswith("MEDIAPROXY_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv(f"MEDIAPROXY_{key.upper()}", value)
    assert cli_main(["check-config"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    dotted = key.replace("__", ".")
    assert len(err) == 1
    assert err[0].startswith(f"configuration error: {dotted}: {value!r} is not a usable "
                             "endpoint: ")
    assert why in err[0]


def test_the_systemd_unit_gives_the_drain_its_time():
    """conf/mediaproxy.service (checked with `systemd-analyze verify` when written) keeps up
    with the settings: systemd must not SIGKILL a stop that is still draining."""
    from mediaproxy.workers import STOP_GRACE

    unit = {}
    for line in (ROOT / "conf" / "mediaproxy.service").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            unit.setdefault(key, value)
    drain = load_config(environ={}).server.drain_timeout
    assert float(unit["TimeoutStopSec"]) > drain + STOP_GRACE
    assert unit["KillSignal"] == "SIGTERM" and unit["KillMode"] == "mixed"
    assert unit["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert unit["Restart"] == "on-failure"
    assert " --nodaemon " in unit["ExecStart"] and " mediaproxy " in unit["ExecStart"]
