"""
Presets: named transforms from the configuration (``[presets.thumb] w = 300 fit = "cover"``),
asked for as ``?preset=thumb``.

A preset is nothing but query parameters written down once: a request naming it means the
request with the preset's values written out as query parameters, the request's own explicit
parameters winning where overriding is allowed. Expanded before anything else reads the
parameters, a preset request therefore has the same canonical values, hence the same cache
key, as its explicit equivalent; the ``preset`` parameter itself stays out of the key (it is
signed, though: it changes the output).

Two rules bound what clients may ask for:

* ``routes.presets_only``: a transform must name a preset (400 ``preset_required``
  otherwise);
* overriding (``routes.preset_overrides``, or a preset's own ``overrides``): ``deny`` refuses
  a request naming a preset that carries any other transform parameter (400
  ``preset_override``); ``auto``, the default, allows it except with ``presets_only``.

An unknown preset is 400 ``unknown_preset`` naming it. The values are parsed with the
parameters' own parsers once, when the proxy builds its registry (:func:`resolve`); a bad one is
a :class:`~mediaproxy.config.ConfigError` naming ``presets.thumb.w`` and its environment
variable.
"""

from __future__ import annotations

from typing import Any, Mapping

from attrs import frozen

from .config import ConfigError, preset_key, preset_where
from .memo import Memo
from .models import Rejection

#: The query parameter naming a preset (registered by mediaproxy.builtin.params).
PRESET_PARAM = "preset"
#: The longest preset name quoted back in an error (a name is at most 64 characters).
_MAX_QUOTED = 80


@frozen
class ResolvedPreset:
    """A preset with its values parsed: canonical values by parameter name."""

    name: str
    params: Mapping[str, Any]
    overrides: bool


def raw_text(value) -> str:
    """A TOML value of a preset as the query text it stands for (``true`` -> ``1``)."""
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def overrides_allowed(setting: str, routes) -> bool:
    """Whether explicit parameters may override a preset whose ``overrides`` is ``setting``."""
    if setting == "inherit":
        setting = routes.preset_overrides
    if setting == "auto":
        return not routes.presets_only
    return setting == "allow"


def spellings(registry) -> dict[str, str]:
    """Every query spelling of every registered parameter -> the parameter's name."""
    return {spelling: name for name, param in registry.items()
            for spelling in (name, *param.aliases)}


def resolve(config, registry) -> dict[str, ResolvedPreset]:
    """Every ``[presets.NAME]`` of ``config`` parsed with ``registry``'s parsers. Raises
    :class:`ConfigError` naming the first bad value (an unknown parameter, a value its parser
    refuses, one parameter given twice, the ``preset`` parameter itself)."""
    names = spellings(registry)
    out = {}
    for preset in config.presets:
        params: dict[str, Any] = {}
        for spelling, value in preset.values:
            key, where = preset_key(preset.name, spelling), preset_where(preset.name, spelling)
            name = names.get(spelling)
            if name is None:
                raise ConfigError(key, f"no plugin registered the parameter {spelling!r} "
                                       f"({where})")
            if name == PRESET_PARAM:
                raise ConfigError(key, f"a preset cannot name another preset ({where})")
            if name in params:
                raise ConfigError(key, f"{name!r} is given twice in the preset ({where})")
            try:
                params[name] = registry[name].parse(raw_text(value))
            except ValueError as e:
                raise ConfigError(key, f"{e} ({where})") from None
        out[preset.name] = ResolvedPreset(
            preset.name, params, overrides_allowed(preset.overrides, config.routes))
    return out


#: the presets of the last (configuration, registry) pair: checked at start, so never raises
_resolved = Memo(maxsize=1)


def resolved(config, registry) -> dict[str, ResolvedPreset]:
    """:func:`resolve`, remembered for the current configuration and registry objects."""
    table = _resolved.table(config, registry)
    found = table.get("presets")
    if found is None:
        found = resolve(config, registry)
        _resolved.put("presets", found)
    return found


def expand(params: dict, present: set, registry, config):
    """The parameters a request asks for once its preset (if any) is applied: ``(params,
    None)`` or ``(None, rejection)``.

    ``params`` are the request's parsed parameters (defaults where absent, the preset's name
    as sent under ``preset``; a dict of the caller's own, changed in place), ``present`` the
    names of those it gave explicitly. The result has no ``preset`` entry: a preset request and
    its explicit equivalent are equal."""
    name = params.pop(PRESET_PARAM, None)   # what it stands for enters the key, not its name
    if PRESET_PARAM not in present:
        if present and config.routes.presets_only:
            return None, Rejection(
                400, "preset_required", "routes.presets_only is set: a transform must name a "
                f"preset (?preset=NAME), not parameters such as {min(present)!r}",
                parameter=PRESET_PARAM)
        return params, None
    explicit = sorted(present - {PRESET_PARAM})
    preset = resolved(config, registry).get(name)
    if preset is None:
        quoted = name if len(name) <= _MAX_QUOTED else name[:_MAX_QUOTED] + "..."
        return None, Rejection(400, "unknown_preset", f"there is no preset {quoted!r}",
                               parameter=PRESET_PARAM)
    if explicit and not preset.overrides:
        return None, Rejection(
            400, "preset_override", f"the preset {name!r} may not be overridden: drop "
            f"{explicit[0]!r} (routes.preset_overrides, presets.{name}.overrides)",
            parameter=explicit[0])
    for param_name, value in preset.params.items():
        if param_name not in present:
            params[param_name] = value
    return params, None
