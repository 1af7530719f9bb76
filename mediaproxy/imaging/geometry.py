"""Geometry: the output size of a source under a spec (:func:`fit_geometry`, sharp's
semantics, described in :mod:`mediaproxy.imaging`) and where gravity places a window or an
image in the space left over."""

from __future__ import annotations

from attrs import frozen

from mediaproxy.models import TransformSpec

FITS = ("inside", "outside", "cover", "contain", "fill")

#: Gravity positions as (horizontal, vertical) fractions of the free space.
_GRAVITY = {
    "centre": (0.5, 0.5), "north": (0.5, 0.0), "south": (0.5, 1.0),
    "east": (1.0, 0.5), "west": (0.0, 0.5),
    "northeast": (1.0, 0.0), "northwest": (0.0, 0.0),
    "southeast": (1.0, 1.0), "southwest": (0.0, 1.0),
}
POSITIONS = (*_GRAVITY, "entropy", "attention")


@frozen
class Geometry:
    """How a source maps onto the output.

    ``width`` x ``height`` is the output; ``scaled_width`` x ``scaled_height`` the whole
    source after scaling: larger than the output for ``cover`` (the overflow is cropped),
    smaller for ``contain`` (the rest is padding), equal otherwise.
    """

    width: int
    height: int
    scaled_width: int
    scaled_height: int


def fit_geometry(source_width: int, source_height: int, spec: TransformSpec) -> Geometry:
    """The output geometry of a ``source_width`` x ``source_height`` image under ``spec``
    (``width``, ``height``, ``fit``, ``enlarge``); see :mod:`mediaproxy.imaging` for the rules."""
    sw, sh, w, h = source_width, source_height, spec.width, spec.height
    if spec.orig:
        w, h = (sw if "w" in spec.orig else w), (sh if "h" in spec.orig else h)
    if spec.adaptive and w and h and (sw < sh) != (w < h) and sw != sh and w != h:
        w, h = h, w
    if not w and not h:
        return Geometry(sw, sh, sw, sh)
    if not w or not h:
        size = _one_axis(sw, sh, w, h, spec.enlarge)
    elif spec.fit == "inside":
        size = _inside(sw, sh, w, h, spec.enlarge)
    elif spec.fit == "outside":
        size = _outside(sw, sh, w, h, spec.enlarge)
    else:
        if spec.enlarge:
            box = (w, h)
        elif spec.clamp:
            box = (min(w, sw), min(h, sh))
        else:
            box = _shrink_box(sw, sh, w, h)
        if spec.fit == "cover":
            return Geometry(*box, *_outside(sw, sh, *box, enlarge=True))
        if spec.fit == "contain":
            return Geometry(*box, *_inside(sw, sh, *box, enlarge=True))
        return Geometry(*box, *box)
    return Geometry(*size, *size)


def _ratio(length: int, numerator: int, denominator: int) -> int:
    """``length * numerator / denominator`` rounded half up, at least 1."""
    return max(1, (2 * length * numerator + denominator) // (2 * denominator))


def _one_axis(sw: int, sh: int, w: int, h: int, enlarge: bool) -> tuple[int, int]:
    if w:
        size = (w, _ratio(sh, w, sw))
    else:
        size = (_ratio(sw, h, sh), h)
    return _no_enlarge(size, sw, sh, enlarge)


def _inside(sw: int, sh: int, w: int, h: int, enlarge: bool) -> tuple[int, int]:
    if w * sh <= h * sw:                       # the width is the tighter constraint
        size = (w, _ratio(sh, w, sw))
    else:
        size = (_ratio(sw, h, sh), h)
    return _no_enlarge(size, sw, sh, enlarge)


def _outside(sw: int, sh: int, w: int, h: int, enlarge: bool) -> tuple[int, int]:
    if w * sh >= h * sw:                       # the width needs the larger scale
        size = (w, _ratio(sh, w, sw))
    else:
        size = (_ratio(sw, h, sh), h)
    return _no_enlarge(size, sw, sh, enlarge)


def _no_enlarge(size: tuple[int, int], sw: int, sh: int, enlarge: bool) -> tuple[int, int]:
    if not enlarge and (size[0] > sw or size[1] > sh):
        return sw, sh
    return size


def _shrink_box(sw: int, sh: int, w: int, h: int) -> tuple[int, int]:
    """The box ``w`` x ``h``, shrunk keeping its aspect ratio until it fits the source."""
    if w <= sw and h <= sh:
        return w, h
    if sw * h <= sh * w:                       # the source's width is the limit
        return sw, min(sh, _ratio(h, sw, w))
    return min(sw, _ratio(w, sh, h)), sh


def _gravity_offset(free_x: int, free_y: int, position: str) -> tuple[int, int]:
    """Where the window (or the image) goes in ``free`` pixels of slack; smart positions
    centre."""
    fx, fy = _GRAVITY.get(position, _GRAVITY["centre"])
    return int(free_x * fx), int(free_y * fy)
