"""
Decode, transform and encode images with Pillow: pure functions, bytes in, bytes out.

Everything here runs in the transform thread pool. Nothing touches the reactor, the plugin
manager or a logger, and there is no module state besides an LRU cache of placeholders, so
any number of threads may call :func:`render` at once.

The pipeline of :func:`render`
------------------------------
1. **Open** the bytes with Pillow, restricted to the allowed formats (JPEG, PNG, WebP, GIF,
   AVIF, HEIF when a plugin provides it, TIFF, BMP); read the header only.
2. **Check limits** from the header: frames > ``spec.max_frames`` gives 422
   ``too_many_frames``; width x height x frames > ``spec.max_source_pixels`` gives 422
   ``image_too_large``. Pillow's own guard (``Image.MAX_IMAGE_PIXELS``, left at the
   application's setting) stays on as a backstop and is reported the same way.
3. **Decode**. A JPEG is decoded at 1/2, 1/4 or 1/8 scale (``draft``) when the output is
   small enough: the decoded image is never smaller than the scaled source times
   ``spec.reducing_gap``, so quality matches a full decode followed by ``reduce``. Truncated
   or corrupt data is an error (``LOAD_TRUNCATED_IMAGES`` is never set): 422 ``corrupt_image``.
4. **Orient** by the EXIF Orientation tag (all eight values, the same table as
   ``ImageOps.exif_transpose``), and bring the pixels to 8-bit L, LA, RGB or RGBA
   (16-bit samples are divided by 256; palette transparency becomes alpha).
5. **Steps** from plugins with ``order`` < 500 (:class:`~mediaproxy.models.TransformStep`).
   They see the decoded, oriented image, already converted to sRGB. A JPEG may have been
   decoded at reduced scale, so a step that works in source pixels must scale by
   ``image.size`` against the source size.
6. **Resize** (the built-in step, order 500): trim, then fit (see below), then convert to sRGB
   when no earlier step needed it (converting after shrinking is much cheaper), then pad
   (``contain``).
7. **Steps** with ``order`` >= 500, in order (a step of order 500 runs after the resize).
8. **Encode** without any metadata: no EXIF, ICC profile, XMP or comment is written. An
   image with alpha is flattened onto ``spec.background`` for JPEG; PNG, WebP, AVIF, TIFF
   keep alpha; GIF keeps binary transparency (alpha < 128 is transparent).

Geometry (sharp's semantics)
----------------------------
``spec.width``/``spec.height`` 0 leave that axis free: with one axis given, every fit keeps
the aspect ratio from that axis; with both 0 the size is kept and the image only re-encoded
(no trim either).

``inside``
    Keep the aspect ratio and fit within the box (both sides <= the box).
``outside``
    Keep the aspect ratio and cover the box (both sides >= the box); nothing is cropped.
``cover``
    Keep the aspect ratio, fill the box exactly and crop the overflow at ``spec.position``.
``contain``
    Keep the aspect ratio, fit within the box and pad to exactly the box with
    ``spec.background``, the image placed at ``spec.position``.
``fill``
    Stretch to exactly the box.

Without ``spec.enlarge`` (the default) nothing is ever scaled up:

* ``inside``, ``outside`` and one-axis requests cap the scale factor at 1, so a source
  smaller than the request is returned at its own size;
* ``cover``, ``contain`` and ``fill`` keep the *shape* of the box: a box that does not fit
  inside the source is shrunk, keeping its aspect ratio, until it does, and the mode is
  applied to that box. ``cover`` of a 100x100 source into 300x200 gives 100x67.

Positions: ``centre``, ``north``, ``south``, ``east``, ``west``, ``northeast``,
``northwest``, ``southeast``, ``southwest`` choose the crop window of ``cover`` and the
placement of ``contain``. ``entropy`` (the window whose greyscale histogram has the highest
Shannon entropy) and ``attention`` (the window with the most edges, saturated colour and
skin tones) choose the crop window of ``cover`` from the picture itself; for ``contain``
they centre the image.

Trim (``spec.trim`` 1-100) removes the border that differs from the top-left pixel by at
most ``trim * 2.55`` in every channel, before fitting.

Animation
---------
Animated GIF, WebP, PNG (APNG) and AVIF sources keep every frame, each transformed the same
way (the trim box and smart crop are decided on the first frame), with their durations and
loop count, when the output is GIF, WebP or PNG (APNG). JPEG, AVIF and TIFF outputs get the
first frame only. The frame and pixel limits always count every frame of the source.
"""

from __future__ import annotations

import contextlib
import functools
import io
import itertools
import math
import struct
import zlib
from array import array
from typing import Any, Iterator, Sequence

import attrs
from attrs import frozen
from PIL import ExifTags, Image, ImageChops, ImageCms, ImageDraw, ImageFile, ImageFilter

