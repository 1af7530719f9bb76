"""
The file layer: results on local disk, shared by the processes of one host, bounded in bytes.
On when ``cache.file.dir`` is set.

Layout under ``cache.file.dir`` (a cache key is ``{tenant}:{source hash}:{variant hash}``; each
part is escaped to ``[A-Za-z0-9_-]`` and ``%XX``)::

    results/{tenant}/{source[:2]}/{source}/{variant}           the entry's header (small)
    results/{tenant}/{source[:2]}/{source}/{variant}.{digest}  its body: a hard link to the blob
    blobs/{digest[:2]}/{digest}                                 one copy of each distinct body
    locks/                                                      coalescing lock files (locks.py)
    trash/                                                      purged trees being deleted

* **Atomic writes.** Every file is written to a temporary name in its final directory, fsynced,
  renamed into place and the directory fsynced. A reader opens only final names, so a crash or
  ``kill -9`` at any moment leaves either the old entry, the new one or none, never a partial
  one; leftovers (temporary files, bodies without a header) are removed by the cleanup.
* **Checked reads.** The header is an :mod:`~mediaproxy.cache.entrycodec` detached record with the
  body's length and BLAKE2b-256; a header or body that does not check is deleted and the read
  is a miss.
* **De-duplication.** Bodies are content-addressed: identical outputs (the same image under two
  keys, two tenants) are stored once, and each entry holds a *hard link* to the blob, so the
  kernel's link count is the reference count, right across processes, purges and evictions. A
  blob whose link count falls to 1 (only ``blobs/`` left) is deleted.
* **Purge** by a whole-part prefix is a directory rename into ``trash/`` (entries vanish at once)
  followed by its deletion; any other prefix is matched entry by entry.
* **Bounded in bytes** with a segmented LRU (:class:`SegmentedLRU`): new entries are
  *probationary*, entries read again are *protected*, and eviction takes probationary entries
  first, so a scan of one-off requests cannot flush the popular ones.
* **Cleanup** every ``cleanup_interval`` (the first at start, building the index): a scan of the
  tree in the disk pool that reconciles the index with what every process wrote, deletes entries
  older than ``max_age``, leftovers and orphans, checks free disk space and evicts. Below
  ``disk_warning_percent`` free the cache shrinks to 80 % of its size per pass; below
  ``disk_critical_percent`` it stops writing and shrinks to half. A write that fails with
  ``ENOSPC`` turns writing off at once.

Entries larger than a quarter of ``max_bytes`` are not stored (one would flush most of the
cache), nor are keys that are not the three parts above.

All disk I/O runs in the layer's own small thread pool (:class:`DiskPool`, 2 threads), never in
the reactor; :class:`FileStore` is the synchronous part that runs there, :class:`FileLayer` the
reactor part that owns the index and the counters. Entries past ``ttl`` are misses (kept until
``max_age`` or eviction).

Each process keeps its own index; other processes' writes are seen on a hit and by the next
cleanup, so with several processes the byte bound holds at each cleanup and may be exceeded in
between by what the other processes wrote since.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
import stat
import time
from collections import OrderedDict, Counter
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import unquote

import attrs
from attrs import frozen
from twisted.application import service
from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred, fail, inlineCallbacks, succeed
from twisted.internet.task import coiterate
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from .. import hookimpl
from ..cache.layered import find_layer
from ..cache.keys import stale_grace
from ..cache.entrycodec import CorruptEntry, body_digest, decode_header, encode_header
from ..cache.locks import try_lock, unlock
from ..models import CacheEntry

log = Logger(namespace="mediaproxy.cache.file")

#: Seconds a leftover (temporary file, body without header, unreferenced blob, empty
#: directory) must have been untouched before the cleanup removes it: a write in progress in
#: another process is never mistaken for one.
LEFTOVER_GRACE = 600.0
#: Entries larger than this share of ``max_bytes`` are not stored (they would flush the cache).
MAX_ITEM_SHARE = 0.25
#: Share of the bound the protected segment may fill.
PROTECTED_SHARE = 0.8
#: Index entries handled per reactor turn by the cleanup's index work.
INDEX_SLICE = 2000
#: How much of the current size is kept per cleanup pass under disk pressure.
SHRINK = {"ok": 1.0, "warning": 0.8, "critical": 0.5}
_MAX_PART = 200
_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


# -- names ----------------------------------------------------------------------------------------

def escape_part(part: str) -> str:
    """A key part as a file name: ``[A-Za-z0-9_-]`` as is, anything else ``%XX`` of its UTF-8
    bytes; ``""`` is ``%``. Reversible (:func:`unescape_part`), never ``.`` or ``..``."""
    out = "".join(c if c in _SAFE else "".join(f"%{b:02X}" for b in c.encode(
        "utf-8", "surrogatepass")) for c in part)
    return out or "%"


def unescape_part(name: str) -> str:
    return "" if name == "%" else unquote(name, errors="surrogatepass")


@frozen
class KeyPath:
    """Where the entry of one cache key lives."""

    tenant: str
    source: str
    variant: str

    @classmethod
    def of(cls, key: str) -> "KeyPath":
        """Raises ValueError for a key that is not three ``:``-separated parts."""
        parts = key.rsplit(":", 2)
        if len(parts) != 3:
            raise ValueError(f"not a cache key of three parts: {key!r}")
        escaped = cls(*(escape_part(p) for p in parts))
        if max(len(escaped.tenant), len(escaped.source), len(escaped.variant)) > _MAX_PART:
            raise ValueError(f"key part too long for a file name: {key!r}")
        return escaped

    def directory(self, results: Path) -> Path:
        return results / self.tenant / self.source[:2] / self.source

    def key(self) -> str:
        return ":".join(unescape_part(p) for p in (self.tenant, self.source, self.variant))


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink(path: Path) -> bool:
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


def atomic_write(path: Path, data: bytes, mtime: float | None = None) -> None:
    """Write ``data`` to ``path`` so that ``path`` is at every moment absent, the old file or
    the whole new one: temporary file in the same directory, fsync, rename, fsync directory."""
    temp = _temp_name(path)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if mtime is not None:
                os.utime(fd, (mtime, mtime))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except BaseException:
        _unlink(temp)
        raise
    _fsync_dir(path.parent)


# -- the synchronous store (runs in the disk pool) ------------------------------------------------

@frozen
class Stored:
    """What :meth:`FileStore.write` did."""

    digest: str
    size: int
    meta_size: int
    created_at: float


@frozen
class Hit:
    entry: CacheEntry
    digest: str
    meta_size: int


@frozen
class Missing:
    pass


@frozen
class Corrupt:
    reason: str


@frozen
class Scanned:
    """One entry found by :meth:`FileStore.scan`."""

    key: str
    size: int
    meta_size: int
    digest: str
    created_at: float


@frozen
class ScanResult:
    entries: list
    blobs: int
    leftovers: int


class FileStore:
    """The file layout (see the module docs) as plain blocking calls. Only ever called in the
    disk pool's threads (or a process of its own): no reactor, no shared state but the disk."""

    def __init__(self, root: str | os.PathLike, clock: Callable[[], float] = time.time):
        self.root = Path(root)
        self.results = self.root / "results"
        self.blobs = self.root / "blobs"
        self.trash = self.root / "trash"
        self.clock = clock

    def prepare(self) -> None:
        for directory in (self.results, self.blobs, self.trash, self.root / "locks"):
            directory.mkdir(parents=True, exist_ok=True)

    def blob_path(self, digest: str) -> Path:
        return self.blobs / digest[:2] / digest

    # writing

    def write(self, key: str, entry: CacheEntry) -> Stored:
        """Store ``entry`` under ``key`` atomically (see the module docs)."""
        where = KeyPath.of(key)
        digest = body_digest(entry.body)
        meta = encode_header(entry, digest)
        for attempt in range(3):
            try:
                self._write(where, entry, digest, meta)
                break
            except FileNotFoundError:
                # a directory or blob vanished under us (purge, cleanup): once more
                if attempt == 2:
                    raise
        return Stored(digest=digest, size=len(entry.body), meta_size=len(meta),
                      created_at=entry.created_at)

    def _write(self, where: KeyPath, entry: CacheEntry, digest: str, meta: bytes) -> None:
        directory = where.directory(self.results)
        directory.mkdir(parents=True, exist_ok=True)
        blob = self.blob_path(digest)
        self._ensure_blob(blob, entry.body)
        body = directory / f"{where.variant}.{digest}"
        temp = _temp_name(body)
        os.link(blob, temp)
        try:
            os.replace(temp, body)
        except BaseException:
            _unlink(temp)
            raise
        atomic_write(directory / where.variant, meta, mtime=entry.created_at)
        for stale in self._bodies(directory, where.variant):
            if stale != digest:
                _unlink(directory / f"{where.variant}.{stale}")
                self.collect_blob(stale)

    def _ensure_blob(self, blob: Path, body: bytes) -> None:
        try:
            if os.stat(blob).st_size == len(body):
                return
        except FileNotFoundError:
            pass
        blob.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(blob, body)

    @staticmethod
    def _bodies(directory: Path, variant: str) -> list[str]:
        """Digests of the body links of ``variant`` in ``directory``."""
        prefix = variant + "."
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return []
        return [n[len(prefix):] for n in names
                if n.startswith(prefix) and _DIGEST.match(n[len(prefix):])]

    # reading

    def read(self, key: str) -> Hit | Missing | Corrupt:
        """The entry under ``key``, checked; a corrupt one is deleted before answering."""
        try:
            where = KeyPath.of(key)
        except ValueError:
            return Missing()
        directory = where.directory(self.results)
        meta_path = directory / where.variant
        try:
            meta = meta_path.read_bytes()
        except FileNotFoundError:
            return Missing()
        for attempt in range(2):
            try:
                header = decode_header(meta)
                if not _DIGEST.match(header.body_digest):
                    raise CorruptEntry(f"bad body digest {header.body_digest!r}")
            except CorruptEntry as e:
                self.discard(where)
                return Corrupt(f"header: {e}")
            try:
                body = (directory / f"{where.variant}.{header.body_digest}").read_bytes()
            except FileNotFoundError:
                # a concurrent rewrite swaps header and body: read the header once more
                try:
                    again = meta_path.read_bytes()
                except FileNotFoundError:
                    return Missing()
                if again != meta and attempt == 0:
                    meta = again
                    continue
                self.discard(where)
                return Corrupt("body file missing")
            try:
                entry = header.entry(body)
            except CorruptEntry as e:
                self.discard(where, bad_digest=header.body_digest)
                return Corrupt(f"body: {e}")
            return Hit(entry=entry, digest=header.body_digest, meta_size=len(meta))
        return Corrupt("header keeps changing")

    # removing

    def discard(self, where: KeyPath, bad_digest: str | None = None) -> None:
        """Remove a broken entry; ``bad_digest``: its body did not match, so the blob shared
        with it (the same inode) is broken too and goes as well."""
        directory = where.directory(self.results)
        if bad_digest is not None:
            blob = self.blob_path(bad_digest)
            try:
                if os.path.samefile(blob, directory / f"{where.variant}.{bad_digest}"):
                    _unlink(blob)
            except FileNotFoundError:
                pass
        self._remove(where)

    def remove(self, key: str) -> bool:
        """Delete the entry under ``key``; True when there was one."""
        try:
            where = KeyPath.of(key)
        except ValueError:
            return False
        return self._remove(where)

    def _remove(self, where: KeyPath) -> bool:
        directory = where.directory(self.results)
        existed = _unlink(directory / where.variant)
        for digest in self._bodies(directory, where.variant):
            _unlink(directory / f"{where.variant}.{digest}")
            self.collect_blob(digest)
        return existed

    def collect_blob(self, digest: str) -> bool:
        """Delete the blob ``digest`` if no entry links it any more; True when deleted."""
        blob = self.blob_path(digest)
        try:
            if os.stat(blob).st_nlink != 1:
                return False
        except FileNotFoundError:
            return False
        return _unlink(blob)
        return 0

    def purge(self, prefix: str) -> int:
        """Delete every entry whose key starts with ``prefix``; return how many."""
        target = self._prefix_dir(prefix)
        if target is None:
            doomed = [key for key, _ in self._walk_keys() if key.startswith(prefix)]
            return sum(self.remove(key) for key in doomed)
        try:
            moved = self.trash / f"{os.getpid()}-{secrets.token_hex(6)}"
            self.trash.mkdir(parents=True, exist_ok=True)
            os.rename(target, moved)
        except FileNotFoundError:
            return 0
        if target == self.results:
            self.results.mkdir(exist_ok=True)
        return self._delete_tree(moved)

    def _prefix_dir(self, prefix: str) -> Path | None:
        """The directory holding exactly the keys under a whole-part ``prefix``, or None."""
        if prefix == "":
            return self.results
        if not prefix.endswith(":"):
            return None
        parts = prefix[:-1].split(":")
        if len(parts) == 1:
            return self.results / escape_part(parts[0])
        if len(parts) == 2:
            source = escape_part(parts[1])
            return self.results / escape_part(parts[0]) / source[:2] / source
        return None

    def _delete_tree(self, tree: Path) -> int:
        count, digests = 0, set()
        for dirpath, _, names in os.walk(tree):
            for name in names:
                if name.startswith("."):
                    continue
                variant, _, digest = name.partition(".")
                if digest:
                    digests.add(digest)
                else:
                    count += 1
        shutil.rmtree(tree, ignore_errors=True)
        for digest in digests:
            if _DIGEST.match(digest):
                self.collect_blob(digest)
        return count

    # scanning

    def _source_dirs(self) -> Iterator[Path]:
        for tenant in _subdirs(self.results):
            for fan in _subdirs(tenant):
                yield from _subdirs(fan)

    def _walk_keys(self) -> Iterator[tuple[str, Path]]:
        for source in self._source_dirs():
            tenant = source.parent.parent.name
            for name in _names(source):
                if "." not in name and not name.startswith("."):
                    yield KeyPath(tenant, source.name, name).key(), source / name

    def scan(self, grace: float = LEFTOVER_GRACE) -> ScanResult:
        """Every entry on disk, oldest first, with its size, body digest and creation time
        (the header's mtime: no file is read). Removes, once ``grace`` seconds old: temporary
        files, bodies without a header, headers without a body, unreferenced blobs, empty
        directories, lock files nobody holds and trash left by an interrupted purge."""
        old = self.clock() - grace
        entries: list[Scanned] = []
        leftovers = 0
        for source in self._source_dirs():
            found, removed = self._scan_source(source, old)
            entries.extend(found)
            leftovers += removed
        blobs = 0
        for fan in _subdirs(self.blobs):
            for entry in _scandir(fan):
                st = _lstat(entry)
                if st is None:
                    continue
                if entry.name.startswith("."):
                    if st.st_mtime < old:
                        leftovers += _unlink(Path(entry.path))
                elif st.st_nlink == 1 and st.st_ctime < old:
                    leftovers += _unlink(Path(entry.path))
                else:
                    blobs += 1
            _rmdir_if_empty_and_old(fan, old)
        for lock in _scandir(self.root / "locks"):  # left by holders that died
            st = _lstat(lock)
            if st is not None and st.st_mtime < old:
                fd = try_lock(Path(lock.path))
                if fd is not None:
                    unlock(Path(lock.path), fd)
                    leftovers += 1
        entries.sort(key=lambda item: item.created_at)
        for junk in _subdirs(self.trash):  # a purge that died half-way (ctime: the rename)
            try:
                if os.stat(junk).st_ctime < old:
                    self._delete_tree(junk)
                    leftovers += 1
            except FileNotFoundError:
                pass
        return ScanResult(entries=entries, blobs=blobs, leftovers=leftovers)

    def _scan_source(self, source: Path, old: float) -> tuple[list[Scanned], int]:
        metas: dict[str, os.stat_result] = {}
        bodies: dict[str, list[tuple[str, os.stat_result]]] = {}
        removed = 0
        for entry in _scandir(source):
            st = _lstat(entry)
            if st is None:
                continue
            name = entry.name
            if name.startswith("."):
                if st.st_mtime < old:
                    removed += _unlink(Path(entry.path))
                continue
            variant, _, digest = name.partition(".")
            if digest:
                bodies.setdefault(variant, []).append((digest, st))
            else:
                metas[variant] = st
        tenant = source.parent.parent.name
        found = []
        for variant, st in metas.items():
            links = bodies.pop(variant, [])
            if len(links) > 1:  # a rewrite was interrupted: the header says which is current
                links = self._keep_current(source, variant, links)
            if not links:
                if st.st_mtime < old:
                    removed += _unlink(source / variant)
                continue
            digest, body = links[0]
            key = KeyPath(tenant, source.name, variant).key()
            found.append(Scanned(key=key, size=body.st_size, meta_size=st.st_size,
                                 digest=digest, created_at=st.st_mtime))
        for variant, links in bodies.items():  # bodies whose header never made it
            for digest, st in links:
                if st.st_ctime < old:
                    removed += _unlink(source / f"{variant}.{digest}")
                    removed += self.collect_blob(digest)
        if not metas:
            _rmdir_if_empty_and_old(source, old)  # fails harmlessly unless empty
        return found, removed

    def _keep_current(self, source: Path, variant: str, links):
        try:
            current = decode_header((source / variant).read_bytes()).body_digest
        except (OSError, CorruptEntry):
            return links[:1]
        keep = [link for link in links if link[0] == current]
        for digest, _ in links:
            if digest != current:
                _unlink(source / f"{variant}.{digest}")
                self.collect_blob(digest)
        return keep

    def disk_bytes(self) -> int:
        """Bytes of every distinct file under results/ and blobs/ (tests, diagnostics)."""
        seen, total = set(), 0
        for top in (self.results, self.blobs):
            for dirpath, _, names in os.walk(top):
                for name in names:
                    try:
                        st = os.lstat(os.path.join(dirpath, name))
                    except FileNotFoundError:
                        continue
                    if st.st_ino not in seen:
                        seen.add(st.st_ino)
                        total += st.st_size
        return total


