"""The decode guard and its budgets: what happens to untrusted bytes before and while their
pixels are decoded.

Bytes are opened with the allowed formats' parsers only (:func:`probe`, :class:`ImageInfo`
read from the header); a transform spec, the frame and pixel budgets and a JPEG's size
against its claimed dimensions are checked before any pixel is decoded; what Pillow raises
on bad or hostile data becomes an :class:`~mediaproxy.imaging.errors.ImageError`. Also here:
the EXIF orientation, and a JPEG's shrink-on-load (``draft``).
"""

from __future__ import annotations

import contextlib
import io
import math
import struct
import zlib
from typing import Iterator

import attrs
from attrs import frozen
from PIL import ExifTags, Image, ImageFile

from mediaproxy.models import TransformSpec

from .budget import _DECODE_CHUNK, Deadline, DeadlineReader, Work, _mib
from .errors import (
    CorruptImage, ImageError, ImageTooLarge, InvalidTransform, OutputTooLarge, OverMemoryBudget,
    TooManyFrames, TooManyScans, UnsupportedFormat, UnsupportedImage,
)
from .frames import canvas_size
from .scans import count_jpeg_scans
from .formats import _ANIMATED_SOURCES, _SOURCE_FORMATS
from .geometry import FITS, POSITIONS, fit_geometry

#: What Pillow and its codecs raise on bad data (besides DecompressionBombError); libavif's
#: failures arrive as RuntimeError.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, RuntimeError,
                  struct.error, zlib.error)

#: EXIF orientation -> the transpose that makes the image upright.
_ORIENT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_AXES = frozenset({5, 6, 7, 8})


@contextlib.contextmanager
def _decoding() -> Iterator[None]:
    """Turn what Pillow raises on bad or hostile data into :class:`ImageError`."""
    try:
        yield
    except (Image.DecompressionBombError, *_DECODE_ERRORS) as exc:
        raise _decode_error(exc) from exc


def _decode_error(exc: Exception) -> ImageError:
    if isinstance(exc, Image.DecompressionBombError):
        return ImageTooLarge("The image has too many pixels.")
    return CorruptImage("The image data is corrupt or truncated.")


@frozen
class ImageInfo:
    """What the header of an image says.

    ``width`` and ``height`` are as displayed, after EXIF orientation; ``frames`` counts
    animation frames (1 for a still; extra pages of a TIFF or MPO do not count). ``format`` is
    lower case (``jpeg``, ``png``, ``webp``, ``gif``, ``avif``, ``heif``, ``tiff``, ``bmp``);
    ``mode`` is Pillow's mode of the (first) frame.
    """

    format: str
    width: int
    height: int
    frames: int = 1
    mode: str = "RGB"
    has_alpha: bool = False
    orientation: int = 1

    @property
    def pixels(self) -> int:
        """Pixels to decode: width x height x frames."""
        return self.width * self.height * self.frames


def probe(data: bytes) -> ImageInfo:
    """Read the header of ``data`` without decoding pixels.

    Raises :class:`ImageError` (422) for anything that is not an image in an allowed format,
    for damaged headers and when Pillow's own decompression-bomb guard trips.
    """
    with _open(data) as image:
        return _read_info(image)


def _open(data: bytes, deadline: Deadline | None = None) -> ImageFile.ImageFile:
    """Open ``data`` lazily, trying only the allowed formats' parsers; with a ``deadline``,
    every read of the decoder checks it (:class:`~mediaproxy.imaging.budget.DeadlineReader`)
    and the decoder reads in small chunks."""
    if not data:
        raise UnsupportedImage("The source is empty.")
    Image.init()
    allowed = [fmt for fmt in _SOURCE_FORMATS if fmt in Image.OPEN]
    fp = io.BytesIO(data) if deadline is None else DeadlineReader(data, deadline)
    try:
        image = Image.open(fp, formats=allowed)
        if deadline is not None:
            image.decodermaxblock = _DECODE_CHUNK
        return image
    except Image.UnidentifiedImageError as exc:
        raise _unrecognised(data) from exc
    except (Image.DecompressionBombError, *_DECODE_ERRORS) as exc:
        raise _decode_error(exc) from exc


