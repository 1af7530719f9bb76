"""
The pixel work, all of it in the transform thread pool: decoding an overlay once
(:func:`prepare`), drawing text (:func:`text_overlay`), and compositing onto one output frame
(:class:`Stamp`, the :class:`~mediaproxy.TransformStep` of a request).

Nothing here touches the reactor or the plugin manager. The memory a render adds is bounded
before it starts: an overlay is at most :data:`MAX_OVERLAY_PIXELS` decoded (checked on its
header, before decoding), and what is drawn is never larger than the output
(:func:`~.geometry.overlay_size`).
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict

import attrs
from PIL import Image, ImageDraw, ImageFont

from .geometry import overlay_size, place

#: The largest overlay decoded, in pixels (16 MiB as RGBA): a logo, not a photo.
MAX_OVERLAY_PIXELS = 4_000_000
#: The longest watermark text, in characters.
MAX_TEXT = 64
#: Text without ``wm_scale``: the font's size is the output's shorter side divided by this.
TEXT_DIVISOR = 12
#: The smallest and largest font size drawn, in pixels.
MIN_FONT, MAX_FONT = 8, 512


class OverlayRefused(Exception):
    """The overlay cannot be used: ``status``, ``error`` and ``message`` for the client."""

    def __init__(self, status: int, error: str, message: str):
        super().__init__(message)
        self.status, self.error, self.message = status, error, message


def prepare(body: bytes) -> Image.Image:
    """``body`` decoded as an RGBA image (its first frame, EXIF orientation applied), after
    its header said it has at most :data:`MAX_OVERLAY_PIXELS`. Raises
    :class:`OverlayRefused` for anything else."""
    try:
        image = Image.open(io.BytesIO(body))
        width, height = image.size
        if width * height > MAX_OVERLAY_PIXELS:
            raise OverlayRefused(422, "watermark_too_large",
                                 f"The watermark image is {width}x{height}: at most "
                                 f"{MAX_OVERLAY_PIXELS} pixels are accepted.")
        image.load()
        from PIL import ImageOps
        return ImageOps.exif_transpose(image).convert("RGBA")
    except OverlayRefused:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise OverlayRefused(422, "invalid_watermark",
                             f"The watermark is not an image that can be decoded ({e}).") from None


def font_size(canvas: tuple[int, int], text: str, width_pct: int) -> int:
    """The font size of ``text`` on an output of ``canvas``: so that the text is
    ``width_pct`` % of the output's width, or (0) the output's shorter side divided by
    :data:`TEXT_DIVISOR`; within :data:`MIN_FONT`-:data:`MAX_FONT`."""
    if width_pct:
        probe = _font(100)
        measured = max(1, probe.getbbox(text, stroke_width=_stroke(100))[2])
        size = int(100 * canvas[0] * width_pct / 100 / measured)
    else:
        size = min(canvas) // TEXT_DIVISOR
    return max(MIN_FONT, min(MAX_FONT, size))


def _stroke(size: int) -> int:
    return max(1, size // 16)


#: Fonts kept per thread (a FreeType face is not shared between threads), by size.
FONTS_PER_THREAD = 32
_local = threading.local()


def _font(size: int):
    """Pillow's bundled font at ``size``, kept for this thread (at most FONTS_PER_THREAD)."""
    fonts = getattr(_local, "fonts", None)
    if fonts is None:
        fonts = _local.fonts = {}
    font = fonts.get(size)
    if font is None:
        if len(fonts) >= FONTS_PER_THREAD:
            fonts.clear()
        font = fonts[size] = ImageFont.load_default(size)
    return font


def text_overlay(text: str, size: int) -> Image.Image:
    """``text`` in white with a dark outline (readable on any background), RGBA, tight."""
    font, stroke = _font(size), _stroke(size)
    left, top, right, bottom = font.getbbox(text, stroke_width=stroke)
    image = Image.new("RGBA", (max(1, right - left), max(1, bottom - top)), (0, 0, 0, 0))
    ImageDraw.Draw(image).text((-left, -top), text, font=font, fill=(255, 255, 255, 255),
                               stroke_width=stroke, stroke_fill=(0, 0, 0, 255))
    return image


