"""Circuit breakers and retries: the state machine and the source fetcher on a task.Clock, then
the pass-through and image breakers and the retries over real sockets."""

from __future__ import annotations

import json
import random
import socket

import pytest
from twisted.internet import error as ierror
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource

from mediaproxy.http.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker, RetryPolicy
from mediaproxy.config import BackendConfig, BreakerConfig
from mediaproxy.http.fetch import SourceFetcher
from mediaproxy.logs import RequestLogger
from mediaproxy.models import SourceError

from mediaproxy.testing import (assert_image, call_in_reactor, make_image, start_origin,
                                start_proxy)


# -- the state machine on a task.Clock -----------------------------------------------------------

def breaker(clock, **kw):
    changes = []
    b = CircuitBreaker(clock, "test", on_change=lambda *c: changes.append(c[1:]), **{
        "failure_ratio": 0.5, "min_calls": 4, "window": 10, "open_for": 5, "probes": 2,
        "consecutive_failures": 0, **kw})
    return b, changes


def test_opens_on_the_failure_ratio_once_the_window_holds_enough_calls():
    clock = Clock()
    b, changes = breaker(clock)
    for _ in range(3):
        assert b.allow()
        b.failure()
    assert b.state == CLOSED        # 3 calls < min_calls
    b.success()
    assert b.state == CLOSED        # 3 of 4 failed, but a success is never judged
    b.failure()
    assert b.state == OPEN          # 4 of 5 failed >= 50 %
    assert changes == [(CLOSED, OPEN)]
    assert not b.allow() and b.retry_after() == 5


def test_successes_keep_it_closed_and_old_failures_leave_the_window():
    clock = Clock()
    b, _ = breaker(clock)
    for _ in range(3):
        b.failure()
    clock.advance(11)               # those failures are out of the 10 s window
    for _ in range(3):
        b.success()
    b.failure()
    assert b.state == CLOSED        # 1 of 4 in the window
    clock.advance(11)               # and now those successes are gone too
    b.success()
    b.success()
    b.failure()
    assert b.state == CLOSED        # 3 calls < min_calls
    b.failure()
    assert b.state == OPEN          # 2 of 4: 50 %


def test_half_open_probes_close_it_or_open_it_again():
    clock = Clock()
    b, changes = breaker(clock)
    for _ in range(4):
        b.failure()
    assert b.state == OPEN
    clock.advance(4.9)
    assert not b.allow()
    clock.advance(0.2)
    assert b.allow() and b.state == HALF_OPEN
    assert b.allow()
    assert not b.allow()            # two probes at a time
    b.failure()                     # one failed probe: open again, for another open_for
    assert b.state == OPEN and not b.allow()
    clock.advance(5)
    assert b.allow() and b.allow()
    b.success()
    assert b.state == HALF_OPEN
    b.success()
    assert b.state == CLOSED and b.allow()
    assert changes == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, OPEN), (OPEN, HALF_OPEN),
                       (HALF_OPEN, CLOSED)]


def test_a_released_probe_frees_its_slot():
    clock = Clock()
    b, _ = breaker(clock, probes=1)
    for _ in range(4):
        b.failure()
    clock.advance(5)
    assert b.allow() and not b.allow()
    b.release()
    assert b.allow()


def test_a_reset_closes_it_and_forgets_the_failures_in_a_row():
    clock = Clock()
    b, changes = breaker(clock, consecutive_failures=3)
    b.failure()
    b.failure()                     # two in a row: one more would open it
    b.reset()
    assert b.state == CLOSED and b.allow()
    b.failure()
    b.failure()
    assert b.state == CLOSED        # the streak started again from zero
    b.failure()
    assert b.state == OPEN
    b.reset()                       # an operator's reset of an open breaker
    assert b.state == CLOSED and b.allow()
    assert changes == [(CLOSED, OPEN), (OPEN, CLOSED)]
    b.failure()
    b.failure()
    assert b.state == CLOSED


def test_disabled_breaker_always_allows():
    b, _ = breaker(Clock(), enabled=False)
    for _ in range(50):
        b.failure()
    assert b.allow() and b.state == CLOSED


