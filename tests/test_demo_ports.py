"""The demo on other ports, as README says: ``mediaproxy demo --port P --origin-port Q``."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys

from mediaproxy.testing import decode

from .processes import ROOT
from .redis_server import free_port

WAIT = 30.0   # the bound of every wait below (a hang guard)


def get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_the_demo_runs_on_the_ports_given():
    port, origin_port = free_port(), free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MEDIAPROXY_")}
    environ.update(PYTHONPATH=str(ROOT), MEDIAPROXY_SERVER__WORKERS="1",
                   MEDIAPROXY_MONITORING__LOG_LEVEL="warn")
    proc = subprocess.Popen([sys.executable, "-m", "mediaproxy", "demo", "--port", str(port),
                             "--origin-port", str(origin_port)], cwd=ROOT, env=environ,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # the banner is printed once both listen (one line; a failure ends the process)
        banner = proc.stdout.readline()
        assert banner == (f"demo origin on http://127.0.0.1:{origin_port}/ ; proxy on "
                          f"http://127.0.0.1:{port}/ (open it for the demo page)\n")
        status, body = get(port, "/media/uploads/sample.jpg?w=120&fmt=png")
        assert status == 200 and decode(body).size[0] == 120
        assert get(port, "/")[0] == 200                 # the demo page, through the proxy
        assert get(origin_port, "/")[0] == 200          # the origin on its own port
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=WAIT)
        proc.stdout.close()
