"""What the metrics cost on the hot path: memory-cache hits per second of one ``mediaproxy run``
process (default settings, access log off), from one keep-alive client on loopback, for this
checkout and optionally another (``--code DIR``, e.g. ``git archive main | tar -x -C DIR``).

    .venv/bin/python bench/metrics_cost.py                   # this checkout
    .venv/bin/python bench/metrics_cost.py --code /tmp/main  # and another, alternately

Each round sends ``--requests`` (2000) GETs of one cached image. Two figures per checkout, the
best of ``--rounds`` (5) rounds (the best is the least disturbed by the rest of the machine):
hits per second (wall clock: noisy on a shared machine), and the proxy process's CPU time per
hit (user + system, from /proc through psutil: what the metrics really add, much less disturbed
by other processes). Loopback only; every loop is bounded.
"""

from __future__ import annotations

import argparse
import http.client
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mediaproxy.testing import ImageOrigin, make_image, start_origin  # noqa: E402

PATH = "/media/a.jpg?w=64"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(code: Path, backend_port: int):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIAPROXY_")}
    env.update({"MEDIAPROXY_BACKEND__URL": f"http://127.0.0.1:{backend_port}",
                "MEDIAPROXY_MONITORING__LOG_LEVEL": "warn",
                "MEDIAPROXY_SERVER__WORKERS": "1", "PYTHONPATH": str(code)})
    proc = subprocess.Popen([sys.executable, "-m", "mediaproxy", "run", "--listen",
                             f"tcp:{port}:interface=127.0.0.1"], cwd=code, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"{code}: the proxy did not start")


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
    args = parser.parse_args()
    origin = ImageOrigin({"/media/a.jpg": make_image((200, 100))})
    start_origin(origin)
    codes = [ROOT, *args.code]
    procs = [start(code, origin.port) for code in codes]
    try:
        best = {code: 0.0 for code in codes}
        cpu = {code: float("inf") for code in codes}
        for proc, port in procs:
            round_(proc, port, 200)   # the miss, then warm-up
        for _ in range(args.rounds):
            for code, (proc, port) in zip(codes, procs):
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
        for proc, _ in procs:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()