from mediaproxy.models import Rendered, TransformSpec, TransformStep

__all__ = [
    "CONTENT_TYPES", "FITS", "POSITIONS", "RESIZE_ORDER",
    "Geometry", "ImageInfo",
    "ImageError", "UnsupportedImage", "CorruptImage", "UnsupportedFormat", "ImageTooLarge",
    "TooManyFrames", "InvalidTransform", "OutputTooLarge",
    "fit_geometry", "output_format", "placeholder", "probe", "render",
]

FITS = ("inside", "outside", "cover", "contain", "fill")

#: Gravity positions as (horizontal, vertical) fractions of the free space.
_GRAVITY = {
    "centre": (0.5, 0.5), "north": (0.5, 0.0), "south": (0.5, 1.0),
    "east": (1.0, 0.5), "west": (0.0, 0.5),
    "northeast": (1.0, 0.0), "northwest": (0.0, 0.0),
    "southeast": (1.0, 1.0), "southwest": (0.0, 1.0),
}
POSITIONS = (*_GRAVITY, "entropy", "attention")

#: The order of the built-in resize among :class:`TransformStep` objects.
RESIZE_ORDER = 500

CONTENT_TYPES = {
    "jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp",
    "avif": "image/avif", "gif": "image/gif", "tiff": "image/tiff",
}
_WEB_FORMATS = frozenset({"jpeg", "png", "webp", "avif", "gif"})
_ANIMATED_OUTPUTS = frozenset({"gif", "webp", "png"})
_FORMAT_ALIASES = {"jpg": "jpeg", "tif": "tiff", "mpo": "jpeg", "heic": "heif"}
_PILLOW_FORMAT = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP", "avif": "AVIF",
                  "gif": "GIF", "tiff": "TIFF"}
#: Largest side each encoder can write.
_MAX_SIDE = {"jpeg": 65_500, "webp": 16_383, "gif": 65_535, "avif": 65_536}

#: Pillow format ids allowed as sources, and the name this module reports for each.
_SOURCE_FORMATS = {"JPEG": "jpeg", "MPO": "jpeg", "PNG": "png", "WEBP": "webp", "GIF": "gif",
                   "AVIF": "avif", "HEIF": "heif", "TIFF": "tiff", "BMP": "bmp"}
#: Sources whose extra frames are animation (a multi-page TIFF or MPO renders page 1).
_ANIMATED_SOURCES = frozenset({"GIF", "WEBP", "PNG", "AVIF"})

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

_STANDARD_MODES = frozenset({"L", "LA", "RGB", "RGBA"})
_ALPHA_MODES = frozenset({"LA", "RGBA"})
_PROFILE_MODES = {"RGB ": ("RGB", "RGBA"), "CMYK": ("CMYK",), "GRAY": ("L",)}

#: Longest frame duration in ms (APNG stores n/1000 s in 16 bits).
_MAX_DURATION = 65_535

#: Long side of the copy that entropy and attention crops are scored on.
_SMART_SIDE = 128
_LANCZOS = Image.Resampling.LANCZOS

_PLACEHOLDER_DEFAULT = (300, 200)
_PLACEHOLDER_MAX = 4096


# -- errors ------------------------------------------------------------------------------------

class ImageError(Exception):
    """An image that cannot be served.

    ``status`` is the HTTP status to answer, ``error`` a short snake_case code and
    ``message`` a sentence for the client (never a path or an internal detail).
    """

    status = 422
    error = "unsupported_image"

    def __init__(self, message: str, *, status: int | None = None, error: str | None = None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if error is not None:
            self.error = error

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status}, {self.error!r}, {self.message!r})"


class UnsupportedImage(ImageError):
    """The bytes are not an image Pillow recognises (empty, text, random data)."""

    error = "unsupported_image"


class CorruptImage(ImageError):
    """A recognised image whose data is truncated or damaged."""

    error = "corrupt_image"


class UnsupportedFormat(ImageError):
    """A source in a format outside the allow-list (422), or an output format that cannot be
    written (400)."""

    error = "unsupported_format"


class ImageTooLarge(ImageError):
    """More source pixels (width x height x frames) than allowed."""

    error = "image_too_large"


class TooManyFrames(ImageError):
    """An animation with more frames than allowed."""

    error = "too_many_frames"


class InvalidTransform(ImageError):
    """A transform parameter this module does not know (a caller's bug, or a plugin's)."""

    status = 400
    error = "invalid_transform"


class OutputTooLarge(ImageError):
    """The output is larger than its format can hold (e.g. WebP is limited to 16383 px)."""

    error = "output_too_large"


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


# -- probing -----------------------------------------------------------------------------------

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


