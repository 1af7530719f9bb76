"""The file layer: layout, atomic writes under SIGKILL, checked reads, de-duplication, purge,
the byte bound with its frequency-aware eviction, retention and the disk-space thresholds."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from mediaproxy.builtin.filecache import FileCacheService
from mediaproxy.cache.files import (
    Corrupt, DiskBusy, DiskPool, FileLayer, FileStore, Hit, IndexEntry, KeyPath, Missing,
    SegmentedLRU, byte_limit, disk_pressure, escape_part, file_layer, unescape_part,
)
from mediaproxy.cache.files import layer as filecache
from mediaproxy.cache.keys import source_prefix
from mediaproxy.config import FileCacheConfig
from mediaproxy.cache.entrycodec import body_digest
from mediaproxy.cache.locks import try_lock, unlock
from mediaproxy.models import CacheEntry
from mediaproxy.testing import call_in_reactor, reactor_thread, wait_for


NOW = 1_700_000_000.0
Usage = namedtuple("Usage", "total used free")


def entry(body: bytes, created_at: float = NOW, content_type: str = "image/webp"):
    return CacheEntry(body=body, content_type=content_type, created_at=created_at,
                      etag='"e"', last_modified="Tue, 14 Nov 2023 22:13:20 GMT")


def key(tenant: str, source: str, variant: str = "v" * 64) -> str:
    return source_prefix(tenant, source) + variant


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


@pytest.fixture
def reactor():
    return reactor_thread()


@pytest.fixture
def layers(tmp_path, reactor):
    """``layers(**FileLayer fields)``: a started layer on ``tmp_path/cache`` (or ``root=``),
    its first cleanup done; all stopped after the test."""
    made: list[FileLayer] = []

    def make(root: Path | None = None, store_clock=None, **fields) -> FileLayer:
        fields.setdefault("clock", lambda: NOW)
        fields.setdefault("disk_usage", lambda path: Usage(100, 50, 50))
        store = FileStore(root or tmp_path / "cache", clock=store_clock or time.time)
        layer = FileLayer(store=store, pool=DiskPool(reactor), reactor=reactor,
                          max_bytes=fields.pop("max_bytes", 10**7), **fields)
        made.append(layer)
        call_in_reactor(layer.start)
        call_in_reactor(layer.cleanup)
        return layer

    yield make
    for layer in made:
        call_in_reactor(layer.stop)


def drain(layer: FileLayer) -> None:
    """Wait until the layer's queued disk work (evictions, removals) is done."""
    wait_for(lambda: call_in_reactor(lambda: layer.pool.pending == 0), 10,
             what="disk pool idle")


# -- names and layout -----------------------------------------------------------------------------

@given(st.text())
def test_key_parts_escape_to_safe_reversible_file_names(part):
    name = escape_part(part)
    assert name not in (".", "..") and "/" not in name and "." not in name
    assert unescape_part(name) == part


def test_an_entry_is_a_header_a_body_link_and_one_blob(layers):
    layer = layers()
    k = key("shop", "/a.jpg", "ab" * 32)
    body = bytes(range(256)) * 10
    call_in_reactor(layer.set, k, entry(body))
    tenant, source, variant = k.split(":")
    directory = layer.store.results / "shop" / source[:2] / source
    digest = body_digest(body)
    assert sorted(p.name for p in directory.iterdir()) == [variant, f"{variant}.{digest}"]
    blob = layer.store.blob_path(digest)
    assert blob.read_bytes() == body and os.stat(blob).st_nlink == 2
    assert os.stat(directory / variant).st_mtime == NOW  # created_at, for the scan
    assert not [p for p in files_under(layer.store.root) if p.name.endswith(".tmp")]
    assert call_in_reactor(layer.get, k) == entry(body)
    assert call_in_reactor(layer.get, key("shop", "/other.jpg")) is None
    assert layer.stats()["hits"] == 1 and layer.stats()["misses"] == 1


