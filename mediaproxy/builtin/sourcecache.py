"""
The source cache: originals fetched from the backend are kept (in process memory, bounded in
bytes, for ``cache.source.ttl`` seconds; and in the file layer when there is one, for
``cache.source.file_ttl``) so the eight sizes of a srcset fetch their photo once, across
restarts too, and concurrent fetches of one original share one backend request.

It is also the negative cache: a source the backend answered 404 for (or another 4xx) is
remembered for ``cache.negative_ttl`` seconds (a minute), and asked for again only after that, so
a page full of broken image links does not send one backend request per hit. A source whose
fetch failed on the backend's side (a 5xx, or the backend unreachable: a 502 to the client) is
remembered only for ``cache.negative_error_ttl`` seconds (one), never longer than
``cache.stale_if_error``: long enough that a burst of hits on a failing backend costs it one
request, short enough that the image works again about a second after the backend does. (The
image circuit breaker protects a failing backend beyond that.) A 503 (breaker open, backend
busy) or a timeout is not remembered at all.

Two hook implementations on one object: a ``tryfirst`` fetch that answers from the cache (or
joins a fetch under way), and a wrapper that records every other fetch and keeps its result.
"""

from __future__ import annotations

import time

import attrs
from cachetools import TLRUCache
from twisted.internet.defer import Deferred, fail, succeed

from .. import hookimpl
from ..cache.layered import LayeredCache
from ..cache.keys import source_prefix
from ..models import CacheEntry, SourceError, SourceImage
from ..runtime import Runtime

#: Statuses of a failed fetch worth remembering: the source is missing (404, for
#: ``negative_ttl``) or the backend broken (502, for ``error_ttl``). Timeouts, size limits and
#: refusals (503) are not remembered (the next try may well succeed).
NEGATIVE_STATUSES = (404, 502)


def source_key(image_request) -> str:
    """Where an original is kept in the file layer: under its source's prefix, so purging the
    source (or its tenant) removes the original with its variants."""
    return source_prefix(image_request.tenant, image_request.source_path) + "source"