def _scandir(path: Path | str) -> list[os.DirEntry]:
    try:
        with os.scandir(path) as it:
            return list(it)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _subdirs(path: Path | str) -> list[Path]:
    return [Path(e.path) for e in _scandir(path) if e.is_dir(follow_symlinks=False)]


def _names(path: Path) -> list[str]:
    return [e.name for e in _scandir(path)]


def _lstat(entry: os.DirEntry) -> os.stat_result | None:
    try:
        st = entry.stat(follow_symlinks=False)
    except FileNotFoundError:
        return None
    return st if stat.S_ISREG(st.st_mode) else None


def _rmdir_if_empty_and_old(path: Path, old: float) -> None:
    try:
        if os.stat(path).st_mtime < old:
            os.rmdir(path)
    except OSError:
        pass  # not empty, gone, or in use: fine


# -- the index (reactor thread) -------------------------------------------------------------------

@attrs.define(slots=True)
class IndexEntry:
    size: int
    meta_size: int
    digest: str
    created_at: float

    @property
    def charge(self) -> int:
        return self.size + self.meta_size


@attrs.define
class SegmentedLRU:
    """What the layer knows is on disk, in eviction order: a segmented LRU.

    New entries go to the *probationary* segment; an entry read again moves to the *protected*
    segment, which holds at most ``PROTECTED_SHARE`` of the bound (its least recent entries
    fall back to probation). :meth:`victims` takes probationary entries first, least recent
    first, so one-off requests evict each other and not the entries that are read again.

    ``bytes`` is what the entries take on disk: headers plus each distinct body once (bodies
    are de-duplicated); ``logical_bytes`` counts every entry's body.
    """

    probation: OrderedDict = attrs.field(factory=OrderedDict)
    protected: OrderedDict = attrs.field(factory=OrderedDict)
    refs: Counter = attrs.field(factory=Counter)
    blob_sizes: dict = attrs.field(factory=dict)
    bytes: int = 0
    logical_bytes: int = 0
    protected_bytes: int = 0

    def __len__(self) -> int:
        return len(self.probation) + len(self.protected)

    def __contains__(self, key: str) -> bool:
        return key in self.probation or key in self.protected

    def get(self, key: str) -> IndexEntry | None:
        return self.probation.get(key) or self.protected.get(key)

    def keys(self) -> list[str]:
        return [*self.probation, *self.protected]

    def add(self, key: str, entry: IndexEntry) -> None:
        """Record ``entry`` under ``key``; a replaced entry keeps its segment and place."""
        segment = self.protected if key in self.protected else self.probation
        if key in segment:
            self._forget(segment[key], segment is self.protected)
        segment[key] = entry
        self._count(entry, segment is self.protected)

    def touch(self, key: str, limit: int) -> None:
        """``key`` was read: promote it (see the class docs)."""
        if key in self.protected:
            self.protected.move_to_end(key)
            return
        entry = self.probation.pop(key, None)
        if entry is None:
            return
        self.protected[key] = entry
        self.protected_bytes += entry.charge
        while self.protected_bytes > limit * PROTECTED_SHARE and len(self.protected) > 1:
            demoted, old = self.protected.popitem(last=False)
            self.protected_bytes -= old.charge
            self.probation[demoted] = old

    def remove(self, key: str) -> IndexEntry | None:
        for segment in (self.probation, self.protected):
            entry = segment.pop(key, None)
            if entry is not None:
                self._forget(entry, segment is self.protected)
                return entry
        return None

    def victims(self, limit: int) -> list[str]:
        """Remove and return the keys to evict until ``bytes <= limit``."""
        out = []
        while self.bytes > limit and len(self):
            segment = self.probation if self.probation else self.protected
            key = next(iter(segment))
            self.remove(key)
            out.append(key)
        return out

    def _count(self, entry: IndexEntry, protected: bool) -> None:
        self.bytes += entry.meta_size
        self.logical_bytes += entry.charge
        if protected:
            self.protected_bytes += entry.charge
        self.refs[entry.digest] += 1
        if self.refs[entry.digest] == 1:
            self.blob_sizes[entry.digest] = entry.size
            self.bytes += entry.size

    def _forget(self, entry: IndexEntry, protected: bool) -> None:
        self.bytes -= entry.meta_size
        self.logical_bytes -= entry.charge
        if protected:
            self.protected_bytes -= entry.charge
        self.refs[entry.digest] -= 1
        if self.refs[entry.digest] <= 0:
            del self.refs[entry.digest]
            self.bytes -= self.blob_sizes.pop(entry.digest, entry.size)


