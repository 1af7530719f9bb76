"""The decoded-image cache's series (:mod:`mediaproxy.imaging.decoded`, the runtime's
``decoded``): read from its counts at scrape time, as the pool's threads move them without
the reactor (no event per lookup)."""

from __future__ import annotations

from .. import hookimpl
from ..imaging.decoded import DecodedCache


@hookimpl
def mediaproxy_metrics_collectors(runtime):
    return [DecodedCacheCollector(runtime)]


class DecodedCacheCollector:
    """``mediaproxy_decoded_cache_lookups_total{result}``,
    ``mediaproxy_decoded_cache_evictions_total``, ``mediaproxy_decoded_cache_bytes`` and
    ``mediaproxy_decoded_cache_capacity_bytes``."""

    def __init__(self, runtime):
        self.runtime = runtime

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        cache = self.runtime.decoded or DecodedCache(0)
        lookups = CounterMetricFamily(
            "mediaproxy_decoded_cache_lookups", "Decoded-image cache lookups of still renders: "
            "hit (no decode) or miss (the source was decoded).", labels=["result"])
        lookups.add_metric(["hit"], cache.hits)
        lookups.add_metric(["miss"], cache.misses)
        yield lookups
        yield CounterMetricFamily(
            "mediaproxy_decoded_cache_evictions", "Decoded images dropped to make room.",
            value=cache.evictions)
        yield GaugeMetricFamily(
            "mediaproxy_decoded_cache_bytes", "Bytes the decoded-image cache holds (pixels and "
            "the sources' bytes).", value=cache.bytes)
        yield GaugeMetricFamily(
            "mediaproxy_decoded_cache_capacity_bytes", "The decoded-image cache's capacity, "
            "taken out of the transform memory budget (0: off).", value=cache.capacity)
