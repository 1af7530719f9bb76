"""
A small bounded memo for pure functions of a request (its parsing, validation and cache key),
so a URI asked for again and again (the cache hits of a popular image) is not worked out again
each time.

What it remembers is valid only for the objects it was derived from: :meth:`Memo.table` is
given them (the configuration, the parameter registry, the plugin manager's ``generation``)
and forgets everything when any of them is no longer the same object (a reload replaces the
configuration, a plugin registered or unregistered bumps the generation). Checks that are not
pure functions of the URI (a signature's expiry against the clock, the rate-limit tokens) are
never memoized: they run on every request.

Bounded in entries (``maxsize``, the oldest entry goes first) and by what a key may hold (the
callers memoize only URIs up to :data:`MAX_KEY_CHARS`), so a client sending endless distinct
URIs costs at most ``maxsize`` small entries.
"""

from __future__ import annotations

#: The longest URI (path plus query, in characters) the callers memoize: longer ones are
#: worked out every time (rare, and they would make the memo's bytes unbounded).
MAX_KEY_CHARS = 512

#: Entries a memo keeps by default.
DEFAULT_SIZE = 2048


class Memo:
    """``table(*owners)`` returns the dict to look keys up in and :meth:`put` stores into;
    it is emptied whenever an owner is not the same object (``is``) as the last time."""

    __slots__ = ("maxsize", "_data", "_owners")

    def __init__(self, maxsize: int = DEFAULT_SIZE):
        if maxsize < 1:
            raise ValueError("a memo keeps at least one entry")
        self.maxsize = maxsize
        self._data: dict = {}
        self._owners: tuple = ()

    def table(self, *owners) -> dict:
        known = self._owners
        if len(known) == len(owners):
            for a, b in zip(known, owners):
                if a is not b:
                    break
            else:
                return self._data
        self._data = {}
        self._owners = owners
        return self._data

    def get(self, key, default=None):
        """What ``key`` maps to in the current table (for a memo without owners)."""
        return self._data.get(key, default)

    def put(self, key, value) -> None:
        data = self._data
        if len(data) >= self.maxsize and key not in data:
            del data[next(iter(data))]   # the oldest
        data[key] = value

    def clear(self) -> None:
        self._data = {}
        self._owners = ()

    def __len__(self) -> int:
        return len(self._data)


class Pairs(tuple):
    """A tuple of ``(str, str)`` pairs already in the form the values of
    :mod:`mediaproxy.models` keep (their converter takes it as it is): the hit path builds a
    request's headers and query, and a hit's headers, once in this form instead of having every
    pair re-made on each construction. Equal to, and hashed as, the plain tuple of the same
    pairs."""

    __slots__ = ()

