"""
Built-in health indicators (``mediaproxy_health_indicators``), run by the health snapshot
(:mod:`mediaproxy.monitoring.health`) every ``monitoring.health_interval``:

* ``backend`` (critical): a HEAD of ``monitoring.health_backend_probe`` through the
  pass-through client's agent, its status and latency
  (:class:`~mediaproxy.monitoring.indicators.BackendProbe`); off when the setting is empty.
* ``breakers`` (critical): the backend circuit breakers; one open is unhealthy (the proxy
  refuses that kind of request for now).
* ``transform_pool`` (critical only when the pool is not running): its queue, threads and
  memory budget. A busy queue is load the budget answers with 503s, not a reason to leave the
  balancer: it stays ok.
* ``memory``: the process's RSS beside the transform memory budget and the machine's
  available memory (always ok: figures for a dashboard).
* ``redis`` (not critical: degraded), when Redis is configured: every node's PING (a down node
  answers at once from its breaker).
* ``cache_dir`` (not critical: degraded), when the file layer is on: free space against the
  layer's own disk thresholds and whether a file can be created there
  (:func:`~mediaproxy.monitoring.indicators.disk_report`, in the layer's disk pool).
"""

from __future__ import annotations

from typing import Any

import attrs
import psutil
from twisted.internet.defer import Deferred

from .. import hookimpl
from ..cache.files.layer import FileLayer
from ..cache.layered import find_layer
from ..cache.redis import RedisClient
from ..models import HealthStatus
from ..monitoring.indicators import BackendProbe, disk_report, disk_status, write_probe
from ..runtime import Runtime

MIB = 1024 * 1024


@attrs.define
class TransformPoolHealth:
    runtime: Runtime
    name: str = "transform_pool"

    def check(self) -> HealthStatus:
        rt = self.runtime
        budget = rt.admission
        pool = rt.threadpool
        running = bool(pool.started) and not pool.joined
        data = {"running": running, "pending": rt.pending_transforms,
                "queue_limit": rt.config.processing.queue_limit, "threads": rt.pool_size,
                "busy_threads": len(pool.working),
                "memory_reserved_bytes": budget.reserved,
                "memory_capacity_bytes": budget.capacity, "admitted": budget.active,
                "waiting": budget.waiting}
        detail = (f"{rt.pending_transforms} pending (limit {rt.config.processing.queue_limit}), "
                  f"{rt.pool_size} threads; memory budget {budget.reserved / MIB:.1f} of "
                  f"{budget.capacity / MIB:.1f} MiB reserved by {budget.active}, "
                  f"{budget.waiting} waiting")
        if not running:
            return HealthStatus(self.name, False, "not running; " + detail, critical=True,
                                data=data)
        return HealthStatus(self.name, True, detail, data=data)


@attrs.define
class MemoryHealth:
    runtime: Any = None
    name: str = "memory"

    def check(self) -> HealthStatus:
        rss = psutil.Process().memory_info().rss
        machine = psutil.virtual_memory()
        data = {"rss_bytes": rss, "machine_total_bytes": machine.total,
                "machine_available_bytes": machine.available}
        detail = f"rss {rss // MIB} MiB"
        if self.runtime is not None:
            budget = self.runtime.admission
            data["transform_budget_bytes"] = budget.capacity
            data["transform_reserved_bytes"] = budget.reserved
            detail += (f"; transform budget {budget.reserved // MIB} of "
                       f"{budget.capacity // MIB} MiB reserved")
        detail += f"; machine {machine.available // MIB} MiB available"
        return HealthStatus(self.name, True, detail, data=data)


@attrs.define
class RedisHealth:
    """Health indicator: PING every node (a down node answers at once from its breaker).
    Not critical: Redis is an optional cache layer, so a node down makes the proxy
    degraded, not unhealthy."""

    client: RedisClient
    name: str = "redis"

    def check(self) -> Deferred:
        def status(results):
            nodes = {label: {"ok": ok, "detail": detail} for label, ok, detail in results}
            down = [f"{label}: {detail}" for label, ok, detail in results if not ok]
            return HealthStatus(name=self.name, ok=not down,
                                detail="; ".join(down) or f"{len(results)} node(s) up",
                                data={"mode": self.client.mode, "nodes": nodes})

        return self.client.ping().addCallback(status)


@attrs.define
class BreakersHealth:
    """Health indicator: the backend circuit breakers (critical when one is open)."""

    runtime: Any
    name: str = "breakers"

    def check(self) -> HealthStatus:
        states = {name: b.state for name, b in sorted(self.runtime.breakers().items())}
        opened = [name for name, state in states.items() if state == "open"]
        detail = ", ".join(f"{name} {state}" for name, state in states.items())
        return HealthStatus(self.name, not opened, detail, critical=True, data=states)


@attrs.define
class CacheDirHealth:
    """Health indicator: the file layer's directory (not critical: the file layer is an
    optional cache)."""

    layer: FileLayer
    directory: str
    probe: Any = write_probe   # the write test (a fake in tests that cannot make a disk fail)
    name: str = "cache_dir"

    def check(self) -> Deferred:
        layer = self.layer
        d = layer.pool.run(disk_report, self.directory, layer.disk_warning_percent,
                           layer.disk_critical_percent, self.probe)
        d.addCallback(lambda report: disk_status(self.name, report, layer.pressure))
        d.addErrback(lambda f: HealthStatus(self.name, False, f"{self.directory}: "
                                            f"{f.getErrorMessage()}",
                                            data={"path": self.directory}))
        return d


def backend_probe(runtime) -> BackendProbe | None:
    path = runtime.config.monitoring.health_backend_probe
    if not path:
        return None
    fetcher = runtime.fetcher
    return BackendProbe(runtime.reactor, runtime.upstream.agent, fetcher.url_for(path),
                        runtime.breakers)


@hookimpl
def mediaproxy_health_indicators(runtime):
    indicators = [backend_probe(runtime), BreakersHealth(runtime),
                  TransformPoolHealth(runtime), MemoryHealth(runtime)]
    if runtime.redis is not None:
        indicators.append(RedisHealth(runtime.redis))
    layer = find_layer(runtime, FileLayer)
    if layer is not None:
        indicators.append(CacheDirHealth(layer, runtime.config.cache.file.dir))
    return [i for i in indicators if i is not None]