def test_backoff_has_full_jitter_and_a_cap():
    policy = RetryPolicy(5, 0.1, 1.0, random.Random(3))
    delays = [policy.delay(n) for n in range(8) for _ in range(50)]
    assert all(0 <= d <= 1.0 for d in delays)
    assert max(policy.delay(0) for _ in range(200)) <= 0.1
    assert len({round(d, 6) for d in delays}) > 300


# -- the source fetcher on a task.Clock ---------------------------------------------------------

class _Transport:
    def stopProducing(self):
        pass

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass


class FakeResponse:
    def __init__(self, code: int, body: bytes = b""):
        self.code = code
        self.length = len(body)
        self.headers = Headers({b"content-type": [b"image/jpeg"]})
        self.body = body

    def deliverBody(self, protocol):
        protocol.makeConnection(_Transport())
        if self.body:
            protocol.dataReceived(self.body)
        protocol.connectionLost(Failure(ResponseDone()))


class StubAgent:
    """Answers each request with the next outcome: an int status, or an exception."""

    def __init__(self, outcomes):
        self.outcomes = list(outcomes)
        self.calls = 0

    def request(self, method, uri, headers=None, body=None):
        self.calls += 1
        outcome = self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]
        if isinstance(outcome, Exception):
            return fail(outcome)
        return succeed(FakeResponse(outcome, make_image((8, 8)) if outcome == 200 else b"x"))


def fetcher(clock, agent, **backend):
    config = BackendConfig(url="http://127.0.0.1:1", image_breaker=BreakerConfig(
        min_calls=4, failure_ratio=0.5, open_for=10, probes=1), **backend)
    f = SourceFetcher(clock, config, 1024 * 1024, agent)
    f.retry.rng = random.Random(1)
    return f


def run(clock, f, path="/media/a.jpg"):
    results = []
    f.fetch(path, "cid", RequestLogger("test", observer=lambda e: None)).addBoth(results.append)
    for _ in range(100):
        if results:
            break
        clock.advance(0.05)
    assert results, "the fetch did not finish"
    result = results[0]
    if isinstance(result, Failure):
        result.trap(SourceError)
        return result.value
    return result


def test_connection_errors_are_retried_with_backoff_then_open_the_breaker():
    clock = Clock()
    agent = StubAgent([ierror.ConnectionRefusedError()])
    f = fetcher(clock, agent, retries=2)
    error = run(clock, f)
    assert (error.status, error.error, agent.calls) == (502, "backend_unavailable", 3)
    error = run(clock, f)           # the 4th failed call opens the breaker: no 5th call, and
    # no backoff either: the fetch ends at once with that attempt's own error
    assert (error.status, error.error, agent.calls) == (502, "backend_unavailable", 4)
    error = run(clock, f)           # open: failing at once, nothing sent
    assert (error.status, error.error, agent.calls) == (503, "circuit_open", 4)
    assert f.breaker.state == OPEN
    agent.outcomes = [200]
    clock.advance(10)
    assert run(clock, f).body[:2] == b"\xff\xd8"   # the half-open probe succeeds and closes it
    assert f.breaker.state == CLOSED


def test_a_retry_that_succeeds_is_a_success():
    clock = Clock()
    agent = StubAgent([503, ierror.ConnectionRefusedError(), 200])
    f = fetcher(clock, agent, retries=2)
    assert run(clock, f).body[:2] == b"\xff\xd8"
    assert agent.calls == 3


@pytest.mark.parametrize("status", [404, 403, 400, 410])
def test_client_errors_never_open_the_image_breaker_nor_are_retried(status):
    clock = Clock()
    agent = StubAgent([status])
    f = fetcher(clock, agent)
    for _ in range(20):
        assert run(clock, f).status == 404
    assert agent.calls == 20 and f.breaker.state == CLOSED


def test_server_errors_open_the_image_breaker():
    clock = Clock()
    agent = StubAgent([500])
    f = fetcher(clock, agent)
    for _ in range(4):
        assert run(clock, f).error == "backend_error"
    assert f.breaker.state == OPEN and run(clock, f).error == "circuit_open"
    assert agent.calls == 4