def test_keys_that_are_not_three_parts_are_not_stored(layers):
    layer = layers()
    call_in_reactor(layer.set, "no-colons", entry(b"x"))
    assert call_in_reactor(layer.get, "no-colons") is None
    assert layer.stats()["skipped"] == 1


def test_odd_tenant_names_round_trip_and_purge(layers):
    layer = layers()
    odd = "../caf\u00e9 %2F/x"
    call_in_reactor(layer.set, key(odd, "/a.jpg"), entry(b"odd"))
    assert call_in_reactor(layer.get, key(odd, "/a.jpg")).body == b"odd"
    assert [p.name for p in layer.store.results.iterdir()] == [escape_part(odd)]
    assert call_in_reactor(layer.purge, odd + ":") == 1


# -- checked reads --------------------------------------------------------------------------------

def _paths(layer, k, body):
    where = KeyPath.of(k)
    directory = where.directory(layer.store.results)
    return directory / where.variant, directory / f"{where.variant}.{body_digest(body)}"


def test_a_flipped_byte_in_a_body_is_detected_and_discarded(layers):
    layer = layers()
    k, body = key("shop", "/a.jpg"), b"0123456789" * 100
    call_in_reactor(layer.set, k, entry(body))
    meta, link = _paths(layer, k, body)
    data = bytearray(link.read_bytes())
    data[500] ^= 0x01
    link.write_bytes(bytes(data))  # in place: the blob is the same inode
    assert call_in_reactor(layer.get, k) is None
    assert not meta.exists() and not link.exists()
    assert not layer.store.blob_path(body_digest(body)).exists()  # the broken blob went too
    assert layer.stats()["corrupt"] == 1
    call_in_reactor(layer.set, k, entry(body))  # and the next write heals it
    assert call_in_reactor(layer.get, k).body == body


