"""
The S3 plugin (plugins/mediaproxy-s3, installed by ./dev setup) against a real SeaweedFS
(tests/seaweedfs.py: one ``weed server`` for the session, S3 signatures checked): results and
originals stored and served from the store, shared by two proxy processes, the store frozen
mid-run, TTLs, purges, and disabling the plugin by name.

Each test keeps its objects under a prefix of its own, so the tests share the store in any
order.
"""

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import attrs
import pytest
from mediaproxy_s3 import S3Client, S3Plugin, S3Settings, StoreUnavailable, settings_from
from mediaproxy_s3.client import WAITING_PER_CONNECTION, StoreBusy, StoreError, TooLarge
from mediaproxy_s3.layer import S3Layer, parse_listing
from twisted.internet import task
from twisted.python.failure import Failure

from mediaproxy.cache.keys import source_prefix
from mediaproxy.cache.layered import find_layer
from mediaproxy.config import ConfigError, load_config
from mediaproxy.models import CacheEntry
from mediaproxy.testing import ImageOrigin, assert_image, make_image, start_proxy, wait_for
from mediaproxy.testing.reactor import call_in_reactor
from tests.seaweedfs import BUCKET, start_seaweedfs
from tests.test_admin import AUTH, TOKEN, call

ROOT = Path(__file__).resolve().parent.parent
PHOTO = "/media/uploads/photo.jpg"
JPEG = make_image((400, 300), colour=(30, 140, 220))


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory, live_reactor):
    store = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"))
    try:
        ready(store, live_reactor)
        yield store
    finally:
        store.stop()


def ready(store, reactor, timeout: float = 60.0) -> None:
    """Create the bucket and wait until the store takes a write and refuses a bad signature
    (its S3 port answers before its master has a leader and before its identities are
    loaded)."""
    settings = settings_from(store.settings())

    def client(secret):
        return call_in_reactor(lambda: S3Client(
            settings.endpoint, settings.bucket, settings.region, settings.access_key, secret,
            reactor, failures_to_open=1_000_000))

    good, bad = client(settings.secret_key), client("wrong-secret")

    def works():
        try:
            call_in_reactor(lambda: good.request("PUT", ok=(200, 409)))     # CreateBucket
            call_in_reactor(lambda: good.put("ready", b"1", {}))
        except (StoreError, TimeoutError):
            return False
        try:
            call_in_reactor(lambda: bad.put("ready", b"1", {}))
        except StoreError as e:
            return "403" in str(e)
        return False

    try:
        wait_for(works, timeout, what="SeaweedFS takes signed writes and refuses bad ones")
    finally:
        for c in (good, bad):
            call_in_reactor(c.close)


def s3_settings(store, **extra):
    """The settings of a layer on ``store`` under a prefix of its own."""
    return settings_from(store.settings(prefix=f"t-{uuid.uuid4().hex[:12]}/", **extra))


def s3_proxy(store, files=None, settings=None, **kw):
    origin = ImageOrigin(files if files is not None else {PHOTO: JPEG})
    return start_proxy(origin=origin, plugins=[S3Plugin(settings or s3_settings(store))], **kw)


def forget_memory(proxy):
    """Empty the proxy's memory layer and source cache (as a restart, or another node,
    would have them)."""
    rt = proxy.runtime
    call_in_reactor(lambda: find_layer(rt, "memory").purge(""))
    sources = rt.pm.get_plugin("mediaproxy.builtin.sourcecache.memory")
    call_in_reactor(lambda: sources.forget_where(lambda path: True))


def s3_layer(proxy) -> S3Layer:
    return find_layer(proxy.runtime, S3Layer)


def health_of(proxy) -> tuple[bool, str]:
    """The S3 health indicator's (ok, detail); it is never critical."""
    rt = proxy.runtime
    (indicator,) = [i for found in rt.pm.hook.mediaproxy_health_indicators(runtime=rt)
                    for i in found if i.name == "s3"]
    status = call_in_reactor(indicator.check)
    assert status.critical is False
    return status.ok, status.detail


