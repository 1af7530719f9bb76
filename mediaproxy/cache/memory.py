"""
The memory layer: a per-process LRU bounded in **bytes** of image data (cachetools), with a TTL.
Reads and writes are in-memory and fire their Deferreds synchronously.
"""

from __future__ import annotations

import time

import attrs
from cachetools import TLRUCache
from twisted.internet.defer import succeed

from ..models import CacheEntry


def _entry_size(entry: CacheEntry) -> int:
    return len(entry.body) + 256  # the body plus a rough constant for the entry's fields


@attrs.define
class MemoryLayer:
    """A cache layer in process memory, never holding more than ``max_bytes`` of entries."""

    max_bytes: int
    ttl: float = 86400.0
    max_item_bytes: int = 8 * 1024 * 1024
    clock: object = time.monotonic
    name: str = "memory"
    order: int = 10
    #: seen by this process only (see :meth:`LayeredCache.set`'s ``shared_only``)
    shared: bool = False
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    _cache: TLRUCache = attrs.field(init=False)

    def __attrs_post_init__(self):
        layer = self

        class _Cache(TLRUCache):
            def popitem(self):
                item = super().popitem()
                layer.evictions += 1
                return item

        ttl = self.ttl
        self._cache = _Cache(maxsize=max(self.max_bytes, 1), ttu=lambda k, v, now: now + ttl,
                             timer=self.clock, getsizeof=_entry_size)

    def get_now(self, key):
        """The entry or None, synchronously (the layered cache's fast path)."""
        entry = self._cache.get(key)
        if entry is None:
            self.misses += 1
        else:
            self.hits += 1
        return entry

    def get(self, key):
        return succeed(self.get_now(key))

    def set(self, key, entry):
        size = _entry_size(entry)
        if size <= min(self.max_item_bytes, self.max_bytes):
            self._cache[key] = entry
        else:  # too large to keep: never leave an older value behind under this key
            self._cache.pop(key, None)
        return succeed(None)

    def delete(self, key):
        self._cache.pop(key, None)
        return succeed(None)

    def purge(self, prefix: str):
        doomed = [key for key in list(self._cache.keys()) if key.startswith(prefix)]
        for key in doomed:
            self._cache.pop(key, None)
        return succeed(len(doomed))

    @property
    def current_bytes(self) -> int:
        return int(self._cache.currsize)

    def stats(self) -> dict:
        return {"hits": self.hits, "misses": self.misses, "evictions": self.evictions,
                "errors": 0, "bytes": self.current_bytes, "items": len(self._cache),
                "max_bytes": self.max_bytes}
