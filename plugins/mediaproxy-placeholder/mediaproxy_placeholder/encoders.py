"""
The placeholders themselves: pure functions of a small Pillow image, run in the transform
thread pool (no reactor, no plugin manager, no logging), each giving a
:class:`mediaproxy.Rendered`.

* ``blurhash``: the BlurHash string (`blurhash` on PyPI, the pure-Python port of the
  reference), 4x3 components (3x4 for a portrait);
* ``thumbhash``: the ThumbHash bytes in standard base64 (`thash`, the maintained fork of the
  pure-Python port of Evan Wallace's reference; it keeps the alpha channel);
* ``color``: the dominant colour, ``#rrggbb``: the largest cluster of a median-cut
  quantisation into :data:`PALETTE` colours (not the mean: a red shoe on white is white);
* ``lqip``: the image itself, at most :data:`LQIP_SIDE` pixels on its longer side, blurred and
  written at quality :data:`LQIP_QUALITY` at most.

The three text kinds answer ``text/plain`` or, named ``KIND.json``, a JSON object
``{"KIND": value, "width": W, "height": H}`` where W x H is the layout box: the size the image
itself would have with the request's other parameters.
"""

from __future__ import annotations

import base64
import io
import json

import blurhash
import thash
from mediaproxy import Rendered
from PIL import Image, ImageFilter

#: The longer side, in pixels, a hash or a colour is computed at (the render's own size).
HASH_SIDE = 32
#: ThumbHash's encoder takes at most 100 x 100 pixels.
THUMBHASH_MAX = 100
#: The longer side of an LQIP, in pixels.
LQIP_SIDE = 24
#: The highest quality an LQIP is written at (the request's ``q`` when lower).
LQIP_QUALITY = 40
#: The Gaussian blur radius of an LQIP, in its own pixels.
LQIP_BLUR = 1.2
#: Colours of the quantisation the dominant colour is chosen from.
PALETTE = 6

TEXT = "text/plain; charset=utf-8"
JSON = "application/json"


def encode(kind: str, as_json: bool, image: Image.Image, spec, request,
           size: tuple[int, int]) -> Rendered:
    """The placeholder ``kind`` of ``image`` (``size``: the layout box it stands for)."""
    if kind == "lqip":
        return lqip(image, spec)
    value = TEXT_KINDS[kind](image, spec)
    if as_json:
        body = json.dumps({kind: value, "width": size[0], "height": size[1]},
                          separators=(",", ":")).encode()
        return Rendered(body, JSON, kind, size[0], size[1])
    return Rendered(value.encode("ascii"), TEXT, kind, size[0], size[1])


def shrink(image: Image.Image, side: int) -> Image.Image:
    """``image`` with its longer side at most ``side`` (a new image; the one given may be
    shared)."""
    if max(image.size) <= side:
        return image.copy()
    k = side / max(image.size)
    return image.resize((max(1, round(image.width * k)), max(1, round(image.height * k))),
                        Image.Resampling.BOX)


def flatten(image: Image.Image, background) -> Image.Image:
    """RGB, transparency composited on ``background`` (RGBA; its alpha is ignored)."""
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, tuple(background[:3]) + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


def blurhash_of(image: Image.Image, spec) -> str:
    small = flatten(shrink(image, HASH_SIDE), spec.background)
    x, y = (4, 3) if small.width >= small.height else (3, 4)
    data, stride = small.tobytes(), small.width * 3
    rows = [[data[o:o + 3] for o in range(y * stride, (y + 1) * stride, 3)]
            for y in range(small.height)]
    return blurhash.encode(rows, x, y)


def thumbhash_of(image: Image.Image, spec) -> str:
    small = shrink(image, min(HASH_SIDE, THUMBHASH_MAX)).convert("RGBA")
    digest = thash.rgba_to_thumb_hash(small.width, small.height, list(small.tobytes()))
    return base64.b64encode(bytes(digest)).decode("ascii")


def colour_of(image: Image.Image, spec) -> str:
    small = flatten(shrink(image, HASH_SIDE), spec.background)
    quantised = small.quantize(colors=PALETTE, method=Image.Quantize.MEDIANCUT)
    count, index = max(quantised.getcolors())
    palette = quantised.getpalette()
    r, g, b = palette[index * 3:index * 3 + 3]
    return f"#{r:02x}{g:02x}{b:02x}"


TEXT_KINDS = {"blurhash": blurhash_of, "thumbhash": thumbhash_of, "color": colour_of}


def lqip_format(spec, has_alpha: bool) -> str:
    """WebP when the request's format is WebP or the client accepts it (``fmt=auto``), PNG
    when it is PNG, or no format was asked and the image has transparency; else JPEG."""
    if spec.format == "webp" or spec.animated_format == "webp":
        return "webp"
    if spec.format == "png" or (spec.format is None and has_alpha):
        return "png"
    return "jpeg"


def lqip(image: Image.Image, spec) -> Rendered:
    small = shrink(image, LQIP_SIDE)
    has_alpha = small.mode in ("RGBA", "LA", "PA")
    fmt = lqip_format(spec, has_alpha)
    if fmt == "jpeg" or not has_alpha:
        small = flatten(small, spec.background)
    else:
        small = small.convert("RGBA")
    small = small.filter(ImageFilter.GaussianBlur(LQIP_BLUR))
    out = io.BytesIO()
    quality = min(spec.quality, LQIP_QUALITY)
    if fmt == "png":
        small.save(out, "PNG", optimize=True)
    else:
        small.save(out, fmt.upper(), quality=quality, optimize=fmt == "jpeg")
    return Rendered(out.getvalue(), f"image/{fmt}", fmt, small.width, small.height)
