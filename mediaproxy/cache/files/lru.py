"""
The index of the file layer (:mod:`mediaproxy.cache.files`), kept in the reactor thread: what
the layer knows is on disk, in eviction order (:class:`SegmentedLRU`).
"""

from __future__ import annotations

from collections import OrderedDict, Counter

import attrs

#: Share of the bound the protected segment may fill.
PROTECTED_SHARE = 0.8


@attrs.define(slots=True)
class IndexEntry:
    size: int
    meta_size: int
    digest: str
    created_at: float

    @property
    def charge(self) -> int:
        return self.size + self.meta_size


@attrs.define
class SegmentedLRU:
    """What the layer knows is on disk, in eviction order: a segmented LRU.

    New entries go to the *probationary* segment; an entry read again moves to the *protected*
    segment, which holds at most ``PROTECTED_SHARE`` of the bound (its least recent entries
    fall back to probation). :meth:`victims` takes probationary entries first, least recent
    first, so one-off requests evict each other and not the entries that are read again.

    ``bytes`` is what the entries take on disk: headers plus each distinct body once (bodies
    are de-duplicated); ``logical_bytes`` counts every entry's body.
    """

    probation: OrderedDict = attrs.field(factory=OrderedDict)
    protected: OrderedDict = attrs.field(factory=OrderedDict)
    refs: Counter = attrs.field(factory=Counter)
    blob_sizes: dict = attrs.field(factory=dict)
    bytes: int = 0
    logical_bytes: int = 0
    protected_bytes: int = 0

    def __len__(self) -> int:
        return len(self.probation) + len(self.protected)

    def __contains__(self, key: str) -> bool:
        return key in self.probation or key in self.protected

    def get(self, key: str) -> IndexEntry | None:
        return self.probation.get(key) or self.protected.get(key)

    def keys(self) -> list[str]:
        return [*self.probation, *self.protected]

    def add(self, key: str, entry: IndexEntry) -> None:
        """Record ``entry`` under ``key``; a replaced entry keeps its segment and place."""
        segment = self.protected if key in self.protected else self.probation
        if key in segment:
            self._forget(segment[key], segment is self.protected)
        segment[key] = entry
        self._count(entry, segment is self.protected)

    def touch(self, key: str, limit: int) -> None:
        """``key`` was read: promote it (see the class docs)."""
        if key in self.protected:
            self.protected.move_to_end(key)
            return
        entry = self.probation.pop(key, None)
        if entry is None:
            return
        self.protected[key] = entry
        self.protected_bytes += entry.charge
        while self.protected_bytes > limit * PROTECTED_SHARE and len(self.protected) > 1:
            demoted, old = self.protected.popitem(last=False)
            self.protected_bytes -= old.charge
            self.probation[demoted] = old

    def remove(self, key: str) -> IndexEntry | None:
        for segment in (self.probation, self.protected):
            entry = segment.pop(key, None)
            if entry is not None:
                self._forget(entry, segment is self.protected)
                return entry
        return None

    def victims(self, limit: int) -> list[str]:
        """Remove and return the keys to evict until ``bytes <= limit``."""
        out = []
        while self.bytes > limit and len(self):
            segment = self.probation if self.probation else self.protected
            key = next(iter(segment))
            self.remove(key)
            out.append(key)
        return out

    def _count(self, entry: IndexEntry, protected: bool) -> None:
        self.bytes += entry.meta_size
        self.logical_bytes += entry.charge
        if protected:
            self.protected_bytes += entry.charge
        self.refs[entry.digest] += 1
        if self.refs[entry.digest] == 1:
            self.blob_sizes[entry.digest] = entry.size
            self.bytes += entry.size

    def _forget(self, entry: IndexEntry, protected: bool) -> None:
        self.bytes -= entry.meta_size
        self.logical_bytes -= entry.charge
        if protected:
            self.protected_bytes -= entry.charge
        self.refs[entry.digest] -= 1
        if self.refs[entry.digest] <= 0:
            del self.refs[entry.digest]
            self.bytes -= self.blob_sizes.pop(entry.digest, entry.size)
