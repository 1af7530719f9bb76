"""Crops decided from the picture: the trim box (a border like the top-left pixel), and the
``cover`` window at a gravity position or found by ``entropy`` or ``attention`` scoring."""

from __future__ import annotations

import itertools
from array import array
from typing import Iterator, Sequence

from PIL import Image, ImageChops, ImageFilter

from mediaproxy.models import TransformSpec

from .colour import _ALPHA_MODES, _flatten
from .geometry import _GRAVITY, Geometry, _gravity_offset

#: Long side of the copy that entropy and attention crops are scored on.
_SMART_SIDE = 128


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
