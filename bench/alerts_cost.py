#!/usr/bin/env python3
"""What the in-process performance figures cost a hot cache hit: the microseconds the three
events of one memory hit (``image.request``, ``cache.hit``, ``request``) spend in the real
plugin manager with ``alerts.enabled`` off and on, the best of 4 x 15 rounds of 5000 (the
best is the least disturbed by the rest of the machine), alternating off and on. No HTTP, no
network; every loop is bounded.

    .venv/bin/python bench/alerts_cost.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet.testing import MemoryReactorClock

from mediaproxy.config import load_config
from mediaproxy.tap import build_runtime


def cost(enabled: bool, rounds: int = 15, hits: int = 5000) -> float:
    rt = build_runtime(load_config(environ={}, overrides={"alerts": {"enabled": enabled}}),
                       MemoryReactorClock())
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(hits):
            rt.emit("image.request", correlation_id="c", route="query")
            rt.emit("cache.hit", correlation_id="c", layer="memory")
            rt.emit("request", 0.0004, "c", kind="image", method="GET", status=200,
                    bytes=1000, cache="HIT-MEMORY", route="query", aborted=False,
                    path="/media/a.jpg", client="127.0.0.1")
        best = min(best, (time.perf_counter() - started) / hits * 1e6)
    return best


def main() -> None:
    off, on = [], []
    for _ in range(4):
        off.append(cost(False))
        on.append(cost(True))
    print(f"events of one hot hit: alerts off {min(off):.2f} us, on {min(on):.2f} us "
          f"(+{min(on) - min(off):.2f} us)")


if __name__ == "__main__":
    main()
