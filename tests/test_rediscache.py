"""The shared Redis connection and the Redis layer, against real redis-server processes:
single node, a node killed and restarted mid-test, shards, and Sentinel."""

from __future__ import annotations

import socket
import threading
from itertools import chain

import pytest
from hypothesis import given, settings, strategies as st

from mediaproxy.builtin.health import RedisHealth
from mediaproxy.cache.memory import MemoryLayer
from mediaproxy.cache.redislayer import RedisLayer
from mediaproxy.cache.layered import LayeredCache
from mediaproxy.cache.keys import source_prefix
from mediaproxy.config import ConfigError, RedisCacheConfig, config_from_dict
from mediaproxy.cache.locks import RedisLock
from mediaproxy.models import CacheEntry
from mediaproxy.cache.redis import RedisAddress, RedisClient, RedisUnavailable
from mediaproxy.testing import call_in_reactor, make_runtime, reactor_thread, wait_for

from .redis_server import RedisServer, free_port, start_sentinel

TIMEOUT = 0.5


def entry(body: bytes, created_at: float = 1700000000.0) -> CacheEntry:
    return CacheEntry(body=body, content_type="image/png", created_at=created_at,
                      etag='"e"', last_modified="Tue, 14 Nov 2023 22:13:20 GMT")


def key(tenant: str, source: str, variant: str) -> str:
    return source_prefix(tenant, source) + variant


@pytest.fixture
def reactor():
    return reactor_thread()


@pytest.fixture
def clients(reactor):
    """``clients(**redis settings)``: a started client, up; all stopped after the test."""
    made: list[RedisClient] = []

    def make(**settings) -> RedisClient:
        config = RedisCacheConfig(**{"timeout": TIMEOUT, **settings})
        client = RedisClient.from_config(config, reactor, backoff_initial=0.05,
                                         backoff_max=0.5)
        made.append(client)
        call_in_reactor(client.start)
        assert call_in_reactor(client.when_up, 5.0)
        return client

    yield make
    for client in made:
        call_in_reactor(client.stop)


def layer_for(client, reactor, **kwargs) -> RedisLayer:
    return RedisLayer(client, ttl=kwargs.pop("ttl", 600.0), reactor=reactor, **kwargs)


def all_keys(server) -> list[bytes]:
    return server.command("KEYS", "*")


# -- single node ----------------------------------------------------------------------------------

def test_get_set_delete_and_every_key_has_a_ttl(redis_server, clients, reactor):
    client = clients(url=redis_server.url)
    layer = layer_for(client, reactor)
    body = bytes(range(256)) * 3
    for variant in "abc":
        call_in_reactor(layer.set, key("shop", "/a.jpg", variant), entry(body))
    lock = RedisLock(client, reactor, ttl=60)
    assert call_in_reactor(lock.acquire, "shop:x:y") is not None

    assert call_in_reactor(layer.get, key("shop", "/a.jpg", "a")) == entry(body)
    assert call_in_reactor(layer.get, key("shop", "/a.jpg", "zzz")) is None
    call_in_reactor(layer.delete, key("shop", "/a.jpg", "b"))
    assert call_in_reactor(layer.get, key("shop", "/a.jpg", "b")) is None

    keys = all_keys(redis_server)
    assert len(keys) == 3  # two entries and the lock
    for k in keys:
        assert redis_server.command("PTTL", k) > 0, k
    stats = layer.stats()
    assert (stats["hits"], stats["misses"], stats["stores"]) == (1, 2, 3)


def test_the_stored_ttl_is_the_configured_one(redis_server, clients, reactor):
    layer = layer_for(clients(url=redis_server.url), reactor, ttl=120.0)
    call_in_reactor(layer.set, "t:s:v", entry(b"x"))
    assert 119_000 < redis_server.command("PTTL", "mediaproxy:r:t:s:v") <= 120_000


def test_binary_bodies_round_trip(redis_server, clients, reactor):
    layer = layer_for(clients(url=redis_server.url), reactor)

    @settings(max_examples=30)
    @given(body=st.binary(max_size=2048), created_at=st.floats(0, 2e9))
    def round_trip(body, created_at):
        call_in_reactor(layer.set, "t:s:v", entry(body, created_at))
        assert call_in_reactor(layer.get, "t:s:v") == entry(body, created_at)

    round_trip()


def test_values_that_are_valid_utf8_come_back_as_the_same_bytes(redis_server, clients):
    client = clients(url=redis_server.url)
    for value in (b"", b"plain", "d\u00e9j\u00e0".encode(), b"123", b"1.5", b"\xff\xfe"):
        call_in_reactor(client.set, "k", value, 10)
        assert call_in_reactor(client.get, "k") == value


