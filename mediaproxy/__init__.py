"""
mediaproxy: an image edge proxy in front of your backend, built on Twisted and pluggy.

This module is the public surface a plugin needs (with :mod:`mediaproxy.testing` for its
tests): the hook marker, the frozen values passed between hooks, the typed runtime, the
parameter parsers and the SSRF-safe HTTP agent for fetching anything that is not the backend.
Everything else is internal and may move.
"""

__version__ = "0.1.0"

#: Every public name is loaded on first use, so that importing a pure part of the package
#: (:mod:`mediaproxy.urlsign`, :mod:`mediaproxy.django`) loads neither Twisted nor Pillow.
#: ``hookimpl`` (the pluggy marker), the frozen values, the parsers, the typed runtime, and the
#: SSRF-safe agent factories (they bring in Twisted's HTTP client). Then what a plugin shipping
#: a cache layer with settings of its own needs (the S3 plugin): the layer protocol and lookup,
#: the checksummed entry record every shared layer stores, and the settings machinery
#: (``setting`` fields in a frozen class, checked and converted like the core's sections by
#: ``build_settings(cls, table, "section.")``, errors as ``ConfigError``, values in messages as
#: TOML writes them by ``show_value``; a plugin declares its section through the
#: ``mediaproxy_settings`` hook). The source client (``SourceFetcher``, ``SourcePolicy``) for a
#: plugin fetching images from an allowed host with the backend's deadlines and limits (the
#: watermark plugin's remote overlays), and the circuit breaker the backend client uses
#: (``CircuitBreaker``: a plugin's own client to a store opens, probes and closes the same way).
#: A value ``module:attr`` names an attribute of another name.
_LAZY = {
    **dict.fromkeys(("CacheEntry", "Event", "HealthStatus", "ImageRequest", "ImageResponse",
                     "Output", "Param", "Rejection", "Rendered", "RequestInfo", "SourceError",
                     "SourceImage", "TransformSpec", "TransformStep"), "mediaproxy.models"),
    **dict.fromkeys(("parse_bool", "parse_choice", "parse_colour", "parse_int"),
                    "mediaproxy.parsing"),
    **dict.fromkeys(("Overloaded", "Runtime"), "mediaproxy.runtime"),
    **dict.fromkeys(("safe_agent", "agent_for", "AddressPolicy", "BlockedAddress"),
                    "mediaproxy.http.ssrf"),
    **dict.fromkeys(("CacheLayer", "find_layer"), "mediaproxy.cache.layered"),
    "encode_entry": "mediaproxy.cache.entrycodec:encode",
    "decode_entry": "mediaproxy.cache.entrycodec:decode",
    "CorruptEntry": "mediaproxy.cache.entrycodec",
    **dict.fromkeys(("ConfigError", "setting", "section"), "mediaproxy.config"),
    "build_settings": "mediaproxy.config:_build",
    "show_value": "mediaproxy.configload:show",
    "parse_accept": "mediaproxy.imaging.negotiation:accept_qualities",
    # the source client, for a plugin fetching from an allowed host with the backend's policy
    **dict.fromkeys(("SourceFetcher", "SourcePolicy"), "mediaproxy.http.fetch"),
    "CircuitBreaker": "mediaproxy.http.breaker",
}


def __getattr__(name):
    if name == "hookimpl":
        import pluggy

        #: Mark a function or method as a mediaproxy hook implementation.
        value = pluggy.HookimplMarker("mediaproxy")
    elif name in _LAZY:
        import importlib

        module, _, attr = _LAZY[name].partition(":")
        value = getattr(importlib.import_module(module), attr or name)
    else:
        raise AttributeError(f"module 'mediaproxy' has no attribute {name!r}")
    globals()[name] = value   # once: later lookups are plain attribute reads
    return value


__all__ = [
    "__version__", "hookimpl", "CacheEntry", "Event", "HealthStatus", "ImageRequest",
    "ImageResponse", "Output", "Overloaded", "Param", "Rejection", "Rendered", "RequestInfo",
    "Runtime",
    "SourceError", "SourceImage", "TransformSpec", "TransformStep",
    "parse_bool", "parse_choice", "parse_colour", "parse_int",
    "safe_agent", "agent_for", "AddressPolicy", "BlockedAddress",
    "CacheLayer", "find_layer", "encode_entry", "decode_entry", "CorruptEntry",
    "ConfigError", "setting", "section", "build_settings", "show_value", "parse_accept",
    "SourceFetcher", "SourcePolicy", "CircuitBreaker",
]