def stored(proxy, count: int) -> None:
    """Wait until the store holds ``count`` writes of this proxy (they finish after the
    response)."""
    layer = s3_layer(proxy)
    wait_for(lambda: layer.stores == count, 10, what=f"{count} objects stored")


def test_a_render_is_served_from_the_store_once_memory_forgot_it(seaweedfs):
    with s3_proxy(seaweedfs) as proxy:
        first = proxy.get(f"{PHOTO}?w=100&fmt=webp")
        assert first.status == 200 and first.headers["x-cache"] == "MISS"
        stored(proxy, 2)                              # the result and the original
        forget_memory(proxy)
        again = proxy.get(f"{PHOTO}?w=100&fmt=webp")
        assert again.status == 200 and again.headers["x-cache"] == "HIT-S3"
        assert again.body == first.body
        assert_image(again.body, size=(100, 75), format="WEBP")
        # then served from memory (back-filled), and the backend was asked once
        assert proxy.get(f"{PHOTO}?w=100&fmt=webp").headers["x-cache"] == "HIT-MEMORY"
        assert proxy.origin.hits[PHOTO] == 1
        stats = s3_layer(proxy).stats()
        assert (stats["hits"], stats["stores"], stats["errors"]) == (1, 2, 0)  # result + original
        assert health_of(proxy) == (True, "reachable")


def test_the_original_kept_in_the_store_serves_a_new_size_without_the_backend(seaweedfs):
    with s3_proxy(seaweedfs) as proxy:
        assert proxy.get(f"{PHOTO}?w=100&fmt=webp").status == 200
        stored(proxy, 2)
        forget_memory(proxy)
        other = proxy.get(f"{PHOTO}?w=64&fmt=png")
        assert other.status == 200 and other.headers["x-cache"] == "MISS"
        assert_image(other.body, size=(64, 48), format="PNG")
        assert proxy.origin.hits[PHOTO] == 1
        assert proxy.runtime.pm.get_plugin(
            "mediaproxy.builtin.sourcecache.memory").disk_hits == 1


def test_with_a_file_layer_an_original_from_the_store_is_kept_on_disk_too(seaweedfs, tmp_path):
    settings = s3_settings(seaweedfs)
    with s3_proxy(seaweedfs, settings=settings) as first:
        assert first.get(f"{PHOTO}?w=100&fmt=webp").status == 200
        stored(first, 2)
    with s3_proxy(seaweedfs, settings=settings,
                  overrides={"cache": {"file": {"dir": str(tmp_path)}}}) as other:
        answer = other.get(f"{PHOTO}?w=64&fmt=png")
        assert answer.status == 200 and answer.headers["x-cache"] == "MISS"
        assert other.origin.hits[PHOTO] == 0
        disk = find_layer(other.runtime, "file")
        key = source_prefix("public", PHOTO) + "source"
        kept = wait_for(lambda: call_in_reactor(lambda: disk.get(key)), 10,
                        what="the original back-filled into the file layer")
        assert kept.body == JPEG


# -- two processes ----------------------------------------------------------------------------

PROBE = r"""
import json, sys
from mediaproxy.testing import ImageOrigin, decode, make_image, start_proxy
origin = ImageOrigin({"/media/uploads/photo.jpg": make_image((400, 300), colour=(30, 140, 220))})
running = start_proxy(origin=origin, load_entrypoints=True, environ={
    k: v for k, v in __import__("os").environ.items() if k.startswith("MEDIAPROXY_")})
out = []
for path in sys.argv[1:]:
    status, headers, body, _ = running.get(path)
    out.append({"status": status, "cache": headers.get("x-cache"),
                "size": list(decode(body).size) if status == 200 else None})
plugins = sorted(n for n, p in running.runtime.pm.list_name_plugin() if p is not None)
print(json.dumps({"answers": out, "backend": sum(origin.hits.values()), "plugins": plugins}))
running.stop()
"""