def test_purge_source_tenant_and_everything(redis_server, clients, reactor):
    layer = layer_for(clients(url=redis_server.url), reactor)
    for tenant in ("shop", "blog"):
        for source in ("/a.jpg", "/b.jpg"):
            for variant in ("v1", "v2"):
                call_in_reactor(layer.set, key(tenant, source, variant), entry(b"x"))
    redis_server.command("SET", "someone-else:key", "1", "EX", "100")

    assert call_in_reactor(layer.purge, source_prefix("shop", "/a.jpg")) == 2
    assert call_in_reactor(layer.get, key("shop", "/a.jpg", "v1")) is None
    assert call_in_reactor(layer.get, key("shop", "/b.jpg", "v1")) is not None
    assert call_in_reactor(layer.purge, "shop:") == 2
    assert call_in_reactor(layer.get, key("blog", "/a.jpg", "v1")) is not None
    assert call_in_reactor(layer.purge, "") == 4
    assert all_keys(redis_server) == [b"someone-else:key"]


def test_purge_escapes_glob_characters(redis_server, clients, reactor):
    layer = layer_for(clients(url=redis_server.url), reactor)
    call_in_reactor(layer.set, "a*:s:v", entry(b"x"))
    call_in_reactor(layer.set, "ab:s:v", entry(b"x"))
    assert call_in_reactor(layer.purge, "a*:") == 1
    assert call_in_reactor(layer.get, "ab:s:v") is not None


def test_purge_deletes_in_batches(redis_server, clients, reactor):
    client = clients(url=redis_server.url)
    layer = layer_for(client, reactor)
    for i in range(1200):
        redis_server.command("SET", f"mediaproxy:r:t:s:{i}", "x", "EX", "100")
    assert call_in_reactor(client.delete_matching, "mediaproxy:r:t:*", 100) == 1200
    assert all_keys(redis_server) == []
    assert layer.stats()["errors"] == 0


def test_an_entry_over_the_item_limit_is_not_stored_and_drops_the_old_one(
        redis_server, clients, reactor):
    layer = layer_for(clients(url=redis_server.url), reactor, max_item_bytes=100)
    call_in_reactor(layer.set, "t:s:v", entry(b"small"))
    call_in_reactor(layer.set, "t:s:v", entry(b"x" * 101))
    assert call_in_reactor(layer.get, "t:s:v") is None
    assert layer.stats()["too_large"] == 1


def test_a_corrupt_value_is_a_miss_and_is_deleted(redis_server, clients, reactor):
    layer = layer_for(clients(url=redis_server.url), reactor)
    call_in_reactor(layer.set, "t:s:v", entry(b"body"))
    stored = redis_server.command("GET", "mediaproxy:r:t:s:v")
    redis_server.command("SET", "mediaproxy:r:t:s:v", stored[:-1] + b"!", "EX", "100")
    assert call_in_reactor(layer.get, "t:s:v") is None
    wait_for(lambda: not all_keys(redis_server), 5, what="corrupt key deleted")
    assert layer.stats()["corrupt"] == 1


def test_large_entries_are_encoded_off_the_reactor(redis_server, clients, reactor):
    from twisted.python.threadpool import ThreadPool

    pool = ThreadPool(minthreads=1, maxthreads=1, name="test-codec")
    pool.start()
    try:
        layer = layer_for(clients(url=redis_server.url), reactor, threadpool=pool,
                          offload_bytes=1000)
        body = bytes(range(256)) * 40
        call_in_reactor(layer.set, "t:s:v", entry(body))
        assert call_in_reactor(layer.get, "t:s:v").body == body
    finally:
        pool.stop()


# -- failure and recovery -------------------------------------------------------------------------

