"""
Connection budgets: what one client connection may cost, in time and memory, whatever it does.

:class:`BudgetedChannel` is the :class:`~twisted.web.http.HTTPChannel` of
:class:`~mediaproxy.http.streaming.StreamingSite`. On top of Twisted's idle timeout
(``server.client_timeout``, reset by every byte) it keeps deadlines a trickling client cannot
push back:

* **header deadline** (``server.header_timeout``): from the first byte of a request to the end
  of its headers, in total. Then a 408 JSON error and the connection is closed.
* **body deadline** (``server.body_timeout``): from the end of the headers to the last byte of
  the body, in total. :meth:`StreamingRequest.body_deadline_passed
  <mediaproxy.http.streaming.StreamingRequest.body_deadline_passed>` answers 408 (or aborts a
  response already under way).
* **write deadline** (``server.write_timeout``): the transport pauses the channel when its write
  buffer is full (the client reads nothing); if it stays paused this long the connection is
  aborted. A closing connection gets the same time to drain, then it is aborted.

It also counts connections per client address (:class:`ClientCounter`,
``server.max_client_connections``). A connection over the cap is answered 429 on its first
request and closed. A peer in ``server.trusted_proxies`` (a CDN, a balancer) is not counted per
connection; its requests are counted per ``X-Forwarded-For`` client while in flight instead.

Every timer is the reactor's (``callLater`` of the site: a ``task.Clock`` in unit tests) and is
cancelled when the connection goes away. The header deadline and Twisted's idle timeout come
round on every request of a keep-alive connection, so their timers are not made and cancelled
per request: the header deadline is a time its one timer checks when it fires (set again for
the rest when a later request's headers are under way then), and the idle timer is kept while
a request is handled and does nothing if it fires then. Body, write and drain timers are
cancelled when their phase ends.
"""

from __future__ import annotations

from typing import Any, Callable

import attrs
from twisted.internet.protocol import connectionDone
from twisted.internet.tcp import Connection
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.http_headers import Headers

from .errors import error_body
from .requestinfo import correlation_id, is_trusted

_log = Logger(namespace="mediaproxy.connection")


@attrs.frozen
class ConnectionLimits:
    """The connection budgets of :class:`~mediaproxy.config.ServerConfig`, as one value."""

    header_timeout: float = 10.0
    body_timeout: float = 300.0
    write_timeout: float = 60.0
    body_buffer: int = 1024 * 1024
    body_buffer_total: int = 64 * 1024 * 1024
    response_buffer: int = 256 * 1024
    max_client_connections: int = 1024
    server_header: str = "mediaproxy"
    trusted_proxies: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, server) -> "ConnectionLimits":
        return cls(header_timeout=server.header_timeout, body_timeout=server.body_timeout,
                   write_timeout=server.write_timeout, body_buffer=server.body_buffer,
                   body_buffer_total=server.body_buffer_total,
                   response_buffer=server.response_buffer,
                   max_client_connections=server.max_client_connections,
                   server_header=server.server_header,
                   trusted_proxies=tuple(server.trusted_proxies))


class ClientCounter:
    """Concurrent connections (or in-flight requests) per client address, under a cap."""

    def __init__(self, cap: int):
        self.cap = cap
        self.counts: dict[str, int] = {}

    def acquire(self, address: str) -> bool:
        """Count one more for ``address``; False (and nothing counted) over the cap."""
        count = self.counts.get(address, 0)
        if self.cap and count >= self.cap:
            return False
        self.counts[address] = count + 1
        return True

    def release(self, address: str) -> None:
        count = self.counts.get(address, 0) - 1
        if count > 0:
            self.counts[address] = count
        else:
            self.counts.pop(address, None)