def _open(data: bytes) -> ImageFile.ImageFile:
    """Open ``data`` lazily, trying only the allowed formats' parsers."""
    if not data:
        raise UnsupportedImage("The source is empty.")
    Image.init()
    allowed = [fmt for fmt in _SOURCE_FORMATS if fmt in Image.OPEN]
    try:
        return Image.open(io.BytesIO(data), formats=allowed)
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
        frames = image.n_frames if image.format in _ANIMATED_SOURCES else 1
        orientation = _orientation(image, header_only=True)
        width, height = image.size
        # Pillow (11 on) reports a TIFF's size as displayed and turns its pixels when loading
        if orientation in _SWAPS_AXES and image.format != "TIFF":
            width, height = height, width
        return ImageInfo(
            format=_SOURCE_FORMATS[image.format], width=width, height=height,
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


# -- formats -----------------------------------------------------------------------------------

def output_format(source_format: str, has_alpha: bool, requested: str | None = None) -> str:
    """The format to encode to: ``requested`` when given; else the source's format when it
    is a web format (jpeg, png, webp, avif, gif); else png for an image with alpha, jpeg
    without.

    Raises :class:`UnsupportedFormat` (400) when ``requested`` cannot be written.
    """
    if requested:
        name = _canonical_format(requested)
        if name not in CONTENT_TYPES or _PILLOW_FORMAT[name] not in _savable():
            raise UnsupportedFormat(f"Images cannot be converted to {requested!r}.", status=400)
        return name
    source = _canonical_format(source_format)
    if source in _WEB_FORMATS:
        return source
    return "png" if has_alpha else "jpeg"


def _canonical_format(name: str) -> str:
    name = name.lower()
    return _FORMAT_ALIASES.get(name, name)


def _savable() -> dict[str, Any]:
    Image.init()
    return Image.SAVE


# -- geometry ----------------------------------------------------------------------------------

@frozen
class Geometry:
    """How a source maps onto the output.

    ``width`` x ``height`` is the output; ``scaled_width`` x ``scaled_height`` the whole
    source after scaling: larger than the output for ``cover`` (the overflow is cropped),
    smaller for ``contain`` (the rest is padding), equal otherwise.
    """

    width: int
    height: int
    scaled_width: int
    scaled_height: int


def fit_geometry(source_width: int, source_height: int, spec: TransformSpec) -> Geometry:
    """The output geometry of a ``source_width`` x ``source_height`` image under ``spec``
    (``width``, ``height``, ``fit``, ``enlarge``); see the module docstring for the rules."""
    sw, sh, w, h = source_width, source_height, spec.width, spec.height
    if not w and not h:
        return Geometry(sw, sh, sw, sh)
    if not w or not h:
        size = _one_axis(sw, sh, w, h, spec.enlarge)
    elif spec.fit == "inside":
        size = _inside(sw, sh, w, h, spec.enlarge)
    elif spec.fit == "outside":
        size = _outside(sw, sh, w, h, spec.enlarge)
    else:
        box = (w, h) if spec.enlarge else _shrink_box(sw, sh, w, h)
        if spec.fit == "cover":
            return Geometry(*box, *_outside(sw, sh, *box, enlarge=True))
        if spec.fit == "contain":
            return Geometry(*box, *_inside(sw, sh, *box, enlarge=True))
        return Geometry(*box, *box)
    return Geometry(*size, *size)


def _ratio(length: int, numerator: int, denominator: int) -> int:
    """``length * numerator / denominator`` rounded half up, at least 1."""
    return max(1, (2 * length * numerator + denominator) // (2 * denominator))


def _one_axis(sw: int, sh: int, w: int, h: int, enlarge: bool) -> tuple[int, int]:
    if w:
        size = (w, _ratio(sh, w, sw))
    else:
        size = (_ratio(sw, h, sh), h)
    return _no_enlarge(size, sw, sh, enlarge)


def _inside(sw: int, sh: int, w: int, h: int, enlarge: bool) -> tuple[int, int]:
    if w * sh <= h * sw:                       # the width is the tighter constraint
        size = (w, _ratio(sh, w, sw))
    else:
        size = (_ratio(sw, h, sh), h)
    return _no_enlarge(size, sw, sh, enlarge)


def _outside(sw: int, sh: int, w: int, h: int, enlarge: bool) -> tuple[int, int]:
    if w * sh >= h * sw:                       # the width needs the larger scale
        size = (w, _ratio(sh, w, sw))
    else:
        size = (_ratio(sw, h, sh), h)
    return _no_enlarge(size, sw, sh, enlarge)


def _no_enlarge(size: tuple[int, int], sw: int, sh: int, enlarge: bool) -> tuple[int, int]:
    if not enlarge and (size[0] > sw or size[1] > sh):
        return sw, sh
    return size


def _shrink_box(sw: int, sh: int, w: int, h: int) -> tuple[int, int]:
    """The box ``w`` x ``h``, shrunk keeping its aspect ratio until it fits the source."""
    if w <= sw and h <= sh:
        return w, h
    if sw * h <= sh * w:                       # the source's width is the limit
        return sw, min(sh, _ratio(h, sw, w))
    return min(sw, _ratio(w, sh, h)), sh


def _gravity_offset(free_x: int, free_y: int, position: str) -> tuple[int, int]:
    """Where the window (or the image) goes in ``free`` pixels of slack; smart positions
    centre."""
    fx, fy = _GRAVITY.get(position, _GRAVITY["centre"])
    return int(free_x * fx), int(free_y * fy)


# -- rendering ---------------------------------------------------------------------------------

def render(data: bytes, spec: TransformSpec, steps: Sequence[TransformStep] = (),
           request: Any = None) -> Rendered:
    """Decode ``data``, transform it as ``spec`` says and encode the result.

    ``steps`` (from plugins) run by ascending ``order`` around the built-in resize (order
    500); each gets ``step.apply(image, spec, request)`` and returns an image. Raises
    :class:`ImageError` for images that cannot be served and for unknown ``fit``,
    ``position`` or ``format`` values.
    """
    _check_spec(spec)
    with _open(data) as source:
        info = _read_info(source)
        _check_limits(info, spec)
        _check_jpeg_size(data, info)
        fmt = output_format(info.format, info.has_alpha, spec.format)
        pipeline = _Pipeline.build(spec, steps, request)
        if info.frames > 1 and fmt in _ANIMATED_OUTPUTS:
            return _render_animation(source, info, fmt, pipeline)
        _draft(source, spec)
        with _decoding():
            source.load()
        image = pipeline.run(source, _orientation(source))
        return _encode([image], fmt, spec)


def _check_spec(spec: TransformSpec) -> None:
    if spec.fit not in FITS:
        raise InvalidTransform(f"Unknown fit {spec.fit!r}; use one of {', '.join(FITS)}.")
    if spec.position not in POSITIONS:
        raise InvalidTransform(
            f"Unknown position {spec.position!r}; use one of {', '.join(POSITIONS)}.")
    if spec.width < 0 or spec.height < 0:
        raise InvalidTransform("Width and height cannot be negative.")


def _render_animation(source: ImageFile.ImageFile, info: ImageInfo, fmt: str,
                      pipeline: _Pipeline) -> Rendered:
    """Transform every frame alike and encode them as one animation."""
    frames, durations = [], []
    orientation = 1
    for index in range(info.frames):
        with _decoding():
            source.seek(index)
            frame = source.copy()      # the next seek composites onto the decoder's image
        if index == 0:                 # decoded now: a PNG's eXIf may follow its pixels
            orientation = _orientation(source)
        durations.append(_duration(frame.info.get("duration")))
        frames.append(pipeline.run(frame, orientation))
    return _encode(frames, fmt, pipeline.spec, durations=durations,
                   loop=source.info.get("loop"))


def _duration(value: Any) -> int:
    """A frame's duration in whole milliseconds, within what every format can store."""
    try:
        return min(max(0, round(value or 0)), _MAX_DURATION)
    except (TypeError, ValueError, OverflowError):
        return 0


def _draft(source: ImageFile.ImageFile, spec: TransformSpec) -> None:
    """Let the JPEG decoder scale down by 1/2, 1/4 or 1/8 (DCT scaling) while keeping at
    least ``draft_gap`` times the pixels the output needs. Never enlarges; skipped when
    trimming (the content's size is unknown until decoded)."""
    if source.format not in ("JPEG", "MPO") or spec.trim or not (spec.width or spec.height):
        return
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
        source.draft(source.mode, need)


@attrs.define
class _Pipeline:
    """The per-frame work of one render: orient, normalise, steps, resize, steps."""

    spec: TransformSpec
    request: Any
    before: tuple[TransformStep, ...]
    after: tuple[TransformStep, ...]
    _plans: dict[tuple[int, int], _Plan] = attrs.field(factory=dict)

    @classmethod
    def build(cls, spec: TransformSpec, steps: Sequence[TransformStep],
              request: Any) -> _Pipeline:
        ordered = sorted(steps, key=lambda step: step.order)
        return cls(spec, request,
                   before=tuple(step for step in ordered if step.order < RESIZE_ORDER),
                   after=tuple(step for step in ordered if step.order >= RESIZE_ORDER))

    def run(self, frame: Image.Image, orientation: int) -> Image.Image:
        icc = frame.info.get("icc_profile")
        image = _working_mode(frame)
        if orientation in _ORIENT:
            image = image.transpose(_ORIENT[orientation])
        if self.before:
            image = self._apply(self.before, _to_srgb(image, icc))
            icc = None
        image = _working_mode(image)
        plan = self._plan(image)
        image = _to_srgb(plan.scale(image, self.spec), icc)
        image = plan.pad(image, self.spec)
        return self._apply(self.after, image)

    def _plan(self, image: Image.Image) -> _Plan:
        """The resize plan for images of this size, decided once (on the first frame)."""
        plan = self._plans.get(image.size)
        if plan is None:
            plan = self._plans[image.size] = _Plan.decide(image, self.spec)
        return plan

    def _apply(self, steps: tuple[TransformStep, ...], image: Image.Image) -> Image.Image:
        for step in steps:
            image = step.apply(image, self.spec, self.request)
            if not isinstance(image, Image.Image):
                raise TypeError(f"transform step {step.name!r} returned "
                                f"{type(image).__name__}, not a PIL image")
        return image


@frozen
class _Plan:
    """The built-in resize for one input size.

    ``region`` is the part of the input to keep (after trim and ``cover`` crop), ``size`` what
    it is resized to, ``canvas`` the output size and ``offset`` where the resized image sits
    on it (``contain``).
    """

    region: tuple[float, float, float, float]
    size: tuple[int, int]
    canvas: tuple[int, int]
    offset: tuple[int, int] = (0, 0)

    @classmethod
    def decide(cls, image: Image.Image, spec: TransformSpec) -> _Plan:
        whole = (0, 0, *image.size)
        if not (spec.width or spec.height):
            return cls(whole, image.size, image.size)
        trim = _trim_box(image, spec.trim) or whole
        geometry = fit_geometry(trim[2] - trim[0], trim[3] - trim[1], spec)
        canvas = (geometry.width, geometry.height)
        scaled = (geometry.scaled_width, geometry.scaled_height)
        if scaled[0] > canvas[0] or scaled[1] > canvas[1]:   # cover: crop the overflow
            x, y = _cover_origin(image, trim, geometry, spec)
            kx, ky = (trim[2] - trim[0]) / scaled[0], (trim[3] - trim[1]) / scaled[1]
            region = (trim[0] + x * kx, trim[1] + y * ky,
                      trim[0] + (x + canvas[0]) * kx, trim[1] + (y + canvas[1]) * ky)
            return cls(region, canvas, canvas)
        offset = _gravity_offset(canvas[0] - scaled[0], canvas[1] - scaled[1], spec.position)
        return cls(trim, scaled, canvas, offset)

    def scale(self, image: Image.Image, spec: TransformSpec) -> Image.Image:
        """Crop and resize ``image`` (LANCZOS, reducing by whole factors first)."""
        left, top, right, bottom = self.region
        if self.size == (right - left, bottom - top) and all(
                float(v).is_integer() for v in self.region):
            if self.region == (0, 0, *image.size):
                return image
            return image.crop(tuple(int(v) for v in self.region))
        gap = spec.reducing_gap if spec.reducing_gap >= 1 else None
        return image.resize(self.size, _LANCZOS, box=self.region, reducing_gap=gap)

    def pad(self, image: Image.Image, spec: TransformSpec) -> Image.Image:
        """Place ``image`` on a ``canvas`` of ``spec.background`` (``contain``)."""
        if image.size == self.canvas:
            return image
        mode = _canvas_mode(image.mode, spec.background)
        canvas = Image.new(mode, self.canvas, _colour(mode, spec.background))
        canvas.paste(image if image.mode == mode else image.convert(mode), self.offset)
        return canvas


# -- trim and smart crops ----------------------------------------------------------------------

def _trim_box(image: Image.Image, trim: int) -> tuple[int, int, int, int] | None:
    """The bounding box of what differs from the top-left pixel by more than
    ``trim * 2.55``; ``None`` for no trim (off, nothing to remove, or a uniform image)."""
    if not trim:
        return None
    if image.mode in _ALPHA_MODES:      # compare premultiplied: transparent is transparent
        image = image.convert({"LA": "La", "RGBA": "RGBa"}[image.mode])
    corner = Image.new(image.mode, image.size, image.getpixel((0, 0)))
    threshold = min(255, round(trim * 2.55))
    lut = [0] * (threshold + 1) + [255] * (255 - threshold)
    diff = ImageChops.difference(image, corner)
    box = diff.point(lut * len(diff.getbands())).getbbox(alpha_only=False)
    if box is None or box == (0, 0, *image.size):
        return None
    return box


def _cover_origin(image: Image.Image, trim: tuple[int, int, int, int], geometry: Geometry,
                  spec: TransformSpec) -> tuple[int, int]:
    """The top-left of the ``cover`` crop window in the scaled image."""
    free_x = geometry.scaled_width - geometry.width
    free_y = geometry.scaled_height - geometry.height
    if spec.position in _GRAVITY:
        return _gravity_offset(free_x, free_y, spec.position)
    horizontal = free_x >= free_y
    along = _smart_offset(image, trim, geometry, spec, horizontal)
    return (along, free_y // 2) if horizontal else (free_x // 2, along)


def _smart_offset(image: Image.Image, trim: tuple[int, int, int, int], geometry: Geometry,
                  spec: TransformSpec, horizontal: bool) -> int:
    """The offset along the overflowing axis of the best-scoring window (``entropy`` or
    ``attention``), scored on a copy at most 128 px on its long side."""
    k = min(1.0, _SMART_SIDE / max(geometry.scaled_width, geometry.scaled_height))
    small_size = (max(1, round(geometry.scaled_width * k)),
                  max(1, round(geometry.scaled_height * k)))
    small = image.resize(small_size, Image.Resampling.BILINEAR, box=trim, reducing_gap=2.0)
    small = _flatten(small, spec.background).convert("RGB")
    length = small_size[0] if horizontal else small_size[1]
    window = round((geometry.width if horizontal else geometry.height) * k)
    window = max(1, min(length, window))
    score = _entropy_scores if spec.position == "entropy" else _attention_scores
    best = _best(score(small, window, horizontal))
    free = (geometry.scaled_width - geometry.width if horizontal
            else geometry.scaled_height - geometry.height)
    return min(free, round(best / k))


def _best(scores: Sequence[float]) -> int:
    """The index of the highest score; ties go to the one nearest the middle."""
    middle = len(scores) - 1
    return max(range(len(scores)), key=lambda i: (scores[i], -abs(2 * i - middle)))


def _windows(size: tuple[int, int], window: int, horizontal: bool) -> Iterator[tuple]:
    width, height = size
    length = width if horizontal else height
    for start in range(length - window + 1):
        yield (start, 0, start + window, height) if horizontal else \
            (0, start, width, start + window)


def _entropy_scores(small: Image.Image, window: int, horizontal: bool) -> list[float]:
    """Shannon entropy of the greyscale histogram of every window position."""
    grey = small.convert("L")
    return [grey.crop(box).entropy() for box in _windows(grey.size, window, horizontal)]


def _attention_scores(small: Image.Image, window: int, horizontal: bool) -> list[float]:
    """Saliency of every window position: detail (local contrast) + saturation (weighted by
    brightness) + twice the skin-tone mask, summed over the window."""
    grey = small.convert("L")
    detail = ImageChops.difference(grey, grey.filter(ImageFilter.BoxBlur(1)))
    _, saturation, value = small.convert("HSV").split()
    vivid = ImageChops.multiply(saturation, value)
    luma, cb, cr = small.convert("YCbCr").split()
    skin = ImageChops.multiply(
        ImageChops.multiply(luma.point(_SKIN_LUMA), cb.point(_SKIN_CB)), cr.point(_SKIN_CR))
    profile = [d + v + 2 * s for d, v, s in
               zip(*(_projection(channel, horizontal) for channel in (detail, vivid, skin)))]
    sums = [0.0, *itertools.accumulate(profile)]
    return [sums[start + window] - sums[start] for start in range(len(profile) - window + 1)]


def _band_lut(low: int, high: int) -> list[int]:
    """A point table: 255 for ``low`` <= v <= ``high``, else 0."""
    return [255 if low <= v <= high else 0 for v in range(256)]


#: Skin tones in JPEG's YCbCr (Chai & Ngan's Cb/Cr box), excluding the darkest pixels.
_SKIN_LUMA, _SKIN_CB, _SKIN_CR = _band_lut(40, 255), _band_lut(77, 127), _band_lut(133, 173)


def _projection(channel: Image.Image, horizontal: bool) -> array:
    """Mean of each column (``horizontal``) or row of an L image, as floats."""
    size = (channel.width, 1) if horizontal else (1, channel.height)
    return array("f", channel.convert("F").resize(size, Image.Resampling.BOX).tobytes())


# -- colour ------------------------------------------------------------------------------------

def _working_mode(image: Image.Image) -> Image.Image:
    """8-bit L, LA, RGB or RGBA, or CMYK (left for :func:`_to_srgb`); no-op when already
    so. 16-bit samples are divided by 256; palette or key-colour transparency becomes alpha."""
    mode = image.mode
    if mode in ("L", "RGB") and "transparency" in image.info:
        return image.convert(mode + "A" if mode == "L" else "RGBA")
    if mode in _STANDARD_MODES or mode == "CMYK":
        return image
    if mode == "LAB":
        return ImageCms.applyTransform(image, ImageCms.buildTransform(
            ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB"))
    if mode.startswith("I"):                    # I;16, I;16B, I;16L, I;16N, I
        return image.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    if mode in ("1", "F"):
        return image.convert("L")
    if mode == "La":
        return image.convert("LA")
    return image.convert("RGBA" if image.has_transparency_data else "RGB")


def _to_srgb(image: Image.Image, icc: bytes | None) -> Image.Image:
    """Convert to sRGB through the embedded ICC profile ``icc`` when there is one that fits
    the mode; CMYK and LAB without a usable profile are converted plainly."""
    if icc:
        converted = _apply_profile(image, icc)
        if converted is not None:
            return converted
    if image.mode == "CMYK":
        return image.convert("RGB")
    return _working_mode(image)


def _apply_profile(image: Image.Image, icc: bytes) -> Image.Image | None:
    """``image`` converted from profile ``icc`` to sRGB; ``None`` when the profile is broken,
    already sRGB, or of another colour space than the image."""
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        space = profile.profile.xcolor_space
        description = (profile.profile.profile_description or "").lower()
    except (OSError, ImageCms.PyCMSError, ValueError, TypeError):
        return None
    base, alpha = image, None
    if image.mode == "LA":
        base, alpha = image.getchannel("L"), image.getchannel("A")
    if base.mode not in _PROFILE_MODES.get(space, ()) or (
            space == "RGB " and description.startswith("srgb")):
        return None
    out_mode = "RGBA" if base.mode == "RGBA" else "RGB"
    try:
        transform = ImageCms.buildTransform(
            profile, ImageCms.createProfile("sRGB"), base.mode, out_mode)
        converted = ImageCms.applyTransform(base, transform)
    except (ImageCms.PyCMSError, OSError, ValueError):
        return None
    if alpha is not None:
        converted.putalpha(alpha)
    return converted


def _flatten(image: Image.Image, background: Sequence[int]) -> Image.Image:
    """``image`` composited onto the opaque ``background`` colour when it has alpha."""
    if image.mode not in _ALPHA_MODES:
        return image
    mode = "L" if image.mode == "LA" and _is_grey(background) else "RGB"
    canvas = Image.new(mode, image.size, _colour(mode, background))
    canvas.paste(image.getchannel("L") if mode == "L" else image, mask=image.getchannel("A"))
    return canvas


def _is_grey(colour: Sequence[int]) -> bool:
    return colour[0] == colour[1] == colour[2]


def _canvas_mode(mode: str, background: Sequence[int]) -> str:
    """The mode that holds an image of ``mode`` on ``background`` without loss."""
    alpha = mode in _ALPHA_MODES or background[3] < 255
    if mode in ("L", "LA") and _is_grey(background):
        return "LA" if alpha else "L"
    return "RGBA" if alpha else "RGB"


def _colour(mode: str, background: Sequence[int]) -> int | tuple[int, ...]:
    """``background`` (RGBA) as a fill value of ``mode``."""
    return {"L": background[0], "LA": (background[0], background[3]),
            "RGB": tuple(background[:3]), "RGBA": tuple(background)}[mode]


# -- encoding ----------------------------------------------------------------------------------

def _encode(frames: list[Image.Image], fmt: str, spec: TransformSpec,
            durations: Sequence[int] = (), loop: int | None = None) -> Rendered:
    """Encode ``frames`` (one, or an animation) as ``fmt`` with no metadata."""
    frames = _prepare_frames(frames, fmt, spec.background)
    width, height = frames[0].size
    if max(width, height) > _MAX_SIDE.get(fmt, 2**31 - 1):
        raise OutputTooLarge(
            f"A {width}x{height} image is too large for {fmt.upper()}.")
    options = _encoder_options(fmt, spec)
    if len(frames) > 1:
        options.update(_animation_options(frames, fmt, durations, loop))
    buffer = io.BytesIO()
    frames[0].save(buffer, _PILLOW_FORMAT[fmt], **options)
    body = buffer.getvalue()
    if fmt == "webp" and len(frames) > 1 and frames[0].mode == "RGBA":
        body = _webp_alpha_flag(body)
    return Rendered(body=body, content_type=CONTENT_TYPES[fmt], format=fmt,
                    width=width, height=height, frames=len(frames))


def _webp_alpha_flag(body: bytes) -> bytes:
    """Set the alpha flag of an animated WebP's VP8X header.

    libwebp's animation encoder crops each frame to the area that changes, starting from a
    transparent canvas, and sets the flag only when a cropped frame still holds alpha: a
    first frame with a transparent border ends up flagged opaque, and decoders that trust
    the flag (Pillow among them) fill the border with black.
    """
    if body[12:16] != b"VP8X":
        return body
    return body[:20] + bytes([body[20] | 0x10]) + body[21:]


def _prepare_frames(frames: list[Image.Image], fmt: str,
                    background: Sequence[int]) -> list[Image.Image]:
    """Bring frames to a mode ``fmt`` stores, all alike, with their metadata dropped."""
    frames = [_own(_to_srgb(_working_mode(frame), None)) for frame in frames]
    if fmt == "jpeg":
        frames = [_flatten(frame, background) for frame in frames]
    elif fmt == "gif":
        transparent = any(_has_transparent_pixels(frame) for frame in frames)
        frames = [_to_palette(frame, transparent) for frame in frames]
    elif fmt == "webp" or len({frame.mode for frame in frames}) > 1:
        alpha = any(frame.mode in _ALPHA_MODES for frame in frames)
        frames = [_rgb(frame, alpha) for frame in frames]
    for frame in frames:
        transparency = frame.info.get("transparency") if frame.mode == "P" else None
        frame.info = {} if transparency is None else {"transparency": transparency}
    return frames


def _own(image: Image.Image) -> Image.Image:
    """A plain image for the encoder: saving a decoder's own image object would let Pillow
    carry over source tags (TIFF) or frames (animated files)."""
    return image.copy() if isinstance(image, ImageFile.ImageFile) else image


def _rgb(image: Image.Image, alpha: bool) -> Image.Image:
    mode = "RGBA" if alpha else "RGB"
    return image if image.mode == mode else image.convert(mode)


def _has_transparent_pixels(image: Image.Image) -> bool:
    return image.mode in _ALPHA_MODES and image.getchannel("A").getextrema()[0] < 128


def _to_palette(image: Image.Image, transparent: bool) -> Image.Image:
    """A GIF frame: L as is, colour quantised to 256 colours; with ``transparent``, index
    255 marks the pixels whose alpha is below 128."""
    if image.mode == "L" and not transparent:
        return image
    if not transparent:
        return _rgb(image, False).quantize(256)
    alpha = image.getchannel("A") if image.mode in _ALPHA_MODES else None
    paletted = _rgb(image, False).quantize(255)
    if alpha is not None:
        paletted.paste(255, mask=alpha.point([255] * 128 + [0] * 128, "1"))
    paletted.info["transparency"] = 255
    return paletted


def _encoder_options(fmt: str, spec: TransformSpec) -> dict[str, Any]:
    if fmt == "jpeg":
        return {"quality": spec.quality, "progressive": spec.progressive, "optimize": False}
    if fmt == "png":
        return {"compress_level": spec.png_compress_level}
    if fmt == "webp":
        return {"quality": spec.quality, "method": spec.webp_method}
    if fmt == "avif":
        return {"quality": spec.quality, "speed": spec.avif_speed}
    if fmt == "tiff":
        return {"compression": "tiff_adobe_deflate"}
    return {}


def _animation_options(frames: list[Image.Image], fmt: str, durations: Sequence[int],
                       loop: int | None) -> dict[str, Any]:
    """``save_all`` options. A source without a loop count plays once; GIF says so by
    leaving the loop extension out, WebP and APNG with a count of 1."""
    options: dict[str, Any] = {"save_all": True, "append_images": frames[1:],
                               "duration": list(durations) or 100}
    if fmt == "gif":
        if loop is not None:
            options["loop"] = loop
        if "transparency" in frames[0].info:
            options["disposal"] = 2          # clear to transparent between full frames
    else:
        options["loop"] = 1 if loop is None else loop
    return options


# -- placeholders ------------------------------------------------------------------------------

def placeholder(width: int, height: int, fmt: str | None = None,
                background: Sequence[int] = (220, 220, 220, 255)) -> Rendered:
    """A plain light image with a frame and diagonals, ``width`` x ``height`` (0 leaves an
    axis to the 4:3 ratio, both 0 give 300x200; each side at most 4096) in ``fmt`` (``None``:
    jpeg). Raises :class:`UnsupportedFormat` for a format that cannot be written."""
    return _placeholder(max(0, int(width)), max(0, int(height)),
                        output_format("jpeg", False, fmt), tuple(background))


@functools.lru_cache(maxsize=64)
def _placeholder(width: int, height: int, fmt: str,
                 background: tuple[int, int, int, int]) -> Rendered:
    size = _placeholder_size(width, height)
    mode = "RGBA" if background[3] < 255 else "RGB"
    image = Image.new(mode, size, _colour(mode, background))
    ink = tuple(max(0, c - 28) for c in background[:3]) + (max(background[3], 96),)
    line = max(1, min(size) // 100)
    draw = ImageDraw.Draw(image)
    draw.line((0, 0, size[0] - 1, size[1] - 1), fill=_colour(mode, ink), width=line)
    draw.line((0, size[1] - 1, size[0] - 1, 0), fill=_colour(mode, ink), width=line)
    draw.rectangle((0, 0, size[0] - 1, size[1] - 1), outline=_colour(mode, ink), width=line)
    return _encode([image], fmt, TransformSpec(background=background))


def _placeholder_size(width: int, height: int) -> tuple[int, int]:
    if not width and not height:
        width, height = _PLACEHOLDER_DEFAULT
    elif not height:
        height = _ratio(width, 3, 4)
    elif not width:
        width = _ratio(height, 4, 3)
    return min(width, _PLACEHOLDER_MAX), min(height, _PLACEHOLDER_MAX)
