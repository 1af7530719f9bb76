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
_LAZY = {"safe_agent": "mediaproxy.http.ssrf", "agent_for": "mediaproxy.http.ssrf",
         "AddressPolicy": "mediaproxy.http.ssrf", "BlockedAddress": "mediaproxy.http.ssrf"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mediaproxy' has no attribute {name!r}")


__all__ = [
    "__version__", "hookimpl", "CacheEntry", "Event", "HealthStatus", "ImageRequest",
    "ImageResponse", "Output", "Overloaded", "Param", "Rejection", "Rendered", "RequestInfo",
    "Runtime",
    "SourceError", "SourceImage", "TransformSpec", "TransformStep",
    "parse_bool", "parse_choice", "parse_colour", "parse_int",
    "safe_agent", "agent_for", "AddressPolicy", "BlockedAddress",
]
