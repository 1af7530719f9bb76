"""
Pass-through end to end: http.client and plain sockets in the test thread, a real
StreamingSite whose every request goes through Upstream.proxy, a real recording origin
(tests/origin.py), all over loopback with the real reactor in a background thread.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import threading
from typing import Any

import attrs
import psutil
import pytest
from twisted.logger import LogLevel, globalLogPublisher
from twisted.web.http import HTTPChannel
from twisted.web.iweb import UNKNOWN_LENGTH
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from mediaproxy.http import requestinfo
from mediaproxy.config import BackendConfig, ServerConfig
from mediaproxy.logs import RequestLogger
from mediaproxy.http.connection import ConnectionLimits
from mediaproxy.http.streaming import StreamingSite
from mediaproxy.testing import call_in_reactor
from mediaproxy.http.upstream import Upstream, origin_form
from tests.origin import PATTERN

MiB = 1024 * 1024
GiB = 1024 * MiB


# -- the proxy under test ---------------------------------------------------------------------

class PassThrough(Resource):
    """Every request -> Upstream.proxy, like the real root resource does for non-images."""

    isLeaf = True

    def __init__(self, proxy: "Proxy"):
        super().__init__()
        self.proxy = proxy

    def render(self, request):
        proxy = self.proxy
        info = requestinfo.from_request(request, proxy.server.trusted_proxies)
        log = RequestLogger("mediaproxy.test", observer=proxy.events.append,
                            correlation_id=info.correlation_id)
        proxy.upstream.proxy(request, info, log).addBoth(proxy._settled)
        return NOT_DONE_YET


class TrackingSite(StreamingSite):
    def __init__(self, resource, **kwargs):
        # Bodies stream to the backend as they arrive (body_buffer=0): the exchange's own
        # streaming is what these tests check; buffering a small body before the backend slot is
        # taken is tests/test_connection_budgets.py's.
        kwargs.setdefault("limits", ConnectionLimits(body_buffer=0))
        super().__init__(resource, **kwargs)
        self.protocols = []

    def buildProtocol(self, addr):
        protocol = super().buildProtocol(addr)
        self.protocols.append(protocol)
        return protocol


@attrs.define(eq=False)
class Proxy:
    upstream: Upstream
    server: ServerConfig
    port: int = 0
    site: Any = None
    listening: Any = None
    events: list = attrs.field(factory=list)
    results: list = attrs.field(factory=list)
    _cond: threading.Condition = attrs.field(factory=threading.Condition)

    def _settled(self, result):
        with self._cond:
            self.results.append(result)
            self._cond.notify_all()

    def wait_settled(self, count: int, timeout: float = 10.0) -> list:
        """Wait until ``count`` proxy() Deferreds fired; they must all have succeeded."""
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.results) >= count, timeout)
            assert all(r is None for r in self.results), self.results
            return list(self.results)

    def start(self) -> "Proxy":
        self.site = TrackingSite(PassThrough(self))
        from twisted.internet import reactor
        self.listening = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        self.port = self.listening.getHost().port
        return self

    def stop(self):
        for protocol in self.site.protocols:
            transport = getattr(getattr(protocol, "_channel", protocol), "transport", None)
            if transport is not None:
                transport.abortConnection()
        self.listening.stopListening()
        return self.upstream.close()


@pytest.fixture
def make_proxy(live_reactor):
    """``make_proxy(backend_url, trusted_proxies=(), preserve_host=True, **backend_settings)``
    starts a pass-through proxy on 127.0.0.1:0; stopped after the test."""
    started = []

    def make(url: str, trusted_proxies=(), preserve_host=True, **backend) -> Proxy:
        server = ServerConfig(trusted_proxies=tuple(trusted_proxies),
                              preserve_host=preserve_host)
        config = BackendConfig(url=url, **backend)
        proxy = call_in_reactor(
            lambda: Proxy(Upstream(live_reactor, config, server), server).start())
        started.append(proxy)
        return proxy

    yield make
    for proxy in started:
        call_in_reactor(proxy.stop)


@pytest.fixture
def proxy(make_proxy, origin):
    return make_proxy(origin.url)


# -- clients (test thread) --------------------------------------------------------------------

@attrs.frozen
class Reply:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def json(self):
        return json.loads(self.body)


def call(port: int, method: str, target: str, headers=(), body: bytes | None = None,
         chunked: bool = False, timeout: float = 10.0) -> Reply:
    """One request with http.client; ``headers`` are (name, value) pairs, repeats allowed."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        names = {k.lower() for k, _ in headers}
        conn.putrequest(method, target, skip_host="host" in names, skip_accept_encoding=True)
        for name, value in headers:
            conn.putheader(name, value)
        if chunked:
            conn.putheader("Transfer-Encoding", "chunked")
            conn.endheaders(iter([body[i:i + 1000] for i in range(0, len(body), 1000)]),
                            encode_chunked=True)
        else:
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
        response = conn.getresponse()
        data = response.read()
        return Reply(response.status, response.reason, response.getheaders(), data)
    finally:
        conn.close()


