"""
The synchronous store of the file layer (:mod:`mediaproxy.cache.files`): :class:`FileStore`,
the file layout as plain blocking calls that run in the disk pool, what its calls return, and
the scan helpers.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import stat
import time
from pathlib import Path
from typing import Callable, Iterator

from attrs import frozen

from ..entrycodec import CorruptEntry, body_digest, decode_header, encode_header
from ..locks import try_lock, unlock
from ...models import CacheEntry
from .paths import KeyPath, _temp_name, _unlink, atomic_write, escape_part

#: Seconds a leftover (temporary file, body without header, unreferenced blob, empty
#: directory) must have been untouched before the cleanup removes it: a write in progress in
#: another process is never mistaken for one.
LEFTOVER_GRACE = 600.0
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


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
    """The file layout (see the package docs) as plain blocking calls. Only ever called in the
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
        """Store ``entry`` under ``key`` atomically (see the package docs)."""
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
