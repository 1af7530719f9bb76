"""
The file cache plugin: registers the file layer (:mod:`mediaproxy.cache.files`, on when
``cache.file.dir`` is set) and runs its disk pool and periodic cleanup.
"""

from __future__ import annotations

from twisted.application import service
from twisted.application.internet import TimerService
from twisted.internet.defer import inlineCallbacks

from .. import hookimpl
from ..cache.files.layer import FileLayer, file_layer
from ..cache.keys import stale_grace
from ..cache.layered import find_layer


class FileCacheService(service.Service):
    """Runs the layer's disk pool and its periodic cleanup (the first at start)."""

    name = "mediaproxy-filecache"  # type: ignore[assignment]  # Service.name is untyped None

    def __init__(self, layer: FileLayer, interval: float, reactor):
        self.layer = layer
        self.timer = TimerService(interval, layer.cleanup)
        self.timer.clock = reactor

    def startService(self):
        super().startService()
        self.layer.start()
        self.timer.startService()

    @inlineCallbacks
    def stopService(self):
        super().stopService()
        yield self.timer.stopService()
        self.layer.stop()


@hookimpl
def mediaproxy_cache_layers(runtime):
    layer = file_layer(runtime.config.cache.file, runtime.reactor,
                       grace=stale_grace(runtime.config.cache))
    return [layer] if layer is not None else []


@hookimpl
def mediaproxy_services(runtime):
    layer = find_layer(runtime, FileLayer)
    if layer is None:
        return []
    return [FileCacheService(layer, runtime.config.cache.file.cleanup_interval,
                             runtime.reactor)]
