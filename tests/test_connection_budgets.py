"""
Connection budgets (docs/security.md, "Connection budgets"): slow clients hold no backend slot
they are not using, deadlines end what takes too long, a cached body is shared between the
connections sending it, and one client address cannot open connections without bound.

Real proxies on loopback with a real origin; slow clients are raw sockets that send part of a
request or read nothing (a small receive buffer, so the kernel cannot absorb the response for
them). Deadlines are set small through overrides; the tests assert what happened (the status,
the error code, the connection closed, what the backend saw), never how long it took. The
timer bookkeeping itself is checked on a ``task.Clock``.
"""

from __future__ import annotations

import functools
import gc
import json
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from mediaproxy.http.connection import (
    BudgetedChannel, BufferBudget, ClientCounter, ConnectionLimits,
)
from mediaproxy.http.streaming import StreamingSite
from mediaproxy.testing import (
    ImageOrigin, assert_image, call_in_reactor, make_image, start_proxy, wait_for,
)
from mediaproxy.testing.images import encode, noise

JPEG = make_image((400, 300), "JPEG", (200, 40, 40))
PAGE = b"<html>shop</html>"


class PostOrigin(ImageOrigin):
    """An ImageOrigin that also takes POSTs (recorded: path, body length) and can hold GETs of
    ``/held`` until :meth:`release`."""

    def __init__(self, files):
        super().__init__(files)
        self.posts: list[tuple[str, int]] = []
        self.held: list = []

    def render_POST(self, request):
        self.posts.append((request.path.decode(), len(request.content.read())))
        return b"posted"

    def render_GET(self, request):
        if request.path == b"/held":
            self.record(request)
            self.held.append(request)
            return NOT_DONE_YET
        return super().render_GET(request)

    def release(self):
        for request in self.held:
            if not request.finished and not request._disconnected:
                request.write(b"released")
                request.finish()
        self.held.clear()


