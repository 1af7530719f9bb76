"""Image formats: which are read and written, their names, aliases and content types, and
the choice of the output format (:func:`output_format`)."""

from __future__ import annotations

from typing import Any

from PIL import Image

from .errors import UnsupportedFormat

CONTENT_TYPES = {
    "jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp",
    "avif": "image/avif", "gif": "image/gif", "tiff": "image/tiff",
}
_WEB_FORMATS = frozenset({"jpeg", "png", "webp", "avif", "gif"})
#: Outputs that carry an animation's frames (every other keeps the first). AVIF only when
#: asked for by name or kept from an animated AVIF: ``fmt=auto`` answers an animation with
#: WebP or GIF instead (see :mod:`.negotiation`).
_ANIMATED_OUTPUTS = frozenset({"gif", "webp", "png", "avif"})
_FORMAT_ALIASES = {"jpg": "jpeg", "tif": "tiff", "mpo": "jpeg", "heic": "heif"}
_PILLOW_FORMAT = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP", "avif": "AVIF",
                  "gif": "GIF", "tiff": "TIFF"}
#: Largest side each encoder can write.
_MAX_SIDE = {"jpeg": 65_500, "webp": 16_383, "gif": 65_535, "avif": 65_536}

#: Separates the still format from the animated one in a negotiated format token
#: (``avif~webp``, see :mod:`.negotiation`).
ANIMATION_SEPARATOR = "~"

#: Pillow format ids allowed as sources, and the name mediaproxy.imaging reports for each.
_SOURCE_FORMATS = {"JPEG": "jpeg", "MPO": "jpeg", "PNG": "png", "WEBP": "webp", "GIF": "gif",
                   "AVIF": "avif", "HEIF": "heif", "TIFF": "tiff", "BMP": "bmp"}
#: Sources whose extra frames are animation (a multi-page TIFF or MPO renders page 1).
_ANIMATED_SOURCES = frozenset({"GIF", "WEBP", "PNG", "AVIF"})


def output_format(source_format: str, has_alpha: bool, requested: str | None = None) -> str:
    """The format to encode to: ``requested`` when given; else the source's format when it
    is a web format (jpeg, png, webp, avif, gif); else png for an image with alpha, jpeg
    without.

    Raises :class:`UnsupportedFormat` (400) when ``requested`` cannot be written.
    """
    if requested:
        name = _canonical_format(requested)
        if name not in CONTENT_TYPES or _PILLOW_FORMAT[name] not in _savable():
            raise UnsupportedFormat(f"Images cannot be converted to {requested!r}.", status=400)
        return name
    source = _canonical_format(source_format)
    if source in _WEB_FORMATS:
        return source
    return "png" if has_alpha else "jpeg"


def split_format(token: str | None) -> tuple[str | None, str | None]:
    """A format token (``webp``, ``avif~gif``, ``None``) as (the format of a still, the format
    of an animation or ``None`` when the still's format, or the source's, serves both)."""
    if token and ANIMATION_SEPARATOR in token:
        still, animated = token.split(ANIMATION_SEPARATOR, 1)
        return still or None, animated or None
    return token, None


def _canonical_format(name: str) -> str:
    name = name.lower()
    return _FORMAT_ALIASES.get(name, name)


def _savable() -> dict[str, Any]:
    Image.init()
    return Image.SAVE
