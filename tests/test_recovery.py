"""Recovery from backend faults over real sockets (issue 12): the attempt budget of one request
(exactly ``1 + backend.retries`` backend requests, none for a request that may not be
repeated), a dead backend known dead after a few attempts and then refused without a single
connection, and service back once the origin answers again, for images (negative cache and image
breaker) and pass-through (an origin stopped and restarted on the same port).

The origins here are real twisted.web servers on loopback. A connection the backend accepts and
drops without answering is the one fault made on purpose (an abort in the handler): it is what
a dying backend process or a balancer with no healthy node does, and it fails every attempt
in a way that can be counted on the backend side.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from mediaproxy.testing import (
    DroppingSite, ImageOrigin, assert_image, call_in_reactor, make_image, start_proxy, wait_for,
)

IMAGE = make_image((80, 40))


class Dropper(Resource):
    """Counts every request by method and path; ``/ok...`` answers 200, anything else is
    dropped: the connection is aborted without an answer."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.requests: Counter = Counter()

    def render(self, request):
        path = request.path.decode()
        self.requests[request.method.decode(), path] += 1
        if path.startswith("/ok"):
            return b"ok"
        request.channel.transport.abortConnection()
        return NOT_DONE_YET


class CountingSite(DroppingSite):
    """A Site that counts the connections it accepted, and can drop them all (as a backend
    process that dies) when it stops listening."""

    accepted = 0

    def buildProtocol(self, addr):
        self.accepted += 1
        return super().buildProtocol(addr)


@pytest.fixture
def listen(live_reactor):
    """``listen(site, port=0)`` -> the listening port; all are stopped after the test."""
    ports = []

    def start(site, port=0):
        listening = call_in_reactor(live_reactor.listenTCP, port, site, interface="127.0.0.1")
        ports.append(listening)
        return listening

    yield start
    for listening in ports:
        call_in_reactor(listening.stopListening)


NO_BACKOFF = {"retries": 2, "retry_backoff": 0, "retry_backoff_max": 0}


# -- the attempt budget ------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS"])
def test_a_dropped_idempotent_request_costs_exactly_one_plus_retries_attempts(listen, method):
    # Before: the first attempt went out on the pooled keep-alive connection and the pool
    # resent it on its own (retryAutomatically) before the policy's two retries: 4 attempts.
    origin = Dropper()
    port = listen(CountingSite(origin)).getHost().port
    with start_proxy(backend_port=port, overrides={"backend": {
            **NO_BACKOFF, "passthrough_breaker": {"enabled": False}}}) as proxy:
        assert proxy.get("/ok/").status == 200          # a keep-alive connection in the pool
        response = proxy.request(method, "/drop/")
        assert response.status == 502
        if method != "HEAD":
            assert json.loads(response.body)["error"] == "bad_gateway"
        assert origin.requests[method, "/drop/"] == 3


@pytest.mark.parametrize("method, body", [("POST", b"order=1"), ("PUT", b"x"),
                                          ("PATCH", b"x"), ("DELETE", None), ("POST", None)])
def test_a_request_that_may_not_be_repeated_is_sent_once(listen, method, body):
    origin = Dropper()
    port = listen(CountingSite(origin)).getHost().port
    with start_proxy(backend_port=port, overrides={"backend": {
            **NO_BACKOFF, "passthrough_breaker": {"enabled": False}}}) as proxy:
        assert proxy.get("/ok/").status == 200
        response = proxy.request(method, "/drop/", body=body)
        assert response.status == 502
        assert json.loads(response.body)["error"] == "bad_gateway"
        assert origin.requests[method, "/drop/"] == 1


def test_a_source_fetch_costs_exactly_one_plus_retries_attempts(listen):
    origin = Dropper()
    port = listen(CountingSite(origin)).getHost().port
    with start_proxy(backend_port=port, overrides={
            "backend": {**NO_BACKOFF, "image_breaker": {"enabled": False}},
            "cache": {"negative_error_ttl": 0}}) as proxy:
        assert proxy.get("/ok/").status == 200
        response = proxy.get("/media/a.jpg?w=20")
        assert (response.status, response.headers["x-placeholder"]) == (
            502, "backend_unavailable")
        assert origin.requests["GET", "/media/a.jpg"] == 3


# -- a dead backend ----------------------------------------------------------------------------

