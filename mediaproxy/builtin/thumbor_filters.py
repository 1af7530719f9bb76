"""
The thumbor endpoint's built-in filters (``filters:quality(80):format(webp)``), each mapped
onto the transform parameters (the query scheme's and :mod:`.effects`'), so a thumbor URL and
the equivalent query URL share one cache entry.

A filter is ``apply(args, params)``: ``args`` the strings between its parentheses (split on
commas), ``params`` the request's parameters to update; a bad argument raises ``ValueError``
(a 400 naming the filter). Plugins add filters with the ``mediaproxy_thumbor_filters`` hook.
Filters that change the geometry (``fill``, ``no_upscale``, ``upscale``) only record a flag
here: :mod:`.thumbor` decides the fit once every filter has been read.
"""

from __future__ import annotations

from typing import Callable

from PIL import ImageColor

from ..parsing import FORMATS, parse_colour, parse_int
from .effects import parse_rotate, parse_signed

Filter = Callable[[tuple, dict], None]

#: thumbor's format() names we write (thumbor also knows heic/heif: no encoder here).
THUMBOR_FORMATS = ("avif", "gif", "jpeg", "jpg", "png", "webp")

#: The flags of the geometry filters, read by :mod:`.thumbor` and never a parameter.
FILL, NO_UPSCALE, UPSCALE = "thumbor.fill", "thumbor.no_upscale", "thumbor.upscale"


def _no_args(name: str, args: tuple) -> None:
    if args != ("",):
        raise ValueError(f"{name}() takes no argument")


def _count(name: str, args: tuple, low: int, high: int) -> None:
    if not low <= len(args) <= high or any(a.strip() == "" for a in args):
        wanted = str(low) if low == high else f"{low} to {high}"
        raise ValueError(f"{name}() takes {wanted} argument{'s' if high > 1 else ''}")


def thumbor_colour(raw: str) -> tuple[int, int, int, int]:
    """thumbor's colour spellings: a CSS name (``red``), hex with or without ``#``, or
    ``transparent``. ``auto`` and ``blur`` (colours thumbor computes from the image) are
    not supported."""
    raw = raw.strip()
    if raw.lower() in ("auto", "blur"):
        raise ValueError(f"the colour {raw!r} is not supported: name a colour")
    try:
        return parse_colour(raw)
    except ValueError:
        pass
    try:
        rgb = ImageColor.getrgb(raw)
    except ValueError:
        raise ValueError(f"{raw[:32]!r} is not a colour (a name, hex or transparent)") from None
    return (*rgb[:3], rgb[3] if len(rgb) > 3 else 255)


def _format(args, params):
    _count("format", args, 1, 1)
    name = args[0].strip().lower()
    if name not in THUMBOR_FORMATS:
        raise ValueError(f"format must be one of {', '.join(THUMBOR_FORMATS)}")
    params["fmt"] = FORMATS[name]


def _quality(args, params):
    _count("quality", args, 1, 1)
    params["q"] = parse_int(args[0], 1, 100, "quality")


def _fill(args, params):
    _count("fill", args, 1, 2)
    params["bg"] = thumbor_colour(args[0])
    params[FILL] = True


def _background_color(args, params):
    _count("background_color", args, 1, 1)
    params["bg"] = thumbor_colour(args[0])


def _grayscale(args, params):
    _no_args("grayscale", args)
    params["grey"] = True


def _blur(args, params):
    _count("blur", args, 1, 2)
    radius = parse_int(args[0], 1, 150, "blur radius")
    sigma = radius
    if len(args) == 2:
        try:
            sigma = float(args[1])
        except ValueError:
            raise ValueError("blur sigma must be a number") from None
        if not 0 <= sigma <= 150:
            raise ValueError("blur sigma must be from 0 to 150")
        sigma = max(1, round(sigma)) if sigma else radius
    params["blur"] = sigma


def _brightness(args, params):
    _count("brightness", args, 1, 1)
    params["brightness"] = parse_signed(args[0], -100, 100, "brightness")


def _contrast(args, params):
    _count("contrast", args, 1, 1)
    params["contrast"] = parse_signed(args[0], -100, 100, "contrast")


def _rotate(args, params):
    _count("rotate", args, 1, 1)
    params["rotate"] = parse_rotate(args[0])


def _max_bytes(args, params):
    _count("max_bytes", args, 1, 1)
    params["max_bytes"] = parse_int(args[0], 1, 1_000_000_000, "max_bytes")


def _flag(name: str, key: str) -> Filter:
    def apply(args, params):
        _no_args(name, args)
        params[key] = True
    return apply


def _nothing(name: str) -> Filter:
    """A filter whose effect is always on here: the output never carries an ICC profile
    or EXIF (colours are converted to sRGB first)."""
    def apply(args, params):
        _no_args(name, args)
    return apply


BUILTIN_FILTERS: dict[str, Filter] = {
    "format": _format, "quality": _quality, "fill": _fill,
    "background_color": _background_color, "grayscale": _grayscale, "blur": _blur,
    "brightness": _brightness, "contrast": _contrast, "rotate": _rotate,
    "max_bytes": _max_bytes, "no_upscale": _flag("no_upscale", NO_UPSCALE),
    "upscale": _flag("upscale", UPSCALE), "strip_icc": _nothing("strip_icc"),
    "strip_exif": _nothing("strip_exif"),
}