def test_the_concurrency_bound_fails_fast():
    clock = Clock()

    class Hanging:
        calls = 0

        def request(self, *a, **kw):
            Hanging.calls += 1
            return Deferred()

    f = fetcher(clock, Hanging(), max_concurrent=2, header_timeout=1000, source_timeout=1000)
    log = RequestLogger("test", observer=lambda e: None)
    pending = [f.fetch("/a.jpg", "c", log) for _ in range(2)]
    third = []
    f.fetch("/b.jpg", "c", log).addErrback(third.append)
    assert third and third[0].value.error == "backend_busy" and Hanging.calls == 2
    for d in pending:
        d.cancel()
        d.addErrback(lambda _: None)
    assert f.limit.in_flight == 0


def test_a_whole_download_has_a_deadline():
    clock = Clock()

    class Hanging:
        def request(self, *a, **kw):
            return Deferred()

    f = fetcher(clock, Hanging(), source_timeout=3, header_timeout=1000)
    results = []
    f.fetch("/a.jpg", "c", RequestLogger("test", observer=lambda e: None)).addErrback(
        results.append)
    clock.advance(2.9)
    assert not results
    clock.advance(0.2)
    assert results[0].value.error == "backend_timeout"


# -- over real sockets ---------------------------------------------------------------------------