def test_a_dead_backend_is_known_dead_after_five_attempts_then_costs_no_connection(listen):
    site = CountingSite(Dropper())
    port = listen(site).getHost().port
    # open_for is long here only so the count cannot depend on the machine's speed (a probe
    # would go out after it); the defaults keep retries 2 and five failures in a row.
    with start_proxy(backend_port=port, overrides={"backend": {
            "retry_backoff": 0.001, "passthrough_breaker": {"open_for": 60}}}) as proxy:
        assert proxy.get("/page/").status == 502         # 3 attempts
        assert proxy.get("/page/").status == 502         # 2 more: the 5th opens the breaker
        assert site.accepted == 5
        breaker = proxy.runtime.breakers()["passthrough"]
        for _ in range(20):
            before = call_in_reactor(breaker.retry_after)
            status, headers, body, _ = proxy.get("/page/")
            after = call_in_reactor(breaker.retry_after)
            assert status == 503
            assert json.loads(body)["error"] == "backend_unavailable"
            # the whole seconds left until the probe, counted between the two readings
            assert after <= int(headers["retry-after"]) <= before
            assert 30 <= after <= before <= 90           # half to one and a half open_for
        assert site.accepted == 5                        # refused without a connection


def test_a_dead_image_backend_answers_placeholders_without_a_connection(listen):
    site = CountingSite(Dropper())
    port = listen(site).getHost().port
    with start_proxy(backend_port=port, overrides={
            "backend": {"retry_backoff": 0.001, "image_breaker": {"open_for": 60}},
            "cache": {"negative_error_ttl": 0}}) as proxy:
        for i in range(2):
            response = proxy.get(f"/media/{i}.jpg?w=20")
            assert (response.status, response.headers["x-placeholder"]) == (
                502, "backend_unavailable")
        assert site.accepted == 5
        for i in range(2, 12):
            response = proxy.get(f"/media/{i}.jpg?w=20")
            assert (response.status, response.headers["x-placeholder"]) == (503, "circuit_open")
            assert_image(response.body, size=(20, 15))
        assert site.accepted == 5
        assert proxy.get("/ok/").status == 200           # the pass-through breaker is apart


def test_while_the_image_breaker_is_open_a_stale_copy_is_served_without_a_fetch(live_reactor):
    origin = ImageOrigin({"/media/a.jpg": IMAGE})
    with start_proxy(origin=origin, overrides={
            "backend": {"retry_backoff": 0.001, "image_breaker": {"open_for": 60}},
            "cache": {"memory": {"ttl": 100}, "stale_if_error": 1000,
                      "source": {"memory_bytes": 0}, "negative_error_ttl": 0}}) as proxy:
        path = "/media/a.jpg?w=30"
        status, _, body, _ = proxy.get(path)
        assert status == 200
        proxy.age(path, 150)                             # past its TTL, within stale_if_error
        origin.files["/media/b.jpg"] = (502, b"bad gateway", "text/plain", [])
        for _ in range(2):                               # 3 + 2 failed attempts open it
            assert proxy.get("/media/b.jpg?w=30").status == 502
        assert proxy.runtime.fetcher.breaker.state == "open"
        hits = sum(origin.hits.values())
        status, headers, stale, _ = proxy.get(path)
        assert (status, headers["x-cache"], stale) == (200, "STALE", body)
        assert sum(origin.hits.values()) == hits         # the breaker refused the refresh


# -- service comes back --------------------------------------------------------------------------

def _fetch_every_time(**overrides) -> dict:
    """Neither a variant cache nor a source cache: every image request needs the backend."""
    cache = {"memory": {"enabled": False}, "source": {"memory_bytes": 0},
             **overrides.pop("cache", {})}
    return {"backend": {"retry_backoff": 0.001, **overrides.pop("backend", {})},
            "cache": cache}


def _wait_for_image(proxy, widths):
    def back():
        response = proxy.get(f"/media/a.jpg?w={next(widths)}")
        return response if response.status == 200 else None

    response = wait_for(back, 10, what="an image after the origin recovered", interval=0.05)
    assert "x-placeholder" not in response.headers
    assert_image(response.body, format="JPEG")


def test_the_image_breaker_closes_on_the_first_probe_after_a_flapping_origin_recovers(
        live_reactor):
    origin = ImageOrigin({"/media/a.jpg": IMAGE})
    widths = iter(range(10, 400))
    # open_for is shorter than its default (1 s) only to keep the test fast.
    with start_proxy(origin=origin, overrides=_fetch_every_time(
            cache={"negative_error_ttl": 0},
            backend={"image_breaker": {"open_for": 0.2}})) as proxy:
        breaker = proxy.runtime.fetcher.breaker
        assert proxy.get(f"/media/a.jpg?w={next(widths)}").status == 200
        for flap in range(3):
            origin.files["/media/a.jpg"] = (502, b"bad gateway", "text/plain", [])
            hits = origin.hits["/media/a.jpg"]
            for _ in range(2):              # 3 attempts, then 2: the 5th failure opens it
                response = proxy.get(f"/media/a.jpg?w={next(widths)}")
                assert (response.status, response.headers["x-placeholder"]) == (
                    502, "backend_error")
            assert breaker.state == "open" and origin.hits["/media/a.jpg"] == hits + 5
            origin.files["/media/a.jpg"] = IMAGE
            _wait_for_image(proxy, widths)
            assert breaker.state == "closed"
            # one probe found the origin back: no request but the probe reached it
            assert origin.hits["/media/a.jpg"] == hits + 6


