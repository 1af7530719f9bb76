"""
Logs under ``twistd``, the documented way to run the proxy: a real ``twistd mediaproxy``
process in front of a real origin, one image request and one pass-through request, each with an
``X-Request-ID`` of its own; then the process is stopped and its whole log read.

* JSON (``twistd --nodaemon``, stdout): every line is one JSON object; every line about either
  request carries its ID (the access line included, with status, bytes, duration, cache and
  route kind); no line of Twisted's client factories; a ``/metrics`` scrape leaves no line
  above debug.
* text (daemonised, ``--logfile`` and ``--pidfile``): the same requests, each line about one
  carrying ``[its ID]``.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mediaproxy.testing import ImageOrigin, call_in_reactor, make_image, start_origin
from tests.redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent
TWISTD = Path(sys.executable).parent / "twistd"
DEADLINE = 30.0
PAGE = b"<html><body>a backend page</body></html>"
IMAGE_ID, PAGE_ID = "img-0001.a", "page-0002:b"


@pytest.fixture
def origin(live_reactor):
    origin = ImageOrigin({
        "/media/a.jpg": make_image((300, 200)),
        "/shop/": (200, PAGE, "text/html", []),
    })
    listening = start_origin(origin)
    yield origin
    call_in_reactor(listening.stopListening)


def write_config(tmp_path, origin, port, fmt, level, monitor_port=None) -> Path:
    path = tmp_path / "mediaproxy.toml"
    monitoring = (f'log_format = "{fmt}"\nlog_level = "{level}"\naccess_log = true\n')
    if monitor_port:
        monitoring += f'listen = "tcp:{monitor_port}:interface=127.0.0.1"\n'
    path.write_text(
        f'[server]\nlisten = ["tcp:{port}:interface=127.0.0.1"]\n'
        f'[backend]\nurl = "http://127.0.0.1:{origin.port}"\n'
        f'[monitoring]\n{monitoring}')
    return path


def environment() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIAPROXY_")}
    env["PYTHONPATH"] = str(ROOT)
    return env


def wait_listening(port: int, proc=None) -> None:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"twistd exited with {proc.returncode}")
        try:
            http.client.HTTPConnection("127.0.0.1", port, timeout=1).connect()
            return
        except OSError:
            time.sleep(0.05)   # polling a starting process, bounded by the deadline
    raise AssertionError(f"nothing listens on {port}")


def get(port: int, path: str, request_id: str | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request("GET", path, headers={"X-Request-ID": request_id} if request_id else {})
        response = conn.getresponse()
        return response.status, response.getheader("X-Correlation-ID"), response.read()
    finally:
        conn.close()


def two_requests(port: int, origin) -> dict:
    """The image request and the pass-through request; each adopts its X-Request-ID, answers
    with it and forwards it to the backend."""
    status, cid, body = get(port, "/media/a.jpg?w=50", IMAGE_ID)
    assert (status, cid) == (200, IMAGE_ID)
    assert origin.headers_seen["/media/a.jpg"]["x-correlation-id"] == [IMAGE_ID]
    image_bytes = len(body)
    status, cid, body = get(port, "/shop/", PAGE_ID)
    assert (status, cid, body) == (200, PAGE_ID, PAGE)
    seen = origin.headers_seen["/shop/"]
    assert (seen["x-correlation-id"], seen["x-request-id"]) == ([PAGE_ID], [PAGE_ID])
    return {"/media/a.jpg": image_bytes, "/shop/": len(PAGE)}


def test_twistd_json_lines_carry_each_request_id(tmp_path, origin):
    port, monitor = free_port(), free_port()
    config = write_config(tmp_path, origin, port, "json", "debug", monitor)
    proc = subprocess.Popen(
        [str(TWISTD), "--nodaemon", "--pidfile=", "mediaproxy", "--config", str(config)],
        cwd=tmp_path, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_listening(port, proc)
        wait_listening(monitor, proc)
        sizes = two_requests(port, origin)
        assert get(monitor, "/metrics")[0] == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 0, err.decode(errors="replace")   # a graceful stop
    lines = [json.loads(line) for line in out.decode().splitlines()]
    assert all(isinstance(line, dict) for line in lines)
    assert lines[-1]["message"] == "Server Shut Down.", err.decode(errors="replace")
    ids = {"/media/a.jpg": IMAGE_ID, "/shop/": PAGE_ID}
    for path, cid in ids.items():
        about = [line for line in lines if path in line["message"]]
        # the access line and, at debug, the lines of the check chain, the fetch, the render
        # and the pass-through exchange
        assert len(about) >= 2, (path, about)
        assert [line for line in about if line.get("correlation_id") != cid] == []
    access = {line["path"]: line for line in lines if line["namespace"] == "mediaproxy.access"}
    assert sorted(access) == ["/media/a.jpg", "/shop/"]
    for path, line in access.items():
        kind, cache = ("image", "MISS") if path == "/media/a.jpg" else ("passthrough", "")
        assert (line["correlation_id"], line["method"], line["status"], line["bytes"],
                line["cache"], line["kind"], line["client"], line["aborted"]) == (
            ids[path], "GET", 200, sizes[path], cache, kind, "127.0.0.1", False)
        assert isinstance(line["duration"], float) and line["duration"] >= 0
    assert [line for line in lines if "_HTTP11ClientFactory" in line["message"]] == []
    scrapes = [line for line in lines if "GET /metrics" in line["message"]]
    assert [line["level"] for line in scrapes] == ["debug"]


def test_twistd_daemon_text_lines_carry_each_request_id(tmp_path, origin):
    port = free_port()
    config = write_config(tmp_path, origin, port, "text", "info")
    logfile, pidfile = tmp_path / "proxy.log", tmp_path / "proxy.pid"
    started = subprocess.run(
        [str(TWISTD), f"--logfile={logfile}", f"--pidfile={pidfile}", "mediaproxy",
         "--config", str(config)],
        cwd=tmp_path, env=environment(), capture_output=True, timeout=DEADLINE)
    assert started.returncode == 0, started.stderr.decode(errors="replace")
    pid = None
    try:
        wait_listening(port)
        pid = int(pidfile.read_text())
        two_requests(port, origin)
    finally:
        if pid is None and pidfile.exists():
            pid = int(pidfile.read_text())
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + DEADLINE
            while pidfile.exists() and time.monotonic() < deadline:
                time.sleep(0.05)   # the daemon removes its pidfile as it exits
    assert not pidfile.exists()

    lines = logfile.read_text().splitlines()
    assert any(" info  mediaproxy " in line and "listening on" in line for line in lines)
    for path, cid in (("/media/a.jpg", IMAGE_ID), ("/shop/", PAGE_ID)):
        about = [line for line in lines if path in line]
        assert len(about) == 1 and f" [{cid}] " in about[0], about
        assert " mediaproxy.access " in about[0] and " 200 " in about[0]
    assert [line for line in lines if "_HTTP11ClientFactory" in line] == []