def other_process(settings, *paths, **env):
    """A second proxy in a process of its own, with the installed plugin found through its
    entry point and its [s3] section set from the environment (MEDIAPROXY_S3__KEY); its own
    backend, whose requests it counts."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MEDIAPROXY_")}
    environ.update({f"MEDIAPROXY_S3__{name.upper()}": str(getattr(settings, name))
                    for name in ("endpoint", "bucket", "access_key", "secret_key", "prefix")})
    environ.update(env)
    out = subprocess.run([sys.executable, "-c", PROBE, *paths], cwd=ROOT, env=environ,
                         check=True, capture_output=True, text=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_two_processes_share_the_store(seaweedfs):
    settings = s3_settings(seaweedfs)
    with s3_proxy(seaweedfs, settings=settings) as proxy:
        assert proxy.get(f"{PHOTO}?w=120&fmt=webp").headers["x-cache"] == "MISS"
        assert proxy.get(f"{PHOTO}?w=80").headers["x-cache"] == "MISS"
        stored(proxy, 4)     # two results, the original, what no fmt resolved to (jpeg)
    other = other_process(settings, f"{PHOTO}?w=120&fmt=webp", f"{PHOTO}?w=80",
                          f"{PHOTO}?w=50&fmt=png")
    assert "s3" in other["plugins"]
    assert other["answers"] == [
        {"status": 200, "cache": "HIT-S3", "size": [120, 90]},   # the first node's renders
        {"status": 200, "cache": "HIT-S3", "size": [80, 60]},
        {"status": 200, "cache": "MISS", "size": [50, 38]}]      # from the shared original
    assert other["backend"] == 0


@pytest.mark.parametrize("disabled", ["", "s3"])
def test_disabled_by_name_the_installed_plugin_has_no_effect(seaweedfs, disabled):
    # its [s3] section stays set: the section of a disabled plugin is not read
    settings = s3_settings(seaweedfs)
    environ = {f"MEDIAPROXY_S3__{name.upper()}": str(getattr(settings, name))
               for name in ("endpoint", "bucket", "access_key", "secret_key", "prefix")}
    with start_proxy(files={PHOTO: JPEG}, load_entrypoints=True,
                     environ={**environ, "MEDIAPROXY_PLUGINS__DISABLED": disabled}) as proxy:
        names = {name for name, p in proxy.runtime.pm.list_name_plugin() if p is not None}
        assert proxy.get(f"{PHOTO}?w=100&fmt=webp").headers["x-cache"] == "MISS"
        if disabled:
            assert "s3" not in names and s3_layer(proxy) is None
        else:
            assert "s3" in names
            stored(proxy, 2)


# -- failures ---------------------------------------------------------------------------------

def test_a_frozen_store_costs_the_clients_nothing_but_the_layer(seaweedfs):
    settings = s3_settings(seaweedfs, timeout=0.3, failures_to_open=2, retry_after=0.5)
    with s3_proxy(seaweedfs, settings=settings) as proxy:
        layer = s3_layer(proxy)
        assert proxy.get(f"{PHOTO}?w=100&fmt=jpeg").headers["x-cache"] == "MISS"
        stored(proxy, 2)
        forget_memory(proxy)
        seaweedfs.pause()
        try:
            # the store hangs: the read times out, the render goes on; then the breaker opens
            for width, height in ((100, 75), (92, 69), (80, 60)):
                answer = proxy.get(f"{PHOTO}?w={width}&fmt=jpeg")
                assert answer.status == 200 and answer.headers["x-cache"] == "MISS"
                assert_image(answer.body, size=(width, height), format="JPEG")
            wait_for(lambda: not layer.client.healthy, 10, what="the breaker opens")
            assert proxy.origin.hits[PHOTO] == 2     # the original: before, and after forget
        finally:
            seaweedfs.resume()

        def served_from_the_store():
            forget_memory(proxy)
            return proxy.get(f"{PHOTO}?w=100&fmt=jpeg").headers["x-cache"] == "HIT-S3"

        wait_for(served_from_the_store, 20, what="the store is used again once back")


def test_a_store_that_is_not_there_or_refuses_us_is_skipped(seaweedfs, unused_port):
    for settings in (settings_from({"endpoint": f"http://127.0.0.1:{unused_port}",
                                    "bucket": BUCKET, "retry_after": 600.0}),
                     s3_settings(seaweedfs, secret_key="wrong-secret", retry_after=600.0)):
        with s3_proxy(seaweedfs, settings=settings) as proxy:
            for _ in range(2):
                forget_memory(proxy)
                answer = proxy.get(f"{PHOTO}?w=100&fmt=jpeg")
                assert answer.status == 200 and answer.headers["x-cache"] == "MISS"
            stats = s3_layer(proxy).stats()
            assert stats["hits"] == 0 and stats["stores"] == 0 and stats["errors"] > 0
            ok, detail = health_of(proxy)      # degraded (not critical), saying why
            assert not ok and detail.startswith("the store failed ")   # 3 reads at least


@pytest.fixture
def unused_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_breaker_opens_after_consecutive_failures_and_probes_after(live_reactor):
    # The core's breaker (mediaproxy.CircuitBreaker) with the plugin's two settings; its own
    # rules are tested in tests/test_backend_policy.py: this is the client's wiring.
    import mediaproxy

    clock = task.Clock()
    client = S3Client("http://127.0.0.1:1", "b", "us-east-1", "k", "s", clock,
                      failures_to_open=3, retry_after=5.0)
    assert type(client.breaker) is mediaproxy.CircuitBreaker
    refused = Failure(ConnectionRefusedError())

    def refused_at_once():
        failure = []
        client.request("GET", "k").addErrback(failure.append)
        return len(failure) == 1 and failure[0].check(StoreUnavailable) is not None

    for _ in range(2):
        with pytest.raises(StoreError):
            client._failed(refused)
        assert client.healthy
    client._succeeded(None)                       # a success starts the count again
    for _ in range(2):
        with pytest.raises(StoreError):
            client._failed(refused)
    assert client.healthy
    with pytest.raises(StoreError):
        client._failed(refused)
    assert not client.healthy
    assert refused_at_once()                      # nothing sent
    clock.advance(4.999)
    assert refused_at_once()
    clock.advance(0.001)                          # retry_after later: one probe at a time
    assert client.breaker.allow() and not client.breaker.allow()
    with pytest.raises(StoreError):                # the probe fails: open again at once
        client._failed(refused)
    assert client.breaker.state == "open" and refused_at_once()
    clock.advance(5.0)
    assert client.breaker.allow()
    big = client._failed(Failure(TooLarge("big")))  # an object too large: no verdict
    assert big.check(TooLarge) and client.breaker.state == "half_open"
    assert client.breaker.allow()                   # the probe was given back
    client._succeeded(None)                         # a probe succeeds: closed
    assert client.healthy


def test_calls_past_the_waiting_bound_fail_at_once_and_are_not_store_failures():
    clock = task.Clock()
    client = S3Client("http://127.0.0.1:1", "b", "us-east-1", "k", "s", clock,
                      max_connections=2, timeout=1.0,
                      failures_to_open=2 * WAITING_PER_CONNECTION + 1)
    for _ in range(2):
        client._slots.acquire()                   # both connections busy
    waiting = [client.request("GET", "k") for _ in range(2 * WAITING_PER_CONNECTION)]
    assert not any(d.called for d in waiting)
    busy = []
    client.request("GET", "k").addErrback(busy.append)
    assert busy[0].check(StoreBusy) and client.healthy
    clock.advance(0.999)
    assert not any(d.called for d in waiting)
    clock.advance(0.001)                          # the deadline covers the wait for a slot
    failed = []
    for d in waiting:
        d.addErrback(failed.append)
    assert len(failed) == 2 * WAITING_PER_CONNECTION
    assert all(f.check(StoreError) for f in failed) and client.healthy
    with pytest.raises(StoreError):   # each timeout was a failure, the busy call none: one
        client._failed(Failure(ConnectionRefusedError()))   # more opens the breaker
    assert not client.healthy


# -- TTL --------------------------------------------------------------------------------------

def test_an_object_expires_ttl_seconds_after_its_render(seaweedfs, live_reactor):
    settings = s3_settings(seaweedfs)
    now = [1_000_000.0]
    client = call_in_reactor(lambda: S3Client(
        settings.endpoint, settings.bucket, settings.region, settings.access_key,
        settings.secret_key, live_reactor))
    layer = S3Layer(client, ttl=100.0, prefix=settings.prefix, clock=lambda: now[0])
    entry = CacheEntry(b"body", "image/png", created_at=now[0] - 40, etag='"e"',
                       last_modified="")
    try:
        call_in_reactor(lambda: layer.set("public:src:v", entry))
        now[0] = entry.created_at + 99.999
        assert call_in_reactor(lambda: layer.get("public:src:v")) == entry
        now[0] = entry.created_at + 100.0
        assert call_in_reactor(lambda: layer.get("public:src:v")) is None
        assert layer.stats()["expired"] == 1
        # an entry already past its TTL is not stored (and replaces what was there)
        now[0] = entry.created_at + 99.999
        late = CacheEntry(b"late", "image/png", created_at=now[0] - 100.0, etag='"l"',
                          last_modified="")
        call_in_reactor(lambda: layer.set("public:src:v", late))
        assert call_in_reactor(lambda: layer.get("public:src:v")) is None
        assert layer.stats()["stores"] == 1
    finally:
        call_in_reactor(client.close)


def test_the_ttl_setting_bounds_what_the_proxy_serves_from_the_store(seaweedfs):
    with s3_proxy(seaweedfs, settings=s3_settings(seaweedfs, ttl=60.0)) as proxy:
        path = f"{PHOTO}?w=100&fmt=webp"
        assert proxy.get(path).headers["x-cache"] == "MISS"
        stored(proxy, 2)
        proxy.age(path, 50)
        forget_memory(proxy)
        assert proxy.get(path).headers["x-cache"] == "HIT-S3"
        proxy.age(path, 11)                  # 61 s old now
        forget_memory(proxy)
        assert proxy.get(path).headers["x-cache"] == "MISS"


def test_an_object_is_kept_its_stale_grace_past_the_ttl(seaweedfs, live_reactor):
    settings = s3_settings(seaweedfs)
    now = [1_000_000.0]
    client = call_in_reactor(lambda: S3Client(
        settings.endpoint, settings.bucket, settings.region, settings.access_key,
        settings.secret_key, live_reactor))
    layer = S3Layer(client, ttl=100.0, prefix=settings.prefix, clock=lambda: now[0],
                    stale_grace=30.0)
    entry = CacheEntry(b"body", "image/png", created_at=now[0], etag='"e"', last_modified="")
    try:
        assert layer.fresh_ttl == 100.0      # what the pipeline counts freshness with
        call_in_reactor(lambda: layer.set("public:src:v", entry))
        now[0] = entry.created_at + 129.999
        assert call_in_reactor(lambda: layer.get("public:src:v")) == entry
        now[0] = entry.created_at + 130.0
        assert call_in_reactor(lambda: layer.get("public:src:v")) is None
    finally:
        call_in_reactor(client.close)


def test_past_the_ttl_a_stored_result_is_served_stale_and_rendered_again(seaweedfs):
    # the S3 layer's entries follow the built-in layers' rule: fresh for s3.ttl, then stale
    # within cache.stale_while_revalidate (served at once, rendered again in the background)
    with s3_proxy(seaweedfs, settings=s3_settings(seaweedfs, ttl=60.0), overrides={
            "cache": {"stale_while_revalidate": 30.0, "stale_if_error": 0.0}}) as proxy:
        path = f"{PHOTO}?w=100&fmt=webp"
        first = proxy.get(path)
        assert first.headers["x-cache"] == "MISS"
        stored(proxy, 2)                     # the result and the original
        proxy.age(path, 61)                  # one second stale
        forget_memory(proxy)
        stale = proxy.get(path)
        assert (stale.status, stale.headers["x-cache"], stale.body) == (200, "STALE",
                                                                        first.body)
        stored(proxy, 4)                     # rendered again, stored again (with its original)
        forget_memory(proxy)
        assert proxy.get(path).headers["x-cache"] == "HIT-S3"
        proxy.age(path, 91)                  # past ttl + stale_while_revalidate: gone
        forget_memory(proxy)
        assert proxy.get(path).headers["x-cache"] == "MISS"
        # the core told the layer how long to keep objects past their TTL
        assert (s3_layer(proxy).fresh_ttl, s3_layer(proxy).stale_grace) == (60.0, 30.0)


# -- purge ------------------------------------------------------------------------------------

def test_purge_by_source_and_by_tenant_reaches_the_store(seaweedfs):
    files = {PHOTO: JPEG, "/media/uploads/b.jpg": JPEG, "/media/shop/uploads/c.jpg": JPEG}
    admin = {"admin": {"token": TOKEN, "internal_secret": "grooveshop",
                       "listen": "tcp:0:interface=127.0.0.1"}}
    with s3_proxy(seaweedfs, files=files, overrides=admin) as proxy:
        paths = (PHOTO, "/media/uploads/b.jpg", "/media/shop/uploads/c.jpg")
        for path in paths:
            for width in (50, 60):
                assert proxy.get(f"{path}?w={width}&fmt=png").headers["x-cache"] == "MISS"
        stored(proxy, 9)                              # six results and three originals
        status, body = call(proxy, "POST", "/admin/cache/purge", {"source": PHOTO}, AUTH)
        assert status == 200 and body["purged"]["s3"] == 3     # two sizes and the original
        forget_memory(proxy)
        assert proxy.get(f"{PHOTO}?w=50&fmt=png").headers["x-cache"] == "MISS"
        assert proxy.get("/media/uploads/b.jpg?w=50&fmt=png").headers["x-cache"] == "HIT-S3"
        assert proxy.get("/media/shop/uploads/c.jpg?w=50&fmt=png").headers["x-cache"] == "HIT-S3"

        status, body = call(proxy, "POST", "/admin/cache/flush-tenant", {"tenant": "shop"},
                            {"x-internal-secret": "grooveshop"})
        assert status == 200 and body["purged"]["s3"] == 3
        forget_memory(proxy)
        assert proxy.get("/media/shop/uploads/c.jpg?w=60&fmt=png").headers["x-cache"] == "MISS"
        assert proxy.get("/media/uploads/b.jpg?w=60&fmt=png").headers["x-cache"] == "HIT-S3"


def test_a_listing_page_names_its_keys_and_the_next_page():
    page = (b'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazon'
            b'aws.com/doc/2006-03-01/"><Name>b</Name><IsTruncated>true</IsTruncated>'
            b'<Contents><Key>p/a</Key></Contents><Contents><Key>p/b</Key></Contents>'
            b'<NextContinuationToken>tok</NextContinuationToken></ListBucketResult>')
    assert parse_listing(page) == (["p/a", "p/b"], "tok")
    last = page.replace(b"<IsTruncated>true", b"<IsTruncated>false")
    assert parse_listing(last) == (["p/a", "p/b"], None)


# -- settings ---------------------------------------------------------------------------------

def test_settings_are_the_s3_section_of_the_config_file_then_the_environment(tmp_path):
    path = tmp_path / "mediaproxy.toml"
    path.write_text('[s3]\nendpoint = "http://127.0.0.1:8333"\nbucket = "b"\ntimeout = 1.5\n'
                    'max_item_bytes = "2MiB"\n')
    config = load_config(path, environ={"MEDIAPROXY_S3__BUCKET": "c"}, plugins=[S3Plugin()],
                         load_entrypoints=False)
    settings = config.plugin_settings("s3")
    assert (settings.endpoint, settings.bucket, settings.timeout, settings.max_item_bytes) == (
        "http://127.0.0.1:8333", "c", 1.5, 2 * 1024 * 1024)
    off = load_config(environ={}, plugins=[S3Plugin()], load_entrypoints=False)
    assert off.plugin_settings("s3") == S3Settings()   # no endpoint: the layer is off


def test_the_installed_plugin_declares_its_section():
    config = load_config(environ={"MEDIAPROXY_S3__REGION": "eu-west-1"})
    assert config.plugin_settings("s3").region == "eu-west-1"
    with pytest.raises(KeyError):   # disabled: its section is not read
        load_config(environ={"MEDIAPROXY_PLUGINS__DISABLED": "s3"}).plugin_settings("s3")


@pytest.mark.parametrize("environ, message", [
    ({"MEDIAPROXY_S3__ENDPONT": "http://x"}, "MEDIAPROXY_S3__ENDPONT: s3.endpont: unknown key "
     "(did you mean MEDIAPROXY_S3__ENDPOINT?)"),
    ({"MEDIAPROXY_S3__ENDPOINT": "ftp://x"}, "MEDIAPROXY_S3__ENDPOINT: s3.endpoint: \"ftp://x\" is "
     "not an http:// or https:// URL"),
    ({"MEDIAPROXY_S3__TIMEOUT": "0"}, "MEDIAPROXY_S3__TIMEOUT: s3.timeout: 0.0 is not above 0"),
    ({"MEDIAPROXY_S3__PREFIX": "/abs/"}, "MEDIAPROXY_S3__PREFIX: s3.prefix: \"/abs/\" must be "
     "a relative key prefix such as mediaproxy/"),
])
def test_bad_settings_name_their_variable_and_key(environ, message):
    with pytest.raises(ConfigError) as raised:
        load_config(environ=environ, plugins=[S3Plugin()], load_entrypoints=False)
    assert str(raised.value) == message


def test_a_bad_setting_in_the_file_names_its_line(tmp_path):
    path = tmp_path / "mediaproxy.toml"
    path.write_text('[backend]\nurl = "http://127.0.0.1:8000"\n\n[s3]\nbucket = "b"\n'
                    'secret_key = "hunter2"\nmax_connections = 0\n')
    with pytest.raises(ConfigError) as raised:
        load_config(path, environ={}, plugins=[S3Plugin()], load_entrypoints=False)
    assert str(raised.value) == f"{path}:7: s3.max_connections: 0 is not above 0"


def test_an_endpoint_without_a_bucket_fails_at_start(live_reactor):
    with pytest.raises(ConfigError) as raised:
        start_proxy(files={PHOTO: JPEG}, plugins=[S3Plugin(settings_from(
            {"endpoint": "http://127.0.0.1:1"}))])
    assert raised.value.key == "s3.bucket"


def test_a_result_over_max_item_bytes_is_not_stored_and_replaces_the_older(seaweedfs,
                                                                           live_reactor):
    settings = s3_settings(seaweedfs)
    client = call_in_reactor(lambda: S3Client(
        settings.endpoint, settings.bucket, settings.region, settings.access_key,
        settings.secret_key, live_reactor))
    layer = S3Layer(client, ttl=100.0, prefix=settings.prefix, max_item_bytes=1000)
    fits = CacheEntry(b"x" * 1000, "image/png", created_at=time.time(), etag='"a"',
                      last_modified="")
    try:
        call_in_reactor(lambda: layer.set("public:src:v", fits))
        assert call_in_reactor(lambda: layer.get("public:src:v")) == fits
        bigger = attrs.evolve(fits, body=b"y" * 1001)
        call_in_reactor(lambda: layer.set("public:src:v", bigger))
        assert call_in_reactor(lambda: layer.get("public:src:v")) is None
        assert (layer.stores, layer.too_large) == (1, 1)
    finally:
        call_in_reactor(client.close)
