"""Memory hits under many connections: the proxy process's CPU time per request while
``wrk -t2 -c64`` asks one ``mediaproxy run`` process (default settings, access log off) for one
cached image, for this checkout and another (``--code DIR``), in alternating rounds.

    .venv/bin/python bench/hit_wrk.py --code /tmp/main72            # 3 rounds of 8 s each

With one keep-alive client (``bench/metrics_cost.py``) every request pays a whole turn of the
reactor for itself (a poll, the read, a second poll for the write); under 64 connections a turn
serves several, which is how a busy proxy runs. The CPU per request comes from /proc (psutil:
user + system of the proxy process over the run, divided by wrk's request count), so it is
much less disturbed by the rest of the machine than the req/s figure, which is printed too.
Needs ``wrk`` on the PATH. Loopback only; every round is bounded (``--seconds``).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

# the same proxy start, origin and request as the one-client measure
from metrics_cost import PATH, ROOT, round_, start
from proxyproc import stop

from mediaproxy.testing import ImageOrigin, make_image, start_origin


def wrk_round(proc, port: int, seconds: int) -> tuple[float, float]:
    """(requests per second, CPU microseconds of the proxy per request)."""
    import psutil

    process = psutil.Process(proc.pid)
    before = process.cpu_times()
    url = f"http://127.0.0.1:{port}{PATH}"
    out = subprocess.run(["wrk", "-t2", "-c64", f"-d{seconds}s", url], capture_output=True,
                         text=True, timeout=seconds + 60, check=True).stdout
    after = process.cpu_times()
    if "Non-2xx" in out or "Socket errors" in out:
        raise SystemExit(f"wrk saw errors:\n{out}")
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    used = (after.user - before.user) + (after.system - before.system)
    return rate, used / total * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--code", action="append", default=[], type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=8)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed")
    origin = ImageOrigin({"/media/a.jpg": make_image((200, 100))})
    start_origin(origin)
    codes = [ROOT, *args.code]
    procs = [start(code, origin.port) for code in codes]
    try:
        for proc, port in procs:
            round_(proc, port, 300)   # the miss, then warm-up
        pairs = list(zip(codes, procs))
        cpu = {code: [] for code in codes}
        for n in range(args.rounds):
            for code, (proc, port) in (pairs if n % 2 == 0 else pairs[::-1]):
                rate, us = wrk_round(proc, port, args.seconds)
                cpu[code].append(us)
                print(f"round {n + 1}: {code}: {rate:.0f} req/s, {us:.0f} us of proxy CPU per "
                      "request", flush=True)
        for code in codes:
            print(f"{code}: best {min(cpu[code]):.0f} us of proxy CPU per request")
        if len(codes) > 1:
            ours, theirs = cpu[codes[0]], cpu[codes[1]]
            rounds = ", ".join(f"{a / b:.2f}" for a, b in zip(ours, theirs))
            print(f"CPU per request {codes[0]} / {codes[1]}: best {min(ours) / min(theirs):.2f}, "
                  f"per round {rounds}")
    finally:
        stop(*(proc for proc, _ in procs))


if __name__ == "__main__":
    main()
