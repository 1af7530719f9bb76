"""
Operations beyond the fit, as query parameters (and the thumbor endpoint's target,
:mod:`.thumbor`, so its URLs and the equivalent query URLs share cache entries):

``crop=left,top,right,bottom``
    a manual crop in source pixels, before the fit (thumbor's ``AxB:CxD``);
``flip=h|v|hv``
    mirror the output left-right, top-bottom or both (thumbor's ``-WxH``, ``Wx-H``);
``orig=w|h|wh``
    that side of the box is the source's own (thumbor's ``origxH``);
``adaptive=1``
    turn the box a quarter when its orientation differs from the source's;
``clamp=1``
    without ``enlarge``, shrink each side of a cover/contain/fill box to the source's
    separately (thumbor's ``no_upscale()``);
``max_bytes=N``
    lower the quality until the output is at most N bytes (JPEG, WebP, AVIF);
``grey=1``, ``brightness=-100..100``, ``contrast=-100..100``, ``blur=1..150``, ``rotate=90|180|270``
    effects after the resize, in that order (:mod:`mediaproxy.imaging.effects`).

Each parameter at its default contributes nothing to the cache key, so the keys of every
URL that does not use them are unchanged.
"""

from __future__ import annotations

import re

from .. import hookimpl
from ..imaging.effects import apply_effects
from ..models import Param, TransformStep
from ..parsing import parse_bool, parse_int

#: Largest crop coordinate (a source is never this large: the pixel budget refuses it first).
MAX_COORDINATE = 1_000_000
ROTATIONS = (0, 90, 180, 270)
_SIGNED = re.compile(r"^-?[0-9]{1,3}$")
_EFFECTS = ("grey", "brightness", "contrast", "blur", "rotate")


def parse_crop(raw: str) -> tuple[int, int, int, int] | None:
    """``left,top,right,bottom`` in source pixels, right > left and bottom > top."""
    parts = raw.split(",")
    if len(parts) != 4:
        raise ValueError("crop must be left,top,right,bottom in source pixels")
    left, top, right, bottom = (parse_int(p, 0, MAX_COORDINATE, "crop") for p in parts)
    if right <= left or bottom <= top:
        raise ValueError("crop must have right > left and bottom > top")
    return (left, top, right, bottom)


def parse_flip(raw: str) -> str:
    value = raw.strip().lower()
    if value not in ("", "h", "v", "hv", "vh"):
        raise ValueError("flip must be h, v or hv")
    return "hv" if value == "vh" else value


def parse_orig(raw: str) -> str:
    value = raw.strip().lower()
    if value not in ("", "w", "h", "wh", "hw"):
        raise ValueError("orig must be w, h or wh")
    return "wh" if value == "hw" else value


def parse_signed(raw: str, low: int, high: int, what: str) -> int:
    """A whole number from ``low`` to ``high``, a leading ``-`` allowed."""
    raw = raw.strip()
    if not _SIGNED.match(raw) or not low <= int(raw) <= high:
        raise ValueError(f"{what} must be a whole number from {low} to {high}")
    return int(raw)


def parse_rotate(raw: str) -> int:
    value = parse_signed(raw, -360, 360, "rotate")
    if value % 90:
        raise ValueError("rotate must be a multiple of 90 degrees")
    return value % 360


def _unless(default):
    """A cache-key contribution that leaves the default out (so older keys stay valid)."""
    def key(value):
        return None if value == default else str(value)
    return key


def effect_params(config) -> list[Param]:
    return [
        Param("crop", parse_crop, None,
              key=lambda v: None if v is None else ",".join(map(str, v)),
              help="Manual crop left,top,right,bottom in source pixels, before the fit."),
        Param("flip", parse_flip, "", key=_unless(""), help="Mirror the output: h, v or hv."),
        Param("orig", parse_orig, "", key=_unless(""),
              help="Sides of the box that are the source's own: w, h or wh."),
        Param("adaptive", parse_bool, False, key=_unless(False),
              help="1 turns the box when its orientation differs from the source's."),
        Param("clamp", parse_bool, False, key=_unless(False),
              help="1 (without enlarge) shrinks each side of a cover, contain or fill box to "
                   "the source's separately, instead of keeping the box's shape."),
        Param("max_bytes", lambda raw: parse_int(raw, 0, 1_000_000_000, "max_bytes"), 0,
              key=_unless(0), help="Lower the quality until the output is at most this many "
                                   "bytes (JPEG, WebP, AVIF; 0: no limit)."),
        Param("grey", parse_bool, False, key=_unless(False),
              help="1 makes the output greyscale."),
        Param("brightness", lambda raw: parse_signed(raw, -100, 100, "brightness"), 0,
              key=_unless(0), help="-100 to 100 (0: unchanged)."),
        Param("contrast", lambda raw: parse_signed(raw, -100, 100, "contrast"), 0,
              key=_unless(0), help="-100 to 100 (0: unchanged)."),
        Param("blur", lambda raw: parse_int(raw, 0, 150, "blur"), 0, key=_unless(0),
              help="Gaussian blur, its standard deviation in pixels 1-150 (0: none)."),
        Param("rotate", parse_rotate, 0, key=_unless(0),
              help="Counter-clockwise quarter turns after the resize: 90, 180 or 270."),
    ]


def _effects_step(image, spec, request):
    extra = spec.extra
    return apply_effects(image, grey=bool(extra.get("grey")),
                         brightness=extra.get("brightness") or 0,
                         contrast=extra.get("contrast") or 0, blur=extra.get("blur") or 0,
                         rotate=extra.get("rotate") or 0)


#: After the resize and the built-in steps of order 500.
EFFECTS_STEP = TransformStep("effects", _effects_step, order=600)


@hookimpl
def mediaproxy_params(config):
    return effect_params(config)


@hookimpl
def mediaproxy_transform_steps(image_request, spec):
    extra = spec.extra
    if any(extra.get(name) for name in _EFFECTS):
        return [EFFECTS_STEP]
    return None
