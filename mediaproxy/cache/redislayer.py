"""
The Redis layer: results shared by every node, through the process's one Redis connection
(:mod:`mediaproxy.cache.redis`). On when ``cache.redis.url`` (or ``shards``, or ``sentinels``) is
set.

* Key: ``{cache.redis.key_prefix}r:{cache key}``; value: an :mod:`~mediaproxy.cache.entrycodec`
  record (binary-safe, checksummed). A record that fails its checks is deleted and counted as
  a miss and a corrupt read.
* **Every key is written with a TTL** (``SET ... PX``, ``cache.redis.ttl``); nothing here
  writes a key without one.
* Results larger than ``cache.redis.max_item_bytes`` are not stored (and an older value
  under that key is deleted, so it is never served in place of the new one).
* ``purge(prefix)`` is ``SCAN MATCH`` + ``DEL`` batch by batch on every shard.
* While Redis is down every call fails at once (the client's breaker, see
  :class:`~mediaproxy.cache.redis.RedisNode`): :class:`~mediaproxy.cache.layered.LayeredCache` counts
  and skips the layer, and it is used again as soon as Redis answers.

Records larger than ``offload_bytes`` are encoded and checked in the transform thread pool,
so hashing a large body never holds the reactor.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from ..logs import Throttle
from ..models import CacheEntry
from . import entrycodec
from .redis import RedisClient, glob_escape

log = Logger(namespace="mediaproxy.cache.redis")
#: Corrupt entries (a bad writer, a flaky network) may show on every read: one warning per 10 s.
_warnings = Throttle(10.0)

#: Seconds between two refreshes of the server-side sizes shown by ``stats()``.
STATS_INTERVAL = 60.0


@attrs.define(eq=False)
class RedisLayer:
    """A :class:`~mediaproxy.cache.layered.CacheLayer` in Redis, shared by every node."""

    client: RedisClient
    ttl: float
    key_prefix: str = "mediaproxy:"
    max_item_bytes: int = 16 * 1024 * 1024
    reactor: Any = None
    threadpool: Any = None
    offload_bytes: int = 1024 * 1024
    name: str = "redis"
    order: int = 20
    hits: int = 0
    misses: int = 0
    errors: int = 0
    corrupt: int = 0
    stores: int = 0
    stored_bytes: int = 0
    too_large: int = 0
    _server: dict = attrs.field(factory=dict)

    def redis_key(self, key: str) -> str:
        return f"{self.key_prefix}r:{key}"

    def get(self, key: str) -> Deferred:
        d = self.client.get(self.redis_key(key))
        d.addCallbacks(self._got, self._failed, callbackArgs=(key,))
        return d

    def _got(self, data: bytes | None, key: str):
        if data is None:
            self.misses += 1
            return None
        d = self._run(entrycodec.decode, data, len(data))
        d.addCallbacks(self._hit, self._corrupt, errbackArgs=(key,))
        return d

    def _hit(self, entry: CacheEntry) -> CacheEntry:
        self.hits += 1
        return entry

    def _corrupt(self, failure, key: str):
        failure.trap(entrycodec.CorruptEntry)
        self.corrupt += 1
        self.misses += 1
        _warnings.warn(log, "corrupt", "discarding corrupt Redis entry {key}: {error}",
                       key=key, error=failure.getErrorMessage())
        self.client.delete(self.redis_key(key)).addErrback(lambda _: None)
        return None

    def set(self, key: str, entry: CacheEntry) -> Deferred:
        if len(entry.body) > self.max_item_bytes:
            self.too_large += 1
            return self.delete(key)
        d = self._run(entrycodec.encode, entry, len(entry.body))
        d.addCallback(self._store, key)
        d.addErrback(self._failed)
        return d

    def _store(self, data: bytes, key: str) -> Deferred:
        def stored(_):
            self.stores += 1
            self.stored_bytes += len(data)

        return self.client.set(self.redis_key(key), data, self.ttl).addCallback(stored)

    def delete(self, key: str) -> Deferred:
        return self.client.delete(self.redis_key(key)).addCallbacks(
            lambda _: None, self._failed)

    def purge(self, prefix: str) -> Deferred:
        pattern = glob_escape(self.redis_key(prefix)) + "*"
        d = self.client.delete_matching(pattern)
        d.addCallback(self._purged, prefix)
        d.addErrback(self._failed)
        return d

    def _purged(self, count: int, prefix: str) -> int:
        log.info("purged {count} Redis entries under {prefix!r}", count=count, prefix=prefix)
        return count

    def refresh(self) -> Deferred:
        """Fetch the server-side sizes shown by :meth:`stats`; never fails."""
        d = self.client.server_stats()
        d.addCallback(self._server.update)
        d.addErrback(lambda f: log.debug("Redis stats unavailable: {error}",
                                         error=f.getErrorMessage()))
        return d

    def stats(self) -> dict:
        """Counts of this process; ``bytes``/``items``/``evictions`` are the servers' own
        (``used_memory``, ``DBSIZE``, ``evicted_keys``: every key, not only results), as of
        the last :meth:`refresh`."""
        return {"hits": self.hits, "misses": self.misses, "errors": self.errors,
                "corrupt": self.corrupt, "stores": self.stores,
                "stored_bytes": self.stored_bytes, "too_large": self.too_large,
                "evictions": self._server.get("evicted_keys", 0),
                "bytes": self._server.get("used_memory", 0),
                "items": self._server.get("keys", 0), "healthy": self.client.healthy}

    def _failed(self, failure):
        self.errors += 1
        return failure

    def _run(self, fn, arg, size: int) -> Deferred:
        if self.threadpool is not None and size > self.offload_bytes:
            return deferToThreadPool(self.reactor, self.threadpool, fn, arg)
        return maybeDeferred(fn, arg)
