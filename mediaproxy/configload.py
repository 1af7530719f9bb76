"""
Where configuration values come from, and how a wrong one is reported.

:mod:`mediaproxy.config` holds the schema and builds the config; this module holds what the
loading needs around it, none of which knows a setting:

* :class:`ConfigError`, whose message starts with where the value came from: the file and
  line (``conf/x.toml:12: cache.memory.max_bytes: ...``) or the environment variable
  (``MEDIAPROXY_CACHE__MEMORY__MAX_BYTES: cache.memory.max_bytes: ...``);
* :class:`Origins`: which source set each key (file positions from :mod:`mediaproxy.tomlpos`,
  environment variable names), later sources hiding what they replace;
* :func:`show`: a value as TOML writes it (``"abc"``, ``true``, ``[1, 2]``), for messages;
* :func:`suggest`: "did you mean" over the known names;
* the environment: ``MEDIAPROXY_SECTION__KEY`` -> a tree (:func:`env_tree`), and the
  ``MEDIAPROXY_*`` variables that are no setting (:func:`unknown_variables`);
* the plugins' own sections (:func:`plugin_schemas`, the ``mediaproxy_settings`` hook) and
  the one line that names a plugin which cannot load (:class:`PluginLoadError`).
"""

from __future__ import annotations

import difflib
import importlib.metadata
import math
import re
import tomllib
from typing import Any, Iterable, Mapping

from .tomlpos import key_lines, path_of

ENV_PREFIX = "MEDIAPROXY_"

#: ``MEDIAPROXY_*`` variables that are not settings and that mediaproxy (or its tools) reads.
OTHER_VARIABLES = {
    "MEDIAPROXY_CONFIG": "the config file of mediaproxy run, check-config, sign and purge",
    "MEDIAPROXY_TRACE_HOOKS": "1: log every hook call (as monitoring.trace_hooks)",
    "MEDIAPROXY_WORKER_PARENT": "set by the supervisor for its workers",
    "MEDIAPROXY_PIDFILE": "the bench's pid file",
    "MEDIAPROXY_BENCH_ENV": "the bench's extra environment",
}

#: A plugin section's name: it is a TOML table and an environment variable's first part.
SECTION_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


class ConfigError(ValueError):
    """A configuration value is wrong. ``key`` is the dotted name, ``message`` what is wrong,
    ``where`` the source of the value (``file.toml:12`` or ``MEDIAPROXY_A__B``) when known;
    ``str()`` is the whole line."""

    #: For an unknown key: the known key it probably means.
    suggestion: str | None = None

    def __init__(self, key: str, message: str, where: str | None = None):
        self.key, self.message, self.where = key, message, where
        super().__init__(f"{where}: {key}: {message}" if where else f"{key}: {message}")

    def at(self, where: str | None) -> ConfigError:
        """The same error, said to come from ``where`` (unless it already says where). An
        unknown key set by an environment variable suggests the variable it probably means."""
        if self.where or not where:
            return self
        message = self.message
        if self.suggestion and where.startswith(ENV_PREFIX):
            full = where[len(ENV_PREFIX):].lower().replace("__", ".")
            meant = env_name(self.suggestion + full[len(self.key):])
            message = f"unknown key (did you mean {meant}?)"
        error = type(self)(self.key, message, where)
        error.suggestion = self.suggestion
        return error


class PluginLoadError(ConfigError):
    """An installed plugin's entry point cannot be loaded: one line naming it and the
    setting that leaves it out."""

    def __init__(self, key: str, message: str, where: str | None = None):
        super().__init__(key, message, where)
        self.args = (message,)

    def __str__(self) -> str:
        return self.message

    def at(self, where: str | None) -> ConfigError:
        return self   # the line names the entry point and the setting already

    @classmethod
    def of(cls, ep: importlib.metadata.EntryPoint, error: BaseException) -> PluginLoadError:
        dist = getattr(ep, "dist", None)
        origin = f" ({dist.name} {dist.version})" if dist is not None else ""
        why = " ".join(f"{type(error).__name__}: {error}".split())
        return cls("plugins", f"plugin {ep.name!r} cannot load: entry point {ep.name} = "
                              f"{ep.value}{origin}: {why}; leave it out with "
                              f"plugins.disabled = [{show(ep.name)}] or "
                              f"MEDIAPROXY_PLUGINS__DISABLED={ep.name}")


