"""A runtime built the way the proxy builds its own, for tests that call plugin code directly
(no sockets): :func:`make_runtime`."""

from __future__ import annotations


def make_runtime(overrides: dict | None = None, reactor=None, plugins=(),
                 load_entrypoints: bool = False, environ: dict | None = None):
    """A complete :class:`~mediaproxy.runtime.Runtime`, built the way the proxy builds its own
    (:func:`mediaproxy.tap.build_runtime`): the built-in plugins, ``plugins`` (objects or
    modules) and, with ``load_entrypoints``, the installed ones, every plugin configured.

    ``overrides`` is a dict shaped like the TOML file (``{"limits": {"max_width": 1000}}``);
    ``reactor`` defaults to a fresh :class:`~twisted.internet.testing.MemoryReactorClock`, so
    nothing listens, connects or runs until the test drives it. Nothing is started.
    """
    from twisted.internet.testing import MemoryReactorClock

    from ..config import load_config
    from ..tap import build_runtime

    config = load_config(environ=environ or {}, overrides=overrides or {}, plugins=plugins,
                         load_entrypoints=load_entrypoints)
    return build_runtime(config, reactor if reactor is not None else MemoryReactorClock(),
                         extra_plugins=plugins, load_entrypoints=load_entrypoints)
