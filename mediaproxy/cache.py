"""
The result cache: the :class:`CacheLayer` protocol every layer implements, the layered
read-through / back-fill composition, and the cache key.

The key is defined here, once: the normalised source path, each registered parameter's
contribution (:attr:`mediaproxy.models.Param.key`, in name order; parameters contributing
``None`` are left out) and the negotiated output format. Two URLs that mean the same
transform therefore share one entry, whichever route or parameter spelling they used.
"""

from __future__ import annotations

import functools
import hashlib
import posixpath
import time
from typing import Mapping, Protocol, runtime_checkable

import attrs
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.logger import Logger

from .models import CacheEntry, ImageRequest, Param

KEY_VERSION = "1"
#: Seconds between two warnings about the same failing layer.
WARN_EVERY = 10.0


def normalise_path(path: str) -> str:
    """Collapse duplicate slashes and ``.`` segments (``..`` is refused earlier, by routes)."""
    norm = posixpath.normpath("/" + path.lstrip("/"))
    if path.endswith("/") and not norm.endswith("/"):
        norm += "/"
    return norm.replace("//", "/")


def key_parts(request: ImageRequest, params: Mapping[str, Param], fmt: str | None) -> list[str]:
    """The readable parts the key is hashed from (useful in logs and tests)."""
    parts = [f"v{KEY_VERSION}", normalise_path(request.source_path)]
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


def find_layer(runtime, kind):
    """The cache layer of ``runtime`` that is an instance of ``kind`` (a class) or is named
    ``kind`` (a string), or None (no cache yet, or no such layer)."""
    for layer in getattr(getattr(runtime, "cache", None), "layers", ()):
        if layer.name == kind if isinstance(kind, str) else isinstance(layer, kind):
            return layer
    return None


def stale_grace(cache_config) -> float:
    """How long past its TTL a layer keeps an entry, so the pipeline can still serve it stale
    (``stale_while_revalidate``, ``stale_if_error``)."""
    return max(cache_config.stale_while_revalidate, cache_config.stale_if_error)


@functools.lru_cache(maxsize=8)
def fresh_ttls(cache_config) -> dict[str, float]:
    """The fresh lifetime of an entry by the built-in layer that answered (do not modify the
    dict returned: it is shared)."""
    return {"memory": cache_config.memory.ttl, "redis": cache_config.redis.ttl,
            "file": cache_config.file.ttl}


@runtime_checkable
class CacheLayer(Protocol):
    """One layer of the result cache. Every method returns a Deferred; a failure is logged,
    counted and skipped by :class:`LayeredCache`, never shown to the client."""

    name: str   #: short name, shown in ``X-Cache: HIT-<NAME>``
    order: int  #: read order, fastest first (memory 10, redis 20, file 30)

    def get(self, key: str) -> Deferred:
        """Fire with the :class:`~mediaproxy.models.CacheEntry` stored under ``key`` or None."""

    def set(self, key: str, entry: CacheEntry) -> Deferred:
        """Store ``entry`` under ``key``; fire with None when stored."""

    def delete(self, key: str) -> Deferred:
        """Remove ``key``; fire with None."""

    def purge(self, prefix: str) -> Deferred:
        """Remove every key starting with ``prefix`` (``""``: everything); fire with the count.
        Prefixes are whole key parts: ``"{tenant}:"`` or ``source_prefix(tenant, path)``."""

    def stats(self) -> dict:
        """Counters and sizes of this layer (hits, misses, errors, evictions, bytes, items)."""


@attrs.define
class LayeredCache:
    """Reads fastest-first and back-fills the faster layers on a hit; writes go to all."""

    layers: list = attrs.field(converter=lambda layers: sorted(layers, key=lambda l: l.order))
    emit: object = None
    log: Logger = attrs.field(factory=lambda: Logger(namespace="mediaproxy.cache"))
    _warned: dict = attrs.field(factory=dict)

    def _failed(self, failure, layer, op, key):
        # A layer that is down fails every call until it is back: warn once per layer every
        # WARN_EVERY seconds, the rest at debug (every failure is counted all the same).
        now = time.monotonic()
        if now - self._warned.get(layer.name, -WARN_EVERY) >= WARN_EVERY:
            self._warned[layer.name] = now
            self.log.warn("cache layer {layer} failed to {op} {key}: {error} (skipped; further "
                          "failures of this layer for {every} s are logged at debug)",
                          layer=layer.name, op=op, key=key, error=failure.getErrorMessage(),
                          every=WARN_EVERY)
        else:
            self.log.debug("cache layer {layer} failed to {op} {key}: {error}",
                           layer=layer.name, op=op, key=key, error=failure.getErrorMessage())
        if self.emit is not None:
            self.emit("cache.error", layer=layer.name, op=op)
        return None

    def get(self, key: str) -> Deferred:
        """Fire with ``(entry, layer_name)`` or ``None``. A first layer that can answer
        synchronously (``get_now``, the memory layer) is asked without a Deferred of its own:
        the hot path."""
        first = self.layers[0] if self.layers else None
        get_now = getattr(first, "get_now", None)
        if get_now is not None:
            try:
                entry = get_now(key)
            except Exception as e:
                from twisted.python.failure import Failure
                self._failed(Failure(e), first, "get", key)
                entry = None
            if entry is not None:
                return succeed((entry, first.name))
            return self._get_from(1, key)
        return self._get_from(0, key)

    def _get_from(self, index: int, key: str) -> Deferred:
        if index >= len(self.layers):
            return succeed(None)
        layer = self.layers[index]
        d = maybeDeferred(layer.get, key)
        d.addErrback(self._failed, layer, "get", key)

        def answered(entry):
            if entry is None:
                return self._get_from(index + 1, key)
            for faster in self.layers[:index]:
                maybeDeferred(faster.set, key, entry).addErrback(
                    self._failed, faster, "set", key)
            return entry, layer.name

        return d.addCallback(answered)

    def set(self, key: str, entry: CacheEntry) -> Deferred:
        ds = []
        for layer in self.layers:
            d = maybeDeferred(layer.set, key, entry)
            d.addErrback(self._failed, layer, "set", key)
            ds.append(d)
        return DeferredList(ds).addCallback(lambda _: None)

    def delete(self, key: str) -> Deferred:
        ds = []
        for layer in self.layers:
            d = maybeDeferred(layer.delete, key)
            d.addErrback(self._failed, layer, "delete", key)
            ds.append(d)
        return DeferredList(ds).addCallback(lambda _: None)

    def purge(self, prefix: str) -> Deferred:
        """Purge ``prefix`` from every layer; fire with {layer name: count removed}."""
        names = [layer.name for layer in self.layers]
        ds = []
        for layer in self.layers:
            d = maybeDeferred(layer.purge, prefix)
            d.addErrback(self._failed, layer, "purge", prefix)
            ds.append(d)
        return DeferredList(ds).addCallback(
            lambda results: {name: (value or 0) for name, (_, value) in zip(names, results)})

    def stats(self) -> dict:
        return {layer.name: layer.stats() for layer in self.layers}
