"""Decode once, render many: a small LRU of decoded sources, bounded in bytes and shared by
the transform pool's threads.

A page asks for several sizes of one source close together (a ``srcset``, a product page):
without this, every size decodes the source again. :class:`DecodedCache` keeps, per source,
the upright, working-mode pixels of its last decode (:class:`Decoded`: after EXIF orientation
and the working-mode conversion, before the sRGB conversion, which the pipeline makes after
the resize where it is cheap) at the JPEG shrink-on-load scale that decode used. A render
whose own decode would be at the same scale uses the pixels as they are; one whose decode
would be coarser (a smaller output) takes :meth:`PIL.Image.Image.reduce` of them by the
power of two between the scales, which gives the image size the decoder would have given
(nested round-up divisions) and the same pixels within a few levels (the decoder's scaled
IDCT is also a block average); one that needs a finer scale decodes again and its decode
replaces the entry. So a render from the cache is what a fresh decode gives, or visually
the same (tests/test_decoded_cache.py states the tolerance).

The key is the source's bytes: their length and Python's hash (computed once per bytes
object: CPython caches it on the object, and the source cache hands the same object to
every request of a source it holds), and on a hit the stored bytes are compared with the
request's (``is``, else ``==``, a ``memcmp``): two sources never share an entry, whatever
their hashes. The bytes an entry holds count towards its size.

Memory: the cache's capacity is carved out of the transform memory budget (the runtime
lowers the admission capacity by it: :func:`mediaproxy.runtime.decoded_cache_capacity`), so
transforms at their estimates plus the cache never exceed ``limits.transform_memory``. An
entry larger than the capacity is not stored; storing evicts the least recently used entries
until the total fits. A render that reuses an entry allocates at most what its own fresh
decode was admitted for (the reduced copy stands for the decoded image; no orientation or
mode copy).

Entries are immutable: every Pillow operation the pipeline applies returns a new image, and
the pipeline copies a shared image before handing it to a plugin step or the encoder (both
may change an image object: ``info``, ``encoderinfo``).

Two threads that need the same source at once do not both decode it: :meth:`DecodedCache.
exclusive` lets one decode while the other waits (bounded by the transform's deadline), then
finds the entry.

Animations are not cached: their frames are decoded one by one onto the decoder's canvas,
and keeping them all would cost a frame count times more memory for a rarer case.
"""

from __future__ import annotations

import collections
import contextlib
import threading
from typing import Iterator

from attrs import frozen
from PIL import Image

from .budget import Deadline
from .errors import TransformTimeout

#: A large source's first decode is this many shrink-on-load steps finer than its render
#: needs (at most full size), so that the larger sizes asked next reuse it; measured on the
#: srcset of a 12 MP JPEG (docs/performance.md, "Decode once, render many"): one step takes
#: most of the gain of two at a third of the cost for a lone thumbnail.
FIRST_DECODE_FINER = 1
#: ... when the source has at least this many pixels: a JPEG's decode costs about its
#: source's pixels whatever the scale (the entropy decoding), so decoding a small source
#: again is cheap, and a lone thumbnail of it should not pay for a larger decode.
LARGE_SOURCE_PIXELS = 8_000_000


def first_decode_finer(pixels: int) -> int:
    """The steps finer a first decode of a ``pixels`` source goes (:data:`FIRST_DECODE_FINER`
    from :data:`LARGE_SOURCE_PIXELS` on, else 0)."""
    return FIRST_DECODE_FINER if pixels >= LARGE_SOURCE_PIXELS else 0


def image_bytes(image: Image.Image) -> int:
    """The bytes Pillow holds for ``image``'s pixels: one per pixel for the one-band 8-bit
    modes, four for every other working mode (LA, RGB, RGBA and CMYK take 32 bits)."""
    per_pixel = 1 if image.mode in ("1", "L", "P") else 4
    return per_pixel * image.width * image.height


