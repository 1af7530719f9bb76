"""Effects after the resize (thumbor's filters, also asked for with query parameters):
grayscale, brightness, contrast, blur and quarter-turn rotation, in that order, on one
frame. Pure functions of a Pillow image; they keep the image's mode (L, LA, RGB, RGBA) and
leave alpha alone."""

from __future__ import annotations

from PIL import Image, ImageFilter

from .colour import _ALPHA_MODES

#: Counter-clockwise quarter turns, as thumbor's PIL engine rotates.
_TURNS = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180,
          270: Image.Transpose.ROTATE_270}


def apply_effects(image: Image.Image, *, grey: bool = False, brightness: int = 0,
                  contrast: int = 0, blur: int = 0, rotate: int = 0) -> Image.Image:
    """``image`` with the effects asked for: ``grey`` (luma only), ``brightness`` and
    ``contrast`` from -100 to 100 (0: unchanged), ``blur`` a Gaussian blur of that standard
    deviation in pixels (0: none), ``rotate`` 0, 90, 180 or 270 degrees counter-clockwise."""
    if grey and image.mode not in ("L", "LA"):
        image = image.convert("LA" if image.mode in _ALPHA_MODES else "L")
    if brightness or contrast:
        image = _colour_curve(image, _curve(brightness, contrast))
    if blur:
        image = image.filter(ImageFilter.GaussianBlur(blur))
    if rotate in _TURNS:
        image = image.transpose(_TURNS[rotate])
    return image


def _curve(brightness: int, contrast: int) -> list[int]:
    """The 256-entry table of a brightness shift (``brightness`` % of 255 added) followed
    by a contrast stretch about mid-grey (the usual ``259 (c + 255) / (255 (259 - c))``
    factor, ``c`` the contrast as a fraction of 255)."""
    shift = brightness * 255 / 100
    c = contrast * 255 / 100
    factor = 259 * (c + 255) / (255 * (259 - c))
    return [max(0, min(255, round(factor * (v + shift - 128) + 128))) for v in range(256)]


def _colour_curve(image: Image.Image, table: list[int]) -> Image.Image:
    """``table`` applied to the colour bands only (alpha kept)."""
    bands = len(image.getbands())
    if image.mode in _ALPHA_MODES:
        return image.point(table * (bands - 1) + list(range(256)))
    return image.point(table * bands)
