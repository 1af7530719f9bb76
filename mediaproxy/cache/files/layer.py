"""
The file layer itself (:mod:`mediaproxy.cache.files`): :class:`FileLayer`, the reactor part
that owns the index and the counters and runs the :class:`~.store.FileStore` in the
:class:`~.diskpool.DiskPool`, and :func:`file_layer`, the layer for a ``cache.file`` config.
"""

from __future__ import annotations

import errno
import shutil
import time
from collections import Counter
from typing import Any, Callable, Iterator

import attrs
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.task import coiterate
from twisted.logger import Logger

from ...logs import Throttle
from ...models import CacheEntry
from .diskpool import DiskPool
from .lru import IndexEntry, SegmentedLRU
from .paths import KeyPath
from .pressure import byte_limit, disk_pressure
from .store import Corrupt, FileStore, Hit, Scanned, Stored

log = Logger(namespace="mediaproxy.cache.file")
#: Seconds between two warnings of one kind (a disk going bad fails every read or eviction).
WARN_EVERY = 10.0

#: Entries larger than this share of ``max_bytes`` are not stored (they would flush the cache).
MAX_ITEM_SHARE = 0.25
#: Index entries handled per reactor turn by the cleanup's index work.
INDEX_SLICE = 2000


@attrs.define(eq=False)
class FileLayer:
    """A :class:`~mediaproxy.cache.layered.CacheLayer` on local disk (see the package docs)."""

    store: FileStore
    pool: DiskPool
    max_bytes: int
    ttl: float = 30 * 86400.0
    max_age: float = 90 * 86400.0
    disk_warning_percent: float = 10.0
    disk_critical_percent: float = 5.0
    clock: Callable[[], float] = time.time
    disk_usage: Callable[[str], Any] = shutil.disk_usage
    reactor: Any = None
    name: str = "file"
    order: int = 30
    index: SegmentedLRU = attrs.field(factory=SegmentedLRU)
    limit: int = attrs.field(init=False)
    pressure: str = "ok"
    free_percent: float | None = None
    loaded: bool = False
    hits: int = 0
    misses: int = 0
    expired: int = 0
    errors: int = 0
    corrupt: int = 0
    stores: int = 0
    skipped: int = 0
    evictions: int = 0
    retired: int = 0
    leftovers: int = 0
    _deleting: Counter = attrs.field(factory=Counter)
    _cleanup_waiters: list = attrs.field(factory=list)
    #: While a cleanup runs: keys written or learnt and keys dropped meanwhile, and purged
    #: prefixes, so the scan's (older) view neither forgets the first nor revives the others.
    _scanning: bool = False
    _written: set = attrs.field(factory=set)
    _dropped: set = attrs.field(factory=set)
    _purged_prefixes: list = attrs.field(factory=list)
    _warnings: Throttle = attrs.field(factory=lambda: Throttle(WARN_EVERY))

    def __attrs_post_init__(self):
        self.limit = self.max_bytes

    @property
    def writes_paused(self) -> bool:
        return self.pressure == "critical"

    @property
    def max_item_bytes(self) -> int:
        return int(self.max_bytes * MAX_ITEM_SHARE)

    def start(self) -> None:
        self.pool.start()

    def stop(self) -> None:
        self.pool.stop()

    # the CacheLayer protocol

    def get(self, key: str) -> Deferred:
        if self._deleting[key]:
            self.misses += 1
            return succeed(None)
        d = self.pool.run(self.store.read, key)
        d.addCallbacks(self._read, self._failed, callbackArgs=(key,))
        return d

    def _read(self, result, key: str):
        if isinstance(result, Hit):
            if result.entry.created_at + self.ttl < self.clock():
                self.expired += 1
                self.misses += 1
                return None
            if key not in self.index and not self._deleting[key]:
                if self._scanning:
                    self._written.add(key)
                self._remember(key, result.digest, len(result.entry.body), result.meta_size,
                               result.entry.created_at)
            self.index.touch(key, self.limit)
            self.hits += 1
            return result.entry
        self.misses += 1
        self.index.remove(key)
        if isinstance(result, Corrupt):
            self.corrupt += 1
            self.errors += 1
            self._warnings.warn(log, ("corrupt",), "discarded corrupt file cache entry {key}: "
                                "{reason}", key=key, reason=result.reason)
        return None

    def set(self, key: str, entry: CacheEntry) -> Deferred:
        try:
            KeyPath.of(key)
        except ValueError:
            self.skipped += 1
            return succeed(None)
        if self.writes_paused or len(entry.body) > self.max_item_bytes:
            self.skipped += 1
            return self.delete(key)  # never leave an older value in place of this one
        d = self.pool.run(self.store.write, key, entry)
        d.addCallbacks(self._stored, self._write_failed, callbackArgs=(key,))
        return d

    def _stored(self, result: Stored, key: str) -> None:
        self.stores += 1
        if self._scanning:
            self._written.add(key)
        self._remember(key, result.digest, result.size, result.meta_size, result.created_at)
        self._enforce_bound()

    def _write_failed(self, failure):
        self.errors += 1
        if failure.check(OSError) and failure.value.errno in (errno.ENOSPC, errno.EDQUOT):
            if self.pressure != "critical":
                log.error("file cache: disk full ({error}); writing stops until the cleanup "
                          "frees space", error=failure.getErrorMessage())
            self.pressure = "critical"
            self.limit = byte_limit("critical", self.max_bytes, self.index.bytes)
            self._enforce_bound()
        return failure

    def delete(self, key: str) -> Deferred:
        self.index.remove(key)
        return self._remove(key).addCallback(lambda _: None)

    def purge(self, prefix: str) -> Deferred:
        for key in [k for k in self.index.keys() if k.startswith(prefix)]:
            self.index.remove(key)
        if self._scanning:
            self._purged_prefixes.append(prefix)
        d = self.pool.run(self.store.purge, prefix)
        d.addCallbacks(self._purged, self._failed, callbackArgs=(prefix,))
        return d

    def _purged(self, count: int, prefix: str) -> int:
        log.info("purged {count} file cache entries under {prefix!r}", count=count,
                 prefix=prefix)
        return count

    def stats(self) -> dict:
        return {"hits": self.hits, "misses": self.misses, "expired": self.expired,
                "errors": self.errors, "corrupt": self.corrupt, "stores": self.stores,
                "skipped": self.skipped, "evictions": self.evictions,
                "retired": self.retired, "leftovers_removed": self.leftovers,
                "bytes": self.index.bytes, "items": len(self.index),
                "blobs": len(self.index.refs),
                "dedup_saved_bytes": self.index.logical_bytes - self.index.bytes,
                "max_bytes": self.max_bytes, "limit_bytes": self.limit,
                "protected_items": len(self.index.protected),
                "disk_free_percent": self.free_percent, "pressure": self.pressure,
                "writes_paused": self.writes_paused, "loaded": self.loaded,
                "queued": self.pool.pending}

    # bookkeeping

    def _remember(self, key, digest, size, meta_size, created_at) -> None:
        self.index.add(key, IndexEntry(size=size, meta_size=meta_size, digest=digest,
                                       created_at=created_at))

    def _remove(self, key: str) -> Deferred:
        self._deleting[key] += 1
        if self._scanning:
            self._dropped.add(key)

        def done(result):
            self._deleting[key] -= 1
            if not self._deleting[key]:
                del self._deleting[key]
            return result

        return self.pool.run(self.store.remove, key).addBoth(done)

    def _enforce_bound(self) -> None:
        if not self.loaded:
            return  # the first cleanup knows what is on disk and evicts then
        victims = self.index.victims(self.limit)
        if victims:
            self.evictions += len(victims)
            for key in victims:
                self._remove(key).addErrback(self._background_failed, "evict", key)

    def _failed(self, failure):
        self.errors += 1
        return failure

    def _background_failed(self, failure, op: str, key: str) -> None:
        self.errors += 1
        number = getattr(failure.value, "errno", None)
        self._warnings.warn(log, (op, number or failure.type.__name__),
                            "file cache could not {op} {key}: {error}", op=op, key=key,
                            error=failure.getErrorMessage())

    # cleanup

    def cleanup(self) -> Deferred:
        """One cleanup pass (see the package docs); never fails. A call while a pass runs
        shares that pass. Fires with a summary dict."""
        d: Deferred = Deferred()
        self._cleanup_waiters.append(d)
        if len(self._cleanup_waiters) == 1:
            self._cleanup().addErrback(self._cleanup_crashed).addCallback(self._cleaned)
        return d

    def _cleanup_crashed(self, failure) -> dict:
        self.errors += 1
        log.failure("file cache cleanup crashed", failure)
        return {"error": failure.getErrorMessage()}

    def _cleaned(self, summary):
        waiters, self._cleanup_waiters = self._cleanup_waiters, []
        for d in waiters:
            d.callback(summary)

    @inlineCallbacks
    def _cleanup(self):
        started = time.perf_counter()
        self._scanning = True
        retired_before, evicted_before = self.retired, self.evictions
        try:
            try:
                result, usage = yield self.pool.run(self._scan)
            except Exception as e:  # a broken disk must not stop the next pass
                self.errors += 1
                log.error("file cache cleanup failed: {error}", error=str(e))
                return {"error": str(e)}
            # index work in slices, so a large cache never holds the reactor for long
            yield coiterate(self._reconcile(result.entries))
        finally:
            self._scanning = False
            self._written, self._dropped, self._purged_prefixes = set(), set(), []
        self.loaded = True
        self.leftovers += result.leftovers
        yield coiterate(self._retire())
        self._check_disk(usage)
        self._enforce_bound()
        summary = {"items": len(self.index), "bytes": self.index.bytes,
                   "blobs": len(self.index.refs), "retired": self.retired - retired_before,
                   "evicted": self.evictions - evicted_before,
                   "leftovers": result.leftovers, "pressure": self.pressure,
                   "free_percent": self.free_percent, "limit": self.limit}
        log.info("file cache: {items} entries, {bytes} bytes of {limit} ({blobs} bodies), "
                 "{retired} retired, {evicted} evicted, {leftovers} leftovers removed, disk "
                 "{free_percent:.1f}% free ({pressure}), {ms:.0f} ms", **summary,
                 ms=(time.perf_counter() - started) * 1000)
        return summary

    def _scan(self):
        """In the pool: the scan, then free space (after the scan freed what it could)."""
        self.store.prepare()
        result = self.store.scan()
        return result, self.disk_usage(str(self.store.root))

    def _reconcile(self, entries: list[Scanned]) -> Iterator[None]:
        """Make the index what the scan saw (a generator for :func:`coiterate`), keeping the
        access order of known keys. What changed while the scan ran wins over what it saw:
        keys written or learnt meanwhile are kept, keys dropped or purged are not revived."""
        seen = set()
        for n, item in enumerate(entries, 1):
            if not (item.key in self._dropped or item.key in self._written
                    or item.key.startswith(tuple(self._purged_prefixes))):
                seen.add(item.key)
                known = self.index.get(item.key)
                if known is None or known.digest != item.digest:
                    self._remember(item.key, item.digest, item.size, item.meta_size,
                                   item.created_at)
            if n % INDEX_SLICE == 0:
                yield None
        for n, key in enumerate(self.index.keys(), 1):
            if key not in seen and key not in self._written:
                self.index.remove(key)
            if n % INDEX_SLICE == 0:
                yield None

    def _retire(self) -> Iterator[None]:
        """Delete entries older than ``max_age``, fresh or not (a generator for
        :func:`coiterate`)."""
        cutoff = self.clock() - self.max_age
        for n, key in enumerate(self.index.keys(), 1):
            entry = self.index.get(key)
            if entry is not None and entry.created_at < cutoff:
                self.index.remove(key)
                self.retired += 1
                self._remove(key).addErrback(self._background_failed, "retire", key)
            if n % INDEX_SLICE == 0:
                yield None

    def _check_disk(self, usage) -> None:
        self.free_percent = 100.0 * usage.free / usage.total if usage.total else 100.0
        pressure = disk_pressure(self.free_percent, self.disk_warning_percent,
                                 self.disk_critical_percent)
        if pressure != self.pressure:
            say = {"ok": log.info, "warning": log.warn, "critical": log.error}[pressure]
            say("file cache: disk {free:.1f}% free: {pressure}{action}",
                free=self.free_percent, pressure=pressure,
                action={"ok": "; back to normal", "warning": "; shrinking the cache",
                        "critical": "; writes stop, shrinking hard"}[pressure])
        self.pressure = pressure
        self.limit = byte_limit(pressure, self.max_bytes, self.index.bytes)