@attrs.define(eq=False)   # registered with pluggy: identity, and hashable
class SourceCache:
    runtime: Runtime
    max_bytes: int
    ttl: float
    negative_ttl: float = 60.0
    clock: object = time.monotonic
    error_ttl: float = 1.0          #: seconds a 502 is remembered (already capped by the caller)
    hits: int = 0
    joined: int = 0
    negative_hits: int = 0
    disk_hits: int = 0
    _cache: TLRUCache = attrs.field(init=False)
    _negative: TLRUCache = attrs.field(init=False)
    _inflight: dict = attrs.field(factory=dict)
    _negative_answer: object = None   # the Deferred of the last negative hit, for record_fetch
    _source_layers: list | None = None  # [the LayeredCache of the layers keeping originals]

    def __attrs_post_init__(self):
        ttl = self.ttl
        self._cache = TLRUCache(maxsize=max(self.max_bytes, 1), ttu=lambda k, v, now: now + ttl,
                                timer=self.clock, getsizeof=lambda source: len(source.body) + 256)
        self._negative = TLRUCache(maxsize=10_000,
                                   ttu=lambda k, v, now: now + self._negative_ttl(v[0]),
                                   timer=self.clock)

    def _negative_ttl(self, status: int) -> float:
        """How long a failed fetch answered with ``status`` is remembered (0: not at all)."""
        if status == 404:
            return self.negative_ttl
        if status == 502:
            return self.error_ttl
        return 0.0

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
        failed = self._negative.get(path)
        if failed is not None:
            self.negative_hits += 1
            runtime.emit("source.negative_hit", correlation_id=request.correlation_id)
            answer = self._negative_answer = fail(SourceError(*failed))
            return answer
        waiters = self._inflight.get(path)
        if waiters is not None:
            self.joined += 1
            d = Deferred()
            waiters.append(d)
            return d
        disk = self._stores()
        if disk is None:
            return None
        return self._through_disk(disk, image_request, request, runtime)

    def _stores(self):
        """The layers that keep originals, as one :class:`LayeredCache` (read in order, a
        hit back-filling the faster ones): the file layer, and any layer that says it keeps
        them (``keeps_sources = True``: the S3 plugin's shared store); None without any.
        Found once (the layers are fixed at start)."""
        if self._source_layers is None:
            layers = [layer for layer in getattr(getattr(self.runtime, "cache", None),
                                                  "layers", ())
                      if layer.name == "file" or getattr(layer, "keeps_sources", False)]
            # the results' throttle: a broken layer warns once a period for both
            self._source_layers = [LayeredCache(layers, warned=self.runtime.cache._warned)
                                   ] if layers else []
        return self._source_layers[0] if self._source_layers else None

    def _through_disk(self, disk, image_request, request, runtime) -> Deferred:
        """With a file layer (or a shared store): originals live there too (survive
        restarts, shared by the processes of a host, or by the nodes). Read it; on a miss,
        fetch with the other fetch plugins and keep the original there."""
        key = source_key(image_request)
        max_age = self.runtime.config.cache.source.file_ttl

        def found(hit):
            entry, layer = hit if hit is not None else (None, None)
            if entry is not None and time.time() - entry.created_at <= max_age:
                self.disk_hits += 1
                runtime.emit("source.hit", correlation_id=request.correlation_id, layer=layer)
                return SourceImage(entry.body, entry.content_type, entry.source_etag,
                                   entry.source_last_modified)
            others = runtime.pm.subset_hook_caller("mediaproxy_fetch_source",
                                                   remove_plugins=[self])
            fetching = others(image_request=image_request, request=request, runtime=runtime)
            if fetching is None:
                raise SourceError(404, "source_not_found", "no plugin serves this source")
            return fetching.addCallback(store)

        def store(source):
            if not source.not_modified:
                now = time.time()
                entry = CacheEntry(body=source.body,
                                   content_type=source.content_type or "application/octet-stream",
                                   created_at=now, etag="", last_modified=source.last_modified
                                   or "", source_etag=source.etag,
                                   source_last_modified=source.last_modified)
                disk.set(key, entry).addErrback(lambda f: None)  # best effort, never waited for
            return source

        d = disk.get(key)
        d.addErrback(lambda f: None)   # a broken layer is a miss (LayeredCache skips it)
        return d.addCallback(found)

    @hookimpl(wrapper=True, specname="mediaproxy_fetch_source")
    def record_fetch(self, image_request, request, runtime):
        fetching = yield
        path = image_request.source_path
        remembered, self._negative_answer = self._negative_answer, None
        if (fetching is None or fetching is remembered or image_request.validators
                or path in self._inflight or path in self._cache):
            # Nobody fetches it, or it was answered from here. A remembered failure in
            # particular is not remembered again: each hit would start its time afresh, and a
            # source asked for more often than the TTL stayed failed for good after the backend
            # recovered.
            return fetching
        waiters = self._inflight[path] = []

        def done(result):
            del self._inflight[path]
            if isinstance(result, SourceImage):
                self.keep(path, result)
            elif (result.check(SourceError) and result.value.status in NEGATIVE_STATUSES
                  and self._negative_ttl(result.value.status) > 0):
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
        return {"hits": self.hits, "disk_hits": self.disk_hits, "joined": self.joined,
                "negative_hits": self.negative_hits,
                "negative_items": len(self._negative), "items": len(self._cache),
                "bytes": int(self._cache.currsize), "max_bytes": self.max_bytes}


@hookimpl
def mediaproxy_configure(runtime):
    cache = runtime.config.cache
    conf = cache.source
    error_ttl = min(cache.negative_error_ttl, cache.stale_if_error)
    if conf.memory_bytes > 0 or cache.negative_ttl > 0 or error_ttl > 0 or cache.file.dir:
        runtime.pm.register(SourceCache(runtime, conf.memory_bytes, conf.ttl,
                                        cache.negative_ttl, error_ttl=error_ttl),
                            "mediaproxy.builtin.sourcecache.memory")
