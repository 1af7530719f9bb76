"""
Rendering: :func:`render` runs the pipeline described in :mod:`mediaproxy.imaging` over one
source, frame by frame for an animation.

The decode guard (:mod:`.decode`) opens and checks the source; :class:`_Pipeline` does the
per-frame work (orient, working mode, plugin steps, the built-in resize, plugin steps), with
the resize decided once per input size as a :class:`_Plan` (trim, fit, ``cover`` window,
``contain`` padding); :mod:`.encode` writes the result.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import attrs
from attrs import frozen
from PIL import Image, ImageFile

from mediaproxy.models import Output, Rendered, TransformSpec, TransformStep

from .budget import Deadline, Work
from .colour import _canvas_mode, _colour, _to_srgb, _working_mode
from .crop import _cover_origin, _trim_box
from .decode import (
    _ORIENT, ImageInfo, _check_canvas, _check_jpeg_scans, _check_jpeg_size, _check_limits,
    _check_memory, _check_output, _work, _check_spec, _decode_scale, _decoding, _draft,
    _open, _orientation, _read_info,
)
from .decoded import Decoded, DecodedCache, first_decode_finer
from .strips import resize as resize_in_strips
from .encode import _duration, _encode
from .errors import OutputTooLarge, OverMemoryBudget
from .formats import _ANIMATED_OUTPUTS, output_format
from .geometry import _gravity_offset, fit_geometry

#: The order of the built-in resize among :class:`TransformStep` objects.
RESIZE_ORDER = 500

_LANCZOS = Image.Resampling.LANCZOS
#: Outputs of at least this many pixels resize with ``spec.large_resample`` (bicubic by
#: default: measured, after the encoder, as LANCZOS within 0.02 dB: docs/performance.md,
#: "Decode once, render many"), smaller ones with LANCZOS.
LARGE_OUTPUT_PIXELS = 250_000
_LARGE_FILTERS = {"lanczos": _LANCZOS, "bicubic": Image.Resampling.BICUBIC}


def render(data: bytes, spec: TransformSpec, steps: Sequence[TransformStep] = (),
           request: Any = None, *, clock: Callable[[], float] | None = None,
           cache: DecodedCache | None = None, output: Output | None = None) -> Rendered:
    """Decode ``data``, transform it as ``spec`` says and encode the result.

    ``steps`` (from plugins) run by ascending ``order`` around the built-in resize (order
    500); each gets ``step.apply(image, spec, request)`` and returns an image. Raises
    :class:`ImageError` for images that cannot be served and for unknown ``fit``,
    ``position`` or ``format`` values; :class:`TransformTimeout` once ``spec.deadline`` (a
    ``clock()`` time, :func:`time.monotonic` by default) has passed, checked between phases,
    frames and decode chunks (see :mod:`.budget`); :class:`OverMemoryBudget` when
    :func:`estimate_bytes` is over ``spec.max_transform_bytes``, before decoding.

    With a ``cache`` (:mod:`.decoded`), a still reuses the decoded pixels of ``data`` kept
    there when they are fine enough, and leaves its own decode there otherwise.

    With an ``output`` (a plugin's :class:`~mediaproxy.models.Output`), the still (an
    animation's first frame) is rendered under ``output.spec`` when it has one and handed to
    ``output.encode`` instead of the built-in encoder.
    """
    if output is not None:
        return _render_output(data, spec, steps, request, clock, cache, output)
    source, info, fmt, scans, pipeline = _opened(data, spec, steps, request, clock, cache)
    with source:
        if pipeline.work.frames > 1:
            return _render_animation(source, info, fmt, pipeline)
        image = _render_still(data, source, info, pipeline, cache, scans)
        return _encode([image], fmt, spec, deadline=pipeline.deadline)


def _render_output(data: bytes, spec: TransformSpec, steps: Sequence[TransformStep],
                   request: Any, clock: Callable[[], float] | None,
                   cache: DecodedCache | None, output: Output) -> Rendered:
    """:func:`render` for a plugin's output: one still under the output's spec, the layout
    box of the request's own spec, then ``output.encode``."""
    full, spec = spec, output.spec or spec
    source, info, _, scans, pipeline = _opened(data, spec, steps, request, clock, cache)
    with source:
        box = fit_geometry(info.width, info.height, full)
        image = _render_still(data, source, info, pipeline, cache, scans)
        pipeline.deadline.check("before the output")
        return output.encode(image, spec, request, (box.width, box.height))


def _opened(data: bytes, spec: TransformSpec, steps: Sequence[TransformStep], request: Any,
            clock: Callable[[], float] | None, cache: DecodedCache | None):
    """The opening every render shares: the spec checked, the deadline started, the source
    opened, its header checked against the limits and its work against the memory budget,
    before any pixel is decoded. ``(source, info, output format, JPEG scans, pipeline)``; the
    caller closes the source (``with source:``), this closes it when a check refuses. A plain
    function, not a generator context manager: that cost 4 us a render, 1 % of the smallest."""
    _check_spec(spec)
    deadline = Deadline(spec.deadline, clock)
    deadline.check("before decoding")
    source = _open(data, deadline)
    try:
        info, fmt, work, scans = _inspect(data, source, spec, cache, steps)
        _check_memory(work, spec)
        _check_canvas(work, info, spec)
        pipeline = _Pipeline.build(spec, steps, request, deadline)
    except BaseException:
        source.close()
        raise
    pipeline.work = work
    return source, info, fmt, scans, pipeline


def _render_still(data: bytes, source: ImageFile.ImageFile, info: ImageInfo,
                  pipeline: _Pipeline, cache: DecodedCache | None,
                  scans: tuple[int, int] | None) -> Image.Image:
    """One still (an animation's first frame), through the decoded cache when there is one."""
    if cache is not None and cache.enabled and info.frames == 1:
        return _render_cached(data, source, info, pipeline, cache, scans)
    if _draft(source, pipeline.spec):  # the layout is still decided on the source's size
        pipeline.source_size = (info.width, info.height)
    with _decoding():
        source.load()
    return pipeline.run(source, _orientation(source))


@frozen
class Estimate:
    """What a render of one source under one spec will take and make, known before decoding:
    ``bytes``, an upper bound of its peak memory, and ``format``, the output format it will
    write (the negotiated token or ``None`` resolved against this source)."""

    bytes: int
    format: str


def estimate(data: bytes, spec: TransformSpec, *, enforce: bool = False,
             cache: DecodedCache | None = None,
             steps: Sequence[TransformStep] = ()) -> Estimate:
    """The :class:`Estimate` of rendering ``data`` under ``spec``, from the header and the
    file's structure: cheap, nothing is decoded. Raises :class:`ImageError` for what
    :func:`render` refuses before decoding (not an image, over the frame, pixel or scan
    budgets); with ``enforce``, also :class:`OverMemoryBudget` when the bytes are over
    ``spec.max_transform_bytes``. With an enabled ``cache``, a still's decode is counted
    at the finer scale of a source's first decode (:func:`.decoded.first_decode_finer`).
    ``steps``: the render's plugin steps, whose declared ``memory`` is counted."""
    _check_spec(spec)
    with _open(data) as source:
        _, fmt, work, _ = _inspect(data, source, spec, cache, steps)
    if enforce:
        _check_memory(work, spec)
    return Estimate(work.bytes(), fmt)


def estimate_bytes(data: bytes, spec: TransformSpec, *, enforce: bool = False,
                   steps: Sequence[TransformStep] = ()) -> int:
    """An upper bound of the bytes :func:`render` of ``data`` under ``spec`` (and ``steps``)
    allocates at its peak (decoded frames, working copies, output frames, conversions,
    encoder buffers and the steps' declared ``memory``): :func:`estimate`'s ``bytes``."""
    return estimate(data, spec, enforce=enforce, steps=steps).bytes


def _inspect(data: bytes, source: ImageFile.ImageFile, spec: TransformSpec,
             cache: DecodedCache | None = None, steps: Sequence[TransformStep] = ()
             ) -> tuple[ImageInfo, str, Work, tuple[int, int] | None]:
    """The header checks, the output format, the work ahead (with the ``steps``' declared
    memory) and a JPEG's scan and segment counts, before decoding (the counts of a source
    the decoded cache holds are its entry's: the walk is not made again)."""
    info = _read_info(source)
    _check_limits(info, spec)
    _check_jpeg_size(data, info)
    held = cache.find(data) if cache is not None and cache.enabled else None
    scans = _check_jpeg_scans(data, info, spec, held.scans if held is not None else None)
    fmt = output_format(info.format, info.has_alpha, spec.format)
    if info.frames > 1 and spec.animated_format:     # fmt=auto's choice for an animation
        fmt = output_format(info.format, info.has_alpha, spec.animated_format)
    animated = info.frames > 1 and fmt in _ANIMATED_OUTPUTS
    finer = first_decode_finer(info.pixels) if cache is not None and cache.enabled else 0
    work = _work(data, source, info, spec, fmt, animated, finer)
    if steps:
        work = attrs.evolve(work, steps=(
            max((s.memory for s in steps if s.order < RESIZE_ORDER), default=0),
            max((s.memory for s in steps if s.order >= RESIZE_ORDER), default=0)))
    _check_output(work.canvas, spec)
    if animated and fmt == "avif":
        _check_avif_animation(work, spec)
    return info, fmt, work, scans


def _check_avif_animation(work: Work, spec: TransformSpec) -> None:
    """libavif encodes an animation's frames in one call that cannot be stopped at the
    deadline (:func:`~.encode._encode`): all its frames together may have at most the pixels
    of the largest still (``max_output_pixels``), so it is no longer a step than a still's
    encode. More is refused (400 ``output_too_large``), naming the formats that take it."""
    (width, height), frames = work.output, work.frames
    if frames * width * height > spec.max_output_pixels:
        raise OutputTooLarge(
            f"An animated AVIF of {frames} frames of {width}x{height} would be "
            f"{frames * width * height} pixels; at most {spec.max_output_pixels} are allowed "
            f"in one AVIF animation (ask for fmt=webp or fmt=gif, or a smaller size).",
            status=400)


def _render_cached(data: bytes, source: ImageFile.ImageFile, info: ImageInfo,
                   pipeline: _Pipeline, cache: DecodedCache,
                   scans: tuple[int, int] | None = None) -> Image.Image:
    """A still through the decoded cache: the entry of ``data`` when its scale is fine
    enough for this render's own shrink-on-load scale (reduced to that scale), else a decode
    that becomes the entry; then the pipeline's work on a copy-on-write view of it."""
    scale = _decode_scale(source, pipeline.spec)
    with cache.exclusive(data, pipeline.deadline):
        entry = cache.get(data, scale)
        if entry is None:          # a new source is decoded finer, for its next sizes
            finer = first_decode_finer(info.pixels) if cache.find(data) is None else 0
            entry = _decode(source, info, pipeline, _decode_scale(source, pipeline.spec, finer),
                            scans)
            cache.put(data, entry)
    pipeline.deadline.check("after decoding")
    image = entry.at(scale)
    if scale > 1:                      # the layout is still decided on the source's size
        pipeline.source_size = (info.width, info.height)
    return pipeline.finish(image, entry.icc, shared=entry.image)


def _decode(source: ImageFile.ImageFile, info: ImageInfo, pipeline: _Pipeline,
            scale: int, scans: tuple[int, int] | None = None) -> Decoded:
    """Decode ``source`` at ``1 / scale`` (JPEG shrink-on-load), upright and in a working
    mode, as a plain image that owns its pixels (no file object, no deadline)."""
    if scale > 1:
        stored = source.size
        source.draft(source.mode, (stored[0] // scale, stored[1] // scale))
        if source.size == stored:
            scale = 1
    with _decoding():
        source.load()
    image, icc = pipeline.prepare(source, _orientation(source))
    if image is source:                # the decoder's object holds the file: keep its pixels
        image = source._new(source.im)
    return Decoded(image, icc, scale, (info.width, info.height), scans)


def _render_animation(source: ImageFile.ImageFile, info: ImageInfo, fmt: str,
                      pipeline: _Pipeline) -> Rendered:
    """Transform every frame alike and encode them as one animation."""
    frames, durations = [], []
    orientation = 1
    for index in range(info.frames):
        pipeline.deadline.check(f"frame {index + 1} of {info.frames}")
        with _decoding():
            source.seek(index)
            pipeline.check_frame(source.size, index)     # before the frame is loaded
            frame = source.copy()      # the next seek composites onto the decoder's image
        if index == 0:                 # decoded now: a PNG's eXIf may follow its pixels
            orientation = _orientation(source)
        durations.append(_duration(frame.info.get("duration")))
        frames.append(pipeline.run(frame, orientation))
    return _encode(frames, fmt, pipeline.spec, durations=durations,
                   loop=source.info.get("loop"), deadline=pipeline.deadline)


@attrs.define
class _Pipeline:
    """The per-frame work of one render: orient, normalise, steps, resize, steps."""

    spec: TransformSpec
    request: Any
    before: tuple[TransformStep, ...]
    after: tuple[TransformStep, ...]
    deadline: Deadline = attrs.field(factory=lambda: Deadline(None))
    #: the memory estimate the render was admitted with (``None``: not checked)
    work: Work | None = None
    #: the source's size as displayed (after EXIF orientation), before any shrink-on-load
    source_size: tuple[int, int] | None = None
    _plans: dict[tuple[int, int], _Plan] = attrs.field(factory=dict)

    @classmethod
    def build(cls, spec: TransformSpec, steps: Sequence[TransformStep],
              request: Any, deadline: Deadline | None = None) -> _Pipeline:
        ordered = sorted(steps, key=lambda step: step.order)
        return cls(spec, request,
                   before=tuple(step for step in ordered if step.order < RESIZE_ORDER),
                   after=tuple(step for step in ordered if step.order >= RESIZE_ORDER),
                   deadline=deadline or Deadline(None))

    def run(self, frame: Image.Image, orientation: int) -> Image.Image:
        image, icc = self.prepare(frame, orientation)
        return self.finish(image, icc)

    def prepare(self, frame: Image.Image, orientation: int) -> tuple[Image.Image, bytes | None]:
        """The decoded ``frame`` upright and in a working mode, and its colour profile: what
        the decoded cache keeps (:mod:`.decoded`)."""
        icc = frame.info.get("icc_profile")
        image = _working_mode(frame)
        if orientation in _ORIENT:
            image = image.transpose(_ORIENT[orientation])
        return image, icc

    def finish(self, image: Image.Image, icc: bytes | None,
               shared: Image.Image | None = None) -> Image.Image:
        """Steps, resize, sRGB, pad, steps. ``shared`` is an image other threads may hold
        (a decoded cache entry): Pillow's operations leave it alone, and it is copied before
        a plugin step or the encoder gets it (either may change an image object)."""
        decoded = image.size
        if self.before:
            if image is shared:
                image = image.copy()
            image = self._apply(self.before, _to_srgb(image, icc))
            icc = None
        image = _working_mode(image)
        self.deadline.check("resizing")
        plan = self._plan(image, decoded)
        image = _to_srgb(plan.scale(image, self.spec), icc)
        image = _flip(plan.pad(image, self.spec), self.spec.flip)
        if image is shared:
            image = image.copy()
        return self._apply(self.after, image)

    def _plan(self, image: Image.Image, decoded: tuple[int, int]) -> _Plan:
        """The resize plan for images of this size, decided once (on the first frame); its
        output is checked against the memory budget again when it is larger than estimated
        (a trim box's size is known only now)."""
        plan = self._plans.get(image.size)
        if plan is None:
            plan = _Plan.decide(image, self.spec, self._logical_size(image.size, decoded))
            work = self.work
            if work is not None and plan.canvas[0] * plan.canvas[1] > (
                    work.output[0] * work.output[1]):
                self.work = attrs.evolve(work, output=plan.canvas)
                _check_memory(self.work, self.spec)
            self._plans[image.size] = plan
        return plan

    def check_frame(self, size: tuple[int, int], index: int) -> None:
        """A frame's real size, at ``seek()``, before it is loaded: never larger than the
        canvas the estimate used."""
        work = self.work
        if work is not None and (size[0] > work.canvas[0] or size[1] > work.canvas[1]):
            raise OverMemoryBudget(
                f"Frame {index + 1} is {size[0]}x{size[1]}, larger than the "
                f"{work.canvas[0]}x{work.canvas[1]} the file announced.")

    def _logical_size(self, size: tuple[int, int], decoded: tuple[int, int]) -> tuple[int, int]:
        """The size ``size`` stands for in source pixels. A JPEG decoded at 1/2, 1/4 or 1/8
        scale (shrink-on-load) has fewer pixels than the source, and its rounded-up size has
        a slightly different aspect ratio: the geometry must come from the source's own size,
        only the resampling works on the reduced pixels. A step (order < 500) that changed
        the size is taken at the same scale."""
        source = self.source_size
        if source is None or decoded == source:
            return size
        if size == decoded:
            return source
        return (max(1, round(size[0] * source[0] / decoded[0])),
                max(1, round(size[1] * source[1] / decoded[1])))

    def _apply(self, steps: tuple[TransformStep, ...], image: Image.Image) -> Image.Image:
        for step in steps:
            self.deadline.check(f"step {step.name}")
            image = step.apply(image, self.spec, self.request)
            if not isinstance(image, Image.Image):
                raise TypeError(f"transform step {step.name!r} returned "
                                f"{type(image).__name__}, not a PIL image")
        return image


def _within(box: tuple[int, int, int, int], crop: tuple[int, int, int, int],
            size: tuple[int, int], logical: tuple[int, int]) -> tuple[int, int, int, int]:
    """``box`` narrowed to the manual ``crop`` (in ``logical`` source pixels, for an image of
    ``size`` pixels), clamped to the image; ``box`` itself when nothing of the crop is left
    (thumbor ignores such a crop too)."""
    kx, ky = size[0] / logical[0], size[1] / logical[1]
    left = max(box[0], min(size[0], round(crop[0] * kx)))
    top = max(box[1], min(size[1], round(crop[1] * ky)))
    right = min(box[2], round(crop[2] * kx))
    bottom = min(box[3], round(crop[3] * ky))
    if left >= right or top >= bottom:
        return box
    return (left, top, right, bottom)


_FLIPS = {"h": (Image.Transpose.FLIP_LEFT_RIGHT,), "v": (Image.Transpose.FLIP_TOP_BOTTOM,),
          "hv": (Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.FLIP_TOP_BOTTOM)}


def _flip(image: Image.Image, flip: str) -> Image.Image:
    """``image`` mirrored left-right (``h``), top-bottom (``v``) or both (``hv``)."""
    for method in _FLIPS.get(flip, ()):
        image = image.transpose(method)
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
    #: a manual crop's box: resampling reads nothing outside it (no bleed into the edges)
    within: tuple[int, int, int, int] | None = None

    @classmethod
    def decide(cls, image: Image.Image, spec: TransformSpec,
               logical: tuple[int, int] | None = None) -> _Plan:
        """The plan for ``image``, whose size stands for ``logical`` source pixels (a JPEG
        decoded at reduced scale): the geometry is decided on the source's size, the crop
        region is in ``image``'s pixels. Trim applies with or without a width or height."""
        whole = (0, 0, *image.size)
        logical = logical or image.size
        trim = _trim_box(image, spec.trim) or whole
        within = None
        if spec.crop:
            trim = _within(trim, spec.crop, image.size, logical)
            within = trim if trim != whole else None
        if trim == whole:
            trimmed = logical
        else:
            kx, ky = logical[0] / image.size[0], logical[1] / image.size[1]
            trimmed = (max(1, round((trim[2] - trim[0]) * kx)),
                       max(1, round((trim[3] - trim[1]) * ky)))
        geometry = fit_geometry(*trimmed, spec)
        canvas = (geometry.width, geometry.height)
        scaled = (geometry.scaled_width, geometry.scaled_height)
        if scaled[0] > canvas[0] or scaled[1] > canvas[1]:   # cover: crop the overflow
            x, y = _cover_origin(image, trim, geometry, spec)
            kx, ky = (trim[2] - trim[0]) / scaled[0], (trim[3] - trim[1]) / scaled[1]
            region = (trim[0] + x * kx, trim[1] + y * ky,
                      trim[0] + (x + canvas[0]) * kx, trim[1] + (y + canvas[1]) * ky)
            return cls(region, canvas, canvas, within=within)
        offset = _gravity_offset(canvas[0] - scaled[0], canvas[1] - scaled[1], spec.position)
        return cls(trim, scaled, canvas, offset, within)

    def scale(self, image: Image.Image, spec: TransformSpec) -> Image.Image:
        """Crop and resize ``image`` (LANCZOS, or ``spec.large_resample`` for a large output;
        reducing by whole factors first; a large one in two strips with
        ``spec.parallel_resize``: :mod:`.strips`)."""
        left, top, right, bottom = self.region
        if self.within is not None:
            x, y = self.within[:2]
            image = image.crop(self.within)
            left, top, right, bottom = left - x, top - y, right - x, bottom - y
        region = (left, top, right, bottom)
        if self.size == (right - left, bottom - top) and all(
                float(v).is_integer() for v in region):
            if region == (0, 0, *image.size):
                return image
            return image.crop((int(left), int(top), int(right), int(bottom)))
        gap = spec.reducing_gap if spec.reducing_gap >= 1 else None
        large = self.size[0] * self.size[1] >= LARGE_OUTPUT_PIXELS
        resample = _LARGE_FILTERS[spec.large_resample] if large else _LANCZOS
        return resize_in_strips(image, self.size, resample, region, gap,
                                spec.parallel_resize)

    def pad(self, image: Image.Image, spec: TransformSpec) -> Image.Image:
        """Place ``image`` on a ``canvas`` of ``spec.background`` (``contain``)."""
        if image.size == self.canvas:
            return image
        mode = _canvas_mode(image.mode, spec.background)
        canvas = Image.new(mode, self.canvas, _colour(mode, spec.background))
        canvas.paste(image if image.mode == mode else image.convert(mode), self.offset)
        return canvas
