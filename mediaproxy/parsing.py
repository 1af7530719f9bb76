"""
Parsers for transform parameter values, shared by the built-in routes and by plugins that
register their own :class:`~mediaproxy.models.Param` (``from mediaproxy import parse_bool``).

Each parser accepts the spellings users send and returns one canonical value, so equivalent
URLs build equal cache keys. A bad value raises ``ValueError`` with a message for the client.
"""

from __future__ import annotations

import re

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
    """A whole number from ``low`` to ``high`` (digits only, no sign)."""
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
    return (int(digits[0:2], 16), int(digits[2:4], 16), int(digits[4:6], 16),
            int(digits[6:8], 16))


def colour_key(rgba) -> str:
    """The cache-key spelling of an RGBA colour (``rrggbbaa``)."""
    return "%02x%02x%02x%02x" % tuple(rgba)


def parse_bool(raw: str) -> bool:
    """``1 true yes on`` -> True, ``0 false no off`` and empty -> False."""
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be 0 or 1")


def parse_choice(table: dict, what: str):
    """A parser that maps every accepted spelling in ``table`` to its canonical value."""
    def parse(raw: str):
        value = table.get(raw.strip().lower())
        if value is None:
            raise ValueError(f"{what} must be one of {', '.join(sorted(set(table.values())))}")
        return value
    return parse


#: The one parser of a fit and of a position, for every route (query scheme and compat paths
#: accept the same spellings and give the same canonical value).
parse_fit = parse_choice({f: f for f in FITS}, "fit")
parse_position = parse_choice(POSITIONS, "position")
