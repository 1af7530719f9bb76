"""
The built-in transform parameters and their canonical values.

Query names: ``w`` ``h`` ``fit`` ``pos`` ``bg`` ``q`` ``fmt`` ``enlarge`` ``trim`` (with the long
aliases ``width`` ``height`` ``position`` ``background`` ``quality`` ``format``). Each parser
accepts the spellings users send and returns one canonical value, so equivalent URLs build equal
cache keys. A bad value raises ``ValueError`` with a message for the client.
"""

from __future__ import annotations

import re

from .. import hookimpl
from ..models import Param

FITS = ("cover", "contain", "fill", "inside", "outside")

#: Every accepted position spelling -> its canonical name.
POSITIONS = {
    "centre": "centre", "center": "centre", "middle": "centre",
    "north": "north", "top": "north",
    "south": "south", "bottom": "south",
    "east": "east", "right": "east",
    "west": "west", "left": "west",
    "northeast": "northeast", "top-right": "northeast", "right-top": "northeast",
    "northwest": "northwest", "top-left": "northwest", "left-top": "northwest",
    "southeast": "southeast", "bottom-right": "southeast", "right-bottom": "southeast",
    "southwest": "southwest", "bottom-left": "southwest", "left-bottom": "southwest",
    "entropy": "entropy", "attention": "attention",
}

#: Output formats by every accepted name; ``auto`` is negotiated from ``Accept``.
FORMATS = {"jpeg": "jpeg", "jpg": "jpeg", "png": "png", "webp": "webp", "avif": "avif",
           "gif": "gif", "tiff": "tiff", "tif": "tiff", "auto": "auto"}

_INT = re.compile(r"^[0-9]{1,9}$")
_HEX = re.compile(r"^#?([0-9a-fA-F]{3}|[0-9a-fA-F]{4}|[0-9a-fA-F]{6}|[0-9a-fA-F]{8})$")


def parse_int(raw: str, low: int, high: int, what: str) -> int:
    raw = raw.strip()
    if not _INT.match(raw):
        raise ValueError(f"{what} must be a whole number from {low} to {high}")
    value = int(raw)
    if not low <= value <= high:
        raise ValueError(f"{what} must be a whole number from {low} to {high}")
    return value


def parse_colour(raw: str) -> tuple[int, int, int, int]:
    """``transparent``, ``rgb``, ``rgba``, ``rrggbb``, ``rrggbbaa`` (``#`` optional) -> RGBA."""
    raw = raw.strip()
    if raw.lower() == "transparent":
        return (0, 0, 0, 0)
    match = _HEX.match(raw)
    if not match:
        raise ValueError("background must be a hex colour (ffffff, #ffffff, #ffffff80) "
                         "or transparent")
    digits = match.group(1)
    if len(digits) in (3, 4):
        digits = "".join(c * 2 for c in digits)
    if len(digits) == 6:
        digits += "ff"
    return tuple(int(digits[i:i + 2], 16) for i in range(0, 8, 2))


def colour_key(rgba) -> str:
    return "%02x%02x%02x%02x" % tuple(rgba)


def parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be 0 or 1")


def _choice(table: dict, what: str):
    def parse(raw: str):
        value = table.get(raw.strip().lower())
        if value is None:
            raise ValueError(f"{what} must be one of {', '.join(sorted(set(table.values())))}")
        return value
    return parse


def builtin_params(config) -> list[Param]:
    limits = config.limits
    return [
        Param("w", lambda raw: parse_int(raw, 0, limits.max_width, "width"), 0,
              key=str, aliases=("width",), help="Output width in pixels; 0 or absent: free."),
        Param("h", lambda raw: parse_int(raw, 0, limits.max_height, "height"), 0,
              key=str, aliases=("height",), help="Output height in pixels; 0 or absent: free."),
        Param("fit", _choice({f: f for f in FITS}, "fit"), "inside", key=str,
              help="cover, contain, fill, inside (default), outside."),
        Param("pos", _choice(POSITIONS, "position"), "centre", key=str,
              aliases=("position", "gravity"),
              help="Crop or placement: centre, north ... southwest, entropy, attention."),
        Param("bg", parse_colour, (255, 255, 255, 255), key=colour_key,
              aliases=("background",), help="Background for contain and for flattening "
              "transparency: hex rgb[a] or transparent."),
        Param("q", lambda raw: parse_int(raw, 1, 100, "quality"),
              config.processing.default_quality, key=str, aliases=("quality",),
              help="Encoder quality 1-100."),
        # The negotiated format enters the key separately (see mediaproxy.cache.keys.cache_key).
        Param("fmt", _choice(FORMATS, "format"), None, key=lambda value: None,
              aliases=("format",), help="jpeg, png, webp, avif, gif, tiff or auto."),
        Param("enlarge", parse_bool, False, key=lambda value: "1" if value else "0",
              help="1 allows upscaling beyond the source size."),
        Param("trim", lambda raw: parse_int(raw, 0, 100, "trim"), 0, key=str,
              help="Trim a uniform border, threshold 1-100 (0: off)."),
    ]


@hookimpl
def mediaproxy_params(config):
    return builtin_params(config)