class BufferBudget:
    """Request body bytes buffered by the whole process, and the bodies waiting for room.

    A body adds what it holds (:meth:`add`, negative to give back). While :attr:`full`, bodies
    that are still buffering pause their client and wait (:meth:`wait`); giving bytes back wakes
    them (each re-checks, and pauses again if there is still no room)."""

    def __init__(self, total: int):
        self.total = total
        self.used = 0
        self._waiting: dict[int, Callable[[], None]] = {}

    @property
    def full(self) -> bool:
        return self.used >= self.total

    def add(self, n: int) -> None:
        self.used += n
        if n < 0 and self._waiting and not self.full:
            waiting, self._waiting = self._waiting, {}
            for wake in waiting.values():
                wake()

    def wait(self, key: int, wake: Callable[[], None]) -> None:
        self._waiting[key] = wake

    def forget(self, key: int) -> None:
        self._waiting.pop(key, None)


def raw_error(status: int, reason: bytes, error: str, message: str, server: str) -> bytes:
    """A whole HTTP/1.1 error response with the JSON error body and ``Connection: close``, for
    the places where there is no request object to answer through (the header deadline)."""
    cid = correlation_id(None)
    body = error_body(status, error, message, cid)
    head = [b"HTTP/1.1 %d %s" % (status, reason), b"Content-Type: application/json",
            b"Content-Length: %d" % len(body), b"Cache-Control: no-store",
            b"X-Content-Type-Options: nosniff", b"Connection: close",
            b"X-Correlation-ID: " + cid.encode("ascii")]
    if server:
        head.append(b"Server: " + server.encode("ascii"))
    return b"\r\n".join(head) + b"\r\n\r\n" + body


