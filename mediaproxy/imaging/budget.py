"""Per-request budgets inside the transform: the deadline that stops a transform's work, and
the estimate of the memory it will take (:class:`Work`), known before decoding.

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

import attrs
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


# -- memory ----------------------------------------------------------------------------------

#: Bytes per pixel of a working image: Pillow stores every mode of 2 to 4 bands (LA, RGB,
#: RGBA, CMYK, YCbCr) and I, F in 32 bits; L, P and I;16 take less.
_PIXEL = 4
#: Bytes per output pixel an encoder allocates beyond the output image, with the encoded body
#: and its copy (BytesIO, ``getvalue``), measured on noise (the worst case for every encoder)
#: with Pillow 13: JPEG 6, PNG 5, TIFF 8, WebP 24, AVIF 32 (speed 8; 48 at speed 0), GIF 44
#: (the quantizer's colour table grows with the distinct colours). Rounded up.
_ENCODER = {"jpeg": 8, "png": 8, "tiff": 12, "webp": 28, "avif": 56, "gif": 48}
#: Bytes per output pixel of each animation frame the encoder keeps until the file is
#: written, beyond the frames themselves: GIF's palette copies, APNG's cropped copies,
#: libavif's YUV frames and their encoded bytes (measured on noise with Pillow 13: 2.6).
_ANIMATION_FRAME = {"gif": 2, "png": 4, "webp": 1, "avif": 3}
#: Rows (and columns) a resampling pass may read beyond its box: the filter's support.
_SUPPORT = 8
#: Input rows a cut of a resize into strips reads twice (:data:`.strips.CUT_ROWS`, written
#: out here so that the budget does not import the resizing).
_CUT_ROWS = 26
#: Codec state, tables and the interpreter's pages touched by any render.
_FIXED = 16 * 1024 * 1024


@attrs.frozen
class Work:
    """What a render will hold, from the file's structure and the spec (no decoding).

    ``canvas`` is the decoder's canvas (an animation's frames are composited onto it),
    ``decoded`` the size decoded (smaller than the canvas for a JPEG decoded at reduced
    scale), ``frames`` the frames decoded and kept, ``output`` the output canvas, ``fmt``
    the output format, ``conversions`` the full-size copies made before the resize (mode,
    orientation, colour profile), ``reducing_gap`` the resize's (0: off).
    """

    canvas: tuple[int, int]
    decoded: tuple[int, int]
    frames: int
    output: tuple[int, int]
    fmt: str
    conversions: int = 2
    reducing_gap: float = 2.0
    #: the part of the decoded image resized (a ``cover`` crop; ``None``: all of it) and the
    #: size it is resized to (``contain``: inside the output; ``None``: the output)
    box: tuple[int, int] | None = None
    target: tuple[int, int] | None = None
    #: the strips a large resize may be cut in (:mod:`.strips`; 1: not cut)
    strips: int = 1
    #: the plugin steps' declared ``memory`` (bytes per pixel of the image a step gets), the
    #: largest before the resize (on the decoded size) and after it (on the output's)
    steps: tuple[float, float] = (0, 0)

    def bytes(self) -> int:
        """An upper bound of the bytes the render allocates at its peak (see docs/imaging.md).

        A still: the decoded image (held by the decoder to the end) and up to two working
        copies at once (mode, orientation, profile conversions); then the resize, beside the
        decoded image and a working copy: Pillow's reduced copy (when it first shrinks by a
        whole factor, as Pillow computes it), the horizontal pass (the target width x the rows
        the vertical pass reads) and the result; then the encode:
        the output, one conversion for the format and the encoder's buffers (a resize cut in
        strips reads a few rows twice at each cut, and pastes its strips onto the output: at
        most the horizontal pass and the result already counted, for a downscale). An animation:
        the decoder's three canvases (current, previous, disposal), every output frame held
        until the encode and one converted copy of each, plus one frame's work. Either way,
        plus the largest plugin step's declared memory (``steps``), while the rest is held.
        """
        (dw, dh), (ow, oh) = self.decoded, self.output
        decoded = _PIXEL * dw * dh
        out_px = ow * oh
        out = _PIXEL * out_px
        copies = min(self.conversions, 2)
        convert = decoded * (1 + copies)
        gap = self.reducing_gap
        (bw, bh), (tw, th) = self.box or self.decoded, self.target or self.output
        rows, reduced = bh + _SUPPORT + _CUT_ROWS * (max(1, self.strips) - 1), 0
        if gap >= 1:                 # Pillow's resize: reduce by whole factors, then resample
            fx, fy = max(1, int(bw / tw / gap)), max(1, int(bh / th / gap))
            if fx > 1 or fy > 1:
                rows = -(-bh // fy) + _SUPPORT
                reduced = _PIXEL * (-(-bw // fx) + _SUPPORT) * rows
        resize = decoded * (1 + min(copies, 1)) + reduced + _PIXEL * tw * rows + out
        encoder = _ENCODER.get(self.fmt, 56) * out_px
        step = int(max(self.steps[0] * dw * dh, self.steps[1] * out_px))
        if self.frames <= 1:
            encode = decoded + 2 * out + encoder
            return _FIXED + max(convert + step, resize + step, encode)
        state = 3 * _PIXEL * self.canvas[0] * self.canvas[1]
        held = self.frames * out
        loop = state + held + decoded + max(convert, resize) + step
        encode = (state + 2 * held + _ANIMATION_FRAME.get(self.fmt, 4) * self.frames * out_px
                  + encoder)
        return _FIXED + max(loop, encode)


def _mib(value: int) -> str:
    return f"{value / 2**20:.0f} MiB"
