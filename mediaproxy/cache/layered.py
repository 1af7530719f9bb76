"""
The result cache: the :class:`CacheLayer` protocol every layer implements and the layered
read-through / back-fill composition (the key is :mod:`mediaproxy.cache.keys`).

With ``emit`` set (the runtime's event sender; called as ``emit(name, value=..., **fields)``),
every layer operation is timed: a read sends
``cache.read`` (value: seconds, fields ``layer`` and ``result``: ``hit``, ``miss`` or
``error``), a write (a store or a back-fill) ``cache.write`` (value: seconds, field ``layer``),
a failure ``cache.error`` (fields ``layer`` and ``op``). Times come from ``clock``
(``time.perf_counter``: a monotonic clock, not the wall clock).
"""

from __future__ import annotations

import time
from typing import Callable, Protocol, runtime_checkable

import attrs
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

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
    # optional ``fresh_ttl: float``: seconds an entry of this layer is fresh (the built-in
    # layers' come from their settings, ``cache.keys.fresh_ttls``); past it the pipeline serves
    # it stale within cache.stale_while_revalidate / stale_if_error. Such a layer also has a
    # ``stale_grace: float`` attribute, set by :meth:`LayeredCache.keep_stale` at start: it
    # keeps an entry ``fresh_ttl + stale_grace`` seconds, as the built-in layers do.

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
    emit: Callable[..., None] | None = None
    clock: Callable[[], float] = time.perf_counter
    log: Logger = attrs.field(factory=lambda: Logger(namespace="mediaproxy.cache"))
    _warned: Throttle = attrs.field(factory=lambda: Throttle(WARN_EVERY))

    def keep_stale(self, grace: float) -> None:
        """Tell every layer with a ``stale_grace`` attribute to keep its entries ``grace``
        seconds past their fresh lifetime (``cache.keys.stale_grace`` of the configuration)."""
        for layer in self.layers:
            if hasattr(layer, "stale_grace"):
                layer.stale_grace = grace

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
        """Fire with ``(entry, layer_name)`` or ``None``. ``log``: the request's logger, for the
        lines about failing layers."""
        found = self.lookup(key, log)
        return found if isinstance(found, Deferred) else succeed(found)

    def lookup(self, key: str, log=None):
        """:meth:`get`'s answer, without a Deferred when a first layer that can answer
        synchronously (``get_now``, the memory layer) holds ``key``: then ``(entry,
        layer_name)`` at once (the hot path of a hit); else a Deferred as :meth:`get` gives.
        The same ``cache.read`` events either way."""
        first = self.layers[0] if self.layers else None
        get_now = getattr(first, "get_now", None)
        if get_now is not None and first is not None:
            emit = self.emit
            started = self.clock() if emit is not None else 0.0
            try:
                entry = get_now(key)
            except Exception as e:
                self._failed(Failure(e), first, "get", key, log)
                if emit is not None:
                    emit("cache.read", value=self.clock() - started, layer=first.name,
                         result="error")
                return self._get_from(1, key, log)
            if emit is not None:
                emit("cache.read", value=self.clock() - started, layer=first.name,
                     result="miss" if entry is None else "hit")
            if entry is not None:
                return entry, first.name
            return self._get_from(1, key, log)
        return self._get_from(0, key, log)

    def _timed(self, d: Deferred, layer, op: str) -> Deferred:
        """Send ``cache.read`` / ``cache.write`` when ``d`` (a layer's call, started now)
        fires; its result passes through untouched."""
        emit = self.emit
        if emit is None:
            return d
        started = self.clock()

        def done(result):
            seconds = self.clock() - started
            if op == "read":
                outcome = ("error" if isinstance(result, Failure)
                           else "miss" if result is None else "hit")
                emit("cache.read", value=seconds, layer=layer.name, result=outcome)
            else:
                emit("cache.write", value=seconds, layer=layer.name)
            return result

        return d.addBoth(done)

    def _get_from(self, index: int, key: str, log=None) -> Deferred:
        if index >= len(self.layers):
            return succeed(None)
        layer = self.layers[index]
        d = self._timed(maybeDeferred(layer.get, key), layer, "read")
        d.addErrback(self._failed, layer, "get", key, log)

        def answered(entry):
            if entry is None:
                return self._get_from(index + 1, key, log)
            for faster in self.layers[:index]:
                self._timed(maybeDeferred(faster.set, key, entry), faster, "write").addErrback(
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
            d = self._timed(maybeDeferred(layer.set, key, entry), layer, "write")
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
