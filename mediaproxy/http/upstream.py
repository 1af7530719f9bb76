"""
The pass-through half of the proxy: every request that is not an image transform is forwarded
to the one backend and the response is streamed back, both ways with backpressure.

The backend hop uses a plain :class:`twisted.web.client.Agent` over a persistent
:class:`~twisted.web.client.HTTPConnectionPool`. Not treq's ``HTTPClient``: it keeps a cookie jar
(one client's ``Set-Cookie`` would be sent with another client's requests), follows redirects
and rewrites headers, where a reverse proxy must pass all of that through untouched. Not
``twisted.web.proxy`` either: it forces ``Connection: close``, buffers the request body and
flattens repeated headers.

Only the host and port of ``backend.url`` are ever connected to (the pool is keyed by them); the
client's request target contributes its path and query only, whatever its Host header or an
absolute-form target say. The path of ``backend.url`` is not used: the backend serves the same
path space as the proxy.

Resilience (see docs/security.md):

* at most ``backend.max_concurrent`` exchanges are in flight; beyond that a request gets a 503
  ``backend_busy`` at once instead of queueing without bound, unless a download whose client
  reads nothing has kept its backend paused for ``server.evict_stalled_after`` seconds: that one
  is closed and its slot taken (slow clients hold no slot they are not using);
* a bodiless idempotent request (GET, HEAD, OPTIONS without a body) is retried after a
  connection error or a 502/503/504 (``backend.retries``, exponential backoff with full
  jitter), only while nothing of the response has been written to the client;
* the pass-through circuit breaker (``backend.passthrough_breaker``) counts **only** connection
  errors and timeouts: a backend that answers, even with its own 500 page, is up, so one broken
  view cannot open it. While it is open every pass-through request gets a fast 503 with
  ``Retry-After``.

These decisions (admission, retries, what the breaker counts, the header timeout) are
:mod:`mediaproxy.http.policy`'s, the same for source fetches; this module keeps what is its own:
streaming the request body to the backend and the response to the client.

Whether a request may be forwarded at all (``mediaproxy_check_passthrough``: the rate
limiter's ``ratelimit.passthrough_rate``) is asked by the core before it gets here.

Why one module: the exchange, the body producers and the response pump are one state machine
seen from two sides (the client's connection and the backend's); each part reads and changes
the others' state (pausing, finishing, aborting), and apart they would need that state passed
back and forth through an interface of their own.
"""

from __future__ import annotations

import re
from collections import deque
from typing import Any, Callable, Sequence
from urllib.parse import urlsplit

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent, FileBodyProducer, HTTPConnectionPool, PotentialDataLoss, ResponseDone,
)
from twisted.web.http import NO_BODY_CODES
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from .breaker import CircuitBreaker, ConcurrencyLimit, RetryPolicy
from .connection import BufferBudget
from ..config import BackendConfig, ServerConfig
from ..logs import Throttle
from .endpoints import BackendEndpoints
from .errors import CORRELATION_HEADER, write_error
from .pool import QuietConnectionPool
from ..models import RequestInfo
from .policy import (
    ANSWERED, CANCELLED, PASSTHROUGH_FAILURES, TIMEOUT, BackendPolicy, failure_kind,
)
from .requestinfo import is_trusted

_log = Logger(namespace="mediaproxy.upstream")

#: Methods retried after a connection error or a 502/503/504 when they carry no body.
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS"})
#: Seconds between two looks for a free backend slot while a request waits (``server.slot_wait``).
SLOT_POLL = 0.1

#: Headers that describe one connection, not the message; never forwarded either way.
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate",
    b"proxy-authorization", b"te", b"trailer", b"trailers", b"transfer-encoding", b"upgrade",
})

# Request headers the proxy sets itself. Content-Length comes from the body producer (the
# client's value, unchanged); Expect was answered by our own channel (100-continue).
_SET_BY_PROXY = frozenset({
    b"host", b"content-length", b"expect", b"x-forwarded-for", b"x-forwarded-proto",
    b"x-forwarded-host", CORRELATION_HEADER.lower(),
})

