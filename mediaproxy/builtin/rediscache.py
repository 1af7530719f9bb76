"""The Redis layer as a plugin: on when Redis is configured (``runtime.redis``), with a
periodic refresh of its server-side sizes (the layer itself is :mod:`mediaproxy.cache.redislayer`)."""

from __future__ import annotations

from twisted.application.internet import TimerService

from .. import hookimpl
from ..cache.keys import stale_grace
from ..cache.layered import find_layer
from ..cache.redislayer import STATS_INTERVAL, RedisLayer


@hookimpl
def mediaproxy_cache_layers(runtime):
    client = runtime.redis
    if client is None:
        return []
    conf = runtime.config.cache.redis
    return [RedisLayer(client, ttl=conf.ttl + stale_grace(runtime.config.cache),
                       key_prefix=conf.key_prefix,
                       max_item_bytes=conf.max_item_bytes, reactor=runtime.reactor,
                       threadpool=runtime.threadpool)]


@hookimpl
def mediaproxy_services(runtime):
    layer = find_layer(runtime, RedisLayer)
    if layer is None:
        return []
    stats = TimerService(STATS_INTERVAL, layer.refresh)
    stats.clock = runtime.reactor
    return [stats]

