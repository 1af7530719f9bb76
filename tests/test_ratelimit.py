"""Rate limits: token buckets, headers, adaptive budgets and the background service on a
task.Clock; the exchange between two nodes through a real redis-server; and the limits over
real sockets (client IP from X-Forwarded-For only behind a trusted proxy)."""

from __future__ import annotations

import json
import types
import urllib.request

import pytest
from twisted.internet.task import Clock

from mediaproxy.builtin.ratelimit import (
    Buckets, RateLimiter, RateLimitService, RedisBucketSync, rate_limiter,
)
from mediaproxy.config import load_config
from mediaproxy.models import ImageRequest, RequestInfo
from mediaproxy.testing import ImageOrigin, call_in_reactor, make_image, start_proxy


def limiter(clock=None, sampler=None, **ratelimit):
    config = load_config(environ={}, overrides={"ratelimit": ratelimit})
    runtime = types.SimpleNamespace(config=config, reactor=clock or Clock(), redis=None,
                                    pending_transforms=0)
    return RateLimiter(runtime, clock=runtime.reactor, wall=lambda: 1_700_000_000.0,
                       sampler=sampler)


def image(tenant="public"):
    return ImageRequest(route="query", source_path="/media/a.jpg", tenant=tenant)


def client(ip="203.0.113.7"):
    return RequestInfo(method="GET", path="/media/a.jpg", client_ip=ip, peer_ip=ip)


