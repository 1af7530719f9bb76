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

from typing import Any, Sequence

import attrs
from attrs import frozen
from PIL import Image, ImageFile

from mediaproxy.models import Rendered, TransformSpec, TransformStep

from .colour import _canvas_mode, _colour, _to_srgb, _working_mode
from .crop import _cover_origin, _trim_box
from .decode import (
    _ORIENT, ImageInfo, _check_jpeg_size, _check_limits, _check_spec, _decoding, _draft,
    _open, _orientation, _read_info, probe,
)
from .encode import _duration, _encode
from .errors import (
    CorruptImage, ImageError, ImageTooLarge, InvalidTransform, OutputTooLarge,
    TooManyFrames, UnsupportedFormat, UnsupportedImage,
)
from .formats import _ANIMATED_OUTPUTS, CONTENT_TYPES, output_format
from .geometry import (
    FITS, POSITIONS, Geometry, _gravity_offset, fit_geometry,
)
from .placeholders import placeholder

__all__ = [
    "CONTENT_TYPES", "FITS", "POSITIONS", "RESIZE_ORDER",
    "Geometry", "ImageInfo",
    "ImageError", "UnsupportedImage", "CorruptImage", "UnsupportedFormat", "ImageTooLarge",
    "TooManyFrames", "InvalidTransform", "OutputTooLarge",
    "fit_geometry", "output_format", "placeholder", "probe", "render",
]

#: The order of the built-in resize among :class:`TransformStep` objects.
RESIZE_ORDER = 500

_LANCZOS = Image.Resampling.LANCZOS


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