def _connect(port: int, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:   # before connect: a small window the kernel cannot autotune
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(15)
    sock.connect(("127.0.0.1", port))
    return sock


def _read_all(sock: socket.socket, limit: int = 64 * 1024 * 1024) -> bytes:
    """Everything until the peer closes (or resets) the connection."""
    parts, total = [], 0
    while total < limit:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            break
        if not data:
            break
        parts.append(data)
        total += len(data)
    return b"".join(parts)


def _response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def _site(proxy):
    return proxy.listening.factory


def _in_flight(proxy) -> int:
    return call_in_reactor(lambda: proxy.runtime.upstream.limit.in_flight)


# -- slow request bodies -----------------------------------------------------------------------

def test_slow_bodies_hold_no_backend_slot():
    origin = PostOrigin({"/page": (200, PAGE, "text/html", []), "/media/a.jpg": JPEG})
    overrides = {"backend": {"max_concurrent": 4}}
    with start_proxy(origin=origin, overrides=overrides) as proxy:
        slow = [_connect(proxy.port) for _ in range(20)]
        try:
            for sock in slow:
                sock.sendall(b"POST /form HTTP/1.1\r\nHost: shop\r\nContent-Length: 1000\r\n"
                             b"\r\n" + b"a" * 10)
            # All twenty are in and buffering their bodies: none was forwarded.
            wait_for(lambda: _site(proxy).body_budget.used == 200, 10,
                     what="the slow bodies buffered")
            assert _in_flight(proxy) == 0

            page = proxy.get("/page")
            assert (page.status, page.body) == (200, PAGE)
            image = proxy.get("/media/a.jpg?w=100")
            assert image.status == 200
            assert_image(image.body, (100, 75), "JPEG")
            posted = proxy.request("POST", "/form", body=b"b" * 500)
            assert (posted.status, posted.body) == (200, b"posted")
            assert origin.posts == [("/form", 500)]

            # A slow body that completes is forwarded whole, once.
            slow[0].sendall(b"a" * 990)
            status, headers, body = _response(_read_until(slow[0], b"posted"))
            assert (status, body) == (200, b"posted")
            assert origin.posts == [("/form", 500), ("/form", 1000)]
        finally:
            for sock in slow:
                sock.close()
        wait_for(lambda: _site(proxy).body_budget.used == 0, 10, what="the buffers given back")


def _read_until(sock: socket.socket, end: bytes) -> bytes:
    data = b""
    for _ in range(1000):
        if data.endswith(end):
            break
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_bodies_beyond_the_process_budget_stream_on():
    # body_buffer_total (64 KiB here) is full: the body is forwarded as it comes instead of
    # waiting for room that only its own forwarding would make.
    origin = PostOrigin({})
    overrides = {"server": {"body_buffer_total": 64 * 1024}}
    with start_proxy(origin=origin, overrides=overrides) as proxy:
        with _connect(proxy.port) as sock:
            sock.sendall(b"POST /form HTTP/1.1\r\nHost: shop\r\nContent-Length: 100000\r\n"
                         b"\r\n" + b"a" * 70_000)
            wait_for(lambda: _in_flight(proxy) == 1, 10, what="the body forwarded early")
            sock.sendall(b"a" * 30_000)
            status, headers, body = _response(_read_until(sock, b"posted"))
        assert (status, body) == (200, b"posted")
        assert origin.posts == [("/form", 100_000)]
        wait_for(lambda: _site(proxy).body_budget.used == 0, 10, what="the budget given back")


def test_body_deadline_is_408_and_nothing_forwarded():
    origin = PostOrigin({"/page": (200, PAGE, "text/html", [])})
    overrides = {"server": {"body_timeout": 0.3}}
    with start_proxy(origin=origin, overrides=overrides) as proxy:
        with _connect(proxy.port) as sock:
            sock.sendall(b"POST /form HTTP/1.1\r\nHost: shop\r\nContent-Length: 1000\r\n\r\n"
                         b"a" * 10)
            status, headers, body = _response(_read_all(sock))
        assert status == 408
        assert headers["connection"] == "close"
        assert json.loads(body)["error"] == "request_timeout"
        assert origin.posts == []
        assert proxy.get("/page").status == 200


def test_body_deadline_of_a_streamed_body_frees_the_slot():
    # A body over server.body_buffer streams to the backend (it holds a slot) and still ends
    # at the deadline.
    origin = PostOrigin({})
    overrides = {"server": {"body_timeout": 0.5, "body_buffer": 64 * 1024}}
    with start_proxy(origin=origin, overrides=overrides) as proxy:
        with _connect(proxy.port) as sock:
            sock.sendall(b"POST /upload HTTP/1.1\r\nHost: shop\r\nContent-Length: 1000000\r\n"
                         b"\r\n" + b"u" * 100_000)
            wait_for(lambda: _in_flight(proxy) == 1, 10, what="the upload forwarded")
            status, headers, body = _response(_read_all(sock))
        assert status == 408
        assert headers["connection"] == "close"
        assert json.loads(body)["error"] == "request_timeout"
        wait_for(lambda: _in_flight(proxy) == 0, 10, what="the slot given back")
        assert origin.posts == []   # the backend never got a whole body


# -- request headers ---------------------------------------------------------------------------

def test_header_deadline_is_total_not_per_byte():
    # The idle timeout (60 s) would never fire: a byte comes every 50 ms. Only the total header
    # deadline ends it.
    with start_proxy(files={"/page": PAGE}, overrides={"server": {"header_timeout": 0.3}}) \
            as proxy:
        with _connect(proxy.port) as sock:
            sock.sendall(b"GET /page HTTP/1.1\r\nHost: shop\r\n")
            event = threading.Event()
            sent = 0
            for byte in b"X-Slow: " + b"a" * 400:   # bounded: 400 bytes, 20 s at most
                if event.wait(0.05):
                    break
                try:
                    sock.sendall(bytes([byte]))
                    sent += 1
                except OSError:
                    break
                sock.settimeout(0.0)
                try:
                    first = sock.recv(65536, socket.MSG_PEEK)
                except BlockingIOError:
                    first = None
                finally:
                    sock.settimeout(15)
                if first is not None:
                    break
            status, headers, body = _response(_read_all(sock))
        assert sent < 400
        assert status == 408
        assert headers["connection"] == "close"
        assert json.loads(body)["error"] == "request_timeout"
        assert proxy.origin.hits["/page"] == 0


def test_duplicate_host_is_400():
    with start_proxy(files={"/page": PAGE}) as proxy:
        with _connect(proxy.port) as sock:
            sock.sendall(b"GET /page HTTP/1.1\r\nHost: shop\r\nHost: evil\r\n\r\n")
            status, headers, body = _response(_read_all(sock))
        assert status == 400
        assert headers["connection"] == "close"
        error = json.loads(body)
        assert (error["error"], error["status"]) == ("bad_request", 400)
        assert proxy.origin.hits["/page"] == 0


def test_server_header_default_configured_and_off():
    with start_proxy(files={"/media/a.jpg": JPEG}) as proxy:
        assert proxy.get("/media/a.jpg?w=50").headers["server"] == "mediaproxy"
        assert proxy.get("/media/missing.jpg?w=50").headers["server"] == "mediaproxy"
    with start_proxy(files={"/media/a.jpg": JPEG},
                     overrides={"server": {"server_header": "edge"}}) as proxy:
        assert proxy.get("/media/a.jpg?w=50").headers["server"] == "edge"
    with start_proxy(files={"/media/a.jpg": JPEG},
                     overrides={"server": {"server_header": ""}}) as proxy:
        assert "server" not in proxy.get("/media/a.jpg?w=50").headers


# -- slow readers ------------------------------------------------------------------------------

BIG = bytes(range(256)) * (64 * 1024)      # 16 MiB: more than any loopback socket buffer


def test_slow_reader_of_a_passthrough_download_is_cut_at_the_write_deadline():
    origin = PostOrigin({"/big.bin": (200, BIG, "application/octet-stream", []),
                         "/page": (200, PAGE, "text/html", [])})
    overrides = {"backend": {"max_concurrent": 1}, "server": {"write_timeout": 0.5}}
    with start_proxy(origin=origin, overrides=overrides) as proxy:
        with _connect(proxy.port, rcvbuf=4096) as reader:
            reader.sendall(b"GET /big.bin HTTP/1.1\r\nHost: shop\r\n\r\n")
            # It reads nothing; the proxy's buffer fills, the backend is paused (holding the
            # one slot) until the write deadline aborts the connection.
            wait_for(lambda: _in_flight(proxy) == 1, 10, what="the download started")
            wait_for(lambda: _in_flight(proxy) == 0, 10, what="the stalled reader cut")
            got = _read_all(reader)
        assert got.startswith(b"HTTP/1.1 200")
        assert len(got) < len(BIG)
        assert origin.hits["/big.bin"] == 1
        assert proxy.get("/page").status == 200


def test_a_stalled_download_gives_its_slot_to_a_new_request():
    origin = PostOrigin({"/big.bin": (200, BIG, "application/octet-stream", []),
                         "/page": (200, PAGE, "text/html", [])})
    overrides = {"backend": {"max_concurrent": 1},
                 "server": {"write_timeout": 30, "evict_stalled_after": 0.2}}
    with start_proxy(origin=origin, overrides=overrides) as proxy:
        upstream = proxy.runtime.upstream

        def stalled_long_enough():
            def check():
                now = upstream.reactor.seconds()
                return any(now - since >= 0.2 for since in upstream.stalled.values())
            return call_in_reactor(check)

        with _connect(proxy.port, rcvbuf=4096) as reader:
            reader.sendall(b"GET /big.bin HTTP/1.1\r\nHost: shop\r\n\r\n")
            wait_for(stalled_long_enough, 10, what="the download stalled")
            # The one slot is taken by a client that reads nothing: the new request gets it.
            page = proxy.get("/page")
            assert (page.status, page.body) == (200, PAGE)
            got = _read_all(reader)
        assert got.startswith(b"HTTP/1.1 200")
        assert len(got) < len(BIG)
        assert origin.hits["/big.bin"] == 1
        assert call_in_reactor(lambda: dict(upstream.stalled)) == {}


def test_response_in_the_buffer_frees_the_slot_before_the_client_reads():
    body = BIG[:12 * 1024 * 1024]
    origin = PostOrigin({"/mid.bin": (200, body, "application/octet-stream", []),
                         "/page": (200, PAGE, "text/html", [])})
    overrides = {"backend": {"max_concurrent": 1},
                 "server": {"response_buffer": 16 * 1024 * 1024, "write_timeout": 30}}
    with start_proxy(origin=origin, overrides=overrides) as proxy:
        with _connect(proxy.port, rcvbuf=4096) as reader:
            reader.sendall(b"GET /mid.bin HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n\r\n")
            wait_for(lambda: origin.hits["/mid.bin"] == 1, 10, what="the download started")
            # The backend sent it all into the proxy's buffer: the one slot is free while the
            # client has read nothing (the kernel holds at most 4 MiB of the 12).
            wait_for(lambda: _in_flight(proxy) == 0, 10, what="the slot given back")
            assert proxy.get("/page").status == 200
            status, headers, got = _response(_read_all(reader))
        assert status == 200
        assert got == body


@functools.cache
def _noise_png() -> bytes:
    """Noise does not compress: its transformed PNG is over 3 MiB."""
    return encode(noise(1200, 1000, seed=3), "PNG")


def _buffered_in_transports(site) -> tuple[int, int]:
    """(connections, bytes waiting in their transports' write buffers) of ``site``."""
    def measure():
        total = count = 0
        for obj in gc.get_objects():
            # type(), not isinstance(): isinstance asks a lazy object for its __class__ (one
            # of Django's, alive after the Django tests, then loads unconfigured settings)
            if issubclass(type(obj), BudgetedChannel) and obj.site is site \
                    and obj.transport is not None and obj.transport.connected:
                t = obj.transport
                total += len(t.dataBuffer) - t.offset + t._tempDataLen
                count += 1
        return count, total
    return call_in_reactor(measure)


def test_cached_body_is_shared_not_copied_per_connection():
    with start_proxy(files={"/media/n.png": _noise_png()},
                     overrides={"server": {"write_timeout": 30}}) as proxy:
        path = "/media/n.png?w=1200&format=png"
        first = proxy.get(path)
        assert first.status == 200
        size = len(first.body)
        assert size > 3 * 1024 * 1024
        readers = [_connect(proxy.port, rcvbuf=4096) for _ in range(12)]
        try:
            for sock in readers:
                sock.sendall(f"GET {path} HTTP/1.1\r\nHost: shop\r\n\r\n".encode())
            for sock in readers:   # each was answered (from the cache): the head came back
                assert sock.recv(12) == b"HTTP/1.1 200"
            count, buffered = _buffered_in_transports(_site(proxy))
            assert count == 12
            # Without sharing, each transport held its own copy: 12 x size.
            assert buffered < 12 * 256 * 1024
            assert proxy.origin.hits["/media/n.png"] == 1
        finally:
            for sock in readers:
                sock.close()


def test_slow_reader_of_a_cached_image_is_cut_and_others_served():
    with start_proxy(files={"/media/n.png": _noise_png()},
                     overrides={"server": {"write_timeout": 0.5}}) as proxy:
        path = "/media/n.png?w=1200&format=png"
        size = len(proxy.get(path).body)
        with _connect(proxy.port, rcvbuf=4096) as reader:
            reader.sendall(f"GET {path} HTTP/1.1\r\nHost: shop\r\n\r\n".encode())
            assert reader.recv(12) == b"HTTP/1.1 200"
            other = proxy.get(path)
            assert (other.status, len(other.body)) == (200, size)
            # It reads nothing more: the write deadline aborts it (no connection is left).
            wait_for(lambda: _site(proxy).clients.counts == {}, 10, what="the reader cut")
            got = _read_all(reader)
        assert len(got) < size


# -- per-client cap ----------------------------------------------------------------------------

def test_connections_over_the_per_client_cap_get_429():
    with start_proxy(files={"/page": PAGE},
                     overrides={"server": {"max_client_connections": 3}}) as proxy:
        held = [_connect(proxy.port) for _ in range(3)]
        try:
            wait_for(lambda: _site(proxy).clients.counts.get("127.0.0.1") == 3, 10,
                     what="three connections counted")
            with _connect(proxy.port) as extra:
                # Refused at once: its body is not waited for.
                extra.sendall(b"POST /page HTTP/1.1\r\nHost: shop\r\nContent-Length: 900\r\n"
                              b"\r\n")
                status, headers, body = _response(_read_all(extra))
            assert status == 429
            assert headers["connection"] == "close"
            assert json.loads(body)["error"] == "too_many_connections"
            assert proxy.origin.hits["/page"] == 0
            held.pop().close()
            wait_for(lambda: _site(proxy).clients.counts.get("127.0.0.1") == 2, 10,
                     what="one connection gone")
            assert proxy.get("/page").status == 200
        finally:
            for sock in held:
                sock.close()
        wait_for(lambda: _site(proxy).clients.counts == {}, 10, what="every connection gone")


def test_behind_a_trusted_proxy_requests_count_per_forwarded_client():
    origin = PostOrigin({"/page": (200, PAGE, "text/html", [])})
    overrides = {"server": {"max_client_connections": 1, "trusted_proxies": ["127.0.0.1"]}}
    with start_proxy(origin=origin, overrides=overrides) as proxy:
        # Many connections from the trusted peer are fine ...
        conns = [_connect(proxy.port) for _ in range(3)]
        try:
            conns[0].sendall(b"GET /held HTTP/1.1\r\nHost: shop\r\n"
                             b"X-Forwarded-For: 203.0.113.7\r\n\r\n")
            wait_for(lambda: origin.hits["/held"] == 1, 10, what="the first request held")
            # ... but one client's second request in flight is over its cap of one,
            conns[1].sendall(b"GET /page HTTP/1.1\r\nHost: shop\r\n"
                             b"X-Forwarded-For: 203.0.113.7\r\n\r\n")
            status, headers, body = _response(_read_all(conns[1]))
            assert status == 429
            assert json.loads(body)["error"] == "too_many_connections"
            # while another client behind the same proxy is served.
            conns[2].sendall(b"GET /page HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n"
                             b"X-Forwarded-For: 198.51.100.9\r\n\r\n")
            status, headers, body = _response(_read_all(conns[2]))
            assert (status, body) == (200, PAGE)
            call_in_reactor(origin.release)
            conns[0].settimeout(15)
            assert conns[0].recv(12) == b"HTTP/1.1 200"
        finally:
            for sock in conns:
                sock.close()
        wait_for(lambda: _site(proxy).clients.counts == {}, 10, what="nothing counted")


# -- timers on a Clock ---------------------------------------------------------------------------

class _Ok(Resource):
    isLeaf = True

    def render(self, request):
        return b"ok"


def _channel(clock: Clock, **limits):
    site = StreamingSite(_Ok(), limits=ConnectionLimits(**limits), reactor=clock)
    channel = site.buildProtocol(None)
    transport = StringTransport()
    channel.makeConnection(transport)
    return site, channel, transport


@pytest.mark.parametrize("sent", [
    b"GET / HT",                                                          # in the headers
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab",        # in the body
])
def test_timers_end_with_the_connection(sent):
    clock = Clock()
    site, channel, transport = _channel(clock)
    channel.dataReceived(sent)
    assert clock.getDelayedCalls() != []
    channel.connectionLost(None)
    assert [c for c in clock.getDelayedCalls() if c.active()] == []
    assert site.clients.counts == {}


def test_header_deadline_on_a_clock():
    clock = Clock()
    site, channel, transport = _channel(clock, header_timeout=10)
    for byte in b"GET / HTTP/1.1\r\nHost:":
        channel.dataReceived(bytes([byte]))
        clock.advance(0.4)          # 21 bytes, 8.4 s: each byte would reset an idle timer
    assert transport.value() == b""
    clock.advance(2)
    status, headers, body = _response(transport.value())
    assert status == 408
    assert json.loads(body)["error"] == "request_timeout"
    assert transport.disconnecting


def test_write_deadline_on_a_clock():
    clock = Clock()
    site, channel, transport = _channel(clock, write_timeout=5)
    channel.pauseProducing()        # the transport's buffer is full
    clock.advance(4)
    channel.resumeProducing()       # the client read: the deadline starts again next time
    channel.pauseProducing()
    clock.advance(4)
    assert not transport.disconnecting
    clock.advance(1)
    assert transport.disconnecting


def test_body_deadline_on_a_clock():
    clock = Clock()
    site, channel, transport = _channel(clock, body_timeout=5)
    channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab")
    clock.advance(4)
    channel.dataReceived(b"cd")          # progress does not move a total deadline
    assert transport.value() == b""
    clock.advance(1)
    status, headers, body = _response(transport.value())
    assert (status, headers["connection"]) == (408, "close")
    assert json.loads(body)["error"] == "request_timeout"
    assert site.body_budget.used == 0


class _Held(Resource):
    """Answers nothing until the test finishes the request (a long transform)."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.waiting = []

    def render(self, request):
        self.waiting.append(request)
        return NOT_DONE_YET


_GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def test_header_deadline_of_a_later_request_counts_from_its_own_first_byte():
    # One timer per connection checks the deadline when it fires: a second request's headers
    # get their whole header_timeout from their first byte, not the first request's.
    clock = Clock()
    site, channel, transport = _channel(clock, header_timeout=10)
    channel.dataReceived(_GET)                  # t=0: answered at once
    assert _response(transport.value())[0] == 200
    transport.clear()
    clock.advance(6)
    channel.dataReceived(b"GET / HTTP/1.1\r\nHo")   # t=6: due at t=16
    clock.advance(4)                            # t=10: the first request's time, not this one's
    assert transport.value() == b"" and not transport.disconnecting
    clock.advance(5.75)                         # t=15.75
    assert transport.value() == b"" and not transport.disconnecting
    clock.advance(0.25)                         # t=16
    status, headers, body = _response(transport.value())
    assert status == 408 and json.loads(body)["error"] == "request_timeout"
    assert transport.disconnecting


def test_many_requests_on_one_connection_schedule_no_timer_per_request():
    scheduled = []

    class CountingClock(Clock):
        def callLater(self, delay, *args, **kw):
            scheduled.append(delay)
            return super().callLater(delay, *args, **kw)

    clock = CountingClock()
    site, channel, transport = _channel(clock, header_timeout=10)
    for _ in range(200):
        channel.dataReceived(_GET)
        clock.advance(0.01)
    assert transport.value().count(b"HTTP/1.1 200 OK") == 200
    # the idle timeout's and the header deadline's timers, once each (2 s < both periods)
    assert len(scheduled) == 2
    assert len([c for c in clock.getDelayedCalls() if c.active()]) == 2
    clock.advance(10)           # the header timer fires with no request under way: nothing
    assert not transport.disconnecting
    channel.connectionLost(None)
    assert [c for c in clock.getDelayedCalls() if c.active()] == []


def test_idle_timeout_after_a_response_and_never_while_one_is_handled():
    clock = Clock()
    held = _Held()
    site = StreamingSite(held, limits=ConnectionLimits(), reactor=clock, timeout=30)
    channel = site.buildProtocol(None)
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(_GET)
    clock.advance(100)          # handled for longer than the idle timeout: not timed out
    assert not transport.disconnecting
    request = held.waiting.pop()
    request.write(b"ok")
    request.finish()
    assert _response(transport.value())[0] == 200
    clock.advance(29.75)        # idle from the end of the response
    assert not transport.disconnecting
    clock.advance(0.25)
    assert transport.disconnecting


def test_buffer_budget_wakes_waiting_bodies_once_there_is_room():
    budget = BufferBudget(100)
    woken = []
    budget.add(100)
    assert budget.full
    budget.wait(1, lambda: woken.append(1))
    budget.wait(2, lambda: woken.append(2))
    budget.forget(2)
    budget.add(-10)
    assert (budget.full, budget.used, woken) == (False, 90, [1])
    budget.add(-90)
    assert woken == [1]                  # a waiter is woken once; it waits again if need be


def test_client_counter_caps_per_address():
    counter = ClientCounter(2)
    assert [counter.acquire("a"), counter.acquire("a"), counter.acquire("a")] == [True, True, False]
    assert counter.acquire("b")
    counter.release("a")
    assert counter.acquire("a")
    for address in ("a", "a", "b"):
        counter.release(address)
    assert counter.counts == {}
    unlimited = ClientCounter(0)
    assert all(unlimited.acquire("a") for _ in range(5000))


def test_a_request_waits_for_a_backend_slot_rather_than_503_at_once():
    origin = PostOrigin({"/page": (200, PAGE, "text/html", [])})
    overrides = {"backend": {"max_concurrent": 1}, "server": {"slot_wait": 30}}
    with start_proxy(origin=origin, overrides=overrides) as proxy, \
            ThreadPoolExecutor(1) as pool:
        with _connect(proxy.port) as holder:
            holder.sendall(b"GET /held HTTP/1.1\r\nHost: shop\r\n\r\n")
            wait_for(lambda: len(origin.held) == 1, 10, what="the slot taken")
            waiting = pool.submit(proxy.get, "/page")
            wait_for(lambda: call_in_reactor(lambda: proxy.runtime.upstream.slot_waiters) == 1,
                     10, what="the page waiting for the slot")
            assert origin.hits.get("/page", 0) == 0
            call_in_reactor(origin.release)       # the slot's download ends: the page gets it
            page = waiting.result(30)
            assert (page.status, page.body) == (200, PAGE)
            got = b""
            while b"released" not in got:
                chunk = holder.recv(65536)
                assert chunk, got
                got += chunk
            assert got.startswith(b"HTTP/1.1 200")
        assert call_in_reactor(lambda: proxy.runtime.upstream.slot_waiters) == 0


def test_a_request_that_waited_its_slot_wait_in_vain_gets_503_and_leaves_nothing():
    origin = PostOrigin({"/page": (200, PAGE, "text/html", [])})
    overrides = {"backend": {"max_concurrent": 1}, "server": {"slot_wait": 0.3}}
    with start_proxy(origin=origin, overrides=overrides) as proxy:
        with _connect(proxy.port) as holder:
            holder.sendall(b"GET /held HTTP/1.1\r\nHost: shop\r\n\r\n")
            wait_for(lambda: len(origin.held) == 1, 10, what="the slot taken")
            page = proxy.json("/page")
            assert page.status == 503 and page.data["error"] == "backend_busy"
            assert "retry-after" in page.headers
            assert origin.hits.get("/page", 0) == 0
            assert call_in_reactor(lambda: proxy.runtime.upstream.slot_waiters) == 0
            call_in_reactor(origin.release)


@pytest.mark.parametrize("path, status, reason", [
    ("/media/a.jpg?w=abc", 400, "Bad Request"),
    ("/media/lying.jpg?w=10", 422, "Unprocessable Entity"),
    ("/media/a.jpg?w=10", 429, "Too Many Requests"),
])
def test_every_status_goes_out_with_its_reason_phrase(path, status, reason):
    import http.client

    from mediaproxy.testing.images import make_jpeg
    scans = make_jpeg(64, 48, progressive=True)
    origin = ImageOrigin({"/media/a.jpg": JPEG, "/media/lying.jpg": scans})
    overrides = {"limits": {"max_jpeg_scans": 1},
                 "ratelimit": {"ip_burst": 1, "ip_rate": 0.001, "exempt": []}}
    with start_proxy(origin=origin, overrides=overrides) as proxy:
        if status == 429:
            assert proxy.get("/media/a.jpg?w=11").status == 200   # the one token
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        conn.close()
        assert (response.status, response.reason) == (status, reason)


def test_date_header_is_made_once_a_second_and_right():
    from twisted.web.http import datetimeToString

    from mediaproxy.http.head import http_date

    first = http_date(1_000_000_000.0)
    assert first == datetimeToString(1_000_000_000) == b"Sun, 09 Sep 2001 01:46:40 GMT"
    assert http_date(1_000_000_000.999) is first          # the same second: not made again
    assert http_date(1_000_000_001.0) == b"Sun, 09 Sep 2001 01:46:41 GMT"
    assert http_date(999_999_999.5) == b"Sun, 09 Sep 2001 01:46:39 GMT"   # a clock set back



def test_when_done_is_called_once_at_the_end_or_at_the_loss():
    from twisted.internet.error import ConnectionLost
    from twisted.logger import globalLogPublisher
    from twisted.python.failure import Failure

    clock = Clock()
    held = _Held()
    site = StreamingSite(held, limits=ConnectionLimits(), reactor=clock)
    channel = site.buildProtocol(None)
    channel.makeConnection(StringTransport())
    seen, failures = [], []

    def observe(event):
        if "log_failure" in event:
            failures.append(event["log_failure"])

    globalLogPublisher.addObserver(observe)
    try:
        channel.dataReceived(_GET)
        request = held.waiting.pop()
        request.when_done(lambda result: 1 / 0)      # raising: logged, the next still called
        request.when_done(seen.append)
        finished = request.notifyFinish()
        request.write(b"ok")
        request.finish()
        assert seen == [None] and finished.called
        channel.dataReceived(_GET)                   # the next request: the client goes away
        request = held.waiting.pop()
        request.when_done(seen.append)
        channel.connectionLost(Failure(ConnectionLost()))
    finally:
        globalLogPublisher.removeObserver(observe)
    assert len(seen) == 2 and seen[1].check(ConnectionLost)
    assert [f.type for f in failures] == [ZeroDivisionError]
