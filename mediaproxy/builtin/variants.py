"""
The variants the pipeline stored, per source: what a shed live request is offered instead of a
503 (``processing.offer_nearest``; docs/performance.md, "The job queue").

When the transform queue sheds a live request (full, or its queue time passed), the nearest
variant of the same source already in the cache is a better answer than an error: a slightly
larger or smaller size of the right picture. The pipeline tells :class:`VariantIndex` every
variant it stores (key, output width and format, and the URL that asked for it); on a shed it
looks up the candidates in order and answers the first the cache still holds.

Which variants qualify: the same tenant and source; the same parameters except size and
encoding (``w``, ``h``, ``dpr``, ``q``, ``fmt``: a blurred or cropped variant never stands in
for another transform); the same shape (both proportional, or the same ``w``/``h`` ratio); a
format the client takes (the one it asked for, one its ``Accept`` names, or JPEG, PNG, GIF).
Order: the requested format first, then the nearest width (the largest when none was asked).

Bounded: :data:`SOURCES` sources (least recently stored forgotten first), :data:`PER_SOURCE`
variants each, :data:`LOOKUPS` cache lookups per offer.
"""

from __future__ import annotations

from urllib.parse import urlencode

import attrs
from cachetools import LRUCache
from twisted.internet.defer import Deferred, inlineCallbacks

from ..models import CacheEntry

#: Sources remembered.
SOURCES = 10_000
#: Variants remembered per source (the most recently stored).
PER_SOURCE = 32
#: Cache lookups an offer makes at most (the candidates in order).
LOOKUPS = 4
#: Parameters a stand-in may differ in.
SIZE_PARAMS = frozenset({"w", "h", "dpr", "q", "fmt"})
#: Formats every client takes.
UNIVERSAL = frozenset({"jpeg", "png", "gif"})


@attrs.frozen
class Variant:
    key: str
    width: int
    format: str
    #: the path and query that asked for it (the offer's Content-Location)
    location: str
    #: what must match: the other parameters and the shape
    shape: tuple


@attrs.frozen
class Nearest:
    """The answer offered to a shed request: ``entry``, the variant at ``location``."""

    entry: CacheEntry
    location: str


def shape(params) -> tuple:
    """Parameters other than size and encoding, and the aspect the size asks for (None:
    proportional)."""
    others = tuple(sorted((k, repr(v)) for k, v in params.items() if k not in SIZE_PARAMS))
    w, h = params.get("w"), params.get("h")
    aspect = round(w / h, 3) if w and h else None
    return others, aspect


def accepted(fmt: str | None, accept: str | None) -> frozenset:
    """The output formats a client asking for ``fmt`` with ``accept`` takes."""
    names = set(UNIVERSAL)
    if fmt:
        names.add(fmt)
    for part in (accept or "").split(","):
        media = part.split(";")[0].strip().lower()
        if media.startswith("image/") and "q=0" not in part.replace(" ", "").split(";")[1:]:
            names.add(media[len("image/"):])
    return frozenset(names)


class VariantIndex:
    def __init__(self, sources: int = SOURCES, per_source: int = PER_SOURCE):
        self._sources: LRUCache = LRUCache(maxsize=sources)
        self.per_source = per_source

    def add(self, image_request, request, key: str, width: int, fmt: str) -> None:
        ident = (image_request.tenant, image_request.source_path)
        known = self._sources.get(ident)
        if known is None:
            known = self._sources[ident] = {}
        known.pop(key, None)
        if len(known) >= self.per_source:
            known.pop(next(iter(known)))
        query = urlencode(request.query)
        known[key] = Variant(key, int(width), fmt,
                             request.path + ("?" + query if query else ""),
                             shape(image_request.params))

    def candidates(self, image_request, request, fmt: str | None, key: str) -> list[Variant]:
        """The stand-ins for ``key`` in the order they are offered."""
        known = self._sources.get((image_request.tenant, image_request.source_path))
        if not known:
            return []
        want = shape(image_request.params)
        takes = accepted(fmt, request.header("accept"))
        width = image_request.params.get("w")
        found = [v for v in known.values()
                 if v.key != key and v.shape == want and v.format in takes]
        found.sort(key=lambda v: (v.format != fmt,
                                  abs(v.width - width) if width else -v.width))
        return found[:LOOKUPS]

    def nearest(self, cache, image_request, request, fmt, key) -> Deferred:
        """A Deferred of the :class:`Nearest` the cache holds, or None."""
        return self._first_held(cache, self.candidates(image_request, request, fmt, key))

    @inlineCallbacks
    def _first_held(self, cache, candidates):
        """The first of ``candidates`` the cache holds, looked up one after the other (a loop,
        not a callback that calls itself: that was a reference cycle per shed request)."""
        for variant in candidates:
            hit = yield cache.get(variant.key)
            if hit is not None:
                return Nearest(hit[0], variant.location)
        return None
