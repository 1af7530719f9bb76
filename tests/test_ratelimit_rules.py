"""The rate limiter's rules at their boundaries: token buckets on a task.Clock (burst N granted,
N+1 refused, refill, the cap, the wait), the exact 429 headers, the pressure factor, exempt
networks, the bounded tables, the exchange between nodes and the background service; then the
limits over real sockets (the cheap and the expensive token, X-Forwarded-For behind a trusted
proxy, exempt networks, a reload)."""

from __future__ import annotations

import json
import types

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from mediaproxy import hookimpl
from mediaproxy.builtin.ratelimit import (
    Buckets, Pressure, RateLimiter, RateLimitService, RedisBucketSync, psutil_sampler,
    rate_limiter,
)
from mediaproxy.config import load_config
from mediaproxy.models import ImageRequest, Rejection, RequestInfo

from mediaproxy.testing import ImageOrigin, make_image, start_proxy

WALL = 1_700_000_000.0


def limiter(clock=None, sampler=None, **ratelimit):
    config = load_config(environ={}, overrides={"ratelimit": {"exempt": [], **ratelimit}})
    runtime = types.SimpleNamespace(config=config, reactor=clock or Clock(), redis=None,
                                    pending_transforms=0)
    return RateLimiter(runtime, clock=runtime.reactor, wall=lambda: WALL, sampler=sampler)


def image(tenant="public"):
    return ImageRequest(route="query", source_path="/media/a.jpg", tenant=tenant)


def client(ip="203.0.113.7"):
    return RequestInfo(method="GET", path="/media/a.jpg", client_ip=ip, peer_ip=ip)


def granted(take, n, *args):
    """How many of ``n`` calls were granted, and the last refusal (or None)."""
    refusal, count = None, 0
    for _ in range(n):
        result = take(*args)
        if result is None:
            count += 1
        else:
            refusal = result
    return count, refusal


# -- one bucket ----------------------------------------------------------------------------------

@pytest.mark.parametrize("burst", [1, 2, 5])
def test_burst_n_is_granted_and_n_plus_one_refused(burst):
    b = Buckets("ip", rate=1.0, burst=burst)
    assert [b.take("k", 0.0) for _ in range(burst)] == [0.0] * burst
    assert b.take("k", 0.0) == 1.0
    assert b.remaining("k") == 0


def test_a_token_is_back_after_exactly_one_over_rate_seconds():
    clock = Clock()
    b = Buckets("ip", rate=4.0, burst=1)
    assert b.take("k", clock.seconds()) == 0.0
    assert b.take("k", clock.seconds()) == 0.25
    clock.advance(0.125)
    assert b.take("k", clock.seconds()) == 0.125     # half a token there: half the wait left
    clock.advance(0.125)
    assert b.take("k", clock.seconds()) == 0.0       # exactly one token: granted
    assert b.take("k", clock.seconds()) == 0.25


def test_a_refusal_spends_nothing_and_time_keeps_counting():
    clock = Clock()
    b = Buckets("ip", rate=1.0, burst=1)
    b.take("k", clock.seconds())
    for _ in range(5):
        clock.advance(0.1)
        b.take("k", clock.seconds())                 # refused, but the refill is kept
    clock.advance(0.5)
    assert b.take("k", clock.seconds()) == 0.0


def test_an_idle_bucket_refills_only_up_to_its_burst():
    clock = Clock()
    b = Buckets("ip", rate=10.0, burst=3)
    b.take("k", clock.seconds())
    clock.advance(3600)
    assert [b.take("k", clock.seconds()) for _ in range(4)] == [0.0, 0.0, 0.0, 0.1]
    assert b.remaining("k") == 0


def test_remaining_counts_whole_tokens_and_a_new_key_has_the_burst():
    b = Buckets("ip", rate=1.0, burst=5)
    assert b.remaining("nobody") == 5
    b.take("k", 0.0)
    b.take("k", 0.0)
    assert b.remaining("k") == 3
    b.take("k", 0.5)                                  # 3.5 tokens, one taken: 2.5
    assert b.remaining("k") == 2


def test_the_factor_scales_rate_and_burst_but_leaves_at_least_one_token():
    b = Buckets("ip", rate=2.0, burst=4)
    assert [b.take("k", 0.0, 0.5) for _ in range(3)] == [0.0, 0.0, 1.0]   # burst 2, rate 1
    one = Buckets("ip", rate=2.0, burst=1)
    assert [one.take("k", 0.0, 0.25) for _ in range(2)] == [0.0, 2.0]     # burst max(1, .25)


# -- the 429 -------------------------------------------------------------------------------------

