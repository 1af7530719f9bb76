"""
Built-in health indicators: the transform pool (failing while its queue is full) and the
process's memory (always ok; reports the RSS so a dashboard can watch it).
"""

from __future__ import annotations

import attrs
import psutil

from .. import hookimpl
from ..models import HealthStatus


@attrs.define
class TransformPoolHealth:
    runtime: object
    name: str = "transform_pool"

    def check(self) -> HealthStatus:
        pending, limit = self.runtime.pending_transforms, self.runtime.config.processing.queue_limit
        return HealthStatus(self.name, pending < limit,
                            f"{pending} pending of {limit}, {self.runtime.pool_size} threads")


@attrs.define
class MemoryHealth:
    name: str = "memory"

    def check(self) -> HealthStatus:
        rss = psutil.Process().memory_info().rss
        return HealthStatus(self.name, True, f"rss {rss // (1024 * 1024)} MiB")


@hookimpl
def mediaproxy_health_indicators(runtime):
    return [TransformPoolHealth(runtime), MemoryHealth()]