class _FileSocket:
    """Lets http.client.HTTPResponse read several responses from one buffered file."""

    def __init__(self, file):
        self.file = _Unclosable(file)

    def makefile(self, *args, **kwargs):
        return self.file


class _Unclosable:
    def __init__(self, file):
        self._file = file

    def __getattr__(self, name):
        return getattr(self._file, name)

    def close(self):
        pass


def read_response(file, method: str = "GET") -> http.client.HTTPResponse:
    response = http.client.HTTPResponse(_FileSocket(file), method=method)
    response.begin()
    return response


def connect(port: int, rcvbuf: int | None = None, timeout: float = 10.0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(timeout)
    sock.connect(("127.0.0.1", port))
    return sock


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def is_closed(sock: socket.socket) -> bool:
    """True when the peer closed (EOF or reset) — waits up to the socket's timeout."""
    try:
        return sock.recv(1) == b""
    except ConnectionError:
        return True


# -- StreamingRequest on its own --------------------------------------------------------------

class Recorder(Resource):
    """Records what a StreamingRequest looks like when processing starts, then echoes the body
    (read through request.body) back."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.seen = []
        self.rendered = threading.Event()

    def render(self, request):
        body = request.body
        self.seen.append({
            "method": request.method, "uri": request.uri, "path": request.path,
            "args": request.args, "clientproto": request.clientproto,
            "length": None if body is None else body.length,
            "receiving": None if body is None else body.receiving,
            "content": request.content.read(),
        })
        self.rendered.set()
        if body is None:
            return b"no body"
        chunks = []

        class Consumer:
            def write(self, data):
                chunks.append(data)

        def done(_):
            request.setHeader(b"Content-Length", b"%d" % sum(map(len, chunks)))
            request.write(b"".join(chunks))
            request.finish()

        body.startProducing(Consumer()).addCallback(done)
        return NOT_DONE_YET


class EarlyAnswer(Resource):
    """Answers at once without reading the body."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.paths = []

    def render(self, request):
        self.paths.append(request.path)
        return b"early"


@pytest.fixture
def streaming_site(live_reactor):
    """``streaming_site(resource)`` -> port of a StreamingSite serving it."""
    ports = []

    def serve(resource) -> int:
        def listen():
            # body_buffer=0: these tests are about a body streamed as it arrives (buffering a
            # small body first is tests/test_connection_budgets.py's).
            site = StreamingSite(resource, limits=ConnectionLimits(body_buffer=0))
            port = live_reactor.listenTCP(0, site, interface="127.0.0.1")
            ports.append(port)
            return port.getHost().port
        return call_in_reactor(listen)

    yield serve
    for port in ports:
        call_in_reactor(port.stopListening)


@pytest.fixture
def logged_errors(live_reactor):
    """Error events logged anywhere (the reactor's unhandled exceptions included)."""
    errors = []

    def observe(event):
        if (event.get("log_failure") is not None or event.get("isError")
                or event.get("log_level") in (LogLevel.error, LogLevel.critical)):
            errors.append(event)

    globalLogPublisher.addObserver(observe)
    yield errors
    globalLogPublisher.removeObserver(observe)


def test_streaming_request_relies_on_channel_request_line(streaming_site):
    # StreamingRequest reads the request line from HTTPChannel's private _command, _path and
    # _version when gotLength is called; this fails if Twisted stops providing them.
    assert {"_command", "_path", "_version"} <= set(HTTPChannel.lineReceived.__code__.co_names)
    recorder = Recorder()
    port = streaming_site(recorder)
    body = os.urandom(200_000)
    with connect(port) as sock:
        sock.sendall(b"PUT /up/load?a=1&a=2&b=%%20 HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body[:1000])
        # Processing starts while most of the body is still with the client.
        assert recorder.rendered.wait(10)
        sock.sendall(body[1000:])
        response = read_response(sock.makefile("rb"), "PUT")
        assert response.status == 200
        assert response.read() == body
    seen = recorder.seen[0]
    assert seen == {
        "method": b"PUT", "uri": b"/up/load?a=1&a=2&b=%20", "path": b"/up/load",
        "args": {b"a": [b"1", b"2"], b"b": [b" "]}, "clientproto": b"HTTP/1.1",
        "length": len(body), "receiving": True, "content": b"",
    }


def test_streaming_request_chunked_and_bodyless(streaming_site):
    recorder = Recorder()
    port = streaming_site(recorder)
    reply = call(port, "POST", "/c", body=b"x" * 5000, chunked=True)
    assert reply.body == b"x" * 5000
    assert recorder.seen[0]["length"] is UNKNOWN_LENGTH
    reply = call(port, "GET", "/plain")
    assert reply.body == b"no body"
    assert recorder.seen[1]["length"] is None and recorder.seen[1]["method"] == b"GET"


def test_response_before_body_end_closes_connection(streaming_site, logged_errors):
    early = EarlyAnswer()
    port = streaming_site(early)
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    rest = smuggled.ljust(150, b"\r")
    with connect(port) as sock:
        sock.sendall(b"POST /first HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                     % (50 + len(rest)) + b"a" * 50)
        file = sock.makefile("rb")
        response = read_response(file, "POST")
        assert response.read() == b"early"
        assert response.getheader("Connection") == "close"
        try:
            sock.sendall(rest)  # the rest of the body: must never be parsed as a request
        except ConnectionError:
            pass
        assert is_closed(sock)
    assert early.paths == [b"/first"]
    call_in_reactor(lambda: None)  # let the reactor finish what it was doing
    assert logged_errors == []


class FinishOnFirstChunk(Resource):
    """Finishes the response from inside the body consumer's write, i.e. while the channel is
    still decoding the body."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.rendered = threading.Event()

    def render(self, request):
        class Consumer:
            def write(self, data):
                if not request.finished:
                    request.write(b"got %d" % len(data))
                    request.finish()

        request.body.startProducing(Consumer())
        self.rendered.set()
        return NOT_DONE_YET


def test_response_finished_while_body_is_decoded(streaming_site, logged_errors):
    resource = FinishOnFirstChunk()
    port = streaming_site(resource)
    with connect(port) as sock:
        sock.sendall(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
        assert resource.rendered.wait(10)
        # The whole body and a pipelined request in one packet: the response is finished
        # inside the first body chunk, then the channel decodes the end of the body.
        sock.sendall(b"b" * 100 + b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
        file = sock.makefile("rb")
        response = read_response(file, "POST")
        assert response.read() == b"got 100"
        assert response.getheader("Connection") == "close"
        assert file.read() == b""
    call_in_reactor(lambda: None)
    assert logged_errors == []


def test_pipelined_requests_with_bodies(proxy, origin):
    with connect(proxy.port) as sock:
        sock.sendall(b"POST /echo/1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
                     b"PUT /echo/2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"3\r\nabc\r\n0\r\n\r\n"
                     b"GET /echo/3 HTTP/1.1\r\nHost: x\r\n\r\n")
        file = sock.makefile("rb")
        answers = [json.loads(read_response(file).read()) for _ in range(3)]
    assert [(a["method"], a["uri"], a["body_len"]) for a in answers] == [
        ("POST", "/echo/1", 5), ("PUT", "/echo/2", 3), ("GET", "/echo/3", 0)]
    assert [r.method for r in origin.requests] == [b"POST", b"PUT", b"GET"]
    proxy.wait_settled(3)


def test_expect_100_continue(proxy, origin):
    body = b"z" * 10_000
    with connect(proxy.port) as sock:
        sock.sendall(b"PUT /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body))
        file = sock.makefile("rb")
        assert file.readline() == b"HTTP/1.1 100 Continue\r\n"
        assert file.readline() == b"\r\n"
        sock.sendall(body)
        response = read_response(file, "PUT")
        assert json.loads(response.read())["body_len"] == len(body)
    assert origin.last().body_head == body
    assert origin.last().header("Expect") == []


# -- methods and bodies -----------------------------------------------------------------------

@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_every_method_reaches_origin(proxy, origin, method):
    body = f"payload of {method} ".encode() * 100
    reply = call(proxy.port, method, "/echo/m?x=1", body=body,
                 headers=[("Content-Type", "text/plain")])
    assert reply.status == 200
    received = origin.last()
    assert received.method == method.encode()
    assert received.uri == b"/echo/m?x=1"
    assert received.body_head == body
    assert received.header("Content-Length") == [str(len(body))]
    assert received.header("Content-Type") == ["text/plain"]
    if method == "HEAD":
        assert reply.body == b""
        assert reply.header("Content-Length") != []
    else:
        assert reply.json()["body_len"] == len(body)
        assert reply.header("Content-Length") == [str(len(reply.body))]
    proxy.wait_settled(1)


def test_large_upload_reaches_origin_while_client_still_sends(proxy, origin):
    total = 256 * MiB
    block = os.urandom(MiB)
    digest = hashlib.sha256()
    rss = psutil.Process()
    before = rss.memory_info().rss
    with connect(proxy.port, timeout=30) as sock:
        sock.sendall(b"POST /echo/upload HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/octet-stream\r\n"
                     b"Content-Length: %d\r\n\r\n" % total)
        sock.sendall(block)
        digest.update(block)
        # 255 MiB are still to be sent: a buffering proxy would not have forwarded anything.
        assert origin.first_body_byte.wait(10), "the origin got nothing before the upload ended"
        peak = 0
        for i in range(1, total // MiB):
            sock.sendall(block)
            digest.update(block)
            if i % 32 == 0:
                peak = max(peak, rss.memory_info().rss - before)
        response = read_response(sock.makefile("rb"), "POST")
        answer = json.loads(response.read())
    assert answer["body_len"] == total
    assert answer["sha256"] == digest.hexdigest()
    assert origin.last().header("Content-Length") == [str(total)]
    assert peak < 50 * MiB
    proxy.wait_settled(1)


def test_chunked_upload_forwarded_chunked(proxy, origin):
    body = os.urandom(300_000)
    reply = call(proxy.port, "POST", "/echo/chunked", body=body, chunked=True)
    assert reply.json()["sha256"] == hashlib.sha256(body).hexdigest()
    received = origin.last()
    assert received.header("Transfer-Encoding") == ["chunked"]
    assert received.header("Content-Length") == []
    assert received.body_len == len(body)


def test_content_length_zero_and_absent(proxy, origin):
    call(proxy.port, "DELETE", "/echo/zero", body=b"")
    assert origin.last().header("Content-Length") == ["0"]
    call(proxy.port, "GET", "/echo/none")
    assert origin.last().header("Content-Length") == []
    assert origin.last().header("Transfer-Encoding") == []


# -- streaming the response -------------------------------------------------------------------

def test_slow_reader_keeps_memory_bounded(make_proxy, origin):
    # idle_timeout is short: the time the client keeps us paused must not count as idle.
    proxy = make_proxy(origin.url, idle_timeout=0.5)
    total = GiB
    process = psutil.Process()
    before = process.memory_info().rss
    with connect(proxy.port, rcvbuf=64 * 1024, timeout=30) as sock:
        sock.sendall(b"GET /stream?n=%d HTTP/1.1\r\nHost: x\r\n\r\n" % total)
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(1)
        assert head.startswith(b"HTTP/1.1 200 ")
        assert b"Content-Length: %d\r\n" % total in head
        # The client reads nothing now. The proxy must stop reading from the origin, which in
        # turn gets paused instead of pushing its gigabyte into the proxy's memory.
        assert origin.stream_paused.wait(10)
        assert not origin.stream_done.wait(1.0), "the proxy swallowed the whole body"
        stalled_at = origin.sent
        assert stalled_at < 64 * MiB
        peak = process.memory_info().rss - before
        # Now read it all, fast, watching memory.
        buffer = bytearray(MiB)
        view = memoryview(buffer)
        received = 0
        first = b""
        while received < total:
            n = sock.recv_into(view)
            assert n, f"connection closed after {received} bytes"
            if not first:
                first = bytes(view[:min(n, 1024)])
            received += n
            if received % (64 * MiB) < n:
                peak = max(peak, process.memory_info().rss - before)
    assert received == total
    assert first == PATTERN[:len(first)]
    assert peak < 50 * MiB, f"RSS grew by {peak / MiB:.1f} MiB"
    proxy.wait_settled(1)
    assert not any(e.get("log_level") and e["log_level"].name == "warn" for e in proxy.events)


def test_client_disconnect_stops_backend_transfer(proxy, origin):
    with connect(proxy.port) as sock:
        sock.sendall(b"GET /stream?n=%d HTTP/1.1\r\nHost: x\r\n\r\n" % GiB)
        assert sock.recv(65536)
    assert origin.stream_stopped.wait(10)
    assert not origin.stream_done.is_set()
    proxy.wait_settled(1)


def test_chunked_response_streamed(proxy, origin):
    reply = call(proxy.port, "GET", "/stream?n=3000000&cl=0")
    assert reply.header("Transfer-Encoding") == ["chunked"]
    assert len(reply.body) == 3_000_000


# -- headers, cookies, redirects, statuses ----------------------------------------------------

def test_repeated_headers_and_cookies_untouched(proxy, origin):
    reply = call(proxy.port, "GET", "/cookies", headers=[
        ("X-Multi", "one"), ("X-Multi", "two, three"), ("Cookie", "sessionid=abc; csrftoken=x"),
        ("Accept", "text/html"), ("Accept", "application/json"),
    ])
    received = origin.last()
    assert received.header("X-Multi") == ["one", "two, three"]
    assert received.header("Cookie") == ["sessionid=abc; csrftoken=x"]
    assert received.header("Accept") == ["text/html", "application/json"]
    assert reply.header("Set-Cookie") == ["a=1; Path=/; HttpOnly", "b=2, x; Max-Age=60; Secure"]


@pytest.mark.parametrize("code, location", [
    (301, "/moved/here?x=1"), (302, "http://public.example/elsewhere"), (307, "/again")])
def test_redirects_passed_through_not_followed(proxy, origin, code, location):
    reply = call(proxy.port, "GET", f"/redirect?code={code}&to={location}")
    assert reply.status == code
    assert reply.header("Location") == [location]
    assert [r.path for r in origin.requests] == ["/redirect"]


@pytest.mark.parametrize("code, reason, body", [
    (418, "Short And Stout", b"status page 418"),
    (500, "Internal Server Error", b"status page 500"),
    (204, "No Content", b""),
    (304, "Not Modified", b""),
])
def test_statuses_passed_through(proxy, origin, code, reason, body):
    query = f"/status?code={code}" + ("&reason=Short+And+Stout" if code == 418 else "")
    reply = call(proxy.port, "GET", query)
    assert (reply.status, reply.reason, reply.body) == (code, reason, body)
    if code == 304:
        assert reply.header("ETag") == ['"v1"']
    if code in (204, 304):
        assert reply.header("Transfer-Encoding") == []
        assert reply.header("Content-Type") == []


def test_correlation_id_added_both_ways(proxy, origin):
    reply = call(proxy.port, "GET", "/echo", headers=[("X-Correlation-ID", "cid-123")])
    assert reply.header("X-Correlation-ID") == ["cid-123"]
    assert origin.last().header("X-Correlation-ID") == ["cid-123"]
    reply = call(proxy.port, "GET", "/echo", headers=[("X-Correlation-ID", "bad id!")])
    generated = origin.last().header("X-Correlation-ID")
    assert len(generated) == 1 and generated[0] != "bad id!"
    assert reply.header("X-Correlation-ID") == generated


def test_host_and_forwarded_headers_from_untrusted_peer(proxy, origin):
    call(proxy.port, "GET", "/echo", headers=[
        ("Host", "public.example"), ("X-Forwarded-For", "203.0.113.9"),
        ("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "evil.example")])
    received = origin.last()
    assert received.header("Host") == ["public.example"]
    assert received.header("X-Forwarded-For") == ["127.0.0.1"]
    assert received.header("X-Forwarded-Proto") == ["http"]
    assert received.header("X-Forwarded-Host") == ["public.example"]


def test_forwarded_headers_from_trusted_peer(make_proxy, origin):
    proxy = make_proxy(origin.url, trusted_proxies=["127.0.0.0/8"])
    call(proxy.port, "GET", "/echo", headers=[
        ("Host", "public.example"), ("X-Forwarded-For", "203.0.113.9, 10.0.0.1"),
        ("X-Forwarded-For", "10.0.0.2"), ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "www.example")])
    received = origin.last()
    assert received.header("X-Forwarded-For") == ["203.0.113.9, 10.0.0.1, 10.0.0.2, 127.0.0.1"]
    assert received.header("X-Forwarded-Proto") == ["https"]
    assert received.header("X-Forwarded-Host") == ["www.example"]
    # Without incoming ones, a trusted peer gets ours too.
    call(proxy.port, "GET", "/echo", headers=[("Host", "public.example")])
    received = origin.last()
    assert received.header("X-Forwarded-For") == ["127.0.0.1"]
    assert received.header("X-Forwarded-Proto") == ["http"]
    assert received.header("X-Forwarded-Host") == ["public.example"]


def test_backend_host_when_not_preserving(make_proxy, origin):
    proxy = make_proxy(origin.url, preserve_host=False)
    call(proxy.port, "GET", "/echo", headers=[("Host", "public.example")])
    received = origin.last()
    assert received.header("Host") == [f"127.0.0.1:{origin.port}"]
    assert received.header("X-Forwarded-Host") == ["public.example"]


def test_hop_by_hop_headers_dropped(proxy, origin):
    reply = call(proxy.port, "GET", "/hop", headers=[
        ("Connection", "keep-alive, X-Private-Hop"), ("X-Private-Hop", "secret"),
        ("Keep-Alive", "timeout=5"), ("TE", "trailers"), ("Trailer", "X-Sum"),
        ("Proxy-Authorization", "Basic Zm9vOmJhcg=="), ("Proxy-Connection", "keep-alive"),
        ("Upgrade", "h2c"), ("X-End-To-End", "kept")])
    received = origin.last()
    for name in ("X-Private-Hop", "Keep-Alive", "TE", "Trailer", "Proxy-Authorization",
                 "Proxy-Connection", "Upgrade"):
        assert received.header(name) == [], name
    assert "x-private-hop" not in ",".join(received.header("Connection")).lower()
    assert received.header("X-End-To-End") == ["kept"]
    for name in ("Keep-Alive", "Proxy-Authenticate", "Trailer", "Upgrade"):
        assert reply.header(name) == [], name
    assert reply.header("X-End-To-End") == ["kept"]


def test_no_forward_proxy_escape(make_proxy, origin, origin_factory):
    evil = origin_factory("127.0.0.2")
    proxy = make_proxy(origin.url)
    evil_host = f"127.0.0.2:{evil.port}"
    # Absolute-form target.
    call(proxy.port, "GET", f"http://{evil_host}/x?q=1", headers=[("Host", evil_host)])
    assert origin.last().uri == b"/x?q=1"
    # Forged Host.
    call(proxy.port, "GET", "/y", headers=[("Host", evil_host)])
    assert origin.last().uri == b"/y"
    assert origin.last().header("Host") == [evil_host]
    # A path that looks like an authority.
    call(proxy.port, "GET", f"//{evil_host}/z", headers=[("Host", evil_host)])
    assert origin.last().uri == f"//{evil_host}/z".encode()
    assert evil.connections == 0 and evil.requests == []
    assert origin_form(b"http://evil.example") == b"/"
    assert origin_form(b"/a b#c\xce") == b"/a%20b%23c%CE"


# -- failures ---------------------------------------------------------------------------------

def test_backend_down_is_502(make_proxy):
    port = closed_port()
    proxy = make_proxy(f"http://127.0.0.1:{port}")
    reply = call(proxy.port, "GET", "/anything", headers=[("X-Correlation-ID", "cid-502")])
    assert reply.status == 502
    assert reply.header("Content-Type") == ["application/json"]
    assert reply.json() == {"error": "bad_gateway", "message": "The backend could not be reached.",
                            "status": 502, "parameter": None, "correlation_id": "cid-502"}
    assert str(port).encode() not in reply.body and b"127.0.0.1" not in reply.body
    proxy.wait_settled(1)
    warnings = [e for e in proxy.events if e["log_level"].name == "warn"]
    assert warnings and all(e["correlation_id"] == "cid-502" for e in warnings)


def test_backend_down_during_upload_is_502_and_closes(make_proxy):
    proxy = make_proxy(f"http://127.0.0.1:{closed_port()}")
    with connect(proxy.port) as sock:
        sock.sendall(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
                     + b"a" * 1000)
        response = read_response(sock.makefile("rb"), "POST")
        assert response.status == 502
        assert json.loads(response.read())["error"] == "bad_gateway"
        assert is_closed(sock)
    proxy.wait_settled(1)


def test_no_headers_in_time_is_504(make_proxy, origin):
    proxy = make_proxy(origin.url, header_timeout=0.5)
    reply = call(proxy.port, "GET", "/delay?s=30", headers=[("X-Correlation-ID", "cid-504")])
    assert reply.status == 504
    assert reply.json()["error"] == "gateway_timeout"
    assert reply.json()["correlation_id"] == "cid-504"
    assert str(origin.port).encode() not in reply.body
    proxy.wait_settled(1)


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_backend_dying_mid_body_aborts_client(proxy, origin, framing):
    cl = 1 if framing == "content-length" else 0
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    conn.request("GET", f"/die?n=262144&cl={cl}")
    response = conn.getresponse()
    assert response.status == 200
    with pytest.raises((http.client.IncompleteRead, ConnectionError)):
        response.read()
    conn.close()
    proxy.wait_settled(1)
    assert any("broke off" in e["log_format"] for e in proxy.events)


def test_stalled_backend_body_is_aborted(make_proxy, origin):
    proxy = make_proxy(origin.url, idle_timeout=0.5)
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    conn.request("GET", "/stall?n=1000")
    response = conn.getresponse()
    with pytest.raises((http.client.IncompleteRead, ConnectionError)):
        response.read()
    conn.close()
    proxy.wait_settled(1)


def test_keep_alive_pool_reuses_backend_connection(proxy, origin):
    for i in range(6):
        method = "POST" if i % 2 else "GET"
        reply = call(proxy.port, method, f"/echo/{i}", body=b"b" * i if i % 2 else None)
        assert reply.status == 200
    assert len(origin.requests) == 6
    assert origin.connections == 1