# -- disk pressure --------------------------------------------------------------------------------

def disk_pressure(free_percent: float, warning_percent: float, critical_percent: float) -> str:
    """``"critical"``, ``"warning"`` or ``"ok"`` for the free share of the disk."""
    if free_percent < critical_percent:
        return "critical"
    if free_percent < warning_percent:
        return "warning"
    return "ok"


def byte_limit(pressure: str, max_bytes: int, current: int) -> int:
    """The bound to keep under ``pressure``: ``max_bytes`` when the disk is fine, else a share
    (:data:`SHRINK`) of what the cache holds now, so each pass under pressure shrinks it."""
    if pressure == "ok":
        return max_bytes
    return int(min(max_bytes, current) * SHRINK[pressure])


# -- the thread pool ------------------------------------------------------------------------------

class DiskBusy(Exception):
    """The disk pool has too much work queued (or is not running): the call was refused."""


@attrs.define(eq=False)
class DiskPool:
    """A small thread pool for the file layer's disk I/O, with a bound on queued calls so a
    stalled disk makes the layer fail fast instead of piling up work."""

    reactor: Any
    threads: int = 2
    max_pending: int = 1024
    name: str = "mediaproxy-filecache"
    pending: int = 0
    pool: ThreadPool = attrs.field(init=False)

    def __attrs_post_init__(self):
        self.pool = ThreadPool(minthreads=0, maxthreads=self.threads, name=self.name)

    @property
    def running(self) -> bool:
        return self.pool.started and not self.pool.joined

    def start(self) -> None:
        if not self.pool.started:
            self.pool.start()

    def stop(self) -> None:
        if self.pool.started:
            self.pool.stop()

    def run(self, fn: Callable, *args) -> Deferred:
        if not self.running:
            return fail(DiskBusy("the disk pool is not running"))
        if self.pending >= self.max_pending:
            return fail(DiskBusy(f"{self.pending} disk operations already queued"))
        self.pending += 1

        def done(result):
            self.pending -= 1
            return result

        return deferToThreadPool(self.reactor, self.pool, fn, *args).addBoth(done)


