"""Recovery figures (issue 12): how fast service comes back after the origin does, and what a
request costs while the backend is dead. Loopback only; every loop is bounded.

    .venv/bin/python bench/recovery.py [dead] [flap] [downup]

With the default settings (only the variant and source caches are off, so that every image
request needs the backend and no stale copy hides an outage) it prints:

* dead: the latency of the first pass-through and image requests to a port nobody listens on
  (connection refused), and of the requests once the breakers are open;
* flap: the origin answers 502 for a while, then 200 again at t0; the time from t0 to the first
  200 of an image request and of a pass-through request (polled every 20 ms);
* downup: the origin's process "dies" (stops listening, drops its connections), then listens
  again on the same port at t0; the same times, and the latency of every 503 answered while it
  was down (the breaker open).
"""

from __future__ import annotations

import itertools
import socket
import time
from collections import Counter
import sys


from mediaproxy.testing import DroppingSite, ImageOrigin, make_image, start_proxy
from mediaproxy.testing.reactor import call_in_reactor, reactor_thread

IMAGE = make_image((200, 100))
PAGE = b"<html>ok</html>"
POLL = 0.02
#: No source cache and no variant cache: every image request below needs a fetch, so it
#: answers 200 only when the backend does (no stale copy to fall back on either).
FETCH_EVERY_TIME = {"cache": {"source": {"memory_bytes": 0}, "memory": {"enabled": False}}}
WIDTHS = itertools.cycle(range(20, 8000))
open_ms: list[float] = []


def image_path() -> str:
    return f"/media/a.jpg?w={next(WIDTHS)}"


def timed(proxy, path):
    t = time.monotonic()
    r = proxy.get(path)
    return r.status, (time.monotonic() - t) * 1000


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def percentiles(values):
    values = sorted(values)
    return (f"median {values[len(values) // 2]:.1f} ms, 99th "
            f"{values[int(len(values) * .99)]:.1f} ms, max {values[-1]:.1f} ms")


def dead_backend():
    port = free_port()
    with start_proxy(backend_port=port, overrides=FETCH_EVERY_TIME) as proxy:
        for label, path in (("pass-through", "/page/"), ("image", None)):
            lat = [timed(proxy, path or image_path()) for i in range(40)]
            first = [f"{s}:{ms:.0f}" for s, ms in lat[:6]]
            print(f"dead backend, {label}: first 6 (status:ms) {' '.join(first)}; "
                  f"requests 20-39: statuses {sorted(set(s for s, _ in lat[20:]))}, "
                  f"{percentiles([ms for _, ms in lat[20:]])}")


def outage(proxy, seconds, tally):
    """Ask for an image and a page every POLL seconds for ``seconds``."""
    end = time.monotonic() + seconds
    seen = Counter()
    while time.monotonic() < end:
        for kind, path in (("image", image_path()), ("pass", "/page/")):
            status, ms = timed(proxy, path)
            seen[kind, status] += 1
            if tally and status == 503:
                open_ms.append(ms)
        time.sleep(POLL)
    return dict(seen)


def until_back(proxy, limit=60.0):
    """Seconds until an image request and a page each answered 200 (-1: not within limit)."""
    t0 = time.monotonic()
    back = {}
    while len(back) < 2 and time.monotonic() - t0 < limit:
        for kind, path in (("image", image_path()), ("pass", "/page/")):
            if kind not in back and proxy.get(path).status == 200:
                back[kind] = time.monotonic() - t0
        time.sleep(POLL)
    return f"image back after {back.get('image', -1):.2f} s, " \
           f"pass-through back after {back.get('pass', -1):.2f} s"


def flap():
    origin = ImageOrigin({"/media/a.jpg": IMAGE, "/page/": PAGE})
    with start_proxy(origin=origin, overrides=FETCH_EVERY_TIME) as proxy:
        assert proxy.get(image_path()).status == 200
        for down in (3.0, 12.0, 35.0):
            origin.files["/media/a.jpg"] = (502, b"bad gateway", "text/plain", {})
            origin.files["/page/"] = (502, b"bad gateway", "text/plain", {})
            seen = outage(proxy, down, tally=False)
            origin.files["/media/a.jpg"] = IMAGE
            origin.files["/page/"] = PAGE
            print(f"502 for {down:4.1f} s ({seen}): {until_back(proxy)}")



def stop(listening, site):
    d = listening.stopListening()
    site.drop_all()
    return d


def down_up():
    reactor = reactor_thread()
    origin = ImageOrigin({"/media/a.jpg": IMAGE, "/page/": PAGE})
    site = DroppingSite(origin)
    listening = call_in_reactor(reactor.listenTCP, 0, site, interface="127.0.0.1")
    port = listening.getHost().port
    with start_proxy(backend_port=port, overrides=FETCH_EVERY_TIME) as proxy:
        assert proxy.get("/page/").status == 200
        for down in (3.0, 12.0):
            call_in_reactor(stop, listening, site)
            seen = outage(proxy, down, tally=True)
            site = DroppingSite(origin)
            listening = call_in_reactor(reactor.listenTCP, port, site, interface="127.0.0.1")
            print(f"down for {down:4.1f} s ({seen}): {until_back(proxy)}")
    call_in_reactor(stop, listening, site)
    print(f"503 answers while down (breaker open): {len(open_ms)}, {percentiles(open_ms)} "
          f"(client round trip on loopback)")


if __name__ == "__main__":
    which = sys.argv[1:] or ["dead", "flap", "downup"]
    if "dead" in which:
        dead_backend()
    if "flap" in which:
        flap()
    if "downup" in which:
        down_up()