def test_a_bucket_grants_its_burst_then_refills_at_its_rate():
    clock = Clock()
    b = Buckets("ip", rate=2.0, burst=3)
    assert [b.take("k", clock.seconds()) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert b.take("k", clock.seconds()) == pytest.approx(0.5)
    clock.advance(0.5)
    assert b.take("k", clock.seconds()) == 0.0
    assert b.take("k", clock.seconds()) == pytest.approx(0.5)
    clock.advance(100)
    assert [b.take("k", clock.seconds()) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert b.take("other", clock.seconds()) == 0.0


def test_the_cheap_token_refuses_with_every_header():
    rl = limiter(ip_rate=1.0, ip_burst=2)
    assert rl.take_cheap(image(), client()) is None
    assert rl.take_cheap(image(), client()) is None
    refused = rl.take_cheap(image(), client())
    assert (refused.status, refused.error) == (429, "rate_limited")
    headers = dict(refused.headers)
    assert headers == {"Retry-After": "1", "RateLimit-Limit": "2", "RateLimit-Remaining": "0",
                       "RateLimit-Reset": "1", "RateLimit-Policy": "2;w=2",
                       "X-RateLimit-Limit": "2", "X-RateLimit-Remaining": "0",
                       "X-RateLimit-Reset": "1700000001"}
    assert rl.take_cheap(image(), client("203.0.113.8")) is None   # another client
    rl.clock.advance(1)
    assert rl.take_cheap(image(), client()) is None


def test_the_tenant_bucket_is_shared_by_its_clients():
    rl = limiter(ip_rate=100.0, tenant_rate=1.0, tenant_burst=3)
    results = [rl.take_cheap(image("shop_a"), client(f"198.51.100.{i}")) for i in range(4)]
    assert results[:3] == [None] * 3 and results[3].status == 429
    assert rl.take_cheap(image("shop_b"), client("198.51.100.9")) is None


def test_the_expensive_token_is_a_separate_budget():
    rl = limiter(ip_rate=100.0, ip_transform_rate=0.5, ip_transform_burst=2)
    assert rl.take_expensive(image(), client()) is None
    assert rl.take_expensive(image(), client()) is None
    refused = rl.take_expensive(image(), client())
    assert refused.status == 429 and dict(refused.headers)["Retry-After"] == "2"
    assert rl.take_cheap(image(), client()) is None       # hits still go on


def test_disabled_and_exempt_clients_are_never_limited():
    rl = limiter(ip_rate=0.01, ip_burst=1, exempt=["10.0.0.0/8", "::1"])
    for ip in ("10.1.2.3", "::1", "::ffff:10.9.9.9"):
        assert all(rl.take_cheap(image(), client(ip)) is None for _ in range(20))
    assert rl.take_cheap(image(), client()) is None
    assert rl.take_cheap(image(), client()) is not None
    off = limiter(enabled=False, ip_rate=0.01, ip_burst=1)
    assert all(off.take_cheap(image(), client()) is None for _ in range(20))


def test_budgets_shrink_under_pressure_and_recover():
    load = {"sample": (10.0, 20.0, 0.0)}
    rl = limiter(sampler=lambda: load["sample"], ip_rate=10.0, ip_burst=8, cpu_percent=80,
                 memory_percent=90, queue_percent=50, pressure_factor=0.5)
    rl.sample()
    assert rl.pressure.factor == 1.0
    load["sample"] = (95.0, 20.0, 0.0)
    rl.sample()
    assert rl.pressure.factor == 0.5
    granted = sum(rl.take_cheap(image(), client("192.0.2.1")) is None for _ in range(20))
    assert granted == 4                                  # half the burst
    load["sample"] = (95.0, 95.0, 80.0)
    rl.sample()
    assert rl.pressure.factor == 0.125
    load["sample"] = (5.0, 5.0, 0.0)
    rl.sample()
    assert rl.pressure.factor == 1.0


def test_the_service_samples_in_the_background():
    clock = Clock()
    load = {"sample": (99.0, 0.0, 0.0)}
    rl = limiter(clock, sampler=lambda: load["sample"], sample_interval=1.0, sync_interval=0)
    service = RateLimitService(rl, rl.runtime)
    service.startService()
    try:
        assert rl.pressure.factor == 1.0
        clock.advance(1.0)
        assert rl.pressure.factor == 0.5
        load["sample"] = (1.0, 0.0, 0.0)
        clock.advance(1.0)
        assert rl.pressure.factor == 1.0
    finally:
        service.stopService()
    assert clock.getDelayedCalls() == []


def test_the_bucket_table_is_bounded():
    clock = Clock()
    b = Buckets("ip", rate=1.0, burst=5, max_keys=100)
    for i in range(1000):
        b.take(f"10.0.{i // 256}.{i % 256}", clock.seconds())
        clock.advance(0.01)
    assert len(b.state) <= 100


def test_the_passthrough_token_is_off_by_default_and_answers_the_passthrough_check():
    rl = limiter()
    assert rl.mediaproxy_check_passthrough(request=client(), runtime=rl.runtime) is None
    rl.runtime.config = load_config(environ={}, overrides={"ratelimit": {
        "passthrough_rate": 1.0, "passthrough_burst": 1}})
    rl.refresh()
    assert rl.mediaproxy_check_passthrough(request=client(), runtime=rl.runtime) is None
    assert rl.mediaproxy_check_passthrough(request=client(), runtime=rl.runtime).status == 429


# -- across nodes, through a real redis-server ------------------------------------------------

class Recording:
    """A sync backend that records what it was sent and answers from a shared dict."""

    def __init__(self, shared):
        self.shared = shared

    def exchange(self, spent):
        from twisted.internet.defer import succeed
        for key, n in spent.items():
            self.shared[key] = self.shared.get(key, 0) + n
        return succeed({key: self.shared[key] for key in spent})


def test_nodes_learn_what_the_others_spent():
    shared = {}
    a, b = limiter(ip_rate=0.001, ip_burst=100), limiter(ip_rate=0.001, ip_burst=100)
    a.sync_backend, b.sync_backend = Recording(shared), Recording(shared)
    for _ in range(10):
        a.take_cheap(image(), client())
    a.sync(), b.sync()               # b has no bucket for the client yet: nothing to send
    for _ in range(5):
        b.take_cheap(image(), client())
    b.sync()
    for _ in range(30):
        a.take_cheap(image(), client())
    a.sync()                         # a learns b's 5
    b.sync()                         # b learns a's 30 (spent since b's first exchange)
    assert a.tables["ip"].remaining(client().client_ip) == 100 - 10 - 30 - 5
    assert b.tables["ip"].remaining(client().client_ip) == 100 - 5 - 30


def test_exchange_through_a_real_redis(redis_server, live_reactor):
    from mediaproxy.config import RedisCacheConfig
    from mediaproxy.cache.redis import RedisClient

    def connect():
        c = RedisClient.from_config(RedisCacheConfig(url=redis_server.url), live_reactor)
        c.start()
        return c.when_up(5).addCallback(lambda up: (c, up))

    clients = []
    try:
        nodes = []
        for _ in range(2):
            c, up = call_in_reactor(connect)
            clients.append(c)
            assert up
            rl = limiter(ip_rate=0.001, ip_burst=50)
            rl.sync_backend = RedisBucketSync(c, "mptest:", ttl=60)
            nodes.append(rl)
        a, b = nodes
        for _ in range(20):
            a.take_cheap(image(), client())
        for _ in range(5):
            b.take_cheap(image(), client())
        call_in_reactor(a.sync)
        call_in_reactor(b.sync)
        for _ in range(10):
            a.take_cheap(image(), client())
        call_in_reactor(a.sync)
        call_in_reactor(b.sync)
        assert a.tables["ip"].remaining(client().client_ip) == 50 - 30 - 5
        assert b.tables["ip"].remaining(client().client_ip) == 50 - 5 - 10
        key = "mptest:rl:{rl}:ip:" + client().client_ip
        assert int(redis_server.command("GET", key)) == 35
        assert 0 < int(redis_server.command("PTTL", key)) <= 60_000
    finally:
        for c in clients:
            call_in_reactor(c.stop)


def test_a_failed_exchange_keeps_the_counts_for_the_next():
    from twisted.internet.defer import fail

    class Down:
        def exchange(self, spent):
            return fail(ConnectionError("redis is down"))

    rl = limiter(ip_rate=0.001, ip_burst=10)
    rl.sync_backend = Down()
    for _ in range(3):
        rl.take_cheap(image(), client())
    rl.sync()
    shared = {}
    rl.sync_backend = Recording(shared)
    rl.sync()
    assert shared == {"ip:" + client().client_ip: 3}


# -- over real sockets -------------------------------------------------------------------------

def files():
    return {"/media/a.jpg": (200, make_image((100, 80)), "image/jpeg", [])}


@pytest.fixture
def limited(live_reactor):
    running = start_proxy(origin=ImageOrigin(files()), overrides={
        "ratelimit": {"ip_rate": 0.001, "ip_burst": 3, "exempt": []},
        "server": {"trusted_proxies": ["127.0.0.1"]},
        "monitoring": {"listen": "tcp:0:interface=127.0.0.1"}})
    yield running
    running.stop()


def test_image_requests_get_429_with_headers_over_sockets(limited):
    statuses = [limited.get(f"/media/a.jpg?w={10 + i}", headers={
        "X-Forwarded-For": "198.51.100.1"})[0] for i in range(3)]
    assert statuses == [200, 200, 200]
    status, headers, body, _ = limited.get("/media/a.jpg?w=50",
                                           headers={"X-Forwarded-For": "198.51.100.1"})
    assert status == 429 and json.loads(body)["error"] == "rate_limited"
    for name in ("retry-after", "ratelimit-limit", "ratelimit-remaining", "ratelimit-reset",
                 "x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"):
        assert name in headers, name
    assert headers["ratelimit-limit"] == "3" and headers["ratelimit-remaining"] == "0"
    # Another client behind the trusted proxy has its own bucket.
    assert limited.get("/media/a.jpg?w=50", headers={"X-Forwarded-For": "198.51.100.2"})[0] \
        == 200
    # Pass-through is not limited by default.
    assert {limited.get("/other", headers={"X-Forwarded-For": "198.51.100.1"})[0]
            for _ in range(10)} == {404}
    # Nor is the monitoring listener.
    svc = next(s for s in limited.services if getattr(s, "what", "").startswith("monitoring"))
    for _ in range(10):
        url = f"http://127.0.0.1:{svc.port.getHost().port}/health"
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200


def test_x_forwarded_for_is_ignored_from_an_untrusted_peer(live_reactor):
    running = start_proxy(origin=ImageOrigin(files()), overrides={
        "ratelimit": {"ip_rate": 0.001, "ip_burst": 2, "exempt": []}})
    try:
        statuses = [running.get(f"/media/a.jpg?w={10 + i}", headers={
            "X-Forwarded-For": f"198.51.100.{i}"})[0] for i in range(4)]
        assert statuses == [200, 200, 429, 429]   # one peer, one bucket, whatever it claims
        assert rate_limiter(running.runtime).tables["ip"].state.keys() == {"127.0.0.1"}
    finally:
        running.stop()


def test_passthrough_rate_when_configured(live_reactor):
    running = start_proxy(origin=ImageOrigin(files()), overrides={
        "ratelimit": {"passthrough_rate": 0.001, "passthrough_burst": 2, "exempt": []}})
    try:
        statuses = [running.get("/other")[0] for _ in range(4)]
        assert statuses == [404, 404, 429, 429]
        assert running.origin.hits["/other"] == 2
    finally:
        running.stop()


def test_loopback_peers_are_exempt_by_default(live_reactor):
    # A reverse proxy on the same host, not listed as trusted, must not make the whole shop one
    # throttled client: loopback is in ratelimit.exempt unless the operator clears it.
    running = start_proxy(origin=ImageOrigin(files()), overrides={
        "ratelimit": {"ip_rate": 0.001, "ip_burst": 1, "ip_transform_rate": 0.001,
                      "ip_transform_burst": 1}})
    try:
        assert {running.get(f"/media/a.jpg?w={10 + i}")[0] for i in range(5)} == {200}
    finally:
        running.stop()


def test_the_expensive_token_is_spent_only_by_transforms(live_reactor):
    running = start_proxy(origin=ImageOrigin(files()), overrides={
        "ratelimit": {"ip_transform_rate": 0.001, "ip_transform_burst": 2, "exempt": []}})
    try:
        assert [running.get(f"/media/a.jpg?w={10 + i}")[0] for i in range(3)] == [200, 200, 429]
        # cache hits never spend a transform token
        assert {running.get("/media/a.jpg?w=10")[0] for _ in range(5)} == {200}
    finally:
        running.stop()