@pytest.mark.parametrize("victim", ["meta", "body"])
def test_a_truncated_file_is_detected_and_discarded(layers, victim):
    layer = layers()
    k, body = key("shop", "/a.jpg"), b"x" * 1000
    call_in_reactor(layer.set, k, entry(body))
    meta, link = _paths(layer, k, body)
    target = meta if victim == "meta" else link
    os.truncate(target, target.stat().st_size // 2)
    assert call_in_reactor(layer.get, k) is None
    assert not meta.exists()
    assert layer.stats()["corrupt"] == 1
    assert len(layer.index) == 0


def test_an_expired_entry_is_a_miss_but_stays_until_max_age(layers):
    now = [NOW]
    layer = layers(ttl=100.0, max_age=1000.0, clock=lambda: now[0])
    k = key("shop", "/a.jpg")
    call_in_reactor(layer.set, k, entry(b"x", created_at=NOW))
    now[0] = NOW + 101
    assert call_in_reactor(layer.get, k) is None
    assert layer.stats()["expired"] == 1
    assert len(layer.index) == 1


# -- de-duplication -------------------------------------------------------------------------------

def test_identical_bodies_are_stored_once_and_freed_with_their_last_entry(layers):
    layer = layers()
    body = b"the same thumbnail" * 100
    keys = [key("shop", "/a.jpg"), key("blog", "/b.jpg"), key("shop", "/c.jpg")]
    for k in keys:
        call_in_reactor(layer.set, k, entry(body))
    blob = layer.store.blob_path(body_digest(body))
    assert len(files_under(layer.store.blobs)) == 1
    assert os.stat(blob).st_nlink == 4
    stats = layer.stats()
    assert stats["blobs"] == 1 and stats["dedup_saved_bytes"] == 2 * len(body)
    assert stats["bytes"] < 2 * len(body)

    call_in_reactor(layer.delete, keys[0])
    assert os.stat(blob).st_nlink == 3
    assert call_in_reactor(layer.purge, "blog:") == 1
    assert os.stat(blob).st_nlink == 2
    assert call_in_reactor(layer.get, keys[2]).body == body
    call_in_reactor(layer.delete, keys[2])
    assert not blob.exists()
    assert layer.stats()["bytes"] == 0


def test_rewriting_a_key_with_another_body_frees_the_old_blob(layers):
    layer = layers()
    k = key("shop", "/a.jpg")
    call_in_reactor(layer.set, k, entry(b"old" * 100))
    call_in_reactor(layer.set, k, entry(b"new" * 100))
    assert call_in_reactor(layer.get, k).body == b"new" * 100
    assert not layer.store.blob_path(body_digest(b"old" * 100)).exists()
    meta, _ = _paths(layer, k, b"")
    assert len(list(meta.parent.iterdir())) == 2


# -- purge ----------------------------------------------------------------------------------------

def test_purge_a_source_a_tenant_or_everything(layers):
    layer = layers()
    for tenant in ("shop", "blog"):
        for source in ("/a.jpg", "/b.jpg"):
            for variant in ("1" * 64, "2" * 64):
                k = key(tenant, source, variant)
                call_in_reactor(layer.set, k, entry(k.encode()))
    assert call_in_reactor(layer.purge, source_prefix("shop", "/a.jpg")) == 2
    assert call_in_reactor(layer.get, key("shop", "/a.jpg", "1" * 64)) is None
    assert call_in_reactor(layer.get, key("shop", "/b.jpg", "1" * 64)) is not None
    assert call_in_reactor(layer.purge, "shop:") == 2
    assert call_in_reactor(layer.get, key("blog", "/a.jpg", "2" * 64)) is not None
    # a prefix that is not whole parts is matched entry by entry
    assert call_in_reactor(layer.purge, source_prefix("blog", "/a.jpg") + "1") == 1
    assert call_in_reactor(layer.purge, "") == 3
    assert call_in_reactor(layer.purge, "") == 0
    assert files_under(layer.store.results) == [] and files_under(layer.store.blobs) == []
    assert list(layer.store.trash.iterdir()) == []
    assert layer.stats()["items"] == 0 and layer.stats()["bytes"] == 0


# -- the byte bound and eviction ------------------------------------------------------------------

def test_the_byte_bound_holds_on_disk(layers):
    layer = layers(max_bytes=40_000)
    for i in range(60):
        call_in_reactor(layer.set, key("shop", f"/{i}.jpg"), entry(bytes([i]) * 2000))
        assert layer.index.bytes <= 40_000
    drain(layer)
    assert layer.store.disk_bytes() <= 40_000
    assert layer.stats()["evictions"] > 0
    call_in_reactor(layer.cleanup)  # what is on disk is what the index says
    assert layer.store.disk_bytes() == layer.index.bytes


def test_popular_entries_survive_a_scan_of_one_off_requests(layers):
    layer = layers(max_bytes=30_000)  # about 12 entries
    popular = [key("shop", f"/popular{i}.jpg") for i in range(4)]
    for k in popular:
        call_in_reactor(layer.set, k, entry(k.encode() * 40))
        assert call_in_reactor(layer.get, k) is not None  # read again: protected
    for i in range(100):  # a crawler walks the catalogue once
        call_in_reactor(layer.set, key("shop", f"/once{i}.jpg"), entry(bytes([i]) * 2000))
    drain(layer)
    for k in popular:
        assert call_in_reactor(layer.get, k) is not None, k
    assert call_in_reactor(layer.get, key("shop", "/once0.jpg")) is None
    assert layer.stats()["evictions"] >= 80


_ops = st.lists(st.tuples(st.sampled_from(["add", "touch", "remove", "evict"]),
                          st.integers(0, 9), st.integers(0, 3), st.integers(1, 500)),
                max_size=80)


@given(st.integers(100, 3000), _ops)
def test_segmented_lru_accounting_stays_exact(limit, ops):
    index = SegmentedLRU()
    for op, k, digest, size in ops:
        name = f"k{k}"
        if op == "add":
            index.add(name, IndexEntry(size=size, meta_size=10, digest=f"d{digest}",
                                       created_at=0.0))
        elif op == "touch":
            index.touch(name, limit)
        elif op == "remove":
            index.remove(name)
        else:
            index.victims(limit)
            assert index.bytes <= limit
        entries = {**index.probation, **index.protected}
        assert len(entries) == len(index)
        sizes = {e.digest: e.size for e in entries.values()}
        assert index.bytes == sum(e.meta_size for e in entries.values()) + sum(
            index.blob_sizes[d] for d in sizes)
        assert index.logical_bytes == sum(e.charge for e in entries.values())
        assert index.protected_bytes == sum(e.charge for e in index.protected.values())


def test_an_entry_too_large_for_the_layer_is_not_stored(layers):
    layer = layers(max_bytes=10_000)
    call_in_reactor(layer.set, key("shop", "/big.jpg"), entry(b"x" * 3000))
    assert call_in_reactor(layer.get, key("shop", "/big.jpg")) is None
    assert layer.stats()["skipped"] == 1


# -- cleanup: index, retention, leftovers ---------------------------------------------------------

def test_a_restarted_process_rebuilds_its_index_from_disk(layers, monkeypatch):
    monkeypatch.setattr(filecache, "INDEX_SLICE", 2)  # index work in many reactor turns
    first = layers()
    body = b"shared" * 50
    for i in range(5):
        call_in_reactor(first.set, key("shop", f"/{i}.jpg"), entry(body if i < 3 else
                                                                    bytes([i]) * 300))
    second = layers(root=first.store.root)
    assert second.loaded and len(second.index) == 5
    assert second.stats()["bytes"] == first.stats()["bytes"]
    assert second.stats()["dedup_saved_bytes"] == 2 * len(body)


def test_entries_written_by_another_process_are_served_and_learnt(layers):
    writer = layers()
    reader = layers(root=writer.store.root)
    k = key("shop", "/a.jpg")
    call_in_reactor(writer.set, k, entry(b"from the other process"))
    assert call_in_reactor(reader.get, k).body == b"from the other process"
    assert k in reader.index


def test_retention_deletes_entries_older_than_max_age(layers):
    layer = layers(max_age=1000.0, ttl=500.0)
    old, fresh = key("shop", "/old.jpg"), key("shop", "/fresh.jpg")
    call_in_reactor(layer.set, old, entry(b"old", created_at=NOW - 1001))
    call_in_reactor(layer.set, fresh, entry(b"fresh", created_at=NOW - 10))
    summary = call_in_reactor(layer.cleanup)
    drain(layer)
    assert summary["retired"] == 1
    assert call_in_reactor(layer.get, old) is None
    assert call_in_reactor(layer.get, fresh) is not None
    assert not _paths(layer, old, b"old")[0].exists()


def test_cleanup_removes_leftovers_once_they_are_old(layers, tmp_path):
    later = [time.time()]
    layer = layers(store_clock=lambda: later[0])
    k = key("shop", "/a.jpg")
    call_in_reactor(layer.set, k, entry(b"kept"))
    meta, _ = _paths(layer, k, b"")
    directory = meta.parent
    (directory / ".x.123-abcd.tmp").write_bytes(b"half")          # an interrupted write
    orphan_blob = layer.store.blob_path("f" * 64)
    orphan_blob.parent.mkdir(parents=True, exist_ok=True)
    orphan_blob.write_bytes(b"nobody links me")                    # unreferenced body
    os.link(orphan_blob, directory / f"{'9' * 64}.{'f' * 64}")     # body without header
    (layer.store.trash / "1-dead").mkdir()                         # interrupted purge
    locks = layer.store.root / "locks"
    (locks / "dead-holder.lock").write_bytes(b"")                  # its holder died
    held = try_lock(locks / "busy.lock")                           # a live leader's
    assert call_in_reactor(layer.cleanup)["leftovers"] == 0        # too recent: kept
    later[0] += 3600
    summary = call_in_reactor(layer.cleanup)
    assert summary["leftovers"] == 5
    assert sorted(p.name for p in locks.iterdir()) == ["busy.lock"]
    unlock(locks / "busy.lock", held)
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        [meta.name, f"{meta.name}.{body_digest(b'kept')}"])
    assert not orphan_blob.exists()
    assert call_in_reactor(layer.get, k).body == b"kept"