# Bytes a request line may not carry (and '#', which would start a fragment): percent-encoded.
_UNSAFE_TARGET = re.compile(rb"[^\x21\x22\x24-\x7e]")


def backend_origin(backend: BackendConfig) -> tuple[str, str]:
    """``("http://host:port", "host:port")`` of ``backend.url``; the default port is left out of
    the host, as a client would send it."""
    parts = urlsplit(backend.url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    default = 443 if parts.scheme == "https" else 80
    hostport = host if parts.port in (None, default) else f"{host}:{parts.port}"
    return f"{parts.scheme}://{hostport}", hostport


def origin_form(uri: bytes) -> bytes:
    """The path and query of a raw request target, as sent to the backend.

    An absolute-form target (``http://other/x?q``) keeps only its path and query, the same way
    :func:`mediaproxy.http.requestinfo.from_request` derives ``RequestInfo.path``. Bytes outside
    printable ASCII and ``#`` are percent-encoded, everything else is kept as the client sent
    it.
    """
    if not uri.startswith(b"/") and b"://" in uri.split(b"?", 1)[0][:16]:
        rest = uri.split(b"://", 1)[1]
        slash = rest.find(b"/")
        uri = rest[slash:] if slash >= 0 else b"/"
    if not uri.startswith(b"/"):
        uri = b"/" + uri
    return _UNSAFE_TARGET.sub(lambda m: b"%%%02X" % m.group()[0], uri)


def _abort(request) -> None:
    transport = request.transport
    if transport is None:
        return
    abort = getattr(transport, "abortConnection", None) or transport.loseConnection
    abort()


@attrs.define(eq=False)
class Upstream:
    """The backend hop: ``proxy(request, info, log)`` forwards one request and streams the
    response back. Build one per process and ``close()`` it at shutdown. ``breaker``, ``retry``
    and ``limit`` are the parts of its :class:`~mediaproxy.http.policy.BackendPolicy`
    (``backend_policy``), built from ``backend`` unless given."""

    reactor: Any
    backend: BackendConfig
    server: ServerConfig
    pool: HTTPConnectionPool = None  # type: ignore[assignment]  # None: made by __attrs_post_init__
    breaker: CircuitBreaker | None = None
    retry: RetryPolicy | None = None
    limit: ConcurrencyLimit | None = None
    agent: Agent = attrs.field(init=False)
    backend_policy: BackendPolicy = attrs.field(init=False)
    #: Response bytes held per client connection beyond its socket buffer
    #: (``server.response_buffer``; see :class:`_ResponsePump`).
    response_buffer: int = attrs.field(init=False)
    #: ``server.evict_stalled_after``.
    evict_stalled_after: float = attrs.field(init=False)
    #: ``server.slot_wait``: how long a request waits for a backend slot when all are taken.
    slot_wait: float = attrs.field(init=False)
    #: Requests waiting for a backend slot now (at most ``backend.max_concurrent``).
    slot_waiters: int = attrs.field(init=False, default=0)
    #: Response bytes queued for slow clients by all exchanges (``server.response_buffer_total``).
    response_budget: BufferBudget = attrs.field(init=False)
    #: Exchanges whose backend is paused by a client that does not read, oldest first, with
    #: the time the pause began (see :meth:`_evict_stalled`).
    stalled: dict = attrs.field(init=False, factory=dict)
    #: A backend that is down fails every request: one warning per kind of failure every 10 s,
    #: the rest at debug (each with its request's correlation ID).
    warnings: Throttle = attrs.field(init=False, factory=lambda: Throttle(10.0))
    _origin: bytes = attrs.field(init=False)
    _backend_host: bytes = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.response_buffer = getattr(self.server, "response_buffer", 256 * 1024)
        self.evict_stalled_after = getattr(self.server, "evict_stalled_after", 1.0)
        self.slot_wait = getattr(self.server, "slot_wait", 0.0)
        self.response_budget = BufferBudget(
            getattr(self.server, "response_buffer_total", 64 * 1024 * 1024))
        if self.pool is None:
            self.pool = _Pool(self.reactor, persistent=True)
            self.pool.maxPersistentPerHost = self.backend.max_connections
            self.pool.cachedConnectionTimeout = self.backend.pool_idle_timeout
            # No retry of its own: the policy's attempt budget is the only one (policy.py).
            self.pool.retryAutomatically = False
        self.agent = Agent.usingEndpointFactory(
            self.reactor, BackendEndpoints(self.reactor, self.backend.connect_timeout),
            pool=self.pool)
        origin, hostport = backend_origin(self.backend)
        self._origin = origin.encode("ascii")
        self._backend_host = hostport.encode("ascii")
        policy = self.backend_policy = BackendPolicy.from_config(
            self.reactor, self.backend, self.backend.passthrough_breaker, PASSTHROUGH_FAILURES,
            name="passthrough", log=_log, breaker=self.breaker, retry=self.retry,
            limit=self.limit, purpose="passthrough")
        self.breaker, self.retry, self.limit = policy.breaker, policy.retry, policy.limit

    def proxy(self, request, info: RequestInfo, log) -> Deferred[None]:
        """Forward ``request`` (a :class:`~mediaproxy.http.streaming.StreamingRequest`; a stock
        twisted.web request works too, its buffered body is sent) and stream the response into
        it. The Deferred fires when the exchange is over, never with a failure: errors are
        answered (502, 504) or, once the response has started, end the client connection."""
        return _Exchange(self, request, info, log).start()

    def close(self) -> Deferred[None]:
        """Close the pool's idle keep-alive connections."""
        return self.pool.closeCachedConnections()

    def _evict_stalled(self) -> bool:
        """Every backend slot is taken: give a new request the slot of the download whose client
        has kept the backend paused longest, if that is at least ``server.evict_stalled_after``
        seconds. A client that reads nothing then holds no slot it is not using, whatever the
        write deadline. True when a slot was freed."""
        for exchange, since in self.stalled.items():
            if self.reactor.seconds() - since < self.evict_stalled_after:
                return False
            exchange.evict()
            return True
        return False

    def forward_headers(self, request, info: RequestInfo) -> Headers:
        """The headers sent to the backend for ``request`` (see the module docstring)."""
        incoming: Headers = request.requestHeaders
        named: set[bytes] = set()
        for value in incoming.getRawHeaders(b"connection", ()):
            named.update(t.strip().lower() for t in value.split(b",") if t.strip())
        drop = HOP_BY_HOP | _SET_BY_PROXY | named
        out = Headers()
        for name, values in incoming.getAllRawHeaders():
            if name.lower() not in drop:
                out.setRawHeaders(name, list(values))

        host = incoming.getRawHeaders(b"host")
        if self.server.preserve_host and host:
            out.setRawHeaders(b"Host", [host[0]])
        else:
            out.setRawHeaders(b"Host", [self._backend_host])

        trusted = is_trusted(info.peer_ip, self.server.trusted_proxies)

        def from_trusted(name: bytes) -> Sequence[bytes] | None:
            if not trusted or name in named:
                return None
            return incoming.getRawHeaders(name)

        hops = [v.strip() for v in from_trusted(b"x-forwarded-for") or () if v.strip()]
        if info.peer_ip:
            hops.append(info.peer_ip.encode("latin-1"))
        if hops:
            out.setRawHeaders(b"X-Forwarded-For", [b", ".join(hops)])
        out.setRawHeaders(b"X-Forwarded-Proto",
                          from_trusted(b"x-forwarded-proto") or [info.scheme.encode("latin-1")])
        forwarded_host = from_trusted(b"x-forwarded-host") or (host[:1] if host else None)
        if forwarded_host:
            out.setRawHeaders(b"X-Forwarded-Host", forwarded_host)
        out.setRawHeaders(CORRELATION_HEADER, [info.correlation_id.encode("latin-1")])
        return out


@implementer(IBodyProducer)
class _SentNotifier:
    """Wraps a body producer to learn when the whole body has been written."""

    def __init__(self, body, sent: Callable[[], None]):
        self._body = body
        self._sent = sent
        self.length = body.length

    def startProducing(self, consumer) -> Deferred[None]:
        def done(result):
            self._sent()
            return result
        return self._body.startProducing(consumer).addCallback(done)

    def pauseProducing(self) -> None:
        self._body.pauseProducing()

    def resumeProducing(self) -> None:
        self._body.resumeProducing()

    def stopProducing(self) -> None:
        self._body.stopProducing()


@implementer(IBodyProducer)
class _EmptyBody:
    """``Content-Length: 0`` sent as such (Agent omits it for methods other than POST/PUT)."""

    length = 0

    def startProducing(self, consumer) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        d.callback(None)
        return d

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class _Pool(QuietConnectionPool):
    """The connection pool (quiet: no line per connection), never taking back a connection that is already being closed.

    Twisted returns a connection to the pool as soon as its response has been read, even when
    the body's protocol (:class:`_Discard`) has just called ``stopProducing``, which closes the
    socket, because the rest of the response came in the same read. The next request taken
    from the pool then went out on that socket and lost its answer: the backend saw it, and
    the Agent (``retryAutomatically``) sent an idempotent request again, so a retried 503 hit
    the backend twice per retry."""

    def _putConnection(self, key, connection):
        transport = connection.transport
        while transport is not None:
            if getattr(transport, "disconnecting", False):
                return
            transport = getattr(transport, "transport", None)
        super()._putConnection(key, connection)


class _Discard(Protocol):
    """Receives a response body nobody wants: drop the backend connection."""

    #: the TCP transport (also a push producer, with abortConnection): Twisted types it ITransport | None
    transport: Any

    def connectionMade(self) -> None:
        self.transport.stopProducing()


@implementer(IPushProducer)
class _ResponsePump(Protocol):
    """Writes the backend's response body into the client request.

    It is the request's streaming producer. When the client's write buffer is full, Twisted
    pauses it; it then keeps reading from the backend into its own buffer of up to
    ``server.response_buffer`` bytes (all exchanges together at most
    ``server.response_buffer_total``), and only when that is full pauses the backend transport
    (the Agent's ``TransportProxyProducer``), so a slow client slows down reading from the
    backend instead of filling memory. A response that fits in the buffer is read from the
    backend at the backend's pace: the backend slot is given back as soon as the backend is
    done, and the slow client drains the buffer holding nothing scarce (under the channel's
    write deadline, ``server.write_timeout``). While the backend is paused the slot is held,
    also only under that write deadline.

    It also keeps the idle timeout: no body data for ``idle_timeout`` seconds aborts the
    transfer, not counting the time the backend was paused by us.
    """

    #: the TCP transport (also a push producer, with abortConnection): Twisted types it ITransport | None
    transport: Any

    def __init__(self, exchange: "_Exchange"):
        self._x = exchange
        self._reactor = exchange.reactor
        self._idle_timeout = exchange.upstream.backend.idle_timeout
        self._limit = exchange.upstream.response_buffer
        self._timer = None
        self._last = 0.0
        self._registered = False
        self._queue: deque[bytes] = deque()
        self._queued = 0
        self._reason: Failure | None = None
        self._draining = False       # the backend is done, the client still reads the buffer
        self.paused = False          # by the client (its write buffer is full)
        self.backend_paused = False  # by us (our buffer is full too)
        self.ended = False           # the backend body is over
        self.idle_expired = False
        self.bytes = 0

    # -- body protocol (from the Agent) ---------------------------------------------------

    def connectionMade(self) -> None:
        request = self._x.request
        if request.channel is not None:
            request.registerProducer(self, True)
            self._registered = True
        self._last = self._reactor.seconds()
        self._arm()

    def dataReceived(self, data: bytes) -> None:
        self._last = self._reactor.seconds()
        self.bytes += len(data)
        if self.paused or self._queue:
            self._queue.append(data)
            self._add(len(data))
            self._hold_backend()
        else:
            self._x.request.write(data)

    def connectionLost(self, reason=None) -> None:
        self.ended = True
        self._disarm()
        self._x.upstream.stalled.pop(self._x, None)
        if self._queue and (reason is None or reason.check(ResponseDone, PotentialDataLoss)):
            # The backend is done; the client still has the buffer to read. The slot is not
            # needed for that.
            self._reason = reason
            self._draining = True
            self._x.call.release()
            return
        self._queue.clear()
        self._add(-self._queued)
        self._end(reason)

    def _end(self, reason) -> None:
        request = self._x.request
        if self._registered and request.channel is not None:
            request.unregisterProducer()
        self._registered = False
        self._x.body_ended(reason, self)

    def _add(self, n: int) -> None:
        self._queued += n
        self._x.upstream.response_budget.add(n)

    def _hold_backend(self) -> None:
        full = self._queued >= self._limit or self._x.upstream.response_budget.full
        if full and not self.backend_paused and not self.ended:
            self.backend_paused = True
            self._disarm()
            self._x.upstream.stalled[self._x] = self._reactor.seconds()
            self.transport.pauseProducing()

    # -- producer (for the client request) ------------------------------------------------

    def pauseProducing(self) -> None:
        self.paused = True
        if self._limit == 0:
            self._hold_backend()

    def resumeProducing(self) -> None:
        self.paused = False
        request = self._x.request
        while self._queue and not self.paused and request.channel is not None:
            data = self._queue.popleft()
            self._add(-len(data))
            request.write(data)   # may pause us again at once
        if self._queue or self.paused:
            return
        if self._draining:
            self._draining = False
            self._end(self._reason)
            return
        if self.backend_paused:
            self.backend_paused = False
            self._x.upstream.stalled.pop(self._x, None)
            self._last = self._reactor.seconds()
            self._arm()
            self.transport.resumeProducing()

    def stopProducing(self) -> None:
        self._disarm()
        self._queue.clear()
        self._add(-self._queued)
        if self._draining:
            self._draining = False
            self._end(self._reason)
        elif not self.ended:
            self.transport.stopProducing()

    def delivered(self) -> None:
        """After ``deliverBody``: it resumes the transport, which undoes a pause of ours that
        came while the body protocol was being connected."""
        if self.backend_paused and not self.ended:
            self.transport.pauseProducing()

    # -- idle timeout --------------------------------------------------------------------

    def _arm(self, delay: float | None = None) -> None:
        if self._timer is None and not self.ended:
            self._timer = self._reactor.callLater(
                self._idle_timeout if delay is None else delay, self._check_idle)

    def _disarm(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def _check_idle(self) -> None:
        self._timer = None
        if self.backend_paused or self.ended:
            return
        idle = self._reactor.seconds() - self._last
        if idle < self._idle_timeout:
            self._arm(self._idle_timeout - idle)
            return
        self.idle_expired = True
        self._x.log.warn(
            "backend response stalled for {seconds} s after {bytes} bytes; aborting "
            "{method} {path}", seconds=self._idle_timeout, bytes=self.bytes,
            method=self._x.info.method, path=self._x.info.path,
            correlation_id=self._x.info.correlation_id)
        self.transport.stopProducing()


class _Exchange:
    """One request forwarded to the backend and its response streamed back."""

    def __init__(self, upstream: Upstream, request, info: RequestInfo, log):
        self.upstream = upstream
        self.reactor = upstream.reactor
        self.request = request
        self.info = info
        self.log = log
        self.done: Deferred[None] = Deferred()
        self.started = self.reactor.seconds()
        self.response_d: Deferred | None = None
        self.got_response = False
        self.client_gone = False
        self.aborting = False
        self.timed_out = False
        self.pump: _ResponsePump | None = None
        self.call = upstream.backend_policy.call()

    def _fields(self, **fields) -> dict:
        return {"method": self.info.method, "path": self.info.path,
                "correlation_id": self.info.correlation_id,
                "ms": (self.reactor.seconds() - self.started) * 1000, **fields}

    def start(self) -> Deferred[None]:
        try:
            self._start()
        except Exception:
            self._unexpected(Failure())
        return self.done

    def _start(self) -> None:
        request = self.request
        upstream = self.upstream
        request.notifyFinish().addErrback(self._client_lost)
        refusal = self._admit()
        if refusal is not None and upstream.slot_wait > 0 and \
                upstream.slot_waiters < self.call.policy.limit.limit:
            # every slot is taken: wait a little for one (a download ends, or one whose client
            # reads nothing is evicted) rather than refuse at once
            upstream.slot_waiters += 1
            self.slot_deadline = self.reactor.seconds() + upstream.slot_wait
            self.reactor.callLater(SLOT_POLL, self._poll_slot)
            return
        if refusal is not None:
            self._busy(refusal)
            return
        self._begin()

    def _admit(self):
        refusal = self.call.admit()
        if refusal is not None and self.upstream._evict_stalled():
            refusal = self.call.admit()
        return refusal

    def _poll_slot(self) -> None:
        if self.client_gone or self.request.channel is None:
            self.upstream.slot_waiters -= 1
            self._settle()
            return
        refusal = self._admit()
        if refusal is None:
            self.upstream.slot_waiters -= 1
            self._begin()
        elif self.reactor.seconds() >= self.slot_deadline:
            self.upstream.slot_waiters -= 1
            self._busy(refusal)
        else:
            self.reactor.callLater(SLOT_POLL, self._poll_slot)

    def _busy(self, refusal) -> None:
        self.log.info("{in_flight} backend requests in flight; refusing {method} {path}",
                      **self._fields(in_flight=refusal.in_flight))
        self._answer(503, "backend_busy", "The server is busy; retry shortly.",
                     [(b"Retry-After", b"%d" % refusal.retry_after)])

    def _begin(self) -> None:
        request = self.request
        upstream = self.upstream
        self.url = upstream._origin + origin_form(request.uri)
        self.headers = upstream.forward_headers(request, self.info)
        self.body = self._body_producer()
        self.retryable = request.method in IDEMPOTENT and (
            self.body is None or isinstance(self.body, _EmptyBody))
        self._attempt()

    def _attempt(self) -> None:
        request = self.request
        if self.client_gone or request.channel is None:
            self._settle()
            return
        refusal = self.call.attempt()
        if refusal is not None:
            self.log.info("pass-through breaker open; refusing {method} {path}",
                          **self._fields())
            self._answer(503, "backend_unavailable",
                         "The backend is unavailable; retry shortly.",
                         [(b"Retry-After", b"%d" % refusal.retry_after)])
            return
        self.timed_out = False
        body = self.body
        if body is not None and not isinstance(body, _EmptyBody):
            body = _SentNotifier(body, self._start_header_timer)
        try:
            d = self.upstream.agent.request(request.method, self.url, self.headers.copy(), body)
        except ValueError as e:  # the Agent refuses a method or target it cannot send
            self.call.record(CANCELLED)   # nothing was sent: tells nothing about the backend
            self.log.info("cannot forward {method} {path}: {why}",
                          **self._fields(why=str(e)))
            self._answer(400, "bad_request", "The request cannot be forwarded.")
            return
        self.response_d = d
        if body is None or isinstance(body, _EmptyBody):
            self._start_header_timer()
        d.addCallbacks(self._got_response, self._request_failed)
        d.addErrback(self._unexpected)

    def _may_repeat(self) -> bool:
        """May this request be sent again at all: bodiless and idempotent, the client still
        there and nothing of the response written to it? (The policy decides the rest.)"""
        return (self.retryable and not self.client_gone and self.request.channel is not None
                and not self.request.startedWriting)

    def _retry_delay(self, kind: str, status: int | None = None) -> float | None:
        return self.call.retry_delay(kind, status) if self._may_repeat() else None

    def _retry(self, why: str, delay: float) -> None:
        # debug: a keep-alive connection the backend had just closed is routine, and
        # retries are counted (the final failure is a warning)
        self.log.debug("{method} {path}: {why} on attempt {attempt}; retrying in {delay:.3f} s",
                       **self._fields(why=why, attempt=self.call.attempts, delay=delay))
        self.got_response = False
        self.response_d = None
        self.call.retry_later(delay, self._attempt)

    def _body_producer(self):
        request = self.request
        body = getattr(request, "body", None)
        if body is not None:
            return body
        content = getattr(request, "content", None)
        if content is not None:  # a stock (buffering) twisted.web request
            content.seek(0, 2)
            size = content.tell()
            content.seek(0)
            if size:
                return FileBodyProducer(content)
        length = request.requestHeaders.getRawHeaders(b"content-length")
        if length and length[0].strip() == b"0":
            return _EmptyBody()
        return None

    # -- timers and cancellation -----------------------------------------------------------

    def _start_header_timer(self) -> None:
        if self.got_response or self.client_gone:
            return
        self.call.start_header_timer(self._header_timeout)

    def _header_timeout(self) -> None:
        if self.got_response or self.response_d is None:
            return
        self.timed_out = True
        self.response_d.cancel()

    def _client_lost(self, reason: Failure) -> None:
        if self.client_gone or self.aborting:
            return
        self.client_gone = True
        self.call.stop_header_timer()
        self.log.debug("client went away during {method} {path}: {why}",
                       **self._fields(why=reason.getErrorMessage()))
        if self.call.cancel_retry():
            self._settle()
        if not self.got_response and self.response_d is not None:
            self.call.record(CANCELLED)
            self.response_d.cancel()
        if self.pump is not None:
            self.pump.stopProducing()

    # -- the response ----------------------------------------------------------------------

    def _got_response(self, response) -> None:
        self.got_response = True
        self.call.stop_header_timer()
        self.call.record(ANSWERED, response.code)   # the backend is up, whatever the status
        if self.client_gone or self.request.channel is None:
            response.deliverBody(_Discard())
            self._settle()
            return
        delay = self._retry_delay(ANSWERED, response.code)
        if delay is not None:
            response.deliverBody(_Discard())
            self._retry(f"status {response.code}", delay)
            return
        self._write_head(response)
        self.pump = _ResponsePump(self)
        response.deliverBody(self.pump)
        self.pump.delivered()

    def _write_head(self, response) -> None:
        request = self.request
        request.setResponseCode(response.code, response.phrase)
        request.defaultContentType = None   # never invent a Content-Type
        request.responseHeaders.removeHeader(b"server")
        for name, values in response.headers.getAllRawHeaders():
            if name.lower() not in HOP_BY_HOP:
                request.responseHeaders.setRawHeaders(name, list(values))
        # The Agent takes Content-Length out of the headers (except for HEAD) into length.
        if (response.length is not UNKNOWN_LENGTH and request.method != b"HEAD"
                and response.code not in NO_BODY_CODES
                and not request.responseHeaders.hasHeader(b"content-length")):
            request.responseHeaders.setRawHeaders(b"Content-Length",
                                                  [b"%d" % response.length])
        request.responseHeaders.setRawHeaders(
            CORRELATION_HEADER, [self.info.correlation_id.encode("latin-1")])
        request.write(b"")  # send the head now: a streamed or long-polled body starts at once

    def body_ended(self, reason: Failure | None, pump: _ResponsePump) -> None:
        request = self.request
        if self.client_gone or self.aborting or request.channel is None:
            self._settle()
            return
        if reason is None or reason.check(ResponseDone, PotentialDataLoss):
            # logged first: the response leaves within finish() (send_now), and a request's
            # log lines are all written by the time its client has the answer
            self.log.debug("{method} {path} -> {code}, {bytes} bytes in {ms:.1f} ms",
                           **self._fields(code=request.code, bytes=pump.bytes))
            request.finish()
        else:
            why = "stalled" if pump.idle_expired else reason.getErrorMessage()
            self.log.warn("backend response to {method} {path} broke off after {bytes} "
                          "bytes ({why}); aborting the client connection",
                          **self._fields(bytes=pump.bytes, why=why))
            self.aborting = True
            _abort(request)
        self._settle()

    # -- errors ----------------------------------------------------------------------------

    def _request_failed(self, failure: Failure) -> None:
        self.call.stop_header_timer()
        if self.client_gone or self.request.channel is None:
            self.call.record(CANCELLED)
            self._settle()
            return
        if getattr(self.request, "body_timed_out", False):
            # The client, not the backend, was too slow (server.body_timeout).
            self.call.record(CANCELLED)
            self.log.info("request body of {method} {path} not complete in time",
                          **self._fields())
            self._answer(408, "request_timeout", "The request body did not arrive in time.")
            return
        kind = failure_kind(failure, self.timed_out)
        self.call.record(kind)   # counted only if a connection error or a timeout
        delay = self._retry_delay(kind)
        if delay is not None:
            self._retry(f"{failure.type.__name__}", delay)
            return
        if kind == TIMEOUT:
            self.upstream.warnings.warn(
                self.log, ("timeout",), "no response headers from the backend within "
                "{timeout} s for {method} {path}",
                **self._fields(timeout=self.upstream.backend.header_timeout))
            self._answer(504, "gateway_timeout", "The backend did not answer in time.")
            return
        self.upstream.warnings.warn(
            self.log, ("failed", failure.type.__name__),
            "backend request failed for {method} {path}: {why}",
            **self._fields(why=f"{failure.type.__name__}: {failure.getErrorMessage()}"))
        self._answer(502, "bad_gateway", "The backend could not be reached.")

    def _answer(self, status: int, error: str, message: str, headers=()) -> None:
        request = self.request
        if request.channel is not None and not request.startedWriting and not request.finished:
            request.defaultContentType = None
            write_error(request, status, error, message, self.info.correlation_id,
                        headers=headers)
        self._settle()

    def _unexpected(self, failure: Failure) -> None:
        self.log.failure("proxying {method} {path} failed", failure, **self._fields())
        self.call.record(CANCELLED)
        request = self.request
        if request.channel is not None and not request.finished:
            if request.startedWriting:
                self.aborting = True
                _abort(request)
            else:
                self._answer(502, "bad_gateway", "The backend could not be reached.")
        self._settle()

    def evict(self) -> None:
        """Give up this download (see :meth:`Upstream._evict_stalled`): its slot now, its
        backend connection and its client connection."""
        self.upstream.stalled.pop(self, None)
        self.log.warn("client of {method} {path} kept the backend paused for {seconds} s while "
                      "every backend slot is taken; closing it after {bytes} bytes",
                      **self._fields(seconds=self.upstream.evict_stalled_after,
                                     bytes=self.pump.bytes if self.pump else 0))
        self.aborting = True
        if self.pump is not None:
            self.pump.stopProducing()
        _abort(self.request)
        self._settle()

    def _settle(self) -> None:
        self.upstream.stalled.pop(self, None)
        self.call.release()
        if not self.done.called:
            self.done.callback(None)
