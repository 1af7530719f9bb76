"""
The source cache: originals fetched from the backend are kept (in process memory, bounded in
bytes, for ``cache.source.ttl`` seconds) so the eight sizes of a srcset fetch their photo once,
and concurrent fetches of one original share one backend request.

Two hook implementations on one object: a ``tryfirst`` fetch that answers from the cache (or
joins a fetch under way), and a wrapper that records every other fetch and keeps its result.
"""

from __future__ import annotations

import time

import attrs
from cachetools import TLRUCache
from twisted.internet.defer import Deferred, succeed

from .. import hookimpl
from ..models import SourceImage


@attrs.define
class SourceCache:
    runtime: object
    max_bytes: int
    ttl: float
    clock: object = time.monotonic
    hits: int = 0
    joined: int = 0
    _cache: TLRUCache = attrs.field(init=False)
    _inflight: dict = attrs.field(factory=dict)

    def __attrs_post_init__(self):
        ttl = self.ttl
        self._cache = TLRUCache(maxsize=max(self.max_bytes, 1), ttu=lambda k, v, now: now + ttl,
                                timer=self.clock, getsizeof=lambda source: len(source.body) + 256)

    @hookimpl(tryfirst=True)
    def mediaproxy_fetch_source(self, image_request, request, runtime):
        path = image_request.source_path
        source = self._cache.get(path)
        if source is not None:
            self.hits += 1
            runtime.emit("source.hit", correlation_id=request.correlation_id)
            return succeed(source)
        waiters = self._inflight.get(path)
        if waiters is not None:
            self.joined += 1
            d = Deferred()
            waiters.append(d)
            return d
        return None

    @hookimpl(wrapper=True, specname="mediaproxy_fetch_source")
    def record_fetch(self, image_request, request, runtime):
        fetching = yield
        path = image_request.source_path
        if fetching is None or path in self._inflight or path in self._cache:
            return fetching  # nobody fetches it, or it was answered from here
        waiters = self._inflight[path] = []

        def done(result):
            del self._inflight[path]
            if isinstance(result, SourceImage):
                self.keep(path, result)
            for d in waiters:
                d.callback(result) if isinstance(result, SourceImage) else d.errback(result)
            return result

        return fetching.addBoth(done)

    def keep(self, path: str, source: SourceImage) -> None:
        if len(source.body) + 256 <= self.max_bytes:
            self._cache[path] = source

    def forget(self, prefix: str = "") -> int:
        doomed = [path for path in list(self._cache.keys()) if path.startswith(prefix)]
        for path in doomed:
            self._cache.pop(path, None)
        return len(doomed)

    def stats(self) -> dict:
        return {"hits": self.hits, "joined": self.joined, "items": len(self._cache),
                "bytes": int(self._cache.currsize), "max_bytes": self.max_bytes}


@hookimpl
def mediaproxy_configure(runtime):
    conf = runtime.config.cache.source
    if conf.memory_bytes > 0:
        runtime.pm.register(SourceCache(runtime, conf.memory_bytes, conf.ttl),
                            "mediaproxy.builtin.sourcecache.memory")