# -- the layer (reactor thread) -------------------------------------------------------------------

@attrs.define(eq=False)
class FileLayer:
    """A :class:`~mediaproxy.cache.layered.CacheLayer` on local disk (see the module docs)."""

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
            log.warn("discarded corrupt file cache entry {key}: {reason}", key=key,
                     reason=result.reason)
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
        log.warn("file cache could not {op} {key}: {error}", op=op, key=key,
                 error=failure.getErrorMessage())

    # cleanup

    def cleanup(self) -> Deferred:
        """One cleanup pass (see the module docs); never fails. A call while a pass runs
        shares that pass. Fires with a summary dict."""
        d = Deferred()
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


# -- plugin ---------------------------------------------------------------------------------------

class FileCacheService(service.Service):
    """Runs the layer's disk pool and its periodic cleanup (the first at start)."""

    name = "mediaproxy-filecache"

    def __init__(self, layer: FileLayer, interval: float, reactor):
        self.layer = layer
        self.timer = TimerService(interval, layer.cleanup)
        self.timer.clock = reactor

    def startService(self):
        super().startService()
        self.layer.start()
        self.timer.startService()

    @inlineCallbacks
    def stopService(self):
        super().stopService()
        yield self.timer.stopService()
        self.layer.stop()


def file_layer(config, reactor, grace: float = 0.0, **kwargs) -> FileLayer | None:
    """The layer for ``cache.file`` (:class:`~mediaproxy.config.FileCacheConfig`), or None
    when no directory is set. Entries are kept ``grace`` seconds past ``ttl`` for stale
    serving (the pipeline decides what is fresh)."""
    if not config.dir or config.max_bytes <= 0:
        return None
    return FileLayer(store=FileStore(config.dir), pool=DiskPool(reactor),
                     max_bytes=config.max_bytes, ttl=config.ttl + grace,
                     max_age=max(config.max_age, config.ttl + grace),
                     disk_warning_percent=config.disk_warning_percent,
                     disk_critical_percent=config.disk_critical_percent, reactor=reactor,
                     **kwargs)


@hookimpl
def mediaproxy_cache_layers(runtime):
    layer = file_layer(runtime.config.cache.file, runtime.reactor,
                       grace=stale_grace(runtime.config.cache))
    return [layer] if layer is not None else []


@hookimpl
def mediaproxy_services(runtime):
    layer = find_layer(runtime, FileLayer)
    if layer is None:
        return []
    return [FileCacheService(layer, runtime.config.cache.file.cleanup_interval,
                             runtime.reactor)]
