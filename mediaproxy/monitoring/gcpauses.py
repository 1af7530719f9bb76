"""
How long Python's garbage collector stops the process, by generation.

A collection runs with the GIL held: every thread waits for it, the reactor and a cache hit in
its hands included. Python's own ``python_gc_collections_total`` counts collections but not
their length; a full collection over a large heap took 67 to 121 ms in this proxy before the
start's objects were frozen (docs/performance.md, "Collections"), and that is what an operator
looking at a latency tail needs to see. ``mediaproxy_gc_pause_seconds{generation}`` is a
histogram of each collection's wall time, recorded by one ``gc.callbacks`` entry per process
(installed once, whatever the number of runtimes in it) and read at scrape time.

Why its own counters and not prometheus_client's ``Histogram``: ``observe`` takes a lock, and
a collection can start inside any allocation, one made while that very lock is held
included; the callback would then wait for itself. The recorder only adds to lists, with the
GIL held.

Part of the monitoring room: imports nothing of mediaproxy.
"""

from __future__ import annotations

import gc
import threading
import time

from prometheus_client.core import HistogramMetricFamily

__all__ = ["BUCKETS", "GcPauseCollector", "recorder"]

#: Upper bounds (seconds) of the histogram's buckets.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5)
GENERATIONS = 3


class _Recorder:
    """Each collection's wall time, by generation (the callback runs in whichever thread the
    collection happens in, with the GIL held: the updates need no lock)."""

    def __init__(self):
        self.buckets = [[0] * len(BUCKETS) for _ in range(GENERATIONS)]
        self.counts = [0] * GENERATIONS
        self.sums = [0.0] * GENERATIONS
        self._started = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        generation = info.get("generation", 0)
        if not 0 <= generation < GENERATIONS:
            return
        seconds = time.perf_counter() - self._started
        self.counts[generation] += 1
        self.sums[generation] += seconds
        row = self.buckets[generation]
        for i, bound in enumerate(BUCKETS):
            if seconds <= bound:
                row[i] += 1
                break


_recorder: _Recorder | None = None
_lock = threading.Lock()


def recorder() -> _Recorder:
    """The process's recorder, its callback installed on first use."""
    global _recorder
    with _lock:
        if _recorder is None:
            _recorder = _Recorder()
            gc.callbacks.append(_recorder)
        return _recorder


class GcPauseCollector:
    """``mediaproxy_gc_pause_seconds{generation}`` from the process's recorder."""

    def __init__(self):
        self.recorder = recorder()

    def collect(self):
        r = self.recorder
        family = HistogramMetricFamily(
            "mediaproxy_gc_pause_seconds", "Wall time of each garbage collection, by "
            "generation: the whole process (every thread, the reactor's hits included) waits "
            "for it.", labels=["generation"])
        for generation in range(GENERATIONS):
            cumulative, buckets = 0, []
            for bound, n in zip(BUCKETS, r.buckets[generation]):
                cumulative += n
                buckets.append((repr(bound), cumulative))
            buckets.append(("+Inf", r.counts[generation]))
            family.add_metric([str(generation)], buckets, r.sums[generation])
        yield family