# -- disk space -----------------------------------------------------------------------------------

def test_disk_pressure_thresholds():
    assert disk_pressure(50.0, 10.0, 5.0) == "ok"
    assert disk_pressure(9.9, 10.0, 5.0) == "warning"
    assert disk_pressure(4.9, 10.0, 5.0) == "critical"
    assert byte_limit("ok", 1000, 5000) == 1000
    assert byte_limit("warning", 1000, 500) == 400
    assert byte_limit("warning", 1000, 5000) == 800
    assert byte_limit("critical", 1000, 500) == 250


def test_low_disk_space_shrinks_the_cache_and_critical_stops_writing(layers):
    # A full disk cannot be produced on demand in a test, so the layer is given a
    # disk_usage function whose answers the test sets; the rest is the real code path.
    usage = [Usage(total=1000, used=500, free=500)]
    layer = layers(max_bytes=100_000, disk_usage=lambda path: usage[0])
    for i in range(20):
        call_in_reactor(layer.set, key("shop", f"/{i}.jpg"), entry(bytes([i]) * 2000))
    before = layer.index.bytes

    usage[0] = Usage(1000, 920, 80)  # 8 % free: warning
    summary = call_in_reactor(layer.cleanup)
    drain(layer)
    assert summary["pressure"] == "warning"
    assert layer.index.bytes <= 0.8 * before and layer.stats()["evictions"] > 0
    call_in_reactor(layer.set, key("shop", "/still.jpg"), entry(b"writes go on"))
    assert call_in_reactor(layer.get, key("shop", "/still.jpg")) is not None

    usage[0] = Usage(1000, 970, 30)  # 3 % free: critical
    shrunk = layer.index.bytes
    assert call_in_reactor(layer.cleanup)["pressure"] == "critical"
    drain(layer)
    assert layer.writes_paused and layer.index.bytes <= 0.5 * shrunk
    call_in_reactor(layer.set, key("shop", "/refused.jpg"), entry(b"no room"))
    assert call_in_reactor(layer.get, key("shop", "/refused.jpg")) is None

    usage[0] = Usage(1000, 500, 500)
    assert call_in_reactor(layer.cleanup)["pressure"] == "ok"
    assert not layer.writes_paused and layer.limit == 100_000
    call_in_reactor(layer.set, key("shop", "/again.jpg"), entry(b"room again"))
    assert call_in_reactor(layer.get, key("shop", "/again.jpg")) is not None


