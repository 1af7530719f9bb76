"""Encoding: frames (one, or an animation) to the bytes of an output format with no
metadata, each frame brought to a mode the format stores, with the encoder's and the
animation's options (durations, loop count, GIF transparency)."""

from __future__ import annotations

import io
from typing import Any, Iterator, Sequence

from PIL import Image, ImageFile

from mediaproxy.models import Rendered, TransformSpec

from .budget import Deadline
from .colour import _ALPHA_MODES, _flatten, _to_srgb, _working_mode
from .errors import OutputTooLarge
from .formats import _MAX_SIDE, _PILLOW_FORMAT, CONTENT_TYPES

#: Longest frame duration in ms (APNG stores n/1000 s in 16 bits).
_MAX_DURATION = 65_535


def _duration(value: Any) -> int:
    """A frame's duration in whole milliseconds, within what every format can store."""
    try:
        return min(max(0, round(value or 0)), _MAX_DURATION)
    except (TypeError, ValueError, OverflowError):
        return 0


def _encode(frames: list[Image.Image], fmt: str, spec: TransformSpec,
            durations: Sequence[int] = (), loop: int | None = None,
            deadline: Deadline | None = None) -> Rendered:
    """Encode ``frames`` (one, or an animation) as ``fmt`` with no metadata; the
    ``deadline`` is checked before each frame is prepared and before each is written (GIF
    and PNG iterate the frames given; WebP and AVIF seek to each, :class:`_Checkpoint`).
    libavif encodes an animation's frames together when it is finished: that step cannot
    be stopped, so :mod:`.rendering` bounds its pixels (``max_output_pixels`` in all)."""
    deadline = deadline or Deadline(None)
    frames = _prepare_frames(frames, fmt, spec.background, deadline)
    width, height = frames[0].size
    if max(width, height) > _MAX_SIDE.get(fmt, 2**31 - 1):
        raise OutputTooLarge(
            f"A {width}x{height} image is too large for {fmt.upper()}.")
    options = _encoder_options(fmt, spec)
    if len(frames) > 1:
        options.update(_animation_options(frames, fmt, durations, loop))
        if fmt in ("gif", "png"):
            options["append_images"] = _Checked(options["append_images"], deadline)
        else:
            options["append_images"] = [_Checkpoint.of(frame, deadline)
                                        for frame in options["append_images"]]
    deadline.check("encoding")
    buffer = io.BytesIO()
    frames[0].save(buffer, _PILLOW_FORMAT[fmt], **options)
    body = buffer.getvalue()
    if spec.max_bytes and len(body) > spec.max_bytes and "quality" in options:
        body = _fit_bytes(frames, fmt, options, body, spec.max_bytes, deadline)
    if fmt == "webp" and len(frames) > 1 and frames[0].mode == "RGBA":
        body = _webp_alpha_flag(body)
    return Rendered(body=body, content_type=CONTENT_TYPES[fmt], format=fmt,
                    width=width, height=height, frames=len(frames))


def _fit_bytes(frames: list[Image.Image], fmt: str, options: dict[str, Any], body: bytes,
               max_bytes: int, deadline: Deadline) -> bytes:
    """Encode again at three quarters of the quality each time until the body is at most
    ``max_bytes``; below quality 10 the first body stays (thumbor's ``max_bytes`` filter,
    the same steps: a handful of encodes at most)."""
    quality = options["quality"]
    while True:
        quality = int(quality * 0.75)
        if quality < 10:
            return body
        deadline.check("encoding to fit max_bytes")
        buffer = io.BytesIO()
        frames[0].save(buffer, _PILLOW_FORMAT[fmt], **{**options, "quality": quality})
        if buffer.tell() <= max_bytes:
            return buffer.getvalue()


class _Checked:
    """Frames for an encoder that iterates them (perhaps more than once), checking the
    deadline before each."""

    def __init__(self, frames: list[Image.Image], deadline: Deadline):
        self.frames, self.deadline = frames, deadline

    def __iter__(self) -> Iterator[Image.Image]:
        return self.deadline.each(self.frames, "encoding")

    def __len__(self) -> int:
        return len(self.frames)


class _Checkpoint(Image.Image):
    """A frame that checks the render's deadline when an encoder seeks to it. Pillow's WebP
    and AVIF writers take their frames as a list at once (so :class:`_Checked` would check
    them all before the first is written), then seek to each frame before adding it: the
    moment between two frames' work. :meth:`of` shares the frame's pixels, copying nothing."""

    deadline: Deadline

    @classmethod
    def of(cls, frame: Image.Image, deadline: Deadline) -> _Checkpoint:
        checked = cls.__new__(cls)
        checked.__dict__.update(frame.__dict__)
        checked.deadline = deadline
        return checked

    def seek(self, frame: int) -> None:
        self.deadline.check("encoding")
        super().seek(frame)


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


