"""The memory layer: bounded in bytes, LRU, returns what was stored last."""

from hypothesis import given, strategies as st

from mediaproxy.cache.memory import MemoryLayer, _entry_size
from mediaproxy.models import CacheEntry


def entry(body: bytes) -> CacheEntry:
    return CacheEntry(body=body, content_type="image/jpeg", created_at=0.0, etag='"x"',
                      last_modified="Thu, 01 Jan 1970 00:00:00 GMT")


def result(d):
    out = []
    d.addBoth(out.append)
    return out[0]


def test_hit_miss_and_eviction_by_bytes():
    layer = MemoryLayer(max_bytes=3 * _entry_size(entry(b"x" * 100)))
    for name in "abc":
        result(layer.set(name, entry(b"x" * 100)))
    assert result(layer.get("a")).body == b"x" * 100   # a is now the most recent
    result(layer.set("d", entry(b"x" * 100)))
    assert result(layer.get("b")) is None               # the least recently used went
    assert result(layer.get("a")) is not None
    assert layer.evictions == 1
    assert layer.current_bytes <= layer.max_bytes


def test_entries_expire_after_ttl():
    now = [0.0]
    layer = MemoryLayer(max_bytes=10_000, ttl=10, clock=lambda: now[0])
    result(layer.set("a", entry(b"1")))
    now[0] = 9.0
    assert result(layer.get("a")) is not None
    now[0] = 11.0
    assert result(layer.get("a")) is None


def test_an_expired_entry_is_not_served_and_gives_its_bytes_back():
    now = [100.0]
    layer = MemoryLayer(max_bytes=10_000, ttl=10, clock=lambda: now[0])
    result(layer.set("a", entry(b"1" * 100)))
    now[0] = 109.75
    assert result(layer.get("a")).body == b"1" * 100    # just before: served
    now[0] = 110.0
    assert result(layer.get("a")) is None               # at stored + ttl: expired
    assert (layer.current_bytes, layer.stats()["items"]) == (0, 0)
    assert (layer.hits, layer.misses, layer.evictions) == (1, 1, 0)
    result(layer.set("a", entry(b"2")))                 # stored again: a new ttl
    now[0] = 119.75
    assert result(layer.get("a")).body == b"2"
    assert layer.current_bytes == _entry_size(entry(b"2"))


def test_replacing_deleting_and_purging_keep_the_byte_count_exact():
    layer = MemoryLayer(max_bytes=10_000)
    result(layer.set("t:a", entry(b"x" * 100)))
    result(layer.set("t:a", entry(b"x" * 300)))          # replaced, not added
    result(layer.set("t:b", entry(b"x" * 50)))
    result(layer.set("u:c", entry(b"x" * 10)))
    assert layer.current_bytes == 300 + 50 + 10 + 3 * 256
    assert result(layer.purge("t:")) == 2
    assert layer.current_bytes == 10 + 256
    result(layer.delete("u:c"))
    result(layer.delete("u:c"))                          # twice: nothing more given back
    assert (layer.current_bytes, layer.stats()["items"]) == (0, 0)


def test_an_entry_of_exactly_the_budget_is_kept_alone():
    size = _entry_size(entry(b"x" * 100))
    layer = MemoryLayer(max_bytes=size, max_item_bytes=size)
    result(layer.set("a", entry(b"y" * 10)))
    result(layer.set("b", entry(b"x" * 100)))           # fits exactly: "a" makes room
    assert result(layer.get("b")) is not None and result(layer.get("a")) is None
    assert (layer.current_bytes, layer.evictions) == (size, 1)
    result(layer.set("c", entry(b"x" * 101)))           # one byte over: not kept
    assert result(layer.get("c")) is None and result(layer.get("b")) is not None


def test_the_defaults_and_the_stats_are_as_documented():
    import pytest

    layer = MemoryLayer(max_bytes=1000)
    assert (layer.ttl, layer.max_item_bytes, layer.name, layer.order, layer.shared) == \
        (86400.0, 8 * 1024 * 1024, "memory", 10, False)
    result(layer.set("a", entry(b"x" * 10)))
    result(layer.get("a"))
    result(layer.get("b"))
    assert layer.stats() == {"hits": 1, "misses": 1, "evictions": 0, "errors": 0,
                             "bytes": 266, "items": 1, "max_bytes": 1000}
    for state in ("entries", "bytes"):   # the internal state is never given from outside
        with pytest.raises(TypeError):
            MemoryLayer(max_bytes=1000, **{state: {}})


def test_an_entry_larger_than_the_item_limit_is_not_kept():
    layer = MemoryLayer(max_bytes=10_000, max_item_bytes=1000)
    result(layer.set("big", entry(b"x" * 500)))
    result(layer.set("big", entry(b"x" * 2000)))         # the older value goes too
    assert result(layer.get("big")) is None
    assert layer.current_bytes == 0


ops = st.lists(st.tuples(st.sampled_from(["set", "get", "delete"]), st.sampled_from("abcdef"),
                         st.integers(0, 3000)), max_size=60)


@given(st.integers(0, 4000), ops)
def test_never_exceeds_its_byte_bound_and_returns_the_last_stored(max_bytes, operations):
    layer = MemoryLayer(max_bytes=max_bytes)
    last = {}
    for op, key, size in operations:
        if op == "set":
            body = bytes([size % 256]) * size
            result(layer.set(key, entry(body)))
            last[key] = body
        elif op == "delete":
            result(layer.delete(key))
            last.pop(key, None)
        else:
            got = result(layer.get(key))
            # A miss is allowed (evicted, or too large to keep); a hit is the latest value.
            assert got is None or got.body == last.get(key)
        assert layer.current_bytes <= max(layer.max_bytes, 1)