class BudgetedChannel(HTTPChannel):
    """An :class:`HTTPChannel` with the header, body and write deadlines and the per-client
    connection count (see the module docstring). ``site`` is a
    :class:`~mediaproxy.http.streaming.StreamingSite` (its ``limits`` and ``clients``)."""

    #: the TCP transport (also a push producer, with abortConnection): Twisted types it ITransport | None
    transport: Any

    site: Any = None
    _phase = "idle"          # idle -> headers -> body -> handling -> idle
    _client: str | None = None
    over_cap = False
    _header_timer = None
    _body_timer = None
    _write_timer = None
    _drain_timer = None
    _gone = False
    _header_due = 0.0        # when the headers being received must be complete
    _idle_paused = False     # Twisted's idle timeout is off while a request is handled
    _peer = None
    _host = None
    _seconds: Callable[[], float] | None = None  # the clock of callLater (None: timers are set eagerly)
    #: ready header lines the response being started adds after its ``Headers`` (see
    #: :meth:`StreamingRequest.add_head <mediaproxy.http.streaming.StreamingRequest.add_head>`)
    head_lines: bytes = b""

    @property
    def limits(self) -> ConnectionLimits:
        return getattr(self.site, "limits", None) or ConnectionLimits()

    # -- the connection --------------------------------------------------------------------

    def connectionMade(self) -> None:
        # The clock callLater schedules on (the reactor; a task.Clock in tests), for the
        # deadlines checked when they fire instead of rescheduled per request.
        self._seconds = getattr(getattr(self.callLater, "__self__", None), "seconds", None)
        super().connectionMade()
        host = getattr(self.getPeer(), "host", "") or ""
        clients = getattr(self.site, "clients", None)
        if clients is None or not host or is_trusted(host, self.limits.trusted_proxies):
            return
        if clients.acquire(host):
            self._client = host
        else:
            self.over_cap = True
            _log.warn("client {client} is over {cap} concurrent connections; refusing",
                      client=host, cap=clients.cap)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._gone = True
        for name in ("_header_timer", "_body_timer", "_write_timer", "_drain_timer"):
            self._cancel(name)
        if self._client is not None:
            self.site.clients.release(self._client)
            self._client = None
        super().connectionLost(reason)

    def getPeer(self):
        # Asked by every request (Twisted's Request.__init__, our client address): it cannot
        # change on a connection, and the transport makes a new address object each time.
        peer = self._peer
        if peer is None:
            peer = self._peer = super().getPeer()
        return peer

    def getHost(self):
        host = self._host   # as getPeer: the transport asks the socket (a system call) each time
        if host is None:
            host = self._host = super().getHost()
        return host

    def setTimeout(self, period):
        """Twisted's idle timeout (``server.client_timeout``) is turned off while a request is
        handled and on again after it: a cancelled timer and a new ``callLater`` per request.
        Turned off, the pending timer is kept instead, and does nothing if it fires while a
        request is handled (:meth:`timeoutConnection`); turned on, it is reset to the full
        period (moving a timer later is free in Twisted). When the connection is gone it is
        cancelled as before."""
        self._idle_paused = False
        if period is None and not self._gone:
            call = getattr(self, "_TimeoutMixin__timeoutCall", None)
            if call is not None and call.active():
                previous, self.timeOut = self.timeOut, None
                self._idle_paused = True
                return previous
        return super().setTimeout(period)

    def timeoutConnection(self) -> None:
        if self._idle_paused:   # the kept timer fired while a request was handled: no timeout
            return
        super().timeoutConnection()

    def _later(self, name: str, delay: float, call: Callable[[], None]) -> None:
        if getattr(self, name) is None and not self._gone:
            setattr(self, name, self.callLater(delay, self._fire, name, call))  # type: ignore[call-arg]  # the reactor's callLater

    def _fire(self, name: str, call: Callable[[], None]) -> None:
        setattr(self, name, None)
        call()

    def _cancel(self, name: str) -> None:
        timer = getattr(self, name)
        setattr(self, name, None)
        if timer is not None and timer.active():
            timer.cancel()

    def writeHeaders(self, version, code, reason, headers) -> None:
        # Twisted's own writes the block as a sequence of four pieces a header, each checked
        # and buffered apart: one joined block is the same bytes for a fraction of the work
        # (an image response carries some fifteen headers).
        extra, self.head_lines = self.head_lines, b""
        if not isinstance(headers, Headers):   # a list of pairs (not from our requests)
            pairs = [tuple(line.split(b": ", 1)) for line in extra.split(b"\r\n") if line]
            super().writeHeaders(version, code, reason, [*headers, *pairs])
            return
        block = [version, b" ", code, b" ", reason, b"\r\n"]
        for name, values in headers.getAllRawHeaders():
            for value in values:
                block += (name, b": ", value, b"\r\n")
        block += (extra, b"\r\n")
        self.transport.write(b"".join(block))

    # -- header deadline -------------------------------------------------------------------

    def _request_started(self) -> None:
        if self._phase == "idle":
            self._phase = "headers"
            timeout = self.limits.header_timeout
            seconds = self._seconds
            if seconds is None:
                self._later("_header_timer", timeout, self._header_deadline)
                return
            # The deadline is a time; one timer checks it when it fires and is set again for
            # the rest if a later request's headers are being received then: not a callLater
            # and a cancel per request.
            self._header_due = seconds() + timeout
            if self._header_timer is None:
                self._later("_header_timer", timeout, self._header_check)

    def _header_check(self) -> None:
        if self._phase != "headers":
            return
        left = self._header_due - self._seconds()  # type: ignore[misc]  # set: only a clock sets this timer
        if left > 1e-6:
            self._later("_header_timer", left, self._header_check)
        else:
            self._header_deadline()

    def dataReceived(self, data: bytes) -> None:
        if data and not self._handlingRequest:
            self._request_started()
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        # Pipelined requests are fed from the channel's buffer here, not via dataReceived.
        if self._phase == "idle":
            self._request_started()
        super().lineReceived(line)

    def _header_deadline(self) -> None:
        if self._phase != "headers" or self.transport is None:
            return
        _log.info("request headers not complete within {seconds} s; closing the connection "
                  "of {peer}", seconds=self.limits.header_timeout,
                  peer=getattr(self.transport.getPeer(), "host", ""))
        self.transport.write(raw_error(
            408, b"Request Timeout", "request_timeout",
            "The request headers did not arrive in time.", self.limits.server_header))
        self.persistent = False
        self.dataReceived = self.lineReceived = lambda *args: None  # type: ignore[method-assign,assignment]  # ignore the rest
        self.loseConnection()

    # -- body deadline ---------------------------------------------------------------------

    def allHeadersReceived(self) -> None:
        if self._seconds is None:
            self._cancel("_header_timer")
        # else the timer stays: it checks the phase when it fires (_header_check)
        self._phase = "body"
        if self.length != 0:
            self._later("_body_timer", self.limits.body_timeout, self._body_deadline)
        super().allHeadersReceived()

    def allContentReceived(self) -> None:
        self._cancel("_body_timer")
        self._phase = "handling"
        super().allContentReceived()

    def requestDone(self, request) -> None:
        self._cancel("_body_timer")
        self._phase = "idle"
        super().requestDone(request)

    # -- a finished response goes out now ---------------------------------------------------

    def send_now(self) -> None:
        """Send what the transport holds of a finished response now, not in a later turn of
        the reactor (:meth:`StreamingRequest.finish
        <mediaproxy.http.streaming.StreamingRequest.finish>` calls it once the request's own
        end events have run).

        Twisted's TCP transport only buffers a write and asks the reactor to watch the socket;
        the bytes go out when the reactor next polls and reaches this connection among the
        others ready then. During an overload a reactor turn holds dozens of new connections
        (accepts, requests parsed, refusals) and thread results, so a cache hit answered in
        one turn waited for the rest of it, the next turn's callbacks and its own place in
        the next poll before its first byte left. Here it leaves at once, through the
        transport's own ``doWrite``: the same send, the same handling of a partial write (the
        rest stays buffered for the reactor) and of the producer. A failed send is left to
        the reactor, which meets it again on its own ``doWrite`` and closes the connection as
        before. A connection being closed (``Connection: close``) stays watched for writing
        whatever happened, so the reactor's next ``doWrite`` finds the buffer empty and
        closes it as it always did. Plain TCP and UNIX transports only (under TLS the
        channel's transport is the TLS protocol, which writes through its own)."""
        transport = self.transport
        if not isinstance(transport, Connection) or not transport.connected \
                or transport.disconnected:
            return
        if not (transport._tempDataLen or len(transport.dataBuffer) > transport.offset):
            return
        closing = transport.disconnecting
        transport.doWrite()
        if closing:
            transport.startWriting()

    def _body_deadline(self) -> None:
        if self._phase != "body" or not self.requests:
            return
        request = self.requests[-1]
        _log.info("request body not complete within {seconds} s", seconds=self.limits.body_timeout,
                  correlation_id=getattr(request, "mediaproxy_correlation_id", ""))
        deadline = getattr(request, "body_deadline_passed", None)
        if deadline is not None:
            deadline()
        else:
            self.transport.abortConnection()

    # -- write deadline --------------------------------------------------------------------

    def pauseProducing(self) -> None:
        """The transport's write buffer is full: the client is not reading."""
        self._later("_write_timer", self.limits.write_timeout, self._write_deadline)
        super().pauseProducing()

    def resumeProducing(self) -> None:
        self._cancel("_write_timer")
        super().resumeProducing()

    def _write_deadline(self) -> None:
        _log.info("client {peer} read nothing for {seconds} s; aborting the connection",
                  peer=getattr(self.transport.getPeer(), "host", ""),
                  seconds=self.limits.write_timeout,
                  correlation_id=getattr(self.requests[0] if self.requests else None,
                                         "mediaproxy_correlation_id", ""))
        self.transport.abortConnection()

    def loseConnection(self) -> None:
        # Twisted keeps a closing connection open until its write buffer drained: bound that.
        self._later("_drain_timer", self.limits.write_timeout, self._drain_deadline)
        super().loseConnection()

    def _drain_deadline(self) -> None:
        if self.transport is not None:
            self.transport.abortConnection()