# -- values in messages ----------------------------------------------------------------------

def toml_string(value: str) -> str:
    """A TOML basic string: backslash and quote escaped, what is not printable as \\u or
    \\U escapes (check-config's output and the messages write strings alike)."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    escaped = "".join(c if c.isprintable() else
                      (f"\\u{ord(c):04x}" if ord(c) <= 0xFFFF else f"\\U{ord(c):08x}")
                      for c in escaped)
    return f'"{escaped}"'


def show(value: Any) -> str:
    """``value`` as TOML writes it: ``"abc"``, ``true``, ``1.5``, ``[1, 2]``, ``{ a = 1 }``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(show(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {show(v)}" for k, v in value.items()) + " }" \
            if value else "{}"
    return repr(value)


def suggest(name: str, known: Iterable[str]) -> str | None:
    """The known name closest to ``name``, if one is close enough to be a misspelling."""
    found = difflib.get_close_matches(name, list(known), n=1, cutoff=0.75)
    return found[0] if found else None


# -- where values come from ------------------------------------------------------------------

Path = tuple


class Origins:
    """Which source set each key: ``{path: where}``, ``where`` being ``file:line``, an
    environment variable's name, or ``""`` (set by the program: the command line, a test).
    A later source setting a value hides what earlier ones said about it and below it."""

    def __init__(self, spots: Mapping[Path, str] | None = None):
        self.spots: dict[Path, str] = dict(spots or {})

    def add(self, spots: Mapping[Path, str]) -> None:
        for path in spots:
            for old in [p for p in self.spots if p[:len(path)] == path]:
                del self.spots[old]
        self.spots.update(spots)

    def of(self, key: str) -> str | None:
        """Where the value of ``key`` (``cache.memory.max_bytes``, ``alerts.rules[1].expr``)
        was set: the longest known path it starts with."""
        path = path_of(key)
        for n in range(len(path), 0, -1):
            where = self.spots.get(path[:n])
            if where is not None:
                return where or None
        below = sorted((p for p in self.spots if p[:len(path)] == path), key=_sort_key)
        return self.spots[below[0]] or None if below else None


def _sort_key(path: Path) -> tuple:
    return tuple((isinstance(part, int), str(part)) for part in path)


def leaves(tree: Mapping[str, Any], path: Path = ()) -> Iterable[Path]:
    """The paths of the values of ``tree`` that are not tables."""
    for key, value in tree.items():
        if isinstance(value, Mapping):
            yield from leaves(value, path + (key,))
        else:
            yield path + (key,)


def read_toml(path: str) -> tuple[dict[str, Any], dict[Path, str]]:
    """A TOML file's data and ``{path: "file:line"}`` of its keys."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError("--config", f"cannot read {show(path)}: {e.strerror}") from None
    try:
        text = raw.decode("utf-8")
        data = tomllib.loads(text)
    except UnicodeDecodeError as e:
        raise ConfigError("--config", f"{show(path)} is not UTF-8: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("--config", f"{show(path)} is not valid TOML: {e}") from None
    return data, {p: f"{path}:{line}" for p, line in key_lines(text).items()}


def env_name(key: str) -> str:
    """The environment variable of a dotted key: ``cache.memory.max_bytes`` ->
    ``MEDIAPROXY_CACHE__MEMORY__MAX_BYTES``."""
    return ENV_PREFIX + key.upper().replace(".", "__")


def env_tree(environ: Mapping[str, str]) -> tuple[dict[str, Any], dict[Path, str]]:
    """``MEDIAPROXY_A__B__C=value`` -> ``{"a": {"b": {"c": value}}}`` and
    ``{("a", "b", "c"): "MEDIAPROXY_A__B__C"}`` (values stay strings, except TOML arrays,
    which are parsed so ``'["/media/"]'`` works as well as ``/media/``)."""
    tree: dict[str, Any] = {}
    spots: dict[Path, str] = {}
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or "__" not in name[len(ENV_PREFIX):]:
            continue
        path = name[len(ENV_PREFIX):].lower().split("__")
        if not all(path):
            raise ConfigError(".".join(path), "empty key segment", name)
        value: Any = raw
        if raw.strip().startswith("["):
            try:
                value = tomllib.loads(f"v = {raw}")["v"]
            except tomllib.TOMLDecodeError:
                raise ConfigError(".".join(path), f"{show(raw)} is not a TOML array",
                                  name) from None
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(".".join(path), "is both a value and a table", name)
        if isinstance(node.get(path[-1]), dict):
            raise ConfigError(".".join(path), "is both a value and a table", name)
        node[path[-1]] = value
        spots[tuple(path)] = name
    return tree, spots


def unknown_variables(environ: Mapping[str, str], setting_names: Iterable[str]) -> list[str]:
    """One line for each ``MEDIAPROXY_*`` variable of ``environ`` that names no setting and is
    none of :data:`OTHER_VARIABLES`, with the variable it probably meant. (A variable in the
    ``MEDIAPROXY_SECTION__KEY`` form is a setting: a wrong one is an error when the config is
    built, not a warning.) ``setting_names``: the dotted keys of every setting."""
    known = {env_name(key): key for key in setting_names} | dict.fromkeys(OTHER_VARIABLES)
    squashed = {name.replace("__", "_"): name for name in known}
    out = []
    for name in sorted(environ):
        if (not name.startswith(ENV_PREFIX) or "__" in name[len(ENV_PREFIX):]
                or name in known):
            continue
        close = suggest(name[len(ENV_PREFIX):], [k[len(ENV_PREFIX):] for k in known])
        meant = squashed.get(name) or (ENV_PREFIX + close if close else None)
        hint = f" (did you mean {meant}?)" if meant else ""
        out.append(f"{name}: not a setting nor a variable mediaproxy reads, ignored{hint}")
    return out


# -- plugins ---------------------------------------------------------------------------------

def entry_point_plugins(disabled: Iterable[str]) -> list[tuple[importlib.metadata.EntryPoint,
                                                                object]]:
    """The installed plugins of the ``mediaproxy`` entry-point group, each loaded, minus
    those named in ``disabled`` (not even imported). One that cannot load raises
    :class:`PluginLoadError`."""
    leave_out = set(disabled)
    out, seen = [], set()
    for ep in importlib.metadata.entry_points(group="mediaproxy"):
        if ep.name in leave_out or ep.name in seen:
            continue
        seen.add(ep.name)
        try:
            out.append((ep, ep.load()))
        except Exception as e:   # anything the import raises: the plugin is unusable
            raise PluginLoadError.of(ep, e) from e
    return out


def plugin_schemas(plugins: Iterable[object], taken: Iterable[str]) -> dict[str, type]:
    """``{section: settings class}`` declared by ``plugins`` through ``mediaproxy_settings``.
    A name among ``taken`` (the core's sections) or declared twice is a :class:`ConfigError`."""
    import attrs
    import pluggy

    from . import hookspecs

    pm = pluggy.PluginManager("mediaproxy")
    pm.add_hookspecs(hookspecs)
    registered: set[int] = set()
    for plugin in plugins:
        if id(plugin) not in registered:
            registered.add(id(plugin))
            pm.register(plugin, name=f"plugin-{len(registered)}")
    out: dict[str, type] = {}
    core = set(taken)
    for table in reversed(pm.hook.mediaproxy_settings()):   # in registration order
        for name, cls in dict(table).items():
            if not isinstance(name, str) or not SECTION_NAME.match(name):
                raise ConfigError("plugins", f"a plugin declares the section {show(name)}: "
                                             "not a section name (a-z, 0-9, _)")
            if out.get(name) is cls:
                continue    # the same plugin twice (installed, and registered by a test)
            if name in core or name in out:
                raise ConfigError("plugins", f"two plugins (or a plugin and the core) declare "
                                             f"the section [{name}]")
            if not attrs.has(cls):
                raise ConfigError("plugins", f"the section [{name}] is not a class of "
                                             "setting() fields")
            out[name] = cls
    return out
