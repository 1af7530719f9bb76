"""
The memory layer: a per-process LRU bounded in **bytes** of image data, with a TTL.
Reads and writes are in-memory and fire their Deferreds synchronously.

An entry keeps the time it expires (stored at plus ``ttl``, on ``clock``): a read past it is a
miss and gives the entry's bytes back. Nothing else walks the entries for expiry (cachetools'
TLRUCache did, on every read and write: a memory hit's largest cost after the HTTP work); an
expired entry nobody reads is dropped as the least recently used when room is needed, so the
byte bound holds either way.
"""

from __future__ import annotations

import time
from collections import OrderedDict

import attrs
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
    #: key -> (expires at, size, entry), least recently used first
    _entries: OrderedDict = attrs.field(init=False, factory=OrderedDict)
    _bytes: int = attrs.field(init=False, default=0)

    def get_now(self, key):
        """The entry or None, synchronously (the layered cache's fast path)."""
        found = self._entries.get(key)
        if found is not None:
            if self.clock() < found[0]:
                self._entries.move_to_end(key)
                self.hits += 1
                return found[2]
            del self._entries[key]   # expired
            self._bytes -= found[1]
        self.misses += 1
        return None

    def get(self, key):
        return succeed(self.get_now(key))

    def set(self, key, entry):
        self._drop(key)   # never leave an older value behind under this key
        size = _entry_size(entry)
        if size <= min(self.max_item_bytes, self.max_bytes):
            self._entries[key] = (self.clock() + self.ttl, size, entry)
            self._bytes += size
            while self._bytes > self.max_bytes:   # the new entry fits alone: never itself
                _, (_, dropped, _) = self._entries.popitem(last=False)
                self._bytes -= dropped
                self.evictions += 1
        return succeed(None)

    def _drop(self, key) -> None:
        found = self._entries.pop(key, None)
        if found is not None:
            self._bytes -= found[1]

    def delete(self, key):
        self._drop(key)
        return succeed(None)

    def purge(self, prefix: str):
        doomed = [key for key in self._entries if key.startswith(prefix)]
        for key in doomed:
            self._drop(key)
        return succeed(len(doomed))

    @property
    def current_bytes(self) -> int:
        return self._bytes

    def stats(self) -> dict:
        return {"hits": self.hits, "misses": self.misses, "evictions": self.evictions,
                "errors": 0, "bytes": self.current_bytes, "items": len(self._entries),
                "max_bytes": self.max_bytes}