@frozen(eq=False)
class Decoded:
    """One source's decoded pixels, shared and never changed.

    ``image`` is upright and in a working mode (8-bit L, LA, RGB, RGBA, or CMYK), decoded at
    ``1 / scale`` (1, 2, 4 or 8: JPEG shrink-on-load; 1 for other formats); ``icc`` is the
    source's embedded colour profile (the sRGB conversion is left to the pipeline); ``size``
    the source's size as displayed; ``scans`` a JPEG's scan and marker-segment counts (the
    decode guard's walk, made once per source: a render of a source held here reuses them).
    """

    image: Image.Image
    icc: bytes | None
    scale: int
    size: tuple[int, int]
    scans: tuple[int, int] | None = None

    def at(self, scale: int) -> Image.Image:
        """The pixels at ``1 / scale`` (``scale`` a multiple of this entry's): the image
        itself, or a reduced copy."""
        factor = scale // self.scale
        return self.image if factor == 1 else self.image.reduce(factor)


class _Flight:
    """A lock per source being looked up or decoded, and how many threads hold or wait on
    it (the entry goes when none does)."""

    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0


class DecodedCache:
    """A bytes-bounded LRU of :class:`Decoded` sources, safe for any number of threads.

    ``capacity`` bytes at most (0: off, nothing is kept). The counts ``hits``, ``misses``
    (a lookup that found no entry fine enough: a decode follows), ``evictions`` and the
    ``bytes`` held are read at scrape time (plain ints, written under the lock).
    """

    def __init__(self, capacity: int):
        self.capacity = max(0, capacity)
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.bytes = 0
        self._entries: collections.OrderedDict[tuple[int, int], tuple[bytes, Decoded, int]] = \
            collections.OrderedDict()
        self._flights: dict[tuple[int, int], _Flight] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.capacity > 0

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def key(data: bytes) -> tuple[int, int]:
        return len(data), hash(data)

    def get(self, data: bytes, scale: int) -> Decoded | None:
        """The entry of ``data`` when it was decoded at ``1 / scale`` or finer (counted as a
        hit, and made the most recently used); else ``None`` (counted as a miss)."""
        key = self.key(data)
        with self._lock:
            found = self._entries.get(key)
            if found is not None and (found[0] is data or found[0] == data) \
                    and scale % found[1].scale == 0:
                self._entries.move_to_end(key)
                self.hits += 1
                return found[1]
            self.misses += 1
            return None

    def find(self, data: bytes) -> Decoded | None:
        """The entry of ``data`` at whatever scale, not counted as a lookup."""
        with self._lock:
            found = self._entries.get(self.key(data))
        return found[1] if found is not None and (found[0] is data or found[0] == data) \
            else None

    def put(self, data: bytes, decoded: Decoded) -> bool:
        """Keep ``decoded`` as ``data``'s entry (replacing the one there), then evict the
        least recently used entries until the bytes fit; whether it was kept (not when it
        alone is larger than the capacity)."""
        size = image_bytes(decoded.image) + len(data)
        if size > self.capacity:
            return False
        key = self.key(data)
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.bytes -= old[2]
            self._entries[key] = (data, decoded, size)
            self.bytes += size
            while self.bytes > self.capacity:
                _, (_, _, evicted) = self._entries.popitem(last=False)
                self.bytes -= evicted
                self.evictions += 1
        return True

    @contextlib.contextmanager
    def exclusive(self, data: bytes, deadline: Deadline | None = None) -> Iterator[None]:
        """Hold ``data``'s lock: one thread at a time looks up and decodes one source, the
        others wait for its entry. The wait ends at ``deadline`` (:class:`TransformTimeout`)."""
        key = self.key(data)
        with self._lock:
            flight = self._flights.get(key)
            if flight is None:
                flight = self._flights[key] = _Flight()
            flight.users += 1
        try:
            if not flight.lock.acquire(timeout=_remaining(deadline)):
                raise TransformTimeout("The image took too long to process (waiting for "
                                       "another decode of the same source).")
            try:
                yield
            finally:
                flight.lock.release()
        finally:
            with self._lock:
                flight.users -= 1
                if not flight.users:
                    del self._flights[key]


def _remaining(deadline: Deadline | None) -> float:
    """Seconds until ``deadline`` for a lock's ``acquire`` (-1: no deadline, wait for ever;
    0 once passed: try once)."""
    if deadline is None or deadline.at is None:
        return -1
    return max(0.0, deadline.at - deadline.clock())
