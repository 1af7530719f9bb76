"""
Where the overlay goes and how large it is: pure arithmetic on sizes, no Pillow (so it is
tested exactly, and under mutation, apart from the drawing).

Two ways to place it, per axis:

* a named position (``wm_pos``: ``nw n ne w c e sw s se``) with a margin in pixels from the
  edges it touches (a centred axis ignores the margin);
* thumbor's offsets (``wm_x``/``wm_y``, what thumbor's ``watermark(url,x,y,...)`` filter
  takes): ``N`` pixels from the left (top), ``-N`` from the right (bottom) edge to the
  overlay's right (bottom) edge, ``Np``/``-Np`` the same in percent of the output's side,
  ``center``. An offset given for an axis replaces the named position on that axis.

The overlay's size is its own (scale 0), or thumbor's ``calc_watermark_size``: at most
``width_pct`` percent of the output's width and ``height_pct`` percent of its height, aspect
kept. Either way it never exceeds the output (shrunk to fit, aspect kept): what would lie
outside is never drawn, and the memory a render takes stays that of its output.
"""

from __future__ import annotations

import re

#: The named positions: (column, row), 0 = left/top, 1 = centre, 2 = right/bottom.
POSITIONS = {"nw": (0, 0), "n": (1, 0), "ne": (2, 0), "w": (0, 1), "c": (1, 1),
             "e": (2, 1), "sw": (0, 2), "s": (1, 2), "se": (2, 2)}
#: The longest offset in pixels (the core's largest output side).
MAX_OFFSET = 8192
_AXIS = re.compile(r"(-?)(\d{1,5})(p?)")


def parse_axis(raw: str, what: str) -> str:
    """A thumbor offset in its canonical spelling: ``center``, ``N``, ``-N``, ``Np``,
    ``-Np`` (``-0`` is kept: flush with the right or bottom edge). Raises ``ValueError``."""
    raw = raw.strip().lower()
    if raw == "center":
        return raw
    match = _AXIS.fullmatch(raw)
    if match is None:
        raise ValueError(f"{what} must be center, N, -N (pixels) or Np, -Np (percent)")
    sign, digits, percent = match.groups()
    value = int(digits)
    high = 100 if percent else MAX_OFFSET
    if value > high:
        raise ValueError(f"{what} must be at most {high}{'p' if percent else ''}")
    return f"{sign}{value}{percent}"


def axis_offset(axis: str, length: int, size: int) -> int:
    """The overlay's left (top) edge for the thumbor offset ``axis`` on an output side of
    ``length`` pixels and an overlay of ``size`` (thumbor's arithmetic, rounding included)."""
    if axis == "center":
        return int((length - size) / 2)
    negative = axis.startswith("-")
    digits = axis.lstrip("-")
    if digits.endswith("p"):
        amount = round(length * float(digits[:-1]) / 100 + 1e-5)
    else:
        amount = int(digits)
    if negative:
        return length - size - amount
    return amount


def anchor_offset(index: int, length: int, size: int, margin: int) -> int:
    """The left (top) edge for a named position's column (row) ``index``: 0 at ``margin``
    from the start, 1 centred, 2 at ``margin`` from the end."""
    if index == 0:
        return margin
    if index == 1:
        return int((length - size) / 2)
    return length - size - margin


def place(canvas: tuple[int, int], size: tuple[int, int], pos: str, margin: int,
          x: str | None = None, y: str | None = None) -> tuple[int, int]:
    """The overlay's top-left corner on the output (may lie partly outside: the part
    outside is not drawn)."""
    column, row = POSITIONS[pos]
    left = (axis_offset(x, canvas[0], size[0]) if x is not None
            else anchor_offset(column, canvas[0], size[0], margin))
    top = (axis_offset(y, canvas[1], size[1]) if y is not None
           else anchor_offset(row, canvas[1], size[1], margin))
    return left, top


def overlay_size(canvas: tuple[int, int], natural: tuple[int, int], width_pct: int = 0,
                 height_pct: int = 0) -> tuple[int, int]:
    """The overlay's drawn size on an output of ``canvas``: its ``natural`` size, or at most
    ``width_pct`` % of the output's width and ``height_pct`` % of its height (0: that side is
    free), aspect kept (thumbor's rounding); then shrunk to fit the output. At least 1x1."""
    nat_w, nat_h = natural
    width, height = natural
    if width_pct or height_pct:
        # thumbor derives the free side's limit from the other (a tie: the width's branch)
        max_w = canvas[0] * width_pct / 100
        max_h = canvas[1] * height_pct / 100
        if not height_pct or (width_pct and nat_w * max_h >= nat_h * max_w):   # width binds
            width, height = round(max_w), round(nat_h * max_w / nat_w)
        else:
            width, height = round(nat_w * max_h / nat_h), round(max_h)
    if width > canvas[0] or height > canvas[1]:      # in whole numbers: no float floor slips
        if canvas[0] * height <= canvas[1] * width:  # the width binds
            width, height = canvas[0], canvas[0] * height // width
        else:
            width, height = canvas[1] * width // height, canvas[1]
    return max(1, width), max(1, height)
