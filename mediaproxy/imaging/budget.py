"""Per-request budgets inside the transform: the deadline that stops a transform's work.

The CPU a transform may use is bounded twice:

* **before decoding**, by what the file's structure predicts: the pixel and frame budgets,
  and a JPEG's scan count (:mod:`.scans`, ``limits.max_jpeg_scans``);
* **while working**, by :class:`Deadline`: the pipeline gives up on a transform after
  ``limits.transform_timeout`` (503 ``transform_timeout``), and the thread must stop too, not
  burn the CPU in the background for a result nobody waits for. The deadline is checked
  between phases (decode, orient, steps, resize, encode), before every frame of an
  animation, between output frames while a GIF or PNG animation is encoded, and inside a
  decode: Pillow is fed through :class:`DeadlineReader`, a file object whose ``read()``
  raises once the deadline has passed (Pillow's ``ImageFile.load`` reads and decodes in
  chunks of ``_DECODE_CHUNK`` bytes).

Cooperative cancellation rather than a killable worker process: a process per transform
(or a pool of them) would copy every source and result across a pipe and double the memory
of the big ones, and Pillow releases the GIL in its C loops, so threads already use every
core. The price is the largest step that cannot be interrupted: one chunk of a decode, one
resize, one encode of a still (or of an animated WebP, which libwebp encodes in one call).
Each is bounded by the pixel and memory budgets (``max_source_pixels``,
``max_transform_bytes``); docs/imaging.md gives the measured figures.
"""

from __future__ import annotations

import io
import time
from typing import Callable, Iterable, Iterator, TypeVar

from .errors import TransformTimeout

#: Bytes Pillow reads (and decodes) between two deadline checks. Pillow's default is 64 KiB;
#: a smaller chunk makes the checks more frequent for a costly (progressive) JPEG at a cost
#: of a few more calls.
_DECODE_CHUNK = 16 * 1024

T = TypeVar("T")


class Deadline:
    """A point in time (``clock()`` seconds, :func:`time.monotonic` by default) after which
    the transform stops with :class:`TransformTimeout`; ``None`` never expires."""

    __slots__ = ("at", "clock", "checks")

    def __init__(self, at: float | None, clock: Callable[[], float] | None = None):
        self.at = at
        self.clock = clock or time.monotonic
        self.checks = 0

    def check(self, where: str = "") -> None:
        """Raise :class:`TransformTimeout` when the deadline has passed."""
        self.checks += 1
        if self.at is not None and self.clock() >= self.at:
            raise TransformTimeout(
                "The image took too long to process" + (f" ({where})." if where else "."))

    def each(self, items: Iterable[T], where: str) -> Iterator[T]:
        """``items``, checking the deadline before each one (a lazy sequence for encoders
        that iterate their frames)."""
        for item in items:
            self.check(where)
            yield item


class DeadlineReader(io.BytesIO):
    """The source bytes as a file object whose reads check the deadline: Pillow decodes
    what it reads, so a decode stops at most one chunk after the deadline."""

    def __init__(self, data: bytes, deadline: Deadline):
        super().__init__(data)
        self.deadline = deadline

    def read(self, size: int | None = -1) -> bytes:
        self.deadline.check("decoding")
        return super().read(size)
