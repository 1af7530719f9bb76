"""What the workers' host layer (a file layer behind the memory layer, mediaproxy/hostlayer.py)
costs a memory hit: microseconds per ``runtime.cache.get`` of a cached key, in process
(``start_proxy``), with the memory layer alone and with a file layer behind it, best of 25
rounds of 5000 lookups, ``--pairs`` (3) paired rounds. Nothing leaves the process but one
request to a loopback origin per proxy.

    .venv/bin/python bench/host_layer_hit.py
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mediaproxy.testing import call_in_reactor, make_image, start_proxy


def lookup_us(overrides: dict) -> tuple[list[str], float]:
    with start_proxy(files={"/media/a.jpg": make_image((300, 200))},
                     overrides=overrides) as proxy:
        assert proxy.get("/media/a.jpg?w=64").status == 200
        assert proxy.get("/media/a.jpg?w=64").headers["x-cache"] == "HIT-MEMORY"
        cache = proxy.runtime.cache
        memory = cache.layers[0]
        key = next(iter(memory._cache.keys()))

        def run():
            best = float("inf")
            for _ in range(25):
                started = time.perf_counter()
                for _ in range(5000):
                    cache.get(key)
                best = min(best, (time.perf_counter() - started) / 5000 * 1e6)
            return best
        return [layer.name for layer in cache.layers], call_in_reactor(run, timeout=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args()
    for i in range(args.pairs):
        alone = lookup_us({})
        behind = lookup_us({"cache": {"file": {"dir": tempfile.mkdtemp(prefix="mp-hit-")}}})
        print(f"pair {i}: {'+'.join(alone[0])} {alone[1]:.1f} us, "
              f"{'+'.join(behind[0])} {behind[1]:.1f} us per memory hit lookup")


if __name__ == "__main__":
    main()