def _prepare_frames(frames: list[Image.Image], fmt: str, background: Sequence[int],
                    deadline: Deadline | None = None) -> list[Image.Image]:
    """Bring frames to a mode ``fmt`` stores, all alike, with their metadata dropped
    (checking the ``deadline`` before each frame of each pass)."""
    deadline = deadline or Deadline(None)
    frames = [_own(_to_srgb(_working_mode(frame), None))
              for frame in deadline.each(frames, "encoding")]
    if fmt == "jpeg":
        frames = [_flatten(frame, background) for frame in frames]
    elif fmt == "gif":
        transparent = any(_has_transparent_pixels(frame) for frame in frames)
        shared = _shared_palette(frames, transparent)
        frames = [_to_palette(frame, transparent, shared)
                  for frame in deadline.each(frames, "quantizing")]
    elif fmt == "webp" or len({frame.mode for frame in frames}) > 1:
        alpha = any(frame.mode in _ALPHA_MODES for frame in frames)
        frames = [_rgb(frame, alpha) for frame in deadline.each(frames, "encoding")]
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
    return image.mode in _ALPHA_MODES and image.getchannel("A").getextrema()[0] < 128  # type: ignore[operator]  # one band: (min, max)


#: At most this many pixels of an animation's frames are read to choose its one palette.
PALETTE_SAMPLE_PIXELS = 1 << 20


def _shared_palette(frames: list[Image.Image],
                    transparent: bool) -> tuple[Image.Image, list[int]] | None:
    """One palette for every frame of an animated GIF (``None`` for a single frame or frames
    that stay greyscale): chosen by median cut over frames spread through the animation, at
    most :data:`PALETTE_SAMPLE_PIXELS` of them side by side. Returned twice: as the image the
    frames are mapped with (its colours only) and as the 256 distinct entries every frame
    is written with (:func:`_distinct_palette`), given to the writer as the animation's
    palette so that it is stored once, as the global colour table.

    A palette per frame made each frame's colours for a resized image differ slightly from
    the next one's, so a still background changed indices from frame to frame: the writer's
    difference of frames found whole frames changed, every frame carried a colour table of
    its own, and colours flickered between frames. The demo's 8-frame spinner at w=100:
    7,324 bytes with a palette per frame, 3,347 with one (its source is 3,012 bytes at
    twice the size). Frames are mapped without dithering, whose noise differs from frame to
    frame for the same reason. The cost is Pillow's remapping of each frame to the given
    palette, about 1 ms a frame in Python whatever its size; a frame's own median cut,
    which it replaces, costs more from about 200x200 pixels up."""
    if len(frames) < 2 or (not transparent and all(f.mode == "L" for f in frames)):
        return None
    width, height = frames[0].size
    count = max(1, min(len(frames), PALETTE_SAMPLE_PIXELS // max(1, width * height)))
    picked = [frames[i * len(frames) // count] for i in range(count)]
    if count == 1 and width * height > PALETTE_SAMPLE_PIXELS:
        scale = (PALETTE_SAMPLE_PIXELS / (width * height)) ** 0.5
        picked = [picked[0].resize((max(1, int(width * scale)), max(1, int(height * scale))))]
        width, height = picked[0].size
    strip = Image.new("RGB", (width * len(picked), height))
    for i, frame in enumerate(picked):
        strip.paste(_rgb(frame, False).crop((0, 0, width, height)), (i * width, 0))
    palette = strip.quantize(255 if transparent else 256)
    return palette, _distinct_palette(palette)


def _distinct_palette(palette: Image.Image) -> list[int]:
    """``palette``'s colours, then unused ones up to 256 entries, every one different: the
    GIF writer, given the animation's palette, maps each frame's indices by colour, so two
    entries of one colour (a padding black beside a real one, or the transparent index
    255) would merge and move pixels to the wrong index."""
    colours = palette.getpalette() or []
    seen = {tuple(colours[i:i + 3]) for i in range(0, len(colours), 3)}
    out = list(colours[:768])
    candidate = 0
    while len(out) < 768:
        colour = (candidate & 255, (candidate >> 8) & 255, 255 - (candidate & 255))
        candidate += 1
        if colour not in seen:
            seen.add(colour)
            out.extend(colour)
    return out


def _to_palette(image: Image.Image, transparent: bool,
                shared: tuple[Image.Image, list[int]] | None = None) -> Image.Image:
    """A GIF frame: L as is, colour quantised to 256 colours (or mapped to the animation's
    ``shared`` palette); with ``transparent``, index 255 marks the pixels whose alpha is below
    128."""
    if image.mode == "L" and not transparent and shared is None:
        return image
    rgb = _rgb(image, False)
    if shared is not None:
        paletted = rgb.quantize(palette=shared[0], dither=Image.Dither.NONE)
        paletted.putpalette(shared[1])
    else:
        paletted = rgb.quantize(255 if transparent else 256)
    if not transparent:
        return paletted
    alpha = image.getchannel("A") if image.mode in _ALPHA_MODES else None
    if alpha is not None:
        paletted.paste(255, mask=alpha.point([255] * 128 + [0] * 128, "1"))
    paletted.info["transparency"] = 255
    return paletted


def _encoder_options(fmt: str, spec: TransformSpec) -> dict[str, Any]:
    if fmt == "jpeg":
        return {"quality": spec.quality, "progressive": spec.progressive,
                "optimize": spec.jpeg_optimize}
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
        palette = frames[0].getpalette() if frames[0].mode == "P" else None
        if palette is not None and all(f.mode == "P" and f.getpalette() == palette
                                       for f in frames[1:]):
            # one palette (_shared_palette): written once, as the global colour table; given
            # none, Pillow writes it again as a local table for every frame after the first
            options["palette"] = bytes(palette)
        if "transparency" in frames[0].info:
            options["disposal"] = 2          # clear to transparent between full frames
    else:
        options["loop"] = 1 if loop is None else loop
    return options
