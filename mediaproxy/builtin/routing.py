"""
The query scheme: transforms asked for with query parameters on the backend's own media paths,
``/media/uploads/a.jpg?w=300&h=200&fit=cover&fmt=webp``.

A GET or HEAD on a configured prefix, with an image extension and at least one registered
parameter, is an image request; anything else passes through untouched (a media path without
transform parameters, a ``?v=123`` cache buster alone, a POST). Unknown parameters are ignored
and stay out of the cache key. ``?preset=NAME`` stands for the parameters of ``[presets.NAME]``
(:mod:`mediaproxy.presets`), expanded here so a preset and its explicit equivalent are one
request.
"""

from __future__ import annotations

import re

from ..urlsign import decode_path  # compat and signing take it from here
from .. import hookimpl
from ..cache.keys import normalise_path, tenant_of
from ..memo import MAX_KEY_CHARS, Memo
from ..models import ImageRequest, Rejection
from ..presets import PRESET_PARAM, expand
from .signing import signature_first


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def unsafe_path_reason(path: str) -> str | None:
    """Why a decoded source path may not be fetched, or None when it is safe."""
    if not path.startswith("/"):
        return "the path must be absolute"
    if "\x00" in path or "\\" in path:
        return "the path contains a forbidden character"
    if _CONTROL.search(path):
        return "the path contains a control character"
    segments = path.split("/")
    if ".." in segments:
        return "the path must not contain '..' segments"
    if "://" in path or path.startswith("//"):
        return "the path must not name a scheme or host"
    return None


def parse_params(query: dict[str, str], registry) -> tuple[dict, Rejection | None, set]:
    """Read every registered parameter from ``query``: (params, rejection, present), present
    the set of the names of the parameters the query gave (empty, hence false, when none)."""
    params = {}
    present = set()
    for name, param in registry.items():
        raw = None
        for spelling in (name, *param.aliases):
            if spelling in query:
                raw = query[spelling]
        if raw is None:
            params[name] = param.default
            continue
        present.add(name)
        try:
            params[name] = param.parse(raw)
        except ValueError as e:
            return params, Rejection(400, "invalid_parameter", str(e), parameter=name), present
    return params, None, present


_MISSING = object()
#: (method, raw path, query pairs) -> what :func:`match` answered, for the configuration,
#: parameter registry and plugins it was derived with (:mod:`mediaproxy.memo`)
_memo = Memo()


@hookimpl(trylast=True)
def mediaproxy_match_request(request, runtime):
    """:func:`match`, remembered by URI: it is a pure function of the method, the raw path,
    the query, the configuration and the registered parameters."""
    path, query = request.path, request.query
    size = len(path)
    for name, value in query:
        size += len(name) + len(value) + 2
    if size > MAX_KEY_CHARS:
        found = match(request, runtime)
    else:
        table = _memo.table(runtime.config, runtime.params,
                            getattr(runtime.pm, "generation", None))
        key = (request.method, path, query)
        found = table.get(key, _MISSING)
        if found is _MISSING:
            found = match(request, runtime)
            _memo.put(key, found)
    if found.__class__ is Rejection:
        # a tampered preset name or value on a signed URL: the signature speaks first
        return signature_first(found, "query", request, runtime)
    return found


def match(request, runtime):
    """The image request ``request`` asks for on the query scheme, a refusal, or None (not an
    image request: it passes through)."""
    config = runtime.config.routes
    if not config.query_scheme or request.method not in ("GET", "HEAD"):
        return None
    if not any(request.path.startswith(prefix) for prefix in config.prefixes):
        return None
    query = request.query_dict()
    if not runtime.param_names.intersection(query):
        return None
    try:
        path = decode_path(request.path)
    except (ValueError, UnicodeDecodeError):
        return Rejection(400, "invalid_path", "the path is not valid percent-encoded UTF-8",
                         parameter="path")
    if not path.lower().endswith(tuple(config.image_extensions)):
        return None
    reason = unsafe_path_reason(path)
    if reason:
        return Rejection(400, "invalid_path", reason, parameter="path")
    params, rejection, present = parse_params(query, runtime.params)
    if rejection is not None:
        return rejection
    if PRESET_PARAM in runtime.params:
        params, rejection = expand(params, present, runtime.params, runtime.config)
        if rejection is not None:
            return rejection
    path = normalise_path(path)
    return ImageRequest(route="query", source_path=path, params=params, tenant=tenant_of(path))
