"""What the metrics cost on the hot path: memory-cache hits per second of one ``mediaproxy run``
process (default settings, access log off), from one keep-alive client on loopback, for this
checkout and optionally another (``--code DIR``, e.g. ``git archive main | tar -x -C DIR``).

    .venv/bin/python bench/metrics_cost.py                   # this checkout
    .venv/bin/python bench/metrics_cost.py --code /tmp/main  # and another, in turns
    .venv/bin/python bench/metrics_cost.py --events --code /tmp/main  # the events alone

Each round sends ``--requests`` (2000) GETs of one cached image. Two figures per checkout, the
best of ``--rounds`` (5) rounds (the best is the least disturbed by the rest of the machine):
hits per second (wall clock: noisy on a shared machine), and the proxy process's CPU time per
hit (user + system, from /proc through psutil: what the metrics really add, much less disturbed
by other processes). Loopback only; every loop is bounded.

``--events`` measures instead, in one process per checkout and without HTTP, the microseconds
a memory hit spends in the layered cache's lookup and the events a hit sends through the real
plugin manager (``image.request``, ``cache.hit``, ``request``, and on this checkout the lookup's
own ``cache.read``): what the metrics add to a hit, the best of 25 rounds of 5000.
"""

from __future__ import annotations

import argparse
import http.client
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mediaproxy.testing import ImageOrigin, make_image, start_origin  # noqa: E402
from proxyproc import free_port, proxy_env, run_command, start as start_process, stop  # noqa: E402

PATH = "/media/a.jpg?w=64"

EVENTS = """
import time
from twisted.internet.testing import MemoryReactorClock
from mediaproxy.cache.layered import find_layer
from mediaproxy.config import load_config
from mediaproxy.models import CacheEntry
from mediaproxy.tap import build_runtime

rt = build_runtime(load_config(environ={}, overrides={}), MemoryReactorClock())
find_layer(rt, "memory").set("k", CacheEntry(body=b"x" * 1000, content_type="image/jpeg",
                                             created_at=time.time(), etag="e",
                                             last_modified=None))

def hit():
    rt.cache.get("k")
    rt.emit("image.request", correlation_id="c", route="media")
    rt.emit("cache.hit", correlation_id="c", layer="memory")
    rt.emit("request", 0.001, "c", kind="image", method="GET", status=200, bytes=1000,
            cache="HIT-MEMORY", route="media", aborted=False, path="/media/a.jpg",
            client="127.0.0.1", bytes_in=0)

best = float("inf")
for _ in range(25):
    started = time.perf_counter()
    for _ in range(5000):
        hit()
    best = min(best, (time.perf_counter() - started) / 5000 * 1e6)
print(best)
"""


def events_cost(code: Path) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIAPROXY_")}
    env["PYTHONPATH"] = str(code)
    out = subprocess.run([sys.executable, "-c", EVENTS], cwd="/", env=env, check=True,
                         capture_output=True, text=True, timeout=300).stdout
    return float(out.strip().splitlines()[-1])


def start(code: Path, backend_port: int):
    port = free_port()
    env = proxy_env(code, f"127.0.0.1:{backend_port}")
    return start_process(run_command(port), code, env, port)


def round_(proc, port: int, count: int) -> tuple[float, float]:
    """(hits per second, CPU microseconds of the proxy per hit)."""
    import psutil

    process = psutil.Process(proc.pid)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    cpu = process.cpu_times()
    started = time.perf_counter()
    for _ in range(count):
        conn.request("GET", PATH)
        response = conn.getresponse()
        response.read()
        assert response.status == 200, response.status
    elapsed = time.perf_counter() - started
    after = process.cpu_times()
    conn.close()
    used = (after.user - cpu.user) + (after.system - cpu.system)
    return count / elapsed, used / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--code", action="append", default=[], type=Path)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--events", action="store_true")
    args = parser.parse_args()
    if args.events:
        codes = [ROOT, *args.code]
        best = {code: float("inf") for code in codes}
        for _ in range(3):   # alternately, the best of each
            for code in codes:
                best[code] = min(best[code], events_cost(code))
        for code in codes:
            print(f"{code}: {best[code]:.1f} us per hit in the lookup and the events")
        return
    origin = ImageOrigin({"/media/a.jpg": make_image((200, 100))})
    start_origin(origin)
    codes = [ROOT, *args.code]
    procs = [start(code, origin.port) for code in codes]
    try:
        best = {code: 0.0 for code in codes}
        cpu = {code: float("inf") for code in codes}
        for proc, port in procs:
            round_(proc, port, 200)   # the miss, then warm-up
        pairs = list(zip(codes, procs))
        for n in range(args.rounds):
            # the checkout measured first in a round tends to do worse: alternate the order
            for code, (proc, port) in (pairs if n % 2 == 0 else pairs[::-1]):
                rate, us = round_(proc, port, args.requests)
                best[code] = max(best[code], rate)
                cpu[code] = min(cpu[code], us)
        for code in codes:
            print(f"{code}: {best[code]:.0f} hits/s, {cpu[code]:.0f} us of proxy CPU per hit "
                  f"(best of {args.rounds} x {args.requests})")
        if len(codes) > 1:
            print(f"hits/s ratio {codes[0]} / {codes[1]}: {best[codes[0]] / best[codes[1]]:.3f}")
            print(f"CPU per hit ratio {codes[0]} / {codes[1]}: "
                  f"{cpu[codes[0]] / cpu[codes[1]]:.3f}")
    finally:
        stop(*(proc for proc, _ in procs))


if __name__ == "__main__":
    main()
