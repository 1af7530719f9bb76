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

from mediaproxy.cli import main as cli_main

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
        origin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                if self.path == "/slow":
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
        raise AssertionError(f"the process did not exit: {out.decode(errors='replace')}")
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