class FullDiskStore(FileStore):
    def write(self, key, entry):
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_write_that_finds_the_disk_full_stops_writing(tmp_path, reactor):
    layer = FileLayer(store=FullDiskStore(tmp_path), pool=DiskPool(reactor), max_bytes=10**6,
                      reactor=reactor, disk_usage=lambda path: Usage(100, 50, 50))
    call_in_reactor(layer.start)
    try:
        with pytest.raises(OSError):
            call_in_reactor(layer.set, key("shop", "/a.jpg"), entry(b"x"))
        assert layer.writes_paused and layer.stats()["errors"] == 1
        call_in_reactor(layer.set, key("shop", "/b.jpg"), entry(b"x"))  # skipped, no error
        assert layer.stats()["skipped"] == 1
    finally:
        call_in_reactor(layer.stop)


def test_the_disk_pool_refuses_work_when_stopped_or_saturated(reactor):
    pool = DiskPool(reactor, max_pending=0)
    with pytest.raises(DiskBusy, match="not running"):
        call_in_reactor(pool.run, lambda: None)
    call_in_reactor(pool.start)
    try:
        with pytest.raises(DiskBusy, match="queued"):
            call_in_reactor(pool.run, lambda: None)
    finally:
        call_in_reactor(pool.stop)


# -- crash safety ---------------------------------------------------------------------------------

