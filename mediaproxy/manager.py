"""
The plugin manager factory: hook specs, the built-in plugins, then third-party plugins from the
``mediaproxy`` entry-point group, minus those disabled by name in ``plugins.disabled``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os

import pluggy
from twisted.logger import Logger

from . import __version__, hookspecs
from .configload import entry_point_plugins

log = Logger(namespace="mediaproxy.plugins")

#: Names that ``plugins.disabled`` accepted once and that are no plugin any more, with why.
RETIRED_PLUGINS = {
    "mediaproxy.redisconn": "the Redis client is part of the core; leave cache.redis unset "
                            "to run without Redis",
    "mediaproxy.builtin.warmup": "the warm-up is part of the pipeline; warmup.interval = 0 "
                                 "(the default) turns it off",
}

#: The built-in features, each a plugin module registered under its dotted name.
DEFAULT_PLUGINS = (
    "mediaproxy.builtin.params",
    "mediaproxy.builtin.routing",
    "mediaproxy.builtin.compat",
    "mediaproxy.builtin.effects",
    "mediaproxy.builtin.thumbor",
    "mediaproxy.builtin.validation",
    "mediaproxy.builtin.source",
    "mediaproxy.builtin.sourcecache",
    "mediaproxy.builtin.memorycache",
    "mediaproxy.builtin.rediscache",
    "mediaproxy.builtin.filecache",
    "mediaproxy.builtin.pipeline",
    "mediaproxy.builtin.decoded",
    "mediaproxy.builtin.cors",
    "mediaproxy.builtin.metrics",
    "mediaproxy.builtin.health",
    "mediaproxy.builtin.alerts",
    "mediaproxy.builtin.admin",
    "mediaproxy.builtin.signing",
    "mediaproxy.builtin.ratelimit",
    "mediaproxy.builtin.accesslog",
)


class PluginManager(pluggy.PluginManager):
    """pluggy's manager, counting its changes: ``generation`` goes up at every register and
    unregister (``set_blocked`` included), so what is derived from the registered plugins (the
    runtime's list of event handlers) knows when to be derived again."""

    generation = 0

    def __init__(self, project_name: str):
        super().__init__(project_name)
        #: name -> (version, where from) of each plugin registered by name
        self.sources: dict[str, tuple[str, str]] = {}

    def register(self, plugin, name=None):
        try:
            return super().register(plugin, name)
        finally:
            self.generation += 1

    def unregister(self, plugin=None, name=None):
        try:
            return super().unregister(plugin, name)
        finally:
            self.generation += 1


def get_plugin_manager(config, load_entrypoints: bool | None = None,
                       extra_plugins=()) -> PluginManager:
    """A plugin manager with every spec, the enabled built-ins, the entry-point plugins (unless
    ``load_entrypoints`` is false) and ``extra_plugins`` (objects or modules, for tests).

    Ends with ``check_pending()``: a hookimpl whose name matches no spec fails here, at start.
    """
    pm = PluginManager("mediaproxy")
    pm.add_hookspecs(hookspecs)
    disabled = set(config.plugins.disabled)
    for name in disabled:
        pm.set_blocked(name)
    for name in DEFAULT_PLUGINS:
        if name not in disabled:
            pm.register(importlib.import_module(name), name)
            pm.sources[name] = (__version__, "built-in")
    if load_entrypoints is None:
        load_entrypoints = config.plugins.load_entrypoints
    if load_entrypoints:   # one that cannot load: PluginLoadError, one line naming it
        for ep, plugin in entry_point_plugins(disabled):
            if pm.get_plugin(ep.name) is None and not pm.is_registered(plugin):
                pm.register(plugin, ep.name)
                dist = getattr(ep, "dist", None)
                pm.sources[ep.name] = (
                    dist.version if dist is not None else "?",
                    f"entry point {ep.name} = {ep.value}"
                    + (f" ({dist.name})" if dist is not None else ""))
    for plugin in extra_plugins:
        name = pm.register(plugin)
        if name is not None:
            pm.sources[name] = ("-", "registered by the program")
    installed = {ep.name for ep in importlib.metadata.entry_points(group="mediaproxy")}
    for name in sorted(disabled - set(DEFAULT_PLUGINS) - installed):
        if name in RETIRED_PLUGINS:
            log.warn("plugins.disabled names {plugin!r}, which is no plugin any more: {why}",
                     plugin=name, why=RETIRED_PLUGINS[name])
        else:
            log.warn("plugins.disabled names {plugin!r}, which is not installed", plugin=name)
    pm.check_pending()
    if config.monitoring.trace_hooks or os.environ.get("MEDIAPROXY_TRACE_HOOKS") == "1":
        _trace(pm)
    return pm


def _trace(pm: pluggy.PluginManager) -> None:
    trace = Logger(namespace="mediaproxy.trace")

    def before(hook_name, hook_impls, kwargs):
        if hook_name != "mediaproxy_event":
            trace.debug("call {hook} ({n} impls) with {args}", hook=hook_name,
                        n=len(hook_impls), args=sorted(kwargs))

    def after(outcome, hook_name, hook_impls, kwargs):
        if hook_name != "mediaproxy_event":
            trace.debug("{hook} -> {result!r}", hook=hook_name,
                        result=outcome.get_result() if outcome.exception is None
                        else outcome.exception)

    pm.add_hookcall_monitoring(before, after)


def plugin_names(pm: pluggy.PluginManager) -> list[str]:
    """Names of the registered plugins, for ``check-config`` and the health endpoint."""
    return sorted(name for name, plugin in pm.list_name_plugin() if plugin is not None)


def loaded_plugins(pm: PluginManager) -> list[tuple[str, str, str]]:
    """(name, version, where from) of each plugin the proxy loaded: the built-ins, the
    installed ones (their entry point and distribution) and those the program registered; in
    loading order. For ``check-config`` and the start log line."""
    return [(name, *pm.sources[name]) for name, plugin in pm.list_name_plugin()
            if plugin is not None and name in pm.sources]
