"""
The access counts of the variants a process has been asked for: what the periodic warm-up
re-renders first (:mod:`.warmup`). Bounded: at most :data:`POPULAR_LIMIT` variants are
remembered; past it the least requested half is forgotten and the popular ones keep their
counts. A request that was shed is forgotten (:meth:`Popularity.forget`), so warming renders
it only once it is asked for again.
"""

from __future__ import annotations

#: How many variants the access counts remember (for the periodic warm-up).
POPULAR_LIMIT = 10_000


class Popularity:
    """key -> [count, image_request, fmt] for the variants asked for, busiest first on demand."""

    def __init__(self, limit: int = POPULAR_LIMIT):
        self.limit = limit
        self.seen: dict = {}

    def count(self, key, image_request, fmt) -> None:
        seen = self.seen.get(key)
        if seen is not None:
            seen[0] += 1
            return
        if len(self.seen) >= self.limit:
            # forget the least requested half; the popular ones keep their counts
            keep = sorted(self.seen.items(), key=lambda item: -item[1][0])[:self.limit // 2]
            self.seen = dict(keep)
        self.seen[key] = [1, image_request, fmt]

    def forget(self, key) -> None:
        self.seen.pop(key, None)

    def ranked(self, count: int) -> list:
        """The ``count`` most requested: (key, image_request, fmt), busiest first."""
        ranked = sorted(self.seen.items(), key=lambda item: -item[1][0])[:count]
        return [(key, seen[1], seen[2]) for key, seen in ranked]

    def __contains__(self, key) -> bool:
        return key in self.seen

    def __len__(self) -> int:
        return len(self.seen)
