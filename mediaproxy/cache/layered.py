"""
The result cache: the :class:`CacheLayer` protocol every layer implements and the layered
read-through / back-fill composition (the key is :mod:`mediaproxy.cache.keys`).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import attrs
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.logger import Logger

from ..logs import Throttle
from ..models import CacheEntry

#: Seconds between two warnings about the same failing layer.
WARN_EVERY = 10.0


def find_layer(runtime, kind):
    """The cache layer of ``runtime`` that is an instance of ``kind`` (a class) or is named
    ``kind`` (a string), or None (no cache yet, or no such layer)."""
    for layer in getattr(getattr(runtime, "cache", None), "layers", ()):
        if layer.name == kind if isinstance(kind, str) else isinstance(layer, kind):
            return layer
    return None


@runtime_checkable
class CacheLayer(Protocol):
    """One layer of the result cache. Every method returns a Deferred; a failure is logged,
    counted and skipped by :class:`LayeredCache`, never shown to the client."""

    name: str   #: short name, shown in ``X-Cache: HIT-<NAME>``
    order: int  #: read order, fastest first (memory 10, redis 20, file 30)
    # optional ``shared: bool`` (default True): False for a layer only this process sees

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
    _warned: Throttle = attrs.field(factory=lambda: Throttle(WARN_EVERY))

    def _failed(self, failure, layer, op, key, log=None):
        # A layer that is down fails every call until it is back: warn once per layer every
        # WARN_EVERY seconds, the rest at debug (every failure is counted all the same). A
        # request's own logger (``log``) puts its correlation ID on the line.
        self._warned.warn(log or self.log, layer.name,
                          "cache layer {layer} failed to {op} {key}: {error} (skipped; further "
                          "failures of this layer for {seconds} s are logged at debug)",
                          layer=layer.name, op=op, key=key, error=failure.getErrorMessage(),
                          seconds=WARN_EVERY)
        if self.emit is not None:
            self.emit("cache.error", layer=layer.name, op=op)
        return None

    def get(self, key: str, log=None) -> Deferred:
        """Fire with ``(entry, layer_name)`` or ``None``. A first layer that can answer
        synchronously (``get_now``, the memory layer) is asked without a Deferred of its own:
        the hot path. ``log``: the request's logger, for the lines about failing layers."""
        first = self.layers[0] if self.layers else None
        get_now = getattr(first, "get_now", None)
        if get_now is not None:
            try:
                entry = get_now(key)
            except Exception as e:
                from twisted.python.failure import Failure
                self._failed(Failure(e), first, "get", key, log)
                entry = None
            if entry is not None:
                return succeed((entry, first.name))
            return self._get_from(1, key, log)
        return self._get_from(0, key, log)

    def _get_from(self, index: int, key: str, log=None) -> Deferred:
        if index >= len(self.layers):
            return succeed(None)
        layer = self.layers[index]
        d = maybeDeferred(layer.get, key)
        d.addErrback(self._failed, layer, "get", key, log)

        def answered(entry):
            if entry is None:
                return self._get_from(index + 1, key, log)
            for faster in self.layers[:index]:
                maybeDeferred(faster.set, key, entry).addErrback(
                    self._failed, faster, "set", key, log)
            return entry, layer.name

        return d.addCallback(answered)

    @property
    def shared(self) -> bool:
        """Whether any layer is seen by other processes or nodes (Redis, files, ...)."""
        return any(getattr(layer, "shared", True) for layer in self.layers)

    def set(self, key: str, entry: CacheEntry, *, shared_only: bool = False,
            log=None) -> Deferred:
        """Store ``entry`` in every layer (``shared_only``: only in the layers other processes
        see, for what this process keeps elsewhere; ``log``: as for :meth:`get`)."""
        ds = []
        for layer in self.layers:
            if shared_only and not getattr(layer, "shared", True):
                continue
            d = maybeDeferred(layer.set, key, entry)
            d.addErrback(self._failed, layer, "set", key, log)
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
