"""
The file layer: results on local disk, shared by the processes of one host, bounded in bytes.
On when ``cache.file.dir`` is set.

Layout under ``cache.file.dir`` (a cache key is ``{tenant}:{source hash}:{variant hash}``; each
part is escaped to ``[A-Za-z0-9_-]`` and ``%XX``)::

    results/{tenant}/{source[:2]}/{source}/{variant}           the entry's header (small)
    results/{tenant}/{source[:2]}/{source}/{variant}.{digest}  its body: a hard link to the blob
    blobs/{digest[:2]}/{digest}                                 one copy of each distinct body
    locks/                                                      coalescing lock files (../locks.py)
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

The parts, one module each: names and atomic writes (:mod:`.paths`), the synchronous store and
its scan (:mod:`.store`), the segmented LRU index (:mod:`.lru`), disk pressure
(:mod:`.pressure`), the disk thread pool (:mod:`.diskpool`) and the layer (:mod:`.layer`). The
plugin that registers the layer and runs its cleanup is :mod:`mediaproxy.builtin.filecache`.
"""

from .diskpool import DiskBusy, DiskPool
from .layer import FileLayer, file_layer
from .lru import IndexEntry, SegmentedLRU
from .paths import KeyPath, atomic_write, escape_part, unescape_part
from .pressure import byte_limit, disk_pressure
from .store import Corrupt, FileStore, Hit, Missing, Scanned, ScanResult, Stored

__all__ = [
    "Corrupt", "DiskBusy", "DiskPool", "FileLayer", "FileStore", "Hit", "IndexEntry", "KeyPath",
    "Missing", "ScanResult", "Scanned", "SegmentedLRU", "Stored", "atomic_write", "byte_limit",
    "disk_pressure", "escape_part", "file_layer", "unescape_part",
]