def test_a_dead_redis_is_skipped_fast_and_used_again_when_it_returns(
        redis_server, clients, reactor):
    client = clients(url=redis_server.url)
    redis = layer_for(client, reactor)
    memory = MemoryLayer(max_bytes=10**6)
    errors = []
    cache = LayeredCache([memory, redis], emit=lambda name, **labels: errors.append(labels))
    call_in_reactor(cache.set, "t:s:v", entry(b"before"))

    redis_server.kill()
    # The command that finds Redis gone fails (bounded by the command timeout, not hanging)...
    with pytest.raises(RedisUnavailable, match=r"^Redis [^ ]+: "):
        call_in_reactor(redis.get, "t:s:other")
    assert not client.healthy

    for _ in range(50):  # ...and then the breaker answers without touching the network
        with pytest.raises(RedisUnavailable, match=r" is down \(next try in [0-9.]+ s\)$"):
            call_in_reactor(redis.get, "t:s:other")
    # the layered cache never fails: it skips the layer and counts the error
    assert call_in_reactor(cache.get, "t:s:v") == (entry(b"before"), "memory")
    assert call_in_reactor(cache.get, "t:s:missing") is None
    call_in_reactor(cache.set, "t:s:new", entry(b"while down"))
    assert {"layer": "redis", "op": "get"} in errors
    assert {"layer": "redis", "op": "set"} in errors

    redis_server.start()  # same port, empty (no persistence)
    assert call_in_reactor(client.when_up, 15.0, timeout=20.0)
    call_in_reactor(redis.set, "t:s:after", entry(b"after"))
    assert call_in_reactor(redis.get, "t:s:after") == entry(b"after")
    assert redis_server.command("PTTL", "mediaproxy:r:t:s:after") > 0


def test_a_client_started_before_redis_connects_when_it_appears(redis_server, reactor):
    port = redis_server.port
    redis_server.kill()
    config = RedisCacheConfig(url=f"redis://127.0.0.1:{port}/0", timeout=TIMEOUT)
    client = RedisClient.from_config(config, reactor, backoff_initial=0.05, backoff_max=0.5)
    call_in_reactor(client.start)
    try:
        with pytest.raises(RedisUnavailable):
            call_in_reactor(client.get, "k")
        redis_server.start()
        assert call_in_reactor(client.when_up, 15.0, timeout=20.0)
        call_in_reactor(client.set, "k", b"v", 10)
        assert call_in_reactor(client.get, "k") == b"v"
    finally:
        call_in_reactor(client.stop)


def test_a_pool_txredisapi_gave_up_on_is_replaced(tmp_path, reactor):
    """A connection lost during the SELECT handshake makes txredisapi stop reconnecting the
    whole pool; the node replaces it, so a Redis that comes back is used again."""
    port = free_port()
    dropper = socket.socket()
    dropper.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    dropper.bind(("127.0.0.1", port))
    dropper.listen(16)
    dropped = []

    def drop_every_connection():
        while True:
            try:
                conn, _ = dropper.accept()
            except OSError:
                return  # closed: done
            conn.recv(100)  # the SELECT
            conn.close()
            dropped.append(1)

    threading.Thread(target=drop_every_connection, daemon=True).start()
    config = RedisCacheConfig(url=f"redis://127.0.0.1:{port}/1", timeout=TIMEOUT)
    client = RedisClient.from_config(config, reactor, backoff_initial=0.05, backoff_max=0.2)
    call_in_reactor(client.start)
    server = RedisServer(tmp_path / "redis", port=port)
    try:
        wait_for(lambda: len(dropped) >= 8, 10, what="handshakes dropped")
        dropper.close()
        server.start()
        assert call_in_reactor(client.when_up, 15.0, timeout=20.0)
        call_in_reactor(client.set, "k", b"v", 10)
        assert call_in_reactor(client.get, "k") == b"v"
        assert server.command("DBSIZE") == 0  # it went to db 1, as the URL says
    finally:
        dropper.close()
        call_in_reactor(client.stop)
        server.kill()


def test_the_health_indicator_pings(redis_server, clients):
    client = clients(url=redis_server.url)
    health = RedisHealth(client)
    status = call_in_reactor(health.check)
    assert (status.name, status.ok) == ("redis", True)
    redis_server.kill()
    wait_for(lambda: not call_in_reactor(health.check).ok, 5, what="health turning bad")
    assert "127.0.0.1" in call_in_reactor(health.check).detail


# -- scale-out and high availability --------------------------------------------------------------

def test_sharded_keys_spread_over_every_shard_and_purge_scans_them_all(
        redis_servers, clients, reactor):
    servers = redis_servers(2)
    client = clients(shards=tuple(s.url for s in servers))
    assert client.mode == "sharded"
    layer = layer_for(client, reactor)
    keys = [key("shop", f"/img{i}.jpg", "v") for i in range(40)]
    for k in keys:
        call_in_reactor(layer.set, k, entry(k.encode()))
    counts = [s.command("DBSIZE") for s in servers]
    assert sum(counts) == 40 and min(counts) > 0, counts
    for server in servers:
        for k in all_keys(server):
            assert server.command("PTTL", k) > 0
    for k in keys:
        assert call_in_reactor(layer.get, k).body == k.encode()
    # the same key always lands on the same shard, and a {tag} keeps keys together
    assert client.node_for(keys[0]) is client.node_for(keys[0])
    tagged = {client.node_for(f"{{same}}:{i}").label for i in range(20)}
    assert len(tagged) == 1

    assert call_in_reactor(layer.purge, "shop:") == 40
    assert [s.command("DBSIZE") for s in servers] == [0, 0]


