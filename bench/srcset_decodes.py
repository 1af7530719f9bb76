"""How many decodes a srcset costs with the default deployment (two workers here): three
srcsets of a never-seen 4000x3000 JPEG (bench/srcset.py's eight boxes, in ascending order, one
keep-alive connection each) against a proxy from this checkout (and ``--code DIR``), then the
merged ``mediaproxy_decoded_cache_*`` metrics: every miss is a decode of the source.

    .venv/bin/python bench/srcset_decodes.py
    .venv/bin/python bench/srcset_decodes.py --code /tmp/main72 --set PROCESSING__DECODED_CACHE_BYTES=12MiB

Each proxy: ``mediaproxy run`` on a free loopback port (never 8080), ``server.workers = 2``,
the monitoring listener on another free port, in front of the shared bench's nginx origin
(127.0.0.1:18080). Bounded: 24 requests with 60 s timeouts.
"""

from __future__ import annotations

import argparse
import http.client
import time
import urllib.request
import uuid
from pathlib import Path

from proxyproc import free_port, proxy_env, run_command, start, stop
from srcset import BOXES, SOURCE

ROOT = Path(__file__).resolve().parent.parent


def decodes(code: Path, settings: dict[str, str], rounds: int = 3) -> dict[str, float]:
    port, monitoring = free_port(), free_port()
    env = proxy_env(code, "127.0.0.1:18080", **{
        "SERVER__WORKERS": "2", "MONITORING__LISTEN": f"tcp:{monitoring}:interface=127.0.0.1",
        **settings})
    proc, _ = start(run_command(port), code, env, port)
    try:
        time.sleep(2)       # the second worker
        for _ in range(rounds):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            nonce = uuid.uuid4().hex[:12]
            for w, h in BOXES:
                conn.request("GET", f"/media/uploads/b/{nonce}/{SOURCE}?w={w}&h={h}"
                                    "&fit=inside&fmt=jpeg")
                response = conn.getresponse()
                response.read()
                if response.status != 200:
                    raise SystemExit(f"{code}: {w}x{h} answered {response.status}")
            conn.close()
        text = urllib.request.urlopen(f"http://127.0.0.1:{monitoring}/metrics",
                                      timeout=10).read().decode()
    finally:
        stop(proc)
    out = {}
    for line in text.splitlines():
        if line.startswith("mediaproxy_decoded_cache"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--code", action="append", default=[], type=Path)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION__KEY=VALUE")
    args = parser.parse_args()
    settings = dict(item.split("=", 1) for item in args.set)
    for code in [ROOT, *args.code]:
        metrics = decodes(code, settings)
        hits = metrics.get('mediaproxy_decoded_cache_lookups_total{result="hit"}', 0)
        misses = metrics.get('mediaproxy_decoded_cache_lookups_total{result="miss"}', 0)
        print(f"{code}: 3 srcsets of {SOURCE} on two workers: {misses:.0f} decodes "
              f"(misses), {hits:.0f} hits, {metrics.get('mediaproxy_decoded_cache_evictions_total', 0):.0f} "
              f"evictions; capacity {metrics.get('mediaproxy_decoded_cache_capacity_bytes', 0) / 2**20:.0f} "
              f"MiB over both")


if __name__ == "__main__":
    main()
