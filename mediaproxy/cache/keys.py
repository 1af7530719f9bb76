"""
The cache key, defined once, and the freshness settings every layer reads.

The key is the normalised source path, each registered parameter's contribution
(:attr:`mediaproxy.models.Param.key`, in name order; parameters contributing ``None`` are left
out) and the negotiated output format. Two URLs that mean the same transform therefore share
one entry, whichever route or parameter spelling they used.
"""

from __future__ import annotations

import functools
import hashlib
import posixpath
import re
import time
from typing import Mapping

from ..models import ImageRequest, Param

#: A tenant name, as the first segment of ``/media/{tenant}/uploads/...``.
TENANT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

KEY_VERSION = "1"
def normalise_path(path: str) -> str:
    """Collapse duplicate slashes and ``.`` segments (``..`` is refused earlier, by routes)."""
    norm = posixpath.normpath("/" + path.lstrip("/"))
    if path.endswith("/") and not norm.endswith("/"):
        norm += "/"
    return norm.replace("//", "/")


def key_parts(request: ImageRequest, params: Mapping[str, Param], fmt: str | None) -> list[str]:
    """The readable parts the key is hashed from (useful in logs and tests)."""
    parts = [f"v{KEY_VERSION}", normalise_path(request.source_path)]
    if request.source_origin:
        parts.append(f"origin={request.source_origin}")
    for name in sorted(params):
        param = params[name]
        value = request.params.get(name, param.default)
        contribution = param.key(value)
        if contribution is not None:
            parts.append(f"{name}={contribution}")
    parts.append(f"format={fmt or 'source'}")
    return parts


def source_prefix(tenant: str, source_path: str) -> str:
    """The key prefix shared by every variant of one source: ``{tenant}:{source hash}:``."""
    digest = hashlib.sha256(normalise_path(source_path).encode()).hexdigest()[:20]
    return f"{tenant}:{digest}:"


def cache_key(request: ImageRequest, params: Mapping[str, Param], fmt: str | None) -> str:
    """``{tenant}:{source hash}:{variant hash}``: stable across processes, nodes and restarts.

    The variant hash is a SHA-256 of :func:`key_parts`. The tenant and source prefix let a
    layer purge one source (all its variants) or one tenant by prefix.
    """
    variant = hashlib.sha256("\n".join(key_parts(request, params, fmt)).encode()).hexdigest()
    return source_prefix(request.tenant, request.source_path) + variant


def resolution_key(request: ImageRequest, token: str | None) -> str:
    """The key of the small entry that records what a format token only the source decides
    (``None``, ``avif~webp``) resolved to for ``request``'s source, so a request in another
    process or node finds the result stored under the resolved format's key. It shares the
    source's prefix: purging the source purges it too."""
    digest = hashlib.sha256(f"v1\nresolved\n{token or 'source'}".encode()).hexdigest()
    return source_prefix(request.tenant, request.source_path) + digest


def stale_grace(cache_config) -> float:
    """How long past its TTL a layer keeps an entry, so the pipeline can still serve it stale
    (``stale_while_revalidate``, ``stale_if_error``)."""
    return max(cache_config.stale_while_revalidate, cache_config.stale_if_error)


def fresh_ttls(cache_config) -> dict[str, float]:
    """The fresh lifetime of an entry by the built-in layer that answered (do not modify the
    dict returned: it is shared). Remembered for the last configuration object asked about
    (every hit asks: hashing the whole frozen section each time cost more than the answer)."""
    last = _last_ttls
    if last[0] is cache_config:
        return last[1]
    ttls = _fresh_ttls(cache_config)
    _last_ttls[:] = [cache_config, ttls]
    return ttls


_last_ttls: list = [None, None]


def fresh_lifetime(layer: str, cache_config, layers=(), unknown: float = float("inf")) -> float:
    """Seconds an entry answered by the layer named ``layer`` is fresh: a built-in layer's TTL
    (:func:`fresh_ttls`), else the ``fresh_ttl`` a layer of ``layers`` (a plugin's, such as
    the S3 layer) declares, else ``unknown`` (forever: a layer that says nothing keeps its
    entries fresh until it drops them). Past it the pipeline serves the entry stale, within
    ``cache.stale_while_revalidate`` / ``stale_if_error``, as for the built-in layers."""
    ttl = fresh_ttls(cache_config).get(layer)
    if ttl is not None:
        return ttl
    for candidate in layers:
        if candidate.name == layer:
            declared = getattr(candidate, "fresh_ttl", None)
            return unknown if declared is None else declared
    return unknown


def is_fresh(entry, layer: str, cache_config, now: float | None = None, layers=()) -> bool:
    """Whether ``entry``, answered by ``layer``, is still within its fresh lifetime
    (:func:`fresh_lifetime`; ``layers``: the cache's layers, for a plugin layer's own)."""
    age = (time.time() if now is None else now) - entry.created_at
    return age <= fresh_lifetime(layer, cache_config, layers)


@functools.lru_cache(maxsize=8)
def _fresh_ttls(cache_config) -> dict[str, float]:
    return {"memory": cache_config.memory.ttl, "redis": cache_config.redis.ttl,
            "file": cache_config.file.ttl}


def tenant_of(path: str) -> str:
    """``/media/{tenant}/uploads/...`` names a tenant (``[a-z_][a-z0-9_]{0,62}``); anything
    else belongs to ``public``."""
    parts = path.split("/")
    if len(parts) > 3 and parts[1] == "media" and parts[3] == "uploads" and TENANT.match(parts[2]):
        return parts[2]
    return "public"
