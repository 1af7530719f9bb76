"""One process's hits against the bare-Twisted floor, in CPU per request: the "hot hits / the
bare-Twisted floor (one process)" row of issue 14's table measured so that the rest of a shared
machine disturbs it little.

    .venv/bin/python bench/floor_cpu.py                          # this checkout, 3 rounds
    .venv/bin/python bench/floor_cpu.py --code /tmp/main72 --rounds 5

The shared bench's hot scenario divides req/s under ``wrk -t2 -c64`` (both the server and wrk
on the machine's cores, with whatever else runs there). Here each round runs the same ``wrk
-t2 -c64`` for ``--seconds`` against the floor (the harness's bare-Twisted server on
127.0.0.1:18082, its pid from ``$BENCH_WORK/run/floor/floor.pid``, serving the pre-resized
bytes of the bench's hot URL) and against one ``mediaproxy run`` process per checkout (free
port, defaults, one worker, in front of the harness's nginx origin on 127.0.0.1:18080, the
bench's hot URL cached), in alternating order, and reads each server process's CPU time
(user + system, /proc through psutil) over the round. A server that needs C µs of CPU per
request serves at most 1/C requests a second on one core, so floor CPU / proxy CPU is the
ratio the hot scenario approaches on a quiet machine. Best (lowest) CPU of the rounds each.
Loopback only; every round is bounded.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from proxyproc import free_port, proxy_env, run_command, start, stop

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(os.environ.get("BENCH_WORK", "/tmp/mediaproxy-bench"))
FLOOR_URL = "http://127.0.0.1:18082/photo_1920_300x200.jpg"
HOT_PATH = "/media/uploads/photo_1920.jpg?w=300&h=200&fit=inside&fmt=jpeg"


def wrk_round(pid: int, url: str, seconds: int) -> tuple[float, float]:
    """(requests per second, CPU microseconds of process ``pid`` per request)."""
    import psutil

    process = psutil.Process(pid)
    before = process.cpu_times()
    out = subprocess.run(["wrk", "-t2", "-c64", f"-d{seconds}s", url], capture_output=True,
                         text=True, timeout=seconds + 60, check=True).stdout
    after = process.cpu_times()
    if "Non-2xx" in out or "Socket errors" in out:
        raise SystemExit(f"wrk saw errors against {url}:\n{out}")
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    used = (after.user - before.user) + (after.system - before.system)
    return rate, used / total * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--code", action="append", default=[], type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=6)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed")
    floor_pid = int((BENCH / "run" / "floor" / "floor.pid").read_text())
    targets = [("floor", floor_pid, FLOOR_URL)]
    procs = []
    try:
        for code in [ROOT, *args.code]:
            port = free_port()
            proc, _ = start(run_command(port), code, proxy_env(code, "127.0.0.1:18080"), port)
            procs.append(proc)
            url = f"http://127.0.0.1:{port}{HOT_PATH}"
            for _ in range(50):   # the miss, then warm-up
                urllib.request.urlopen(url, timeout=30).read()
            targets.append((str(code), proc.pid, url))
        cpu: dict[str, list[float]] = {name: [] for name, _, _ in targets}
        for n in range(args.rounds):
            for name, pid, url in (targets if n % 2 == 0 else targets[::-1]):
                rate, us = wrk_round(pid, url, args.seconds)
                cpu[name].append(us)
                print(f"round {n + 1}: {name}: {rate:.0f} req/s, {us:.1f} us of CPU per request",
                      flush=True)
        floor = min(cpu["floor"])
        for name, values in cpu.items():
            print(f"{name}: best {min(values):.1f} us per request; floor / this "
                  f"{floor / min(values):.2f}")
    finally:
        stop(*procs)


if __name__ == "__main__":
    main()