def _unrecognised(data: bytes) -> ImageError:
    """The error for bytes no allowed format accepted: name the format when Pillow's magic
    bytes detection (or a glance for SVG) knows it."""
    head = data[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith((b"<svg", b"<?xml", b"<!doctype svg")) and b"<svg" in head:
        return UnsupportedFormat("SVG images are not supported.")
    name = _sniff(data[:16])
    if name is not None:
        return UnsupportedFormat(f"{name} images are not supported.")
    return UnsupportedImage("The source is not an image in a supported format.")


def _sniff(prefix: bytes) -> str | None:
    """The Pillow format whose magic bytes ``prefix`` has, among the formats not allowed."""
    for name, (_, accept) in Image.OPEN.items():
        if name in _SOURCE_FORMATS or accept is None:
            continue
        try:
            if accept(prefix) is True:
                return name
        except _DECODE_ERRORS:
            continue
    return None


def _read_info(image: ImageFile.ImageFile) -> ImageInfo:
    """Header facts of an opened image (no pixel decoding)."""
    with _decoding():
        frames = image.n_frames if image.format in _ANIMATED_SOURCES else 1  # type: ignore[attr-defined]
        orientation = _orientation(image, header_only=True)
        width, height = image.size
        # Pillow (11 on) reports a TIFF's size as displayed and turns its pixels when loading
        if orientation in _SWAPS_AXES and image.format != "TIFF":
            width, height = height, width
        return ImageInfo(
            format=_SOURCE_FORMATS[image.format or ""], width=width, height=height,
            frames=max(1, frames), mode=image.mode, has_alpha=image.has_transparency_data,
            orientation=orientation)


def _orientation(image: Image.Image, *, header_only: bool = False) -> int:
    """The EXIF orientation (1-8), 1 when absent or unreadable.

    A PNG's eXIf chunk may follow the pixel data, and Pillow decodes the pixels to find it:
    with ``header_only`` such a PNG reports 1.
    """
    if header_only and image.format == "PNG" and "exif" not in image.info:
        return 1
    try:
        value = image.getexif().get(ExifTags.Base.Orientation, 1)
    except (*_DECODE_ERRORS, TypeError):
        return 1
    return value if value in _ORIENT else 1


def _check_limits(info: ImageInfo, spec: TransformSpec) -> None:
    if info.frames > spec.max_frames:
        raise TooManyFrames(
            f"The animation has {info.frames} frames; at most {spec.max_frames} are allowed.")
    if info.pixels > spec.max_source_pixels:
        raise ImageTooLarge(
            f"The image is too large ({info.width}x{info.height} pixels"
            f"{f' x {info.frames} frames' if info.frames > 1 else ''}).")


def _check_jpeg_size(data: bytes, info: ImageInfo) -> None:
    """A Huffman-coded JPEG spends at least one bit on every 8x8 luma block (its DC code), so
    a file smaller than that cannot hold the image its header claims: a lying SOF (libjpeg
    would quietly pad the missing rows with grey). Arithmetic-coded JPEGs, which can go below
    a bit per block, are not judged."""
    if info.format != "jpeg":
        return
    blocks = -(-info.width // 8) * -(-info.height // 8)
    if len(data) * 8 < blocks and not _arithmetic_coded(data):
        raise CorruptImage(f"The JPEG holds {len(data)} bytes, too few for the "
                           f"{info.width}x{info.height} pixels its header claims.")


#: Marker segments a JPEG may have besides its scans: APPn (an ICC profile may take up to 255
#: APP2 segments), COM, DQT, DHT (one per scan in optimised progressive files), DRI, SOF.
_SEGMENTS_BESIDES_SCANS = 1024


def _check_jpeg_scans(data: bytes, info: ImageInfo, spec: TransformSpec,
                      known: tuple[int, int] | None = None) -> tuple[int, int] | None:
    """Refuse a JPEG with more than ``spec.max_jpeg_scans`` scans before decoding it: each
    scan walks every block of the image, so the decode's CPU is blocks x scans, whatever the
    file's size (see :mod:`.scans`). The marker segments are bounded as well: their walk is
    Python work per segment. ``known``: the counts of these very bytes from an earlier walk
    (the decoded cache keeps them: the walk over a 2 MB file's entropy-coded data is a few
    ms, twice per render); returns the counts (``None`` for other formats)."""
    if info.format != "jpeg":
        return None
    max_segments = _SEGMENTS_BESIDES_SCANS + 2 * spec.max_jpeg_scans
    scans, segments = known if known is not None else \
        count_jpeg_scans(data, spec.max_jpeg_scans, max_segments)
    if scans > spec.max_jpeg_scans:
        raise TooManyScans(f"The JPEG has more than {spec.max_jpeg_scans} scans; decoding "
                           f"it would cost too much.")
    if segments > max_segments:
        raise TooManyScans(f"The JPEG has more than {max_segments} marker segments.",
                           error="too_many_segments")
    return scans, segments


def _arithmetic_coded(data: bytes) -> bool:
    """Whether the frame header (SOF) of a JPEG says arithmetic coding (SOF9-11, SOF13-15),
    walking the marker segments up to the first scan."""
    at = 2
    while at + 4 <= len(data) and data[at] == 0xFF:
        marker = data[at + 1]
        if marker in (0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            return True
        if marker == 0xDA:   # start of scan: the frame header was before
            return False
        at += 2 + int.from_bytes(data[at + 2:at + 4], "big")
    return False


#: The filters ``spec.large_resample`` may name (:mod:`.rendering` maps them to Pillow's).
LARGE_RESAMPLE_FILTERS = ("bicubic", "lanczos")


def _check_spec(spec: TransformSpec) -> None:
    if spec.fit not in FITS:
        raise InvalidTransform(f"Unknown fit {spec.fit!r}; use one of {', '.join(FITS)}.")
    if spec.position not in POSITIONS:
        raise InvalidTransform(
            f"Unknown position {spec.position!r}; use one of {', '.join(POSITIONS)}.")
    if spec.width < 0 or spec.height < 0:
        raise InvalidTransform("Width and height cannot be negative.")
    if spec.large_resample not in LARGE_RESAMPLE_FILTERS:
        raise InvalidTransform(f"Unknown large_resample {spec.large_resample!r}; use one of "
                               f"{', '.join(LARGE_RESAMPLE_FILTERS)}.")


def _draft_target(source: ImageFile.ImageFile, spec: TransformSpec) -> tuple[int, int] | None:
    """The size to ask the JPEG decoder for (DCT scaling by 1/2, 1/4 or 1/8) while keeping at
    least ``draft_gap`` times the pixels the output needs, in stored (not oriented) axes;
    ``None``: decode at full size. Never enlarges; skipped when trimming (the content's size
    is unknown until decoded) and for a manual crop (its box, not the source, is resized)."""
    if (source.format not in ("JPEG", "MPO") or spec.trim or spec.crop
            or not (spec.width or spec.height)):
        return None
    orientation = _orientation(source, header_only=True)
    width, height = source.size
    if orientation in _SWAPS_AXES:
        width, height = height, width
    geometry = fit_geometry(width, height, spec)
    gap = max(1.0, spec.draft_gap)
    need = (math.ceil(geometry.scaled_width * gap), math.ceil(geometry.scaled_height * gap))
    if orientation in _SWAPS_AXES:
        need = need[::-1]
    if need[0] < source.size[0] and need[1] < source.size[1]:
        return need
    return None


def _draft(source: ImageFile.ImageFile, spec: TransformSpec) -> bool:
    """Let the JPEG decoder scale down (:func:`_draft_target`); whether it did."""
    need = _draft_target(source, spec)
    if need is None:
        return False
    before = source.size
    source.draft(source.mode, need)
    return source.size != before


def _decode_scale(source: ImageFile.ImageFile, spec: TransformSpec, finer: int = 0) -> int:
    """The denominator (1, 2, 4 or 8) of the scale a render of ``source`` decodes at: its
    shrink-on-load scale (:func:`_draft_target`), or ``finer`` steps finer (a first decode
    kept for the next, larger sizes of the source: :mod:`.decoded`)."""
    return max(1, _draft_scale(source.size, _draft_target(source, spec)) >> finer)


def _draft_scale(size: tuple[int, int], need: tuple[int, int] | None) -> int:
    """The denominator (1, 2, 4 or 8) of the scale Pillow's JPEG ``draft(mode, need)``
    decodes a ``size`` image at (its own rule: the largest of 1/8, 1/4, 1/2 that keeps both
    sides at least ``need``), without asking it (a second ``draft`` call is ignored)."""
    if need is None:
        return 1
    ratio = min(size[0] // need[0], size[1] // need[1])
    return next(s for s in (8, 4, 2, 1) if ratio >= s)


def _work(data: bytes, source: ImageFile.ImageFile, info: ImageInfo, spec: TransformSpec,
          fmt: str, animated: bool, finer: int = 0) -> Work:
    """What the render of ``source`` will hold (:class:`~.budget.Work`), from the header and
    the file's structure (a GIF's frame extents), without decoding; with ``finer``, a still
    decoded that many shrink-on-load steps finer (:func:`_decode_scale`)."""
    canvas = canvas_size(data, info.format, info.width, info.height)
    decoded = canvas
    if not animated:
        scale = _decode_scale(source, spec, finer)
        stored = (-(-source.size[0] // scale), -(-source.size[1] // scale))
        decoded = stored[::-1] if info.orientation in _SWAPS_AXES and info.format != "tiff" \
            else stored
    geometry = fit_geometry(*canvas, spec)
    output = (geometry.width, geometry.height)
    scaled = (geometry.scaled_width, geometry.scaled_height)
    target = (min(output[0], scaled[0]), min(output[1], scaled[1]))
    # cover crops the overflow: the box resized is the output's share of the decoded image
    box = (math.ceil(decoded[0] * min(1.0, output[0] / scaled[0])),
           math.ceil(decoded[1] * min(1.0, output[1] / scaled[1])))
    return Work(canvas=canvas, decoded=decoded, frames=info.frames if animated else 1,
                output=output, fmt=fmt, box=box, target=target,
                conversions=_conversions(source, info, animated),
                reducing_gap=spec.reducing_gap, strips=2 if spec.parallel_resize else 1)


def _conversions(source: ImageFile.ImageFile, info: ImageInfo, animated: bool) -> int:
    """The full-size copies a render makes before its resize, from the header: a mode other
    than 8-bit L, LA, RGB, RGBA or key-colour transparency (16-bit samples take two), the
    EXIF orientation, a colour profile or CMYK (to sRGB). An animation's frames are counted
    as converted (a palette frame becomes RGBA)."""
    count = 1 if animated else 0
    mode = source.mode
    if mode.startswith("I") or mode == "F":
        count += 2
    elif mode not in ("L", "LA", "RGB", "RGBA") or "transparency" in source.info:
        count += 1
    if info.orientation != 1:
        count += 1
    if source.info.get("icc_profile") or mode == "CMYK":
        count += 1
    return count


def _check_output(canvas: tuple[int, int], spec: TransformSpec) -> None:
    """The output caps (``spec.max_output_*``) on the geometry of the source's canvas, before
    decoding: the same check as the validation plugin's ``output_budget`` step (400
    ``output_too_large``, a placeholder), made before the memory estimate so that an output
    too large to be allowed is named so."""
    geometry = fit_geometry(*canvas, spec)
    if (geometry.width > spec.max_output_width or geometry.height > spec.max_output_height
            or geometry.width * geometry.height > spec.max_output_pixels):
        raise OutputTooLarge(
            f"The output would be {geometry.width}x{geometry.height} pixels; at most "
            f"{spec.max_output_width}x{spec.max_output_height} and {spec.max_output_pixels} "
            f"pixels are allowed.", status=400)
    if geometry.scaled_width * geometry.scaled_height > spec.max_source_pixels:
        raise OutputTooLarge("The transform would need an image larger than allowed.",
                             status=400)


def _check_memory(work: Work, spec: TransformSpec) -> None:
    """Refuse a transform whose memory estimate is over ``spec.max_transform_bytes``."""
    need = work.bytes()
    if need > spec.max_transform_bytes:
        frames = f" x {work.frames} frames" if work.frames > 1 else ""
        raise OverMemoryBudget(
            f"The transform would need about {_mib(need)} of memory "
            f"({work.decoded[0]}x{work.decoded[1]}{frames} decoded, "
            f"{work.output[0]}x{work.output[1]} {work.fmt.upper()} out); at most "
            f"{_mib(spec.max_transform_bytes)} are allowed.")


def _check_canvas(work: Work, info: ImageInfo, spec: TransformSpec) -> None:
    """The pixel budget on the canvas the frames really need (a GIF's header may say less)."""
    if work.canvas != (info.width, info.height):
        _check_limits(attrs.evolve(info, width=work.canvas[0], height=work.canvas[1]), spec)