@pytest.mark.parametrize("rate, burst, headers", [
    (1.0, 2, {"Retry-After": "1", "RateLimit-Limit": "2", "RateLimit-Remaining": "0",
              "RateLimit-Reset": "1", "RateLimit-Policy": "2;w=2"}),
    (0.5, 3, {"Retry-After": "2", "RateLimit-Limit": "3", "RateLimit-Remaining": "0",
              "RateLimit-Reset": "2", "RateLimit-Policy": "3;w=6"}),
    (0.3, 1, {"Retry-After": "4", "RateLimit-Limit": "1", "RateLimit-Remaining": "0",
              "RateLimit-Reset": "4", "RateLimit-Policy": "1;w=4"}),
    (10.0, 5, {"Retry-After": "1", "RateLimit-Limit": "5", "RateLimit-Remaining": "0",
               "RateLimit-Reset": "1", "RateLimit-Policy": "5;w=1"}),
    (0.001, 3, {"Retry-After": "1000", "RateLimit-Limit": "3", "RateLimit-Remaining": "0",
                "RateLimit-Reset": "1000", "RateLimit-Policy": "3;w=3000"}),
])
def test_the_refusal_and_its_headers(rate, burst, headers):
    rl = limiter(ip_rate=rate, ip_burst=burst)
    count, refusal = granted(rl.take_cheap, burst + 1, image(), client())
    assert count == burst
    assert (refusal.status, refusal.error, refusal.parameter) == (429, "rate_limited", None)
    assert refusal.message == "too many requests; retry after the time in Retry-After"
    reset = int(headers["Retry-After"])
    assert dict(refusal.headers) == {
        **headers, "X-RateLimit-Limit": str(burst), "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": str(int(WALL) + reset)}


def test_retry_after_shrinks_as_the_bucket_refills():
    rl = limiter(ip_rate=0.25, ip_burst=1)
    assert rl.take_cheap(image(), client()) is None
    waits = []
    for _ in range(4):
        waits.append(dict(rl.take_cheap(image(), client()).headers)["Retry-After"])
        rl.clock.advance(1)
    assert waits == ["4", "3", "2", "1"]
    assert rl.take_cheap(image(), client()) is None


def test_the_headers_show_the_budget_under_pressure():
    load = {"sample": (99.0, 0.0, 0.0)}
    rl = limiter(sampler=lambda: load["sample"], ip_rate=0.5, ip_burst=4, cpu_percent=50,
                 pressure_factor=0.5)
    rl.sample()
    count, refusal = granted(rl.take_cheap, 3, image(), client())
    assert count == 2                                  # 4 * 0.5 tokens, 0.5 * 0.5 a second
    headers = dict(refusal.headers)
    assert (headers["RateLimit-Limit"], headers["Retry-After"],
            headers["RateLimit-Policy"]) == ("2", "4", "2;w=8")


def test_a_limit_of_under_one_token_is_one():
    rl = limiter(sampler=lambda: (99.0, 99.0, 99.0), ip_rate=1.0, ip_burst=1,
                 cpu_percent=50, memory_percent=50, queue_percent=50, pressure_factor=0.5)
    rl.sample()
    assert rl.pressure.factor == 0.125
    count, refusal = granted(rl.take_cheap, 2, image(), client())
    headers = dict(refusal.headers)
    assert count == 1 and headers["RateLimit-Limit"] == "1"
    assert headers["Retry-After"] == "8"               # rate 1/8


# -- which buckets ---------------------------------------------------------------------------------

def test_the_ip_is_checked_before_the_tenant_and_a_refusal_stops_there():
    rl = limiter(ip_rate=0.001, ip_burst=1, tenant_rate=0.001, tenant_burst=3)
    assert rl.take_cheap(image("shop"), client("198.51.100.1")) is None
    assert rl.take_cheap(image("shop"), client("198.51.100.1")).status == 429   # ip refuses
    assert rl.tables["tenant"].remaining("shop") == 2        # the tenant spent one, not two
    assert rl.take_cheap(image("shop"), client("198.51.100.2")) is None
    assert rl.take_cheap(image("shop"), client("198.51.100.3")) is None
    refusal = rl.take_cheap(image("shop"), client("198.51.100.4"))
    assert dict(refusal.headers)["RateLimit-Limit"] == "3"   # the tenant's refusal


def test_a_tenant_limit_works_without_an_ip_limit():
    rl = limiter(ip_rate=0, ip_transform_rate=0, tenant_rate=0.001, tenant_burst=2)
    assert "ip" not in rl.tables
    results = [rl.take_cheap(image("shop"), client(f"198.51.100.{i}")) for i in range(3)]
    assert results[:2] == [None, None] and results[2].status == 429


def test_a_rate_of_zero_is_unlimited_not_a_division_by_zero():
    rl = limiter(ip_rate=0, ip_transform_rate=0, tenant_rate=0, tenant_burst=1,
                 tenant_transform_rate=0, tenant_transform_burst=1)
    assert rl.tables == {}
    for take in (rl.take_cheap, rl.take_expensive):
        assert granted(take, 5, image(), client()) == (5, None)


def test_the_expensive_token_has_its_own_buckets():
    rl = limiter(ip_rate=0.001, ip_burst=2, ip_transform_rate=0.001, ip_transform_burst=1,
                 tenant_transform_rate=0.001, tenant_transform_burst=2)
    assert rl.take_expensive(image("shop"), client()) is None
    refusal = rl.take_expensive(image("shop"), client())
    assert dict(refusal.headers)["RateLimit-Limit"] == "1"
    assert granted(rl.take_cheap, 2, image("shop"), client()) == (2, None)
    assert rl.take_expensive(image("shop"), client("198.51.100.9")) is None
    refusal = rl.take_expensive(image("shop"), client("198.51.100.10"))
    assert dict(refusal.headers)["RateLimit-Limit"] == "2"   # the tenant's transform budget


def test_the_passthrough_token_is_per_client():
    rl = limiter(passthrough_rate=0.001, passthrough_burst=2)
    assert granted(rl.take_passthrough, 3, client())[0] == 2
    assert rl.take_passthrough(client("198.51.100.1")) is None
    assert rl.take_cheap(image(), client()) is None          # image budgets untouched


def test_disabled_nothing_is_limited_nor_counted():
    rl = limiter(enabled=False, ip_rate=0.001, ip_burst=1, ip_transform_rate=0.001,
                 ip_transform_burst=1, passthrough_rate=0.001, passthrough_burst=1)
    assert granted(rl.take_cheap, 5, image(), client()) == (5, None)
    assert granted(rl.take_expensive, 5, image(), client()) == (5, None)
    assert granted(rl.take_passthrough, 5, client()) == (5, None)
    assert all(not table.state for table in rl.tables.values())


# -- exempt networks -----------------------------------------------------------------------------

@pytest.mark.parametrize("exempt, ip, free", [
    (["10.0.0.0/8"], "10.200.3.4", True),
    (["10.0.0.0/8"], "11.0.0.1", False),
    (["10.1.2.3/8"], "10.9.9.9", True),                   # host bits allowed in the config
    (["192.0.2.7"], "192.0.2.7", True),
    (["192.0.2.7"], "192.0.2.8", False),
    (["10.0.0.0/8"], "::ffff:10.1.1.1", True),            # IPv4-mapped IPv6 is the IPv4
    (["::1"], "::1", True),
    (["fe80::/10"], "fe80::1%eth0", True),                # a scope id is not part of it
    (["::/0"], "203.0.113.7", False),                     # an IPv6 network never holds IPv4
    (["0.0.0.0/0"], "2001:db8::1", False),
    (["10.0.0.0/8"], "10.0.0.1%eth0", True),               # a zone suffix is dropped first
    (["10.0.0.0/8"], "not-an-address", False),
    (["10.0.0.0/8"], "", False),
])
def test_exempt_networks(exempt, ip, free):
    rl = limiter(ip_rate=0.001, ip_burst=1, ip_transform_rate=0.001, ip_transform_burst=1,
                 passthrough_rate=0.001, passthrough_burst=1, exempt=exempt)
    first = granted(rl.take_cheap, 3, image(), client(ip))[0]
    again = granted(rl.take_cheap, 3, image(), client(ip))[0]     # answered from the cache
    assert (first, again) == ((3, 3) if free else (1, 0))
    assert granted(rl.take_expensive, 3, image(), client(ip))[0] == (3 if free else 1)
    assert granted(rl.take_passthrough, 3, client(ip))[0] == (3 if free else 1)


def test_the_exempt_cache_is_bounded():
    rl = limiter(ip_rate=1000.0, ip_burst=1000, exempt=["10.0.0.0/8"])
    ips = [f"172.{16 + i // 65536}.{i // 256 % 256}.{i % 256}" for i in range(10_002)]
    for ip in ips[:10_001]:
        rl._is_exempt(ip)
    assert len(rl._exempt_cache) == 10_001
    rl._is_exempt(ips[10_001])                            # one more: cleared first
    assert len(rl._exempt_cache) == 1
    assert rl._is_exempt("10.0.0.1") and not rl._is_exempt(ips[0])


def test_a_reload_changes_the_exempt_networks():
    rl = limiter(ip_rate=0.001, ip_burst=1, exempt=["10.0.0.0/8"])
    assert granted(rl.take_cheap, 2, image(), client("10.0.0.1"))[0] == 2
    rl.runtime.config = load_config(environ={}, overrides={"ratelimit": {
        "ip_rate": 0.001, "ip_burst": 1, "exempt": []}})
    rl.refresh()
    assert granted(rl.take_cheap, 2, image(), client("10.0.0.1"))[0] == 1


# -- reloads and pressure ------------------------------------------------------------------------

def test_a_reload_keeps_the_buckets_of_kinds_that_stay():
    rl = limiter(ip_rate=0.001, ip_burst=2, tenant_rate=0.001, tenant_burst=5)
    granted(rl.take_cheap, 2, image(), client())
    rl.runtime.config = load_config(environ={}, overrides={"ratelimit": {
        "ip_rate": 0.001, "ip_burst": 4, "tenant_rate": 0, "exempt": []}})
    rl.refresh()
    assert "tenant" not in rl.tables
    assert rl.tables["ip"].burst == 4
    # the same bucket, still empty: a larger burst refills with time, not at once
    assert rl.take_cheap(image(), client()).status == 429
    assert rl.tables["ip"].remaining(client().client_ip) == 0
    rl.clock.advance(4000)
    assert granted(rl.take_cheap, 5, image(), client())[0] == 4


def test_a_reload_applies_the_new_rate_to_the_same_buckets():
    rl = limiter(ip_rate=0.001, ip_burst=1)
    assert rl.take_cheap(image(), client()) is None
    assert rl.take_cheap(image(), client()).status == 429
    rl.runtime.config = load_config(environ={}, overrides={"ratelimit": {
        "ip_rate": 1.0, "ip_burst": 1, "exempt": []}})
    rl.refresh()
    rl.clock.advance(1)
    assert rl.take_cheap(image(), client()) is None


@pytest.mark.parametrize("sample, factor", [
    ((85.0, 90.0, 75.0), 1.0),          # at the thresholds: not above
    ((85.1, 90.0, 75.0), 0.5),
    ((85.0, 90.1, 75.0), 0.5),
    ((85.0, 90.0, 75.1), 0.5),
    ((86.0, 91.0, 75.0), 0.25),
    ((100.0, 100.0, 100.0), 0.125),
])
def test_each_threshold_crossed_halves_the_budgets(sample, factor):
    assert Pressure().update(*sample) == factor


def test_a_pressure_change_is_logged_once():
    events = []

    def observer(event):
        if event.get("log_namespace") == "mediaproxy.ratelimit" and "factor" in event:
            events.append(event["factor"])
    globalLogPublisher.addObserver(observer)
    try:
        p = Pressure(cpu_percent=50, factor_each=0.5)
        for cpu in (10, 60, 70, 80, 10, 20):
            p.update(cpu, 0, 0)
    finally:
        globalLogPublisher.removeObserver(observer)
    assert events == [0.5, 1.0]


def test_no_sampling_without_adaptive_and_a_reload_lifts_the_pressure():
    load = {"sample": (99.0, 99.0, 99.0)}
    rl = limiter(sampler=lambda: load["sample"], ip_rate=1.0, ip_burst=8)
    rl.sample()
    assert rl.pressure.factor == 0.125
    rl.runtime.config = load_config(environ={}, overrides={"ratelimit": {
        "ip_rate": 1.0, "ip_burst": 8, "adaptive": False, "exempt": []}})
    rl.refresh()
    assert rl.pressure.factor == 1.0
    rl.sample()
    assert rl.pressure.factor == 1.0
    assert granted(rl.take_cheap, 9, image(), client())[0] == 8


def test_a_failing_sampler_leaves_the_factor():
    calls = []

    def broken():
        calls.append(1)
        raise RuntimeError("no /proc")
    rl = limiter(sampler=broken)
    rl.sample()
    assert calls == [1] and rl.pressure.factor == 1.0
    failures = []

    def observer(event):
        if "log_failure" in event:
            failures.append(event)
    rl.sampler = None
    globalLogPublisher.addObserver(observer)
    try:
        rl.sample()                                       # no sampler: nothing happens
    finally:
        globalLogPublisher.removeObserver(observer)
    assert rl.pressure.factor == 1.0 and failures == []


def test_the_psutil_sampler_reports_the_queue_share():
    config = load_config(environ={}, overrides={"processing": {"queue_limit": 12}})
    runtime = types.SimpleNamespace(config=config, pending_transforms=3)
    cpu, memory, queue = psutil_sampler(runtime)()
    assert queue == 25.0
    assert 0.0 <= cpu <= 100.0 and 0.0 < memory <= 100.0
    runtime.pending_transforms = 12
    assert psutil_sampler(runtime)()[2] == 100.0


# -- bounded tables ------------------------------------------------------------------------------

def test_a_full_table_drops_its_oldest_half_and_one_more():
    b = Buckets("ip", rate=0.001, burst=5, max_keys=4)
    for i in range(4):
        b.take(f"k{i}", float(i))
    assert set(b.state) == {"k0", "k1", "k2", "k3"}
    b.take("k4", 4.0)                                    # full: k0, k1, k2 go (4 // 2 + 1)
    assert set(b.state) == {"k3", "k4"}
    b.take("k5", 5.0)
    b.take("k6", 6.0)
    assert set(b.state) == {"k3", "k4", "k5", "k6"}     # at max_keys, not over it
    assert b.sweep(7.0) == 3 and set(b.state) == {"k6"}


def test_refilled_buckets_without_unsent_counts_go_first():
    rl = limiter(ip_rate=1.0, ip_burst=2, max_keys=100)
    shared: dict = {}
    rl.sync_backend = Recording(shared)
    table = rl.tables["ip"]
    for i in range(100):
        rl.take_cheap(image(), client(f"198.51.100.{i}"))
    rl.sync()                                            # counts sent: nothing unsent
    rl.clock.advance(0.5)
    rl.take_cheap(image(), client("198.51.100.0"))      # unsent count again, and not full
    rl.clock.advance(0.5)                                # the others: full again
    assert table.sweep(rl.clock.seconds()) == 99
    assert set(table.state) == {"198.51.100.0"}


def synced(rl, clock_at: float, *ips):
    """Buckets for ``ips``, one token taken from each at ``clock_at``, their counts sent."""
    rl.clock.advance(clock_at - rl.clock.seconds())
    rl.sync_backend = Recording({})
    for ip in ips:
        assert rl.take_cheap(image(), client(ip)) is None
    rl.sync()
    return rl.tables["ip"]


def test_a_bucket_is_idle_once_refilled_exactly_to_its_burst():
    rl = limiter(ip_rate=2.0, ip_burst=2, max_keys=100)
    table = synced(rl, 10.0, "198.51.100.1")                  # 1 token left at t=10
    assert table.sweep(10.25) == 0                            # 1.5 tokens: still refilling
    assert table.sweep(10.5) == 1 and table.state == {}       # 2 tokens: as good as new


def test_under_pressure_a_bucket_refills_more_slowly_before_it_is_idle():
    rl = limiter(sampler=lambda: (99.0, 0.0, 0.0), ip_rate=1.0, ip_burst=1, max_keys=100,
                 cpu_percent=50, pressure_factor=0.5)
    rl.sample()                                               # factor 0.5: rate 0.5, burst 1
    table = synced(rl, 10.0, "198.51.100.1")                  # 0 tokens left at t=10
    assert table.sweep(11.0, 0.5) == 0                        # half a token
    assert table.sweep(12.0, 0.5) == 1                        # 1 token: the whole burst


def test_a_bucket_with_unsent_counts_is_kept_by_the_idle_sweep():
    b = Buckets("ip", rate=1.0, burst=1, max_keys=100)
    b.take("k", 0.0)
    assert b.sweep(3600.0) == 0 and set(b.state) == {"k"}


@pytest.mark.parametrize("keys, swept", [(50, False), (51, True)])
def test_the_periodic_sweep_runs_past_half_the_table(keys, swept):
    rl = limiter(ip_rate=1.0, ip_burst=1, max_keys=100)
    rl.sync_backend = Recording({})
    for i in range(keys):
        rl.take_cheap(image(), client(f"198.51.100.{i}"))
    rl.sync()
    rl.clock.advance(1)
    rl.sweep()
    assert len(rl.tables["ip"].state) == (0 if swept else keys)


# -- the exchange between nodes ------------------------------------------------------------------

class Recording:
    """A sync backend answering from a shared dict, like the Redis script would."""

    def __init__(self, shared, pending=False):
        self.shared = shared
        self.sent = []
        self.pending = pending
        self.waiting: list[Deferred] = []

    def exchange(self, spent):
        self.sent.append(dict(spent))
        for key, n in spent.items():
            self.shared[key] = self.shared.get(key, 0) + n
        totals = {key: self.shared[key] for key in spent}
        if self.pending:
            d = Deferred()
            self.waiting.append((d, totals))
            return d
        return succeed(totals)


def test_the_first_exchange_only_learns_the_total():
    shared = {"ip:203.0.113.7": 40}                     # other nodes spent 40 before
    rl = limiter(ip_rate=0.001, ip_burst=100)
    rl.sync_backend = Recording(shared)
    granted(rl.take_cheap, 10, image(), client())
    rl.sync()
    assert rl.sync_backend.sent == [{"ip:203.0.113.7": 10}]
    assert rl.tables["ip"].remaining("203.0.113.7") == 90
    shared["ip:203.0.113.7"] += 25                       # others spend 25 more
    rl.sync()                                            # nothing spent here: still asked
    assert rl.sync_backend.sent[-1] == {"ip:203.0.113.7": 0}
    assert rl.tables["ip"].remaining("203.0.113.7") == 65


def test_a_single_token_spent_elsewhere_is_taken_out():
    shared = {}
    rl = limiter(ip_rate=0.001, ip_burst=10)
    rl.sync_backend = Recording(shared)
    granted(rl.take_cheap, 2, image(), client())
    rl.sync()
    shared["ip:203.0.113.7"] += 1
    rl.sync()
    assert rl.tables["ip"].remaining("203.0.113.7") == 7


def test_what_others_spent_takes_a_bucket_into_a_bounded_debt():
    # A debt, not forgiven: under a sustained overload every node's (worker's) bucket is
    # empty when the others' spending arrives; clamped at zero, each would grant the rate.
    shared = {}
    rl = limiter(ip_rate=1.0, ip_burst=10)
    rl.sync_backend = Recording(shared)
    granted(rl.take_cheap, 2, image(), client())          # 8 left
    rl.sync()
    shared["ip:203.0.113.7"] += 17
    rl.sync()
    assert rl.tables["ip"].state["203.0.113.7"][0] == -9.0    # 8 - 17
    shared["ip:203.0.113.7"] += 500
    rl.sync()
    # one burst and DEBT_SECONDS of refill deep at most: -(10 + 1.0 x 60)
    assert rl.tables["ip"].state["203.0.113.7"][0] == -70.0
    assert rl.take_cheap(image(), client()).status == 429
    rl.clock.advance(70.0)                                     # back to 0: still nothing
    assert rl.take_cheap(image(), client()).status == 429
    rl.clock.advance(1.0)
    assert rl.take_cheap(image(), client()) is None


def test_an_untouched_bucket_is_not_sent():
    rl = limiter(ip_rate=0.001, ip_burst=10)
    rl.sync_backend = Recording({})
    assert rl.sync().result is None
    assert rl.sync_backend.sent == []


def test_one_exchange_at_a_time():
    rl = limiter(ip_rate=0.001, ip_burst=10)
    backend = rl.sync_backend = Recording({}, pending=True)
    granted(rl.take_cheap, 3, image(), client())
    first = rl.sync()
    granted(rl.take_cheap, 2, image(), client())
    rl.sync()                                            # while the first is out: skipped
    assert backend.sent == [{"ip:203.0.113.7": 3}]
    d, totals = backend.waiting.pop()
    d.callback(totals)
    assert first.called
    rl.sync()
    assert backend.sent[-1] == {"ip:203.0.113.7": 2}


def test_the_exchange_goes_out_in_batches(redis_server, live_reactor):
    from mediaproxy.config import RedisCacheConfig
    from mediaproxy.cache.redis import RedisClient
    from mediaproxy.testing import call_in_reactor

    def connect():
        c = RedisClient.from_config(RedisCacheConfig(url=redis_server.url), live_reactor)
        c.start()
        return c.when_up(5).addCallback(lambda up: (c, up))

    c, up = call_in_reactor(connect)
    try:
        assert up
        calls = []

        class Counting:                      # the real client, its EVALs counted
            def eval(self, script, keys, args):
                calls.append(len(keys))
                return c.eval(script, keys, args)
        assert RedisBucketSync(c, "mpb:", ttl=0.2).ttl_ms == 1000    # at least a second
        sync = RedisBucketSync(Counting(), "mpb:", ttl=60)
        spent = {f"ip:k{i}": i % 3 + 1 for i in range(501)}
        totals = call_in_reactor(sync.exchange, spent)
        assert calls == [500, 1]
        assert totals == spent
        assert int(redis_server.command("GET", "mpb:rl:{rl}:ip:k500")) == 500 % 3 + 1
        assert 0 < int(redis_server.command("PTTL", "mpb:rl:{rl}:ip:k0")) <= 60_000
    finally:
        call_in_reactor(c.stop)


# -- the background service ----------------------------------------------------------------------

def test_the_service_sweeps_every_minute_and_exchanges_at_its_interval():
    clock = Clock()
    rl = limiter(clock, sampler=lambda: (0.0, 0.0, 0.0), ip_rate=1.0, ip_burst=1,
                 max_keys=100, sample_interval=1.0, sync_interval=7.0)
    backend = rl.sync_backend = Recording({})
    service = RateLimitService(rl, rl.runtime)
    service.startService()
    try:
        for i in range(60):
            rl.take_cheap(image(), client(f"198.51.100.{i}"))
        clock.advance(7)
        assert len(backend.sent) == 1 and len(backend.sent[0]) == 60
        for _ in range(52):
            clock.advance(1)
        assert len(backend.sent) == 8 and len(rl.tables["ip"].state) == 60   # t = 59
        clock.advance(1)                                 # t = 60: the sweep
        assert len(rl.tables["ip"].state) == 0
    finally:
        service.stopService()
    assert clock.getDelayedCalls() == []


def test_the_service_exchanges_through_the_configured_redis(redis_server, live_reactor):
    from .redis_server import wait_for

    running = start_proxy(origin=ImageOrigin(origin_files()), overrides={
        "ratelimit": {"ip_rate": 0.001, "ip_burst": 10, "sync_interval": 0.05, "exempt": []},
        "cache": {"redis": {"url": redis_server.url, "key_prefix": "mpq:"}}})
    try:
        sync = rate_limiter(running.runtime).sync_backend
        assert (type(sync), sync.prefix, sync.ttl_ms) == (RedisBucketSync, "mpq:", 60_000)
        assert [running.get(f"/media/a.jpg?w={10 + i}")[0] for i in range(4)] == [200] * 4
        key = "mpq:rl:{rl}:ip:127.0.0.1"
        wait_for(lambda: redis_server.command("GET", key) == b"4", 10, what="the count in Redis")
        assert 0 < int(redis_server.command("PTTL", key)) <= 60_000
    finally:
        running.stop()


def service_runtime(clock, **ratelimit):
    """A runtime holding a real (never started) Redis client."""
    from mediaproxy.config import RedisCacheConfig
    from mediaproxy.cache.redis import RedisClient

    config = load_config(environ={}, overrides={"ratelimit": {"exempt": [], **ratelimit},
                                                "cache": {"redis": {"key_prefix": "mps:"}}})
    return types.SimpleNamespace(
        config=config, reactor=clock, pending_transforms=0,
        redis=RedisClient.from_config(RedisCacheConfig(url="redis://127.0.0.1:9"), clock))


@pytest.mark.parametrize("interval, given, expected", [
    (0.0, False, None),                  # no interval: no exchange, Redis or not
    (20.0, False, "redis"),              # the configured Redis, keys kept 4 intervals
    (20.0, True, "given"),               # a backend already there is kept
])
def test_the_service_wires_the_exchange(interval, given, expected):
    clock = Clock()
    runtime = service_runtime(clock, sync_interval=interval, ip_rate=0.001, ip_burst=5)
    rl = RateLimiter(runtime, clock=clock, wall=lambda: WALL, sampler=lambda: (0, 0, 0))
    backend = Recording({}) if given else None
    rl.sync_backend = backend
    service = RateLimitService(rl, runtime)
    service.startService()
    try:
        if expected is None:
            assert rl.sync_backend is None
        elif expected == "redis":
            assert type(rl.sync_backend) is RedisBucketSync
            assert (rl.sync_backend.prefix, rl.sync_backend.ttl_ms) == ("mps:", 80_000)
        else:
            assert rl.sync_backend is backend
            rl.take_cheap(image(), client())
            clock.advance(20)
            assert backend.sent == [{"ip:203.0.113.7": 1}]
    finally:
        service.stopService()
    assert clock.getDelayedCalls() == []


def test_the_service_samples_the_host_only_when_adaptive():
    clock = Clock()
    rl = limiter(clock)
    service = RateLimitService(rl, rl.runtime)
    service.startService()
    service.stopService()
    cpu, memory, queue = rl.sampler()                    # psutil's, made by the service
    assert queue == 0.0 and 0.0 < memory <= 100.0

    def mine():
        return (1.0, 2.0, 3.0)
    rl = limiter(clock, sampler=mine)
    service = RateLimitService(rl, rl.runtime)
    service.startService()
    service.stopService()
    assert rl.sampler is mine                            # a given sampler is kept
    rl = limiter(clock, adaptive=False)
    service = RateLimitService(rl, rl.runtime)
    service.startService()
    service.stopService()
    assert rl.sampler is None                            # not adaptive: nothing sampled


def test_without_an_interval_nothing_is_exchanged():
    clock = Clock()
    rl = limiter(clock, sampler=lambda: (0.0, 0.0, 0.0), sync_interval=0)
    backend = rl.sync_backend = Recording({})
    rl.take_cheap(image(), client())
    service = RateLimitService(rl, rl.runtime)
    service.startService()
    try:
        clock.advance(120)
        assert backend.sent == []
    finally:
        service.stopService()


# -- over real sockets ---------------------------------------------------------------------------

def origin_files():
    return {"/media/a.jpg": (200, make_image((100, 80)), "image/jpeg", [])}


def test_burst_then_429_with_exact_headers_over_http(live_reactor):
    running = start_proxy(origin=ImageOrigin(origin_files()), overrides={
        "ratelimit": {"ip_rate": 0.001, "ip_burst": 3, "exempt": []}})
    try:
        assert [running.get(f"/media/a.jpg?w={10 + i}")[0] for i in range(3)] == [200] * 3
        status, headers, body, _ = running.get("/media/a.jpg?w=10")    # even a cache hit
        assert status == 429
        assert json.loads(body)["error"] == "rate_limited"
        assert (headers["retry-after"], headers["ratelimit-limit"],
                headers["ratelimit-remaining"], headers["ratelimit-reset"],
                headers["ratelimit-policy"], headers["x-ratelimit-limit"],
                headers["x-ratelimit-remaining"]) == ("1000", "3", "0", "1000", "3;w=3000",
                                                      "3", "0")
        assert running.origin.hits["/media/a.jpg"] == 1
    finally:
        running.stop()


class Refuser:
    """A site's own check (a plugin): refuses every source under /media/private/."""

    @hookimpl
    def mediaproxy_check_request(self, image_request, request, runtime):
        if image_request.source_path.startswith("/media/private/"):
            return Rejection(403, "forbidden", "private", parameter=None)
        return None


def test_requests_other_checks_refuse_spend_no_token_over_http(live_reactor):
    # the cheap token is taken after every other check, a plugin's included
    running = start_proxy(origin=ImageOrigin(origin_files()), plugins=[Refuser()],
                          overrides={"ratelimit": {"ip_rate": 0.001, "ip_burst": 1,
                                                   "exempt": []}})
    try:
        assert [running.get("/media/private/a.jpg?w=20")[0] for _ in range(3)] == [403] * 3
        assert running.get("/media/a.jpg?w=20")[0] == 200
        assert running.get("/media/a.jpg?w=20")[0] == 429
    finally:
        running.stop()


def test_x_forwarded_for_names_the_client_behind_a_trusted_proxy(live_reactor):
    running = start_proxy(origin=ImageOrigin(origin_files()), overrides={
        "ratelimit": {"ip_rate": 0.001, "ip_burst": 1, "exempt": ["192.0.2.0/24"]},
        "server": {"trusted_proxies": ["127.0.0.1", "10.0.0.0/8"]}})

    def get(xff, w=20):
        return running.get(f"/media/a.jpg?w={w}", headers={"X-Forwarded-For": xff})[0]
    try:
        # the rightmost untrusted hop is the client: a forged left part changes nothing
        assert get("198.51.100.1") == 200
        assert get("6.6.6.6, 198.51.100.1") == 429
        assert get("198.51.100.1, 10.1.1.1") == 429           # 10/8 is a trusted hop
        assert get("198.51.100.2, 10.1.1.1") == 200
        # an exempt client behind the proxy is never limited
        assert [get("192.0.2.5") for _ in range(3)] == [200] * 3
        keys = set(rate_limiter(running.runtime).tables["ip"].state)
        assert keys == {"198.51.100.1", "198.51.100.2"}
    finally:
        running.stop()


def test_the_transform_budget_over_http(live_reactor):
    files = {f"/media/{n}.jpg": (200, make_image((100, 80)), "image/jpeg", [])
             for n in "abc"}
    running = start_proxy(origin=ImageOrigin(files), overrides={
        "ratelimit": {"ip_rate": 0.001, "ip_burst": 10, "ip_transform_rate": 0.001,
                      "ip_transform_burst": 2, "exempt": []}})
    try:
        assert [running.get(f"/media/{n}.jpg?w=20")[0] for n in "abc"] == [200, 200, 429]
        status, headers, body, _ = running.get("/media/c.jpg?w=20")
        assert (status, headers["ratelimit-limit"]) == (429, "2")   # the transform budget
        assert running.get("/media/a.jpg?w=20")[0] == 200           # a hit costs no transform
        assert running.origin.hits["/media/c.jpg"] == 0             # refused before the fetch
    finally:
        running.stop()


def test_a_reload_changes_the_limits_over_http(live_reactor, tmp_path):
    from mediaproxy.tap import reload_config
    from mediaproxy.testing import call_in_reactor

    running = start_proxy(origin=ImageOrigin(origin_files()), overrides={
        "ratelimit": {"ip_rate": 0.001, "ip_burst": 1, "exempt": []}})
    try:
        assert [running.get("/media/a.jpg?w=20")[0] for _ in range(2)] == [200, 429]
        path = tmp_path / "mediaproxy.toml"
        path.write_text(f'[backend]\nurl = "http://127.0.0.1:{running.origin.port}"'
                        '\n[ratelimit]\nexempt = ["127.0.0.0/8"]\n')
        call_in_reactor(reload_config, running.runtime, str(path))
        assert [running.get("/media/a.jpg?w=20")[0] for _ in range(3)] == [200] * 3
    finally:
        running.stop()