class DjangoLike(Resource):
    """A shop: /broken/ is a view that always raises (500), /flaky/ fails twice then works,
    everything else is fine."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.hits = {}

    def render(self, request):
        path = request.path.decode()
        self.hits[path] = self.hits.get(path, 0) + 1
        if "/broken/" in path:
            request.setResponseCode(500)
            return b"<h1>Server Error (500)</h1>"
        if "/flaky/" in path and self.hits[path] <= 2:
            request.setResponseCode(503)
            return b"busy"
        if path.endswith(".jpg"):
            request.setHeader(b"Content-Type", b"image/jpeg")
            return make_image((40, 30))
        return b"ok"


@pytest.fixture
def shop(live_reactor):
    origin = DjangoLike()
    port = start_origin(origin)
    running = start_proxy(backend_port=port.getHost().port, overrides={"backend": {
        "passthrough_breaker": {"min_calls": 5, "open_for": 60},
        "image_breaker": {"min_calls": 5, "open_for": 60}, "retry_backoff": 0.01}})
    yield running, origin
    running.stop()
    from mediaproxy.testing import call_in_reactor
    call_in_reactor(port.stopListening)


def test_a_broken_view_never_opens_the_pass_through_breaker(shop):
    running, origin = shop
    for _ in range(40):
        status, _, body, _ = running.get("/broken/checkout/")
        assert (status, body) == (500, b"<h1>Server Error (500)</h1>")
    assert running.runtime.upstream.breaker.state == CLOSED
    assert running.get("/products/")[0] == 200
    assert origin.hits["/broken/checkout/"] == 40    # a 500 is not retried either


def test_idempotent_requests_are_retried_on_503_and_bodies_are_not(shop):
    running, origin = shop
    assert running.get("/flaky/a/")[:1] == (200,)
    assert origin.hits["/flaky/a/"] == 3
    status, _, _, _ = running.request("POST", "/flaky/b/", body=b"order=1")
    assert status == 503 and origin.hits["/flaky/b/"] == 1


def test_a_source_fetch_is_retried(shop):
    running, origin = shop
    status, headers, _, _ = running.get("/media/flaky/c.jpg?w=20")
    assert status == 200 and origin.hits["/media/flaky/c.jpg"] == 3


def test_the_image_breaker_opens_on_5xx_and_answers_placeholders_at_once(shop):
    running, origin = shop
    statuses = []
    for i in range(8):
        status, headers, _, _ = running.get(f"/media/broken/{i}.jpg?w=20")
        statuses.append((status, headers["x-placeholder"]))
    assert statuses[:5] == [(502, "backend_error")] * 5
    assert statuses[5:] == [(503, "circuit_open")] * 3
    assert sum(origin.hits.get(f"/media/broken/{i}.jpg", 0) for i in range(8)) == 5
    assert running.runtime.upstream.breaker.state == CLOSED   # kept apart
    assert running.get("/products/")[0] == 200


def test_connection_errors_open_the_pass_through_breaker_for_a_fast_503(live_reactor,
                                                                          monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    running = start_proxy(backend_port=dead, overrides={"backend": {
        "passthrough_breaker": {"min_calls": 3, "open_for": 60}, "retries": 0}})
    dials = []
    real = live_reactor.connectTCP

    def counting(host, port, *args, **kwargs):
        dials.append(port)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(live_reactor, "connectTCP", counting)
    try:
        assert [running.get("/")[0] for _ in range(3)] == [502, 502, 502]
        assert dials.count(dead) == 3
        status, headers, body, _ = running.get("/")
        assert status == 503 and json.loads(body)["error"] == "backend_unavailable"
        assert int(headers["retry-after"]) > 0
        assert "127.0.0.1" not in body.decode() and str(dead) not in body.decode()
        assert dials.count(dead) == 3            # open: nothing dialled
    finally:
        running.stop()


# -- answers cut off: a backend that closes in the middle of its headers or its body -----------

class CutOff(Protocol):
    """Reads one request's head, then answers with ``factory.plans``' next plan: ``"head"``
    closes in the middle of the status line's headers, ``"body"`` after 10 of its 1,000
    declared body bytes, anything else answers whole (an image for a path under /media/)."""

    def connectionMade(self):
        self.buffer = b""

    def dataReceived(self, data):
        self.buffer += data
        if b"\r\n\r\n" not in self.buffer or self.transport.disconnecting:
            return
        line = self.buffer.split(b"\r\n", 1)[0].decode()
        self.factory.seen.append(line)
        plan = self.factory.plans.pop(0) if self.factory.plans else "whole"
        if plan == "head":
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Ty")
        elif plan == "body":
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\n"
                                 b"Content-Length: 1000\r\n\r\n" + b"\xff\xd8\xff" + b"x" * 7)
        else:
            body, kind = ((make_image((40, 30)), b"image/jpeg") if " /media/" in line
                          else (b"ok", b"text/plain"))
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: " + kind +
                                 b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        self.transport.loseConnection()


@pytest.fixture
def cutting(live_reactor):
    factory = Factory.forProtocol(CutOff)
    factory.plans, factory.seen = [], []
    port = call_in_reactor(live_reactor.listenTCP, 0, factory, interface="127.0.0.1")
    running = start_proxy(backend_port=port.getHost().port,
                          overrides={"backend": {"retry_backoff": 0.01}})
    yield running, factory
    running.stop()
    call_in_reactor(port.stopListening)


def test_an_answer_cut_off_in_its_headers_is_asked_again(cutting):
    running, backend = cutting
    backend.plans[:] = ["head", "head"]          # two cut off, the third whole (retries = 2)
    assert running.get("/products/")[:1] == (200,)
    assert backend.seen == ["GET /products/ HTTP/1.1"] * 3
    # not a body sent twice: a POST cut off is the client's 502 after one attempt
    backend.plans[:], backend.seen[:] = ["head"], []
    status, _, body, _ = running.request("POST", "/order/", body=b"order=1")
    assert (status, json.loads(body)["error"]) == (502, "bad_gateway")
    assert backend.seen == ["POST /order/ HTTP/1.1"]
    # three cut off: the attempt budget is spent, a 502
    backend.plans[:], backend.seen[:] = ["head"] * 3, []
    assert running.get("/products/")[0] == 502 and len(backend.seen) == 3


def test_a_source_cut_off_in_its_body_is_fetched_again(cutting):
    running, backend = cutting
    backend.plans[:] = ["body"]
    status, headers, body, _ = running.get("/media/a.jpg?w=20")
    assert status == 200 and backend.seen == ["GET /media/a.jpg HTTP/1.1"] * 2
    assert_image(body, size=(20, 15))
    backend.plans[:], backend.seen[:] = ["body"] * 3, []
    status, headers, body, _ = running.get("/media/b.jpg?w=20")
    # backend_error (it answered, then broke), not backend_unavailable (never reached)
    assert (status, headers["x-placeholder"]) == (502, "backend_error")
    assert len(backend.seen) == 3
