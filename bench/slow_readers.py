"""Slow readers of a pass-through download against a `mediaproxy run` subprocess with default
settings: N clients (560 by default, env N) ask for a 16 MiB download and read nothing, while a
normal client asks for a page every 0.5 s for 16 s; prints (seconds since the readers started,
status, seconds the answer took) for each, and the proxy's RSS.

    .venv/bin/python bench/slow_readers.py
"""
import os
import socket
import sys
import time

sys.path.insert(0, os.getcwd())
from mediaproxy.testing import ImageOrigin, start_origin
from tests.processes import ProxyProcess

import http.client


class Origin(ImageOrigin):
    posts = 0

    def render_GET(self, request):
        if request.path == b"/big.bin":   # a shared body, as the proxy sends it: no copy
            from mediaproxy.http.sendbody import send_body
            from twisted.web.server import NOT_DONE_YET
            self.record(request)
            request.setHeader(b"Content-Length", b"%d" % len(big))
            send_body(request, big)
            return NOT_DONE_YET
        return super().render_GET(request)

    def render_POST(self, request):
        Origin.posts += 1
        return b"posted"


def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) // 1024
    return 0


def req(port, method, path, body=None, timeout=10):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    t = time.monotonic()
    c.request(method, path, body=body)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, len(data), round(time.monotonic() - t, 3)


def conn(port, rcvbuf=None):
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect(("127.0.0.1", port))
    return s


N = int(os.environ.get("N", "560"))
big = bytes(range(256)) * (64 * 1024)
origin = Origin({"/page": (200, b"<html>shop</html>", "text/html", []),
                 "/big.bin": (200, big, "application/octet-stream", [])})
listening = start_origin(origin)
env = dict(os.environ.get("EXTRA_ENV") and [kv.split("=", 1) for kv in
                                            os.environ["EXTRA_ENV"].split()] or [])
proxy = ProxyProcess(listening.getHost().port, env=env)
try:
    port = proxy.port
    print("baseline", req(port, "GET", "/page"))
    slow = [conn(port, 4096) for _ in range(N)]
    t0 = time.monotonic()
    for s in slow:
        s.sendall(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
    seen = []
    while time.monotonic() - t0 < 16:
        t = time.monotonic() - t0
        st = req(port, "GET", "/page")
        seen.append((round(t, 1), st[0], round(st[2], 2) if len(st) > 2 else None))
        time.sleep(0.5)
    print(seen)
    print("rss MiB", rss(proxy.proc.pid))
    for s in slow:
        s.close()
finally:
    proxy.stop()
