"""Colour: the working modes (8-bit L, LA, RGB, RGBA), conversion to sRGB through an
embedded ICC profile, flattening alpha onto a background, and the canvas mode and fill
value for a background colour."""

from __future__ import annotations

import io
from typing import Sequence

from PIL import Image, ImageCms

_STANDARD_MODES = frozenset({"L", "LA", "RGB", "RGBA"})
_ALPHA_MODES = frozenset({"LA", "RGBA"})
_PROFILE_MODES = {"RGB ": ("RGB", "RGBA"), "CMYK": ("CMYK",), "GRAY": ("L",)}


def _working_mode(image: Image.Image) -> Image.Image:
    """8-bit L, LA, RGB or RGBA, or CMYK (left for :func:`_to_srgb`); no-op when already
    so. 16-bit samples are divided by 256; palette or key-colour transparency becomes alpha."""
    mode = image.mode
    if mode in ("L", "RGB") and "transparency" in image.info:
        return image.convert(mode + "A" if mode == "L" else "RGBA")
    if mode in _STANDARD_MODES or mode == "CMYK":
        return image
    if mode == "LAB":
        return ImageCms.applyTransform(image, ImageCms.buildTransform(  # type: ignore[return-value]  # None only in place
            ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB"))
    if mode.startswith("I"):                    # I;16, I;16B, I;16L, I;16N, I
        return image.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    if mode in ("1", "F"):
        return image.convert("L")
    if mode == "La":
        return image.convert("LA")
    return image.convert("RGBA" if image.has_transparency_data else "RGB")


def _to_srgb(image: Image.Image, icc: bytes | None) -> Image.Image:
    """Convert to sRGB through the embedded ICC profile ``icc`` when there is one that fits
    the mode; CMYK and LAB without a usable profile are converted plainly."""
    if icc:
        converted = _apply_profile(image, icc)
        if converted is not None:
            return converted
    if image.mode == "CMYK":
        return image.convert("RGB")
    return _working_mode(image)


def _apply_profile(image: Image.Image, icc: bytes) -> Image.Image | None:
    """``image`` converted from profile ``icc`` to sRGB; ``None`` when the profile is broken,
    already sRGB, or of another colour space than the image."""
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        space = profile.profile.xcolor_space
        description = (profile.profile.profile_description or "").lower()
    except (OSError, ImageCms.PyCMSError, ValueError, TypeError):
        return None
    base, alpha = image, None
    if image.mode == "LA":
        base, alpha = image.getchannel("L"), image.getchannel("A")
    if base.mode not in _PROFILE_MODES.get(space, ()) or (
            space == "RGB " and description.startswith("srgb")):
        return None
    out_mode = "RGBA" if base.mode == "RGBA" else "RGB"
    try:
        transform = ImageCms.buildTransform(
            profile, ImageCms.createProfile("sRGB"), base.mode, out_mode)
        converted = ImageCms.applyTransform(base, transform)
    except (ImageCms.PyCMSError, OSError, ValueError):
        return None
    if alpha is not None:
        converted.putalpha(alpha)  # type: ignore[union-attr]  # applyTransform: None only in place
    return converted


def _flatten(image: Image.Image, background: Sequence[int]) -> Image.Image:
    """``image`` composited onto the opaque ``background`` colour when it has alpha."""
    if image.mode not in _ALPHA_MODES:
        return image
    mode = "L" if image.mode == "LA" and _is_grey(background) else "RGB"
    canvas = Image.new(mode, image.size, _colour(mode, background))
    canvas.paste(image.getchannel("L") if mode == "L" else image, mask=image.getchannel("A"))
    return canvas


def _is_grey(colour: Sequence[int]) -> bool:
    return colour[0] == colour[1] == colour[2]


def _canvas_mode(mode: str, background: Sequence[int]) -> str:
    """The mode that holds an image of ``mode`` on ``background`` without loss."""
    alpha = mode in _ALPHA_MODES or background[3] < 255
    if mode in ("L", "LA") and _is_grey(background):
        return "LA" if alpha else "L"
    return "RGBA" if alpha else "RGB"


def _colour(mode: str, background: Sequence[int]) -> int | tuple[int, ...]:
    """``background`` (RGBA) as a fill value of ``mode``."""
    fills: dict[str, int | tuple[int, ...]] = {
        "L": background[0], "LA": (background[0], background[3]),
        "RGB": tuple(background[:3]), "RGBA": tuple(background)}
    return fills[mode]
