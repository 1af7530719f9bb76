"""
The source cache: originals fetched from the backend are kept (in process memory, bounded in
bytes, for ``cache.source.ttl`` seconds; and in the file layer when there is one, for
``cache.source.file_ttl``) so the eight sizes of a srcset fetch their photo once, across
restarts too, and concurrent fetches of one original share one backend request.

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
from ..cache.layered import find_layer
from ..cache.keys import source_prefix
from ..models import CacheEntry, SourceError, SourceImage

#: Statuses of a failed fetch worth remembering: the source is missing or the backend broken.
#: Timeouts and size limits are not remembered (the next try may well succeed).
NEGATIVE_STATUSES = (404, 502)


def source_key(image_request) -> str:
    """Where an original is kept in the file layer: under its source's prefix, so purging the
    source (or its tenant) removes the original with its variants."""
    return source_prefix(image_request.tenant, image_request.source_path) + "source"


@attrs.define(eq=False)   # registered with pluggy: identity, and hashable
class SourceCache:
    runtime: object
    max_bytes: int
    ttl: float
    negative_ttl: float = 60.0
    clock: object = time.monotonic
    hits: int = 0
    joined: int = 0
    negative_hits: int = 0
    disk_hits: int = 0
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
        disk = find_layer(self.runtime, "file")
        if disk is None:
            return None
        return self._through_disk(disk, image_request, request, runtime)

    def _through_disk(self, disk, image_request, request, runtime) -> Deferred:
        """With a file layer: originals live there too (survive restarts, shared by the
        processes of a host). Read it; on a miss, fetch with the other fetch plugins and keep
        the original on disk."""
        key = source_key(image_request)
        max_age = self.runtime.config.cache.source.file_ttl

        def found(entry):
            if entry is not None and time.time() - entry.created_at <= max_age:
                self.disk_hits += 1
                runtime.emit("source.hit", correlation_id=request.correlation_id, layer="file")
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
        d.addErrback(lambda f: None)   # a broken disk layer is a miss
        return d.addCallback(found)

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
        return {"hits": self.hits, "disk_hits": self.disk_hits, "joined": self.joined,
                "negative_hits": self.negative_hits,
                "negative_items": len(self._negative), "items": len(self._cache),
                "bytes": int(self._cache.currsize), "max_bytes": self.max_bytes}


@hookimpl
def mediaproxy_configure(runtime):
    conf = runtime.config.cache.source
    if (conf.memory_bytes > 0 or runtime.config.cache.negative_ttl > 0
            or runtime.config.cache.file.dir):
        runtime.pm.register(SourceCache(runtime, conf.memory_bytes, conf.ttl,
                                        runtime.config.cache.negative_ttl),
                            "mediaproxy.builtin.sourcecache.memory")
