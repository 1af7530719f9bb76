"""
The built-in transform parameters and their canonical values.

Query names: ``w`` ``h`` ``fit`` ``pos`` ``bg`` ``q`` ``fmt`` ``enlarge`` ``trim`` (with the long
aliases ``width`` ``height`` ``position`` ``background`` ``quality`` ``format``) and ``preset``
(a named set of them, :mod:`mediaproxy.presets`). Each parser
accepts the spellings users send and returns one canonical value (:mod:`mediaproxy.parsing`), so
equivalent URLs build equal cache keys.
"""

from __future__ import annotations

from .. import hookimpl
from ..models import Param
from ..presets import PRESET_PARAM
from ..parsing import (  # noqa: F401 (FITS, POSITIONS, FORMATS: re-exported)
    FITS, FORMATS, POSITIONS, colour_key, parse_bool, parse_choice, parse_colour, parse_fit,
    parse_int, parse_position,
)


def builtin_params(config) -> list[Param]:
    limits = config.limits
    return [
        Param("w", lambda raw: parse_int(raw, 0, limits.max_width, "width"), 0,
              key=str, aliases=("width",), help="Output width in pixels; 0 or absent: free."),
        Param("h", lambda raw: parse_int(raw, 0, limits.max_height, "height"), 0,
              key=str, aliases=("height",), help="Output height in pixels; 0 or absent: free."),
        Param("fit", parse_fit, "inside", key=str,
              help="cover, contain, fill, inside (default), outside."),
        Param("pos", parse_position, "centre", key=str,
              aliases=("position", "gravity"),
              help="Crop or placement: centre, north ... southwest, entropy, attention."),
        Param("bg", parse_colour, (255, 255, 255, 255), key=colour_key,
              aliases=("background",), help="Background for contain and for flattening "
              "transparency: hex rgb[a] or transparent."),
        Param("q", lambda raw: parse_int(raw, 1, 100, "quality"),
              config.processing.default_quality, key=str, aliases=("quality",),
              help="Encoder quality 1-100."),
        # The negotiated format enters the key separately (see mediaproxy.cache.keys.cache_key).
        Param("fmt", parse_choice(FORMATS, "format"), None, key=lambda value: None,
              aliases=("format",), help="jpeg, png, webp, avif, gif, tiff or auto."),
        Param("enlarge", parse_bool, False, key=lambda value: "1" if value else "0",
              help="1 allows upscaling beyond the source size."),
        Param("trim", lambda raw: parse_int(raw, 0, 100, "trim"), 0, key=str,
              help="Trim a uniform border, threshold 1-100 (0: off)."),
        # Expanded by the query scheme into the preset's values (mediaproxy.presets), which
        # are what enters the key; registered so it is an image request and is signed.
        Param(PRESET_PARAM, _preset_name, None, key=lambda value: None,
              help="A named transform: the parameters of [presets.NAME] in the config."),
    ]


def _preset_name(raw: str) -> str:
    return raw   # looked up (unknown_preset) when expanded, where the presets are known


@hookimpl
def mediaproxy_params(config):
    return builtin_params(config)
