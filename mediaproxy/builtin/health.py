"""
Built-in health indicators: the transform pool (reports its queue and memory budget; always
ok: a busy queue is load the budget answers with 503s, not a reason to leave the balancer), the
process's memory (always ok; reports the RSS so a dashboard can watch it) and, when Redis is
configured, every Redis node (a down node answers at once from its breaker).
"""

from __future__ import annotations

import attrs
import psutil
from twisted.internet.defer import Deferred

from .. import hookimpl
from ..cache.redis import RedisClient
from ..models import HealthStatus


@attrs.define
class TransformPoolHealth:
    runtime: object
    name: str = "transform_pool"

    def check(self) -> HealthStatus:
        rt = self.runtime
        budget = rt.admission
        mib = 1024 * 1024
        return HealthStatus(
            self.name, True,
            f"{rt.pending_transforms} pending (limit {rt.config.processing.queue_limit}), "
            f"{rt.pool_size} threads; memory budget {budget.reserved / mib:.1f} of "
            f"{budget.capacity / mib:.1f} MiB reserved by {budget.active}, "
            f"{budget.waiting} waiting")


@attrs.define
class MemoryHealth:
    name: str = "memory"

    def check(self) -> HealthStatus:
        rss = psutil.Process().memory_info().rss
        return HealthStatus(self.name, True, f"rss {rss // (1024 * 1024)} MiB")


@attrs.define
class RedisHealth:
    """Health indicator: PING every node (a down node answers at once from its breaker)."""

    client: RedisClient
    name: str = "redis"

    def check(self) -> Deferred:
        def status(results):
            down = [f"{label}: {detail}" for label, ok, detail in results if not ok]
            return HealthStatus(name=self.name, ok=not down,
                                detail="; ".join(down) or f"{len(results)} node(s) up")

        return self.client.ping().addCallback(status)


@hookimpl
def mediaproxy_health_indicators(runtime):
    indicators = [TransformPoolHealth(runtime), MemoryHealth()]
    if runtime.redis is not None:
        indicators.append(RedisHealth(runtime.redis))
    return indicators