def faded(image: Image.Image, opacity: int) -> Image.Image:
    """``image`` (RGBA) with its alpha multiplied by ``opacity`` percent."""
    if opacity >= 100:
        return image
    alpha = image.getchannel("A").point([v * opacity // 100 for v in range(256)])
    out = image.copy()
    out.putalpha(alpha)
    return out


@attrs.frozen
class Layout:
    """How one request's overlay is laid out (its parameters, canonical)."""

    pos: str = "se"
    margin: int = 10
    opacity: int = 100
    width_pct: int = 0
    height_pct: int = 0
    x: str | None = None
    y: str | None = None


@attrs.define(eq=False)
class Stamp:
    """The step of one request: composites its overlay (a decoded image, shared read-only
    with other renders, or a text) onto every frame it is given. The overlay scaled and faded
    for a canvas size is made once per render (an animation's frames share it)."""

    layout: Layout
    overlay: Image.Image | None = None
    text: str | None = None
    _scaled: dict = attrs.field(factory=dict)

    def __call__(self, image: Image.Image, spec=None, request=None) -> Image.Image:
        canvas = image.size
        drawn = self._scaled.get(canvas)
        if drawn is None:
            drawn = self._scaled[canvas] = self._draw(canvas)
        return composite(image, drawn, place(canvas, drawn.size, self.layout.pos,
                                             self.layout.margin, self.layout.x, self.layout.y))

    def _draw(self, canvas: tuple[int, int]) -> Image.Image:
        lay = self.layout
        if self.text is not None:
            font = font_size(canvas, self.text, lay.width_pct)
            key = ("text", self.text, font, canvas, lay.opacity)
            found = DRAWN.get(key, None)
            if found is not None:
                return found
            source = text_overlay(self.text, font)
            size = overlay_size(canvas, source.size)          # the font decided the size
            origin = None
        else:
            origin = source = self.overlay
            size = overlay_size(canvas, source.size, lay.width_pct, lay.height_pct)
            key = ("image", id(source), size, lay.opacity)
            found = DRAWN.get(key, source)
            if found is not None:
                return found
        if size != source.size:
            source = source.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
        drawn = faded(source, lay.opacity)
        DRAWN.put(key, drawn, origin)
        return drawn


class DrawnCache:
    """Overlays scaled and faded, shared by the renders (the pool's threads): the same logo
    at the same size on a thousand product images is scaled once. Bounded in bytes (RGBA);
    the least recently used go first. An image overlay's entry is keyed by the decoded
    overlay's identity and holds it, so a new decode never matches an old entry."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._entries: OrderedDict = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key, origin) -> Image.Image | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry[1] is not origin:
                return None
            self._entries.move_to_end(key)
            return entry[0]

    def put(self, key, image: Image.Image, origin) -> None:
        size = image.width * image.height * 4
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old[0].width * old[0].height * 4
            self._entries[key] = (image, origin)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (dropped, _) = self._entries.popitem(last=False)
                self._bytes -= dropped.width * dropped.height * 4


#: The scaled and faded overlays every render shares (16 MiB).
DRAWN = DrawnCache(16 * 1024 * 1024)


def composite(image: Image.Image, overlay: Image.Image, at: tuple[int, int]) -> Image.Image:
    """``overlay`` (RGBA) drawn over ``image`` with its top-left corner at ``at``; what lies
    outside the image is not drawn. An image with alpha keeps it (Porter-Duff over)."""
    left, top = at
    box = (max(0, -left), max(0, -top), min(overlay.width, image.width - left),
           min(overlay.height, image.height - top))
    if box[2] <= box[0] or box[3] <= box[1]:
        return image
    part = overlay.crop(box) if box != (0, 0, overlay.width, overlay.height) else overlay
    dest = (left + box[0], top + box[1])
    mode = image.mode
    if mode == "RGBA":
        image.alpha_composite(part, dest)
        return image
    if mode not in ("RGB", "L", "LA"):
        image = image.convert("RGBA" if "A" in mode or "transparency" in image.info else "RGB")
        return composite(image, overlay, at)
    if mode == "LA":
        image = image.convert("RGBA")
        image.alpha_composite(part, dest)
        return image
    if mode == "L":
        image = image.convert("RGB")
    image.paste(part, dest, part)
    return image