def test_with_the_defaults_images_work_again_once_a_flapping_origin_answers(live_reactor):
    origin = ImageOrigin({"/media/a.jpg": IMAGE})
    widths = iter(range(10, 400))
    with start_proxy(origin=origin, overrides=_fetch_every_time()) as proxy:
        assert proxy.get(f"/media/a.jpg?w={next(widths)}").status == 200
        for flap in range(2):
            origin.files["/media/a.jpg"] = (502, b"bad gateway", "text/plain", [])
            for _ in range(20):
                assert "x-placeholder" in proxy.get(f"/media/a.jpg?w={next(widths)}").headers
            origin.files["/media/a.jpg"] = IMAGE
            # The negative cache (1 s) and the breaker (1 s): back within about a second.
            _wait_for_image(proxy, widths)


def test_pass_through_works_again_once_a_restarted_origin_listens(listen):
    site = CountingSite(Dropper())
    listening = listen(site)
    port = listening.getHost().port
    with start_proxy(backend_port=port, overrides={"backend": {"retry_backoff": 0.001}}) as proxy:
        assert proxy.get("/ok/").status == 200
        call_in_reactor(listening.stopListening)
        call_in_reactor(site.drop_all)                   # the backend process died
        assert [proxy.get("/ok/").status for _ in range(2)] == [502, 502]
        assert proxy.runtime.upstream.breaker.state == "open"
        breaker = proxy.runtime.upstream.breaker
        before = call_in_reactor(breaker.retry_after)
        status, headers, body, _ = proxy.get("/ok/")
        after = call_in_reactor(breaker.retry_after)
        # open_for is 1 s: the probe is at the end of the clock's first second that ends at
        # least half a second away, so the whole seconds left are 1 or 2
        assert status == 503
        assert after <= int(headers["retry-after"]) <= before <= 2
        restarted = CountingSite(Dropper())
        listen(restarted, port)                          # back, on the same port
        wait_for(lambda: proxy.get("/ok/").status == 200, 10,
                 what="pass-through after the origin restarted", interval=0.05)
        assert proxy.runtime.upstream.breaker.state == "closed"
        assert restarted.accepted >= 1


# -- the negative cache is bounded by stale_if_error -------------------------------------------

@pytest.mark.parametrize("stale_if_error, fetches", [(0, 3), (600, 1)])
def test_a_5xx_is_never_remembered_longer_than_stale_if_error(live_reactor, stale_if_error,
                                                               fetches):
    origin = ImageOrigin({"/media/fail.jpg": (500, b"oops", "text/plain", [])})
    with start_proxy(origin=origin, overrides={
            "backend": {"image_breaker": {"enabled": False}},
            "cache": {"negative_error_ttl": 600, "stale_if_error": stale_if_error}}) as proxy:
        for width in (10, 20, 30):
            assert proxy.get(f"/media/fail.jpg?w={width}").status == 502
        assert origin.hits["/media/fail.jpg"] == fetches


# -- how the backend is dialled ----------------------------------------------------------------

@pytest.mark.parametrize("url, kind", [
    (b"http://127.0.0.1:8000/x", "TCP4ClientEndpoint"),
    (b"http://[::1]:8000/x", "TCP6ClientEndpoint"),
    (b"http://django.internal:8000/x", "HostnameEndpoint"),
])
def test_an_ip_backend_is_dialled_directly_a_named_one_with_happy_eyeballs(url, kind):
    # HostnameEndpoint reports a refused connection only at the next tick of its attempt
    # loop (0.3 s by default): an IP backend has nothing to race, so it skips it.
    from twisted.internet.testing import MemoryReactorClock
    from twisted.web.client import URI

    from mediaproxy.http.endpoints import ATTEMPT_DELAY, BackendEndpoints

    endpoint = BackendEndpoints(MemoryReactorClock(), 2.5).endpointForURI(URI.fromBytes(url))
    assert type(endpoint).__name__ == kind
    if kind == "HostnameEndpoint":
        assert (endpoint._attemptDelay, endpoint._timeout) == (ATTEMPT_DELAY, 2.5) == (0.1, 2.5)
    else:
        assert endpoint._timeout == 2.5


def test_an_https_backend_is_wrapped_in_tls_and_other_schemes_are_refused():
    from twisted.internet.testing import MemoryReactorClock
    from twisted.web.client import URI
    from twisted.web.error import SchemeNotSupported

    from mediaproxy.http.endpoints import BackendEndpoints

    factory = BackendEndpoints(MemoryReactorClock(), 5)
    endpoint = factory.endpointForURI(URI.fromBytes(b"https://127.0.0.1:8443/"))
    assert type(endpoint._wrappedEndpoint).__name__ == "TCP4ClientEndpoint"
    with pytest.raises(SchemeNotSupported):
        factory.endpointForURI(URI.fromBytes(b"ftp://127.0.0.1/"))
