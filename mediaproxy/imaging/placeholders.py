"""Placeholder images: a plain light image with a frame and diagonals, served in place of a
missing or broken source; the last 64 are kept (by size, format and colour)."""

from __future__ import annotations

import functools
from typing import Sequence

from PIL import Image, ImageDraw

from mediaproxy.models import Rendered, TransformSpec

from .colour import _colour
from .encode import _encode
from .formats import output_format, split_format
from .geometry import _ratio

_PLACEHOLDER_DEFAULT = (300, 200)
_PLACEHOLDER_MAX = 4096


def placeholder(width: int, height: int, fmt: str | None = None,
                background: Sequence[int] = (220, 220, 220, 255)) -> Rendered:
    """A plain light image with a frame and diagonals, ``width`` x ``height`` (0 leaves an
    axis to the 4:3 ratio, both 0 give 300x200; each side at most 4096) in ``fmt`` (``None``:
    jpeg; a negotiated ``avif~webp`` token gives its still format). Raises :class:`UnsupportedFormat` for a format that cannot be written."""
    return _placeholder(max(0, int(width)), max(0, int(height)),
                        output_format("jpeg", False, split_format(fmt)[0]), tuple(background))


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
