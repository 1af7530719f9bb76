"""
mediaproxy: an image edge proxy in front of your backend, built on Twisted and pluggy.

This module is the public surface a plugin needs (with :mod:`mediaproxy.testing` for its
tests): the hook marker, the frozen values passed between hooks, the typed runtime, the
parameter parsers and the SSRF-safe HTTP agent for fetching anything that is not the backend.
Everything else is internal and may move.
"""

import pluggy

from .models import (
    CacheEntry, Event, HealthStatus, ImageRequest, ImageResponse, Output, Param, Rejection,
    Rendered, RequestInfo, SourceError, SourceImage, TransformSpec, TransformStep,
)
from .parsing import parse_bool, parse_choice, parse_colour, parse_int
from .runtime import Overloaded, Runtime

__version__ = "0.1.0"

#: Mark a function or method as a mediaproxy hook implementation.
hookimpl = pluggy.HookimplMarker("mediaproxy")

#: Loaded on first use (they bring in Twisted's HTTP client): the SSRF-safe agent factories.
#: Then what a plugin shipping a cache layer with settings of its own needs (the S3 plugin):
#: the layer protocol and lookup, the checksummed entry record every shared layer stores, and
#: the settings machinery (``setting`` fields in a frozen class, checked and converted like the
#: core's sections by ``build_settings(cls, table, "section.")``, errors as ``ConfigError``).
#: A value ``module:attr`` names an attribute of another name.
_LAZY = {"safe_agent": "mediaproxy.http.ssrf", "agent_for": "mediaproxy.http.ssrf",
         "AddressPolicy": "mediaproxy.http.ssrf", "BlockedAddress": "mediaproxy.http.ssrf",
         "CacheLayer": "mediaproxy.cache.layered", "find_layer": "mediaproxy.cache.layered",
         "encode_entry": "mediaproxy.cache.entrycodec:encode",
         "decode_entry": "mediaproxy.cache.entrycodec:decode",
         "CorruptEntry": "mediaproxy.cache.entrycodec",
         "ConfigError": "mediaproxy.config", "setting": "mediaproxy.config",
         "build_settings": "mediaproxy.config:_build"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, _, attr = _LAZY[name].partition(":")
        return getattr(importlib.import_module(module), attr or name)
    raise AttributeError(f"module 'mediaproxy' has no attribute {name!r}")


__all__ = [
    "__version__", "hookimpl", "CacheEntry", "Event", "HealthStatus", "ImageRequest",
    "ImageResponse", "Output", "Overloaded", "Param", "Rejection", "Rendered", "RequestInfo",
    "Runtime",
    "SourceError", "SourceImage", "TransformSpec", "TransformStep",
    "parse_bool", "parse_choice", "parse_colour", "parse_int",
    "safe_agent", "agent_for", "AddressPolicy", "BlockedAddress",
    "CacheLayer", "find_layer", "encode_entry", "decode_entry", "CorruptEntry",
    "ConfigError", "setting", "build_settings",
]