def max_item_bytes(config) -> int:
    """The largest entry the file layer of ``cache.file`` stores (a share of ``max_bytes``)."""
    return int(config.max_bytes * MAX_ITEM_SHARE)


def retention(config, grace: float) -> float:
    """How long the file layer keeps an entry: ``max_age``, raised to ``ttl + grace`` when it
    is shorter (an entry still servable as stale must not be deleted)."""
    return max(config.max_age, config.ttl + grace)


def config_notes(config, grace: float) -> list[str]:
    """The file layer's own rules that a ``cache.file`` config triggers, one sentence each,
    for ``mediaproxy check-config`` (empty when the layer is off)."""
    if not config.dir or config.max_bytes <= 0:
        return []
    notes = [f"cache.file: entries larger than {MAX_ITEM_SHARE:.0%} of max_bytes "
             f"({max_item_bytes(config)} bytes) are not stored in the file layer"]
    kept = retention(config, grace)
    if kept > config.max_age:
        notes.append(f"cache.file.max_age ({config.max_age:g} s) is shorter than ttl + the "
                     f"stale grace ({config.ttl:g} + {grace:g} s): entries are kept "
                     f"{kept:g} s, so a copy still servable as stale is not deleted")
    return notes


def file_layer(config, reactor, grace: float = 0.0, **kwargs) -> FileLayer | None:
    """The layer for ``cache.file`` (:class:`~mediaproxy.config.FileCacheConfig`), or None
    when no directory is set. Entries are kept ``grace`` seconds past ``ttl`` for stale
    serving (the pipeline decides what is fresh); :func:`config_notes` says which of these
    rules a config triggers."""
    if not config.dir or config.max_bytes <= 0:
        return None
    return FileLayer(store=FileStore(config.dir), pool=DiskPool(reactor),
                     max_bytes=config.max_bytes, ttl=config.ttl + grace,
                     max_age=retention(config, grace),
                     disk_warning_percent=config.disk_warning_percent,
                     disk_critical_percent=config.disk_critical_percent, reactor=reactor,
                     **kwargs)
