"""
The source cache: originals fetched from the backend are kept (in process memory, bounded in
bytes, for ``cache.source.ttl`` seconds) so the eight sizes of a srcset fetch their photo once,
and concurrent fetches of one original share one backend request.

It is also the negative cache: a source the backend answered 404 or 5xx for is remembered for
``cache.negative_ttl`` seconds, and asked for again only after that, so a page full of broken
image links does not send one backend request per hit.

Two hook implementations on one object: a ``tryfirst`` fetch that answers from the cache (or
joins a fetch under way), and a wrapper that records every other fetch and keeps its result.
"""

from __future__ import annotations

import time

import attrs
from cachetools import TLRUCache
from twisted.internet.defer import Deferred, fail, succeed

from .. import hookimpl
from ..models import SourceError, SourceImage

#: Statuses of a failed fetch worth remembering: the source is missing or the backend broken.
#: Timeouts and size limits are not remembered (the next try may well succeed).
NEGATIVE_STATUSES = (404, 502)


@attrs.define
class SourceCache:
    runtime: object
    max_bytes: int
    ttl: float
    negative_ttl: float = 60.0
    clock: object = time.monotonic
    hits: int = 0
    joined: int = 0
    negative_hits: int = 0
    _cache: TLRUCache = attrs.field(init=False)
    _negative: TLRUCache = attrs.field(init=False)
    _inflight: dict = attrs.field(factory=dict)

    def __attrs_post_init__(self):
        ttl, negative_ttl = self.ttl, self.negative_ttl
        self._cache = TLRUCache(maxsize=max(self.max_bytes, 1), ttu=lambda k, v, now: now + ttl,
                                timer=self.clock, getsizeof=lambda source: len(source.body) + 256)
        self._negative = TLRUCache(maxsize=10_000, ttu=lambda k, v, now: now + negative_ttl,
                                   timer=self.clock)

    @hookimpl(tryfirst=True)
    def mediaproxy_fetch_source(self, image_request, request, runtime):
        if image_request.validators:
            return None  # a revalidation must ask the backend
        path = image_request.source_path
        source = self._cache.get(path)
        if source is not None:
            self.hits += 1
            runtime.emit("source.hit", correlation_id=request.correlation_id)
            return succeed(source)
        failed = self._negative.get(path) if self.negative_ttl > 0 else None
        if failed is not None:
            self.negative_hits += 1
            runtime.emit("source.negative_hit", correlation_id=request.correlation_id)
            return fail(SourceError(*failed))
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
        if (fetching is None or image_request.validators or path in self._inflight
                or path in self._cache):
            return fetching  # nobody fetches it, or it was answered from here
        waiters = self._inflight[path] = []

        def done(result):
            del self._inflight[path]
            if isinstance(result, SourceImage):
                self.keep(path, result)
            elif (self.negative_ttl > 0 and result.check(SourceError)
                  and result.value.status in NEGATIVE_STATUSES):
                error = result.value
                self._negative[path] = (error.status, error.error, error.message)
            for d in waiters:
                d.callback(result) if isinstance(result, SourceImage) else d.errback(result)
            return result

        return fetching.addBoth(done)

    def keep(self, path: str, source: SourceImage) -> None:
        if self.max_bytes > 0 and len(source.body) + 256 <= self.max_bytes:
            self._cache[path] = source

    def forget_where(self, covers) -> int:
        """Drop every original (and remembered failure) whose path ``covers(path)`` accepts;
        return how many originals went."""
        doomed = [path for path in list(self._cache.keys()) if covers(path)]
        for path in doomed:
            self._cache.pop(path, None)
        for path in [p for p in list(self._negative.keys()) if covers(p)]:
            self._negative.pop(path, None)
        return len(doomed)

    def stats(self) -> dict:
        return {"hits": self.hits, "joined": self.joined, "negative_hits": self.negative_hits,
                "negative_items": len(self._negative), "items": len(self._cache),
                "bytes": int(self._cache.currsize), "max_bytes": self.max_bytes}


@hookimpl
def mediaproxy_configure(runtime):
    conf = runtime.config.cache.source
    if conf.memory_bytes > 0 or runtime.config.cache.negative_ttl > 0:
        runtime.pm.register(SourceCache(runtime, conf.memory_bytes, conf.ttl,
                                        runtime.config.cache.negative_ttl),
                            "mediaproxy.builtin.sourcecache.memory")
