"""The memory layer as a plugin: on unless ``cache.memory.enabled`` is false or its size 0
(the layer itself is :mod:`mediaproxy.cache.memory`)."""

from __future__ import annotations

from .. import hookimpl
from ..cache.keys import stale_grace
from ..cache.memory import MemoryLayer


@hookimpl
def mediaproxy_cache_layers(runtime):
    conf = runtime.config.cache.memory
    if not conf.enabled or conf.max_bytes <= 0:
        return []
    retain = conf.ttl + stale_grace(runtime.config.cache)
    return [MemoryLayer(max_bytes=conf.max_bytes, ttl=retain,
                        max_item_bytes=conf.max_item_bytes)]
