"""
The S3 layer: a :class:`~mediaproxy.cache.layered.CacheLayer` on an S3-compatible object store,
shared by every node (``order`` 40: read after memory, Redis and the local file layer).

* Object key: ``{prefix}{cache key with ':' as '/'}``, e.g.
  ``mediaproxy/public/3f2a.../9b1c...``: a tenant, and a source within it, is a key prefix, so
  purging one is a listing of that prefix and batched deletes.
* Object body: an :mod:`~mediaproxy.cache.entrycodec` record (checksummed: a damaged object is
  a miss, never served); metadata ``x-amz-meta-mp-expires`` (Unix seconds) and
  ``x-amz-meta-mp-created``.
* **Nothing partial is ever visible**: an S3 PUT is atomic (the object appears whole, with its
  metadata, when the PUT succeeds, or not at all; a concurrent PUT of the same key wins as a
  whole), and the record's checksum refuses anything else.
* TTL: an entry is fresh ``ttl`` seconds after its result was *rendered*
  (``entry.created_at``; a back-fill never extends it), as the built-in layers' entries are
  (``fresh_ttl``: the pipeline reads it through ``mediaproxy.cache.keys.fresh_lifetime``);
  past it the pipeline serves it stale while it renders a new one
  (``cache.stale_while_revalidate``) or when the backend fails (``cache.stale_if_error``).
  The object is kept ``stale_grace`` seconds longer for that (set by the core from those two
  settings at start), then expires: ``mp-expires`` is ``created + ttl + stale_grace``. Every
  read checks the metadata; a bucket lifecycle rule (see the README) deletes expired objects
  for good.
* Errors (store down, timeouts, 5xx, a corrupt object) are counted and fail the call, which
  :class:`~mediaproxy.cache.layered.LayeredCache` logs and skips: the client never sees one.
* ``keeps_sources``: the source cache keeps originals here too (see
  :mod:`mediaproxy.builtin.sourcecache`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from xml.etree import ElementTree

import attrs
from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from mediaproxy import CacheEntry, CorruptEntry, decode_entry, encode_entry

from .client import S3Client

log = Logger(namespace="mediaproxy.s3")

EXPIRES = "mp-expires"
CREATED = "mp-created"
_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


def parse_listing(xml: bytes) -> tuple[list[str], str | None]:
    """The keys of one ListObjectsV2 page and the continuation token (None: the last page)."""
    root = ElementTree.fromstring(xml)
    ns = _NS if root.tag.startswith(_NS) else ""
    keys = [el.text or "" for el in root.iter(f"{ns}Key")]
    truncated = (root.findtext(f"{ns}IsTruncated") or "").lower() == "true"
    token = root.findtext(f"{ns}NextContinuationToken") if truncated else None
    return keys, token or None


@attrs.define(eq=False)
class S3Layer:
    client: S3Client
    ttl: float
    prefix: str = "mediaproxy/"
    max_item_bytes: int = 16 * 1024 * 1024
    keeps_sources: bool = True
    reactor: Any = None
    threadpool: Any = None
    offload_bytes: int = 256 * 1024
    clock: Callable[[], float] = time.time
    #: seconds an object is kept past ``ttl`` so it can be served stale (set by the core:
    #: :meth:`mediaproxy.cache.layered.LayeredCache.keep_stale`)
    stale_grace: float = 0.0
    name: str = "s3"
    order: int = 40
    shared: bool = True
    hits: int = 0
    misses: int = 0
    expired: int = 0
    errors: int = 0
    corrupt: int = 0
    stores: int = 0
    stored_bytes: int = 0
    too_large: int = 0
    purged: int = 0

    @property
    def fresh_ttl(self) -> float:
        """Seconds an entry is fresh: ``ttl``, counted from its rendering."""
        return self.ttl

    def object_key(self, key: str) -> str:
        return self.prefix + key.replace(":", "/")

    # -- read ---------------------------------------------------------------------------------

    def get(self, key: str) -> Deferred:
        d = self.client.get(self.object_key(key), self.max_item_bytes + 64 * 1024)
        d.addCallbacks(self._got, self._failed, callbackArgs=(key,))
        return d

    def _got(self, answer, key: str):
        if answer.status == 404:
            self.misses += 1
            return None
        try:
            expires = float(answer.headers.get(f"x-amz-meta-{EXPIRES}", ""))
        except ValueError:
            expires = 0.0        # no (or a bad) expiry: not ours to serve
        if self.clock() >= expires:
            self.expired += 1
            self.misses += 1
            return None
        d = self._run(decode_entry, answer.body)
        d.addCallbacks(self._hit, self._corrupt, errbackArgs=(key,))
        return d

    def _hit(self, entry: CacheEntry) -> CacheEntry:
        self.hits += 1
        return entry

    def _corrupt(self, failure, key: str):
        failure.trap(CorruptEntry)
        self.corrupt += 1
        self.misses += 1
        log.warn("discarding corrupt S3 object for {key}: {error}", key=key,
                 error=failure.getErrorMessage())
        self.client.delete(self.object_key(key)).addErrback(lambda _: None)
        return None

    # -- write --------------------------------------------------------------------------------

    def set(self, key: str, entry: CacheEntry) -> Deferred:
        expires = entry.created_at + self.ttl + self.stale_grace
        if len(entry.body) > self.max_item_bytes:
            self.too_large += 1
            return self.delete(key)      # never leave an older result in place of this one
        if self.clock() >= expires:
            return self.delete(key)
        d = self._run(encode_entry, entry, len(entry.body))
        d.addCallback(self._store, key, entry, expires)
        d.addErrback(self._failed)
        return d

    def _store(self, data: bytes, key: str, entry: CacheEntry, expires: float) -> Deferred:
        metadata = {EXPIRES: f"{expires:.3f}", CREATED: f"{entry.created_at:.3f}"}

        def stored(_):
            self.stores += 1
            self.stored_bytes += len(data)

        return self.client.put(self.object_key(key), data, metadata).addCallback(stored)

    def delete(self, key: str) -> Deferred:
        return self.client.delete(self.object_key(key)).addCallbacks(
            lambda _: None, self._failed)

    # -- purge --------------------------------------------------------------------------------

    def purge(self, prefix: str) -> Deferred:
        """Delete every object under ``prefix`` (a tenant, a source, or ``""``: all of this
        deployment's), a listing page (1000 keys) and one DeleteObjects call at a time."""
        d = self._purge(self.object_key(prefix))
        d.addErrback(self._failed)
        return d

    @inlineCallbacks
    def _purge(self, prefix: str):
        count, token = 0, None
        while True:
            page = yield self.client.list_page(prefix, token)
            # a page of 1000 keys is ~200 KB of XML: parsed in the pool, off the reactor
            keys, token = yield (deferToThreadPool(self.reactor, self.threadpool,
                                                   parse_listing, page.body)
                                 if self.threadpool is not None
                                 else maybeDeferred(parse_listing, page.body))
            if keys:
                yield self.client.delete_many(keys)
                count += len(keys)
            if token is None:
                break
        self.purged += count
        log.info("purged {count} S3 objects under {prefix!r}", count=count, prefix=prefix)
        return count

    # -- the rest -----------------------------------------------------------------------------

    def stats(self) -> dict:
        return {"hits": self.hits, "misses": self.misses, "expired": self.expired,
                "errors": self.errors, "corrupt": self.corrupt, "stores": self.stores,
                "stored_bytes": self.stored_bytes, "too_large": self.too_large,
                "purged": self.purged, "healthy": self.client.healthy}

    def _failed(self, failure):
        self.errors += 1
        return failure

    def _run(self, fn, arg, size: int | None = None) -> Deferred:
        size = len(arg) if size is None else size
        if self.threadpool is not None and size > self.offload_bytes:
            return deferToThreadPool(self.reactor, self.threadpool, fn, arg)
        return maybeDeferred(fn, arg)
