"""
Prometheus collectors read at scrape time from the runtime's own figures: what already exists as
a number somewhere (a queue length, a layer's counters, a breaker's state) is read when
Prometheus asks, instead of being counted a second time on the request path.

Everything here is cheap enough for the reactor thread, which answers the scrape: attribute
reads, a few ``stats()`` dicts, and one ``statvfs`` of the file cache's directory (a single
system call; the directory is never walked: its bytes are the file layer's own accounting).
"""

from __future__ import annotations

import os
from typing import Any, Callable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ..cache.files.layer import FileLayer
from ..cache.layered import find_layer
from ..cache.redislayer import RedisLayer

#: ``breaker_state`` values: a larger number is worse, so the workers' merge takes the max.
BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}


def _gauge(name: str, doc: str, value: float | None = None, labels=()) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=list(labels) or None)
    if value is not None:
        family.add_metric([], value)
    return family


class RuntimeCollector:
    """The gauges and layer counters of one runtime (see the metrics reference in
    docs/operations.md): the transform queue and pool, the memory budget, requests in flight,
    the cache layers' sizes and evictions, the file cache's disk,
    the breakers, the reactor lag, the start time and the version.

    ``lag`` is a callable giving the reactor lag in seconds (the probe's ``worst``), or None.
    """

    def __init__(self, runtime: Any, version: str, lag: Callable[[], float] | None = None):
        self.runtime = runtime
        self.version = version
        self.lag = lag

    def collect(self):
        rt = self.runtime
        yield _gauge("mediaproxy_transform_queue",
                     "Transforms running or waiting for a thread or for room in the memory "
                     "budget.", rt.pending_transforms)
        pool = rt.threadpool
        threads = _gauge("mediaproxy_transform_pool_threads",
                         "Transform pool threads: busy running a job, and the pool's size.",
                         labels=["state"])
        threads.add_metric(["busy"], len(pool.working))
        threads.add_metric(["size"], pool.max)
        yield threads
        budget = rt.admission
        memory = _gauge("mediaproxy_transform_memory_bytes",
                        "The transform memory budget: bytes reserved by admitted transforms, "
                        "and the capacity.", labels=["state"])
        memory.add_metric(["reserved"], budget.reserved)
        memory.add_metric(["capacity"], budget.capacity)
        yield memory
        yield _gauge("mediaproxy_admission_queue",
                     "Transforms waiting for room in the memory budget.", budget.waiting)
        inflight = _gauge("mediaproxy_http_requests_in_flight",
                          "Main-port requests started and not ended, by route kind.",
                          labels=["kind"])
        for kind, count in rt.inflight.counts.items():
            inflight.add_metric([kind], count)
        yield inflight
        yield from self._cache()
        yield from self._breakers()
        if self.lag is not None:
            yield _gauge("mediaproxy_reactor_lag_seconds",
                         "The worst lateness of the reactor over the last few seconds.",
                         self.lag())
        yield _gauge("mediaproxy_start_time_seconds",
                     "When this process's runtime was made (Unix time).", rt.started)
        info = _gauge("mediaproxy_build_info", "The running version (always 1).",
                      labels=["version"])
        info.add_metric([self.version], 1)
        yield info

    def _cache(self):
        size = _gauge("mediaproxy_cache_bytes", "Bytes held by a cache layer.", labels=["layer"])
        items = _gauge("mediaproxy_cache_items", "Entries in a cache layer.", labels=["layer"])
        evictions = CounterMetricFamily("mediaproxy_cache_evictions",
                                        "Entries a cache layer of this process removed to make "
                                        "room.", labels=["layer"])
        cache = self.runtime.cache
        layers = list(getattr(cache, "layers", ()))
        for layer in layers:
            stats = layer.stats()
            name = layer.name
            size.add_metric([name], stats.get("bytes", 0))
            items.add_metric([name], stats.get("items", 0))
            # Redis evicts by its own policy, for every node: its evicted_keys is the server's,
            # not this process's (summed over workers it would count N times).
            if "evictions" in stats and not isinstance(layer, RedisLayer):
                evictions.add_metric([name], stats["evictions"])
        yield from (size, items, evictions)
        files = find_layer(self.runtime, FileLayer)
        if files is not None:
            yield _gauge("mediaproxy_cache_dir_used_bytes",
                         "Bytes of entries in the file cache's directory (the layer's own "
                         "accounting).", files.stats().get("bytes", 0))
            free = _free_bytes(str(files.store.root))
            if free is not None:
                yield _gauge("mediaproxy_cache_dir_free_bytes",
                             "Bytes free for unprivileged use on the file system of the file "
                             "cache's directory.", free)

    def _breakers(self):
        state = _gauge("mediaproxy_breaker_state",
                       "A circuit breaker's state: 0 closed, 1 half_open, 2 open.",
                       labels=["breaker"])
        for name, breaker in self.runtime.breakers().items():
            state.add_metric([name], BREAKER_STATES.get(breaker.state, 2))
        yield state


def _free_bytes(path: str) -> int | None:
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize
