"""The parts several workers rely on, in process: the supervisor's rate-limit ledger and the
exchange of two workers' buckets through it (task.Clock), the private channel between a worker
and its supervisor (a real socket pair, the real reactor), and the recycling rule."""

from __future__ import annotations

import socket
import types

import pytest
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from mediaproxy.builtin.ratelimit import RateLimiter
from mediaproxy.config import load_config
from mediaproxy.inflight import InFlight
from mediaproxy.models import ImageRequest, RequestInfo
from mediaproxy.recycling import Recycler, over_limit
from mediaproxy.testing import call_in_reactor, wait_for
from mediaproxy.workercontrol import HOST_SYNC_INTERVAL, Ledger, SupervisorEnd, WorkerEnd, adopt


# -- the ledger ---------------------------------------------------------------------------------

def test_the_ledger_adds_what_each_worker_spent_and_answers_the_totals():
    clock = Clock()
    ledger = Ledger(clock.seconds)
    assert ledger.exchange({"ip:a": 3}).result == {"ip:a": 3}
    assert ledger.add({"ip:a": 2, "ip:b": 1}) == {"ip:a": 5, "ip:b": 1}


def test_a_counter_is_forgotten_only_after_its_ttl():
    clock = Clock()
    ledger = Ledger(clock.seconds, ttl=60.0)
    ledger.add({"k": 4})
    clock.advance(60.0)
    assert ledger.add({"k": 1}) == {"k": 5}        # exactly the TTL: still there
    clock.advance(60.5)
    assert ledger.add({"k": 1}) == {"k": 1}        # past it: started over


def test_the_ledger_keeps_at_most_max_keys():
    clock = Clock()
    ledger = Ledger(clock.seconds, ttl=60.0, max_keys=4)
    for i in range(4):
        ledger.add({f"k{i}": 1})
        clock.advance(1)
    assert len(ledger.totals) == 4                 # at the limit: kept
    ledger.add({"k4": 1})                          # past it: the older half goes
    assert sorted(ledger.totals) == ["k2", "k3", "k4"]


# -- two workers' buckets through one ledger -----------------------------------------------------

def worker_limiter(clock, backend, rate, burst):
    config = load_config(environ={}, overrides={"ratelimit": {
        "ip_rate": rate, "ip_burst": burst, "exempt": [], "adaptive": False}})
    runtime = types.SimpleNamespace(config=config, reactor=clock, redis=None,
                                    pending_transforms=0)
    rl = RateLimiter(runtime, clock=clock, wall=lambda: 1_700_000_000.0)
    rl.sync_backend = backend
    return rl


def granted_under_overload(exchange: bool, rate=4.0, burst=1, seconds=20.0) -> int:
    """Two workers, one client sending each of them 10 requests a second (five times the
    rate in all), the workers exchanging every HOST_SYNC_INTERVAL when ``exchange``."""
    clock = Clock()
    ledger = Ledger(clock.seconds)
    workers = [worker_limiter(clock, ledger if exchange else None, rate, burst)
               for _ in range(2)]
    image = ImageRequest(route="query", source_path="/media/a.jpg", tenant="public")
    request = RequestInfo(method="GET", path="/media/a.jpg", client_ip="198.51.100.7",
                          peer_ip="198.51.100.7")
    granted, step, next_sync = 0, 0.1, HOST_SYNC_INTERVAL
    for tick in range(int(seconds / step)):
        for rl in workers:
            granted += rl.take_cheap(image, request) is None
        clock.advance(step)
        if exchange and clock.seconds() >= next_sync - 1e-9:
            for rl in workers:
                rl.sync()
            next_sync += HOST_SYNC_INTERVAL
    return granted


def test_with_the_exchange_two_workers_grant_the_rate_within_the_documented_bound():
    # burst >= rate x the exchange interval, as docs/performance.md "Every core" asks
    rate, burst, seconds = 4.0, 2, 20.0
    # the bound of docs/performance.md "Every core": N workers may grant
    # (N - 1) x (burst + 2 x rate x the exchange interval) above rate x T + burst
    bound = rate * seconds + burst + (2 - 1) * (burst + 2 * rate * HOST_SYNC_INTERVAL)
    with_exchange = granted_under_overload(True, rate, burst, seconds)
    assert rate * seconds + burst <= with_exchange <= bound
    # each worker alone grants the whole rate: twice it in all, far past the bound
    alone = granted_under_overload(False, rate, burst, seconds)
    assert alone == 2 * (burst + int(rate * (seconds - 0.1)))


# -- the channel -----------------------------------------------------------------------------------

def test_a_worker_exchanges_and_says_it_is_recycled_over_its_channel(live_reactor):
    clock = Clock()
    ledger = Ledger(clock.seconds)
    ledger.add({"ip:x": 7})                       # what another worker spent
    recycled = []
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    worker = WorkerEnd(live_reactor)

    def connect():
        adopt(live_reactor, ours, SupervisorEnd(ledger, recycled.append))
        adopt(live_reactor, theirs, worker)
    call_in_reactor(connect)
    assert call_in_reactor(worker.exchange, {"ip:x": 2, "ip:y": 1}) == {"ip:x": 9, "ip:y": 1}
    call_in_reactor(worker.recycle, "rss")
    wait_for(lambda: recycled == ["rss"], 10, what="the recycle message")
    call_in_reactor(worker.transport.loseConnection)
    wait_for(lambda: not worker.connected, 10, what="the channel closed")
    with pytest.raises(ConnectionError):
        call_in_reactor(worker.exchange, {"ip:x": 1})


# -- recycling -----------------------------------------------------------------------------------

def server(**values):
    return load_config(environ={}, overrides={"server": values}).server


@pytest.mark.parametrize("values, started, rss, expected", [
    ({}, 10**9, 10**12, None),                                        # both off
    ({"max_worker_requests": 100}, 99, 0, None),
    ({"max_worker_requests": 100}, 100, 0, "requests"),               # reached
    ({"max_worker_rss": 1000}, 0, 1000, None),                        # at the limit: fine
    ({"max_worker_rss": 1000}, 0, 1001, "rss"),                       # past it
    ({"max_worker_requests": 5, "max_worker_rss": 1000}, 5, 2000, "requests"),
])
def test_which_limit_a_worker_is_over(values, started, rss, expected):
    assert over_limit(server(**values), started, lambda: rss) == expected


def test_the_rss_is_not_read_when_its_limit_is_off():
    def unread():
        raise AssertionError("read")
    assert over_limit(server(max_worker_requests=5), 1, unread) is None


def recycler(recycle, **values):
    clock = Clock()
    runtime = types.SimpleNamespace(config=load_config(environ={}, overrides={
        "server": values}), reactor=clock, inflight=InFlight())
    return Recycler(runtime, recycle, rss=lambda: 0), runtime, clock


def test_a_worker_is_recycled_once_at_the_first_check_past_its_limit():
    calls = []
    r, runtime, clock = recycler(calls.append, max_worker_requests=3)
    for _ in range(3):
        runtime.inflight.start("image")
    with capturedLogs() as events:
        r.startService()
        assert calls == []                            # not looked at when it starts
        clock.advance(0.999)
        assert calls == []                            # nor before a second
        clock.advance(0.001)
        assert calls == ["requests"] and not r.loop.running
        clock.advance(10.0)
    assert calls == ["requests"]
    assert [(e["reason"], e["limit"]) for e in events if "reason" in e] == [("requests", 3)]
    r.stopService()


def test_an_rss_recycle_names_the_rss_limit():
    calls = []
    r, runtime, clock = recycler(calls.append, max_worker_rss=1000)
    r.rss = lambda: 1001
    with capturedLogs() as events:
        r.check()                                     # also without the loop started
    assert calls == ["rss"]
    assert [(e["reason"], e["limit"]) for e in events if "reason" in e] == [("rss", 1000)]


def test_worker_0_is_never_recycled_and_says_so_once():
    r, runtime, clock = recycler(None, max_worker_requests=1)
    r.startService()
    runtime.inflight.start("image")
    with capturedLogs() as events:
        clock.advance(1.0)
        clock.advance(5.0)
    assert r.reason == "requests" and not r.loop.running
    assert [e["log_level"].name for e in events if "reason" in e] == ["warn"]
    r.stopService()


def test_a_stopped_recycler_looks_no_more():
    calls = []
    r, runtime, clock = recycler(calls.append, max_worker_requests=1)
    r.startService()
    r.stopService()
    assert not r.loop.running
    runtime.inflight.start("image")
    clock.advance(5.0)
    assert calls == []


# -- a closing shared port ----------------------------------------------------------------------

def test_a_closing_shared_port_serves_the_connections_waiting_in_its_accept_queue(
        live_reactor):
    """What a recycled worker does with the connections the kernel already queued for it:
    accepted and served, not reset with the socket (a real SO_REUSEPORT socket on loopback;
    the reactor is kept from accepting them by pausing the port's reads, as a busy worker's
    would be late)."""
    from twisted.web.server import Site
    from twisted.web.static import Data

    from mediaproxy.workers import SharedPortService

    from .redis_server import free_port

    port = free_port()
    page = Data(b"served", "text/plain")
    page.isLeaf = True
    svc = SharedPortService(live_reactor, f"tcp:{port}:interface=127.0.0.1", Site(page))

    def listen_without_accepting():
        svc.bind()
        svc.port.stopReading()
    call_in_reactor(listen_without_accepting)
    clients = []
    for _ in range(3):
        c = socket.create_connection(("127.0.0.1", port), timeout=10)
        c.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        clients.append(c)
    call_in_reactor(svc.stopService)
    answers = []
    for c in clients:
        with c:
            data = b""
            while chunk := c.recv(65536):
                data += chunk
            answers.append((data.split(b"\r\n", 1)[0], data.rsplit(b"\r\n\r\n", 1)[-1]))
    assert answers == [(b"HTTP/1.0 200 OK", b"served")] * 3


def test_an_idle_bucket_learns_what_the_others_spent_every_idle_every_exchange():
    """The host exchange runs every 0.5 s: a bucket that spent nothing since the last one
    goes out only every idle_every-th exchange (sending every known bucket each time costs
    the reactor time in proportion to every client ever seen), and learns all at once."""
    clock = Clock()
    ledger = Ledger(clock.seconds)
    a, b = (worker_limiter(clock, ledger, 0.001, 100) for _ in range(2))
    a.idle_every = 3
    image = ImageRequest(route="query", source_path="/media/a.jpg", tenant="public")
    request = RequestInfo(method="GET", path="/media/a.jpg", client_ip="198.51.100.7",
                          peer_ip="198.51.100.7")
    a.take_cheap(image, request)
    b.take_cheap(image, request)
    a.sync()                      # exchange 0: a's 1 sent, its first total seen
    b.sync()
    for _ in range(10):
        b.take_cheap(image, request)
    b.sync()                      # b's 10 more in the ledger
    a.sync()                      # exchange 1: a spent nothing, not sent
    a.sync()                      # exchange 2: still not
    assert a.tables["ip"].remaining("198.51.100.7") == 99
    a.sync()                      # exchange 3: idle ones go too, a learns b's 1 + 10
    assert a.tables["ip"].remaining("198.51.100.7") == 100 - 1 - 11
