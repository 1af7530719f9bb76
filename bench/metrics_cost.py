"""What the metrics cost on the hot path: memory-cache hits per second of one ``mediaproxy run``
process (default settings, access log off), from one keep-alive client on loopback, for this
checkout and optionally another (``--code DIR``, e.g. ``git archive main | tar -x -C DIR``).

    .venv/bin/python bench/metrics_cost.py                   # this checkout
    .venv/bin/python bench/metrics_cost.py --code /tmp/main  # and another, alternately

Each round sends ``--requests`` (2000) GETs of one cached image; the figure is the best of
``--rounds`` (5) rounds per checkout (the best is the least disturbed by the rest of the
machine). Loopback only; every loop is bounded.
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


def round_(port: int, count: int) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    started = time.perf_counter()
    for _ in range(count):
        conn.request("GET", PATH)
        response = conn.getresponse()
        response.read()
        assert response.status == 200, response.status
    elapsed = time.perf_counter() - started
    conn.close()
    return count / elapsed


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
        for (_, port) in procs:
            round_(port, 200)   # the miss, then warm-up
        for _ in range(args.rounds):
            for code, (_, port) in zip(codes, procs):
                best[code] = max(best[code], round_(port, args.requests))
        for code in codes:
            print(f"{code}: {best[code]:.0f} hits/s (best of {args.rounds} x {args.requests})")
        if len(codes) > 1:
            print(f"ratio {codes[0]} / {codes[1]}: {best[codes[0]] / best[codes[1]]:.3f}")
    finally:
        for proc, _ in procs:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()