def test_one_dead_shard_does_not_take_the_others_down(redis_servers, clients, reactor):
    servers = redis_servers(2)
    client = clients(shards=tuple(s.url for s in servers))
    layer = layer_for(client, reactor)
    servers[1].kill()
    keys = [f"t:s:{i}" for i in range(30)]
    alive = [k for k in keys if client.node_for(layer.redis_key(k)) is client.nodes[0]]
    dead = [k for k in keys if client.node_for(layer.redis_key(k)) is client.nodes[1]]
    assert alive and dead
    for k in dead[:1]:  # the first command finds the shard gone
        with pytest.raises(RedisUnavailable):
            call_in_reactor(layer.set, k, entry(b"x"))
    for k in alive:
        call_in_reactor(layer.set, k, entry(b"x"))
        assert call_in_reactor(layer.get, k) is not None
    with pytest.raises(RedisUnavailable):
        call_in_reactor(layer.get, dead[-1])


def test_sentinel_finds_the_master(redis_server, clients, reactor, tmp_path):
    sentinel = start_sentinel(tmp_path / "sentinel", redis_server, "mymaster")
    try:
        client = clients(sentinels=(sentinel.address,), sentinel_service="mymaster")
        assert client.mode == "sentinel"
        layer = layer_for(client, reactor)
        call_in_reactor(layer.set, "t:s:v", entry(b"via sentinel"))
        assert call_in_reactor(layer.get, "t:s:v") == entry(b"via sentinel")
        # it really is on the master Sentinel named
        assert redis_server.command("PTTL", "mediaproxy:r:t:s:v") > 0
    finally:
        sentinel.kill()


def test_sentinels_without_a_service_name_are_refused(reactor):
    with pytest.raises(ConfigError, match="sentinel_service"):
        RedisClient.from_config(RedisCacheConfig(sentinels=("127.0.0.1:1",)), reactor)


def test_addresses_are_parsed_from_urls():
    a = RedisAddress.from_url("rediss://user:p%40ss@cache.internal:6380/3")
    assert (a.host, a.port, a.db, a.username, a.password, a.tls) == (
        "cache.internal", 6380, 3, "user", "p@ss", True)
    assert a.label == "cache.internal:6380/3"
    u = RedisAddress.from_url("unix:///run/redis.sock?db=2")
    assert (u.unix_path, u.db) == ("/run/redis.sock", 2)
    assert RedisAddress.from_host_port("[::1]:26379") == RedisAddress(host="::1", port=26379)


# -- wiring ---------------------------------------------------------------------------------------

def test_the_runtime_has_one_client_shared_by_the_layer_a_service_and_a_health_check(
        redis_server, reactor):
    from mediaproxy.tap import compose

    config = config_from_dict({"cache": {"redis": {"url": redis_server.url,
                                                   "timeout": TIMEOUT},
                                         "memory": {"enabled": False}}})
    runtime, _, services = call_in_reactor(compose, config, reactor, load_entrypoints=False)
    client = runtime.redis
    assert isinstance(client, RedisClient)
    assert [(layer.name, layer.order) for layer in runtime.cache.layers] == [("redis", 20)]
    layer = runtime.cache.layers[0]
    assert layer.client is client
    assert runtime.purge_feed is not None and runtime.purge_feed.redis is client
    indicators = {i.name: i for i in chain.from_iterable(
        runtime.pm.hook.mediaproxy_health_indicators(runtime=runtime))}
    for svc in services:
        call_in_reactor(svc.startService)
    try:
        assert call_in_reactor(client.when_up, 5.0)
        call_in_reactor(runtime.cache.set, "t:s:v", entry(b"wired"))
        assert call_in_reactor(runtime.cache.get, "t:s:v") == (entry(b"wired"), "redis")
        assert call_in_reactor(indicators["redis"].check).ok
        call_in_reactor(layer.refresh)
        assert layer.stats()["items"] == 1
    finally:
        for svc in reversed(services):
            call_in_reactor(svc.stopService)


def test_without_redis_settings_there_is_no_client(reactor):
    runtime = make_runtime(reactor=reactor)
    assert runtime.redis is None and runtime.purge_feed is None
    assert [layer.name for layer in runtime.cache.layers] == ["memory"]
    indicators = chain.from_iterable(runtime.pm.hook.mediaproxy_health_indicators(
        runtime=runtime))
    assert "redis" not in {i.name for i in indicators}