WRITER = r"""
import os, random, signal, sys, threading
from mediaproxy.cache.files.store import FileStore
from mediaproxy.models import CacheEntry
from tests.test_filecache import KEYS, expected_body

store = FileStore(sys.argv[1])
store.prepare()
rng = random.Random(int(sys.argv[2]))
writes = 0
while True:
    n = rng.randrange(40)
    store.write(rng.choice(KEYS), CacheEntry(
        body=expected_body(n), content_type=f"image/x-{n}", created_at=1700000000.0 + n,
        etag='"e"', last_modified="-"))
    writes += 1
    if writes == 3:  # something committed; now die at a random moment of what follows
        threading.Timer(rng.uniform(0, 0.04), os.kill, (os.getpid(), signal.SIGKILL)).start()
"""
KEYS = [source_prefix("shop", f"/{i % 3}.jpg") + f"{i:064x}" for i in range(6)]


def expected_body(n: int) -> bytes:
    """Bodies from 1 KB to ~1.2 MB; several keys get the same one (de-duplication)."""
    return (b"%d:" % n) * (300 + n * 100_000 // 3)


def test_a_writer_killed_at_random_moments_never_leaves_a_servable_partial_entry(tmp_path):
    root = tmp_path / "cache"
    reader = FileStore(root)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    interrupted = 0
    for round_ in range(12):
        child = subprocess.run([sys.executable, "-c", WRITER, str(root), str(round_)],
                               env=env, timeout=30, stderr=subprocess.PIPE)
        assert child.returncode == -9, child.stderr.decode()
        interrupted += any(p.name.endswith(".tmp") for p in files_under(root))
        for k in KEYS:
            result = reader.read(k)
            assert not isinstance(result, Corrupt), (round_, k, result)
            if isinstance(result, Hit):
                n = int(result.entry.content_type.rsplit("-", 1)[1])
                assert result.entry.body == expected_body(n)
                assert result.entry.created_at == 1700000000.0 + n
            else:
                assert isinstance(result, Missing)
    assert interrupted > 0  # some kills did land in the middle of a write
    # the cleanup (once leftovers are old enough) removes what the kills left behind
    later = FileStore(root, clock=lambda: time.time() + 3600)
    later.scan()
    assert not [p for p in files_under(root) if p.name.endswith(".tmp")]
    for k in KEYS:
        assert isinstance(reader.read(k), (Hit, Missing))


# -- wiring ---------------------------------------------------------------------------------------

def test_the_service_runs_the_pool_and_the_cleanup(tmp_path, reactor):
    config = FileCacheConfig(dir=str(tmp_path / "cache"), max_bytes=10**6,
                             cleanup_interval=3600)
    layer = file_layer(config, reactor)
    assert (layer.name, layer.order, layer.max_bytes) == ("file", 30, 10**6)
    assert file_layer(FileCacheConfig(), reactor) is None
    service = FileCacheService(layer, config.cleanup_interval, reactor)
    call_in_reactor(service.startService)
    try:
        wait_for(lambda: layer.loaded, 10, what="first cleanup")
        assert (tmp_path / "cache" / "locks").is_dir()
        call_in_reactor(layer.set, key("shop", "/a.jpg"), entry(b"x", time.time()))
        assert call_in_reactor(layer.get, key("shop", "/a.jpg")) is not None
    finally:
        call_in_reactor(service.stopService)
    assert not layer.pool.running
