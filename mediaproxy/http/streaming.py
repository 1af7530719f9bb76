"""
Streaming request bodies for twisted.web.

Twisted's stock :class:`twisted.web.server.Request` reads the whole request body (into a temp
file) before ``process()`` runs, so a 1 GiB upload would reach the backend only after the proxy
had stored all of it. :class:`StreamingRequest` starts processing as soon as the headers are
complete and exposes the body as ``request.body``, an
:class:`~twisted.web.iweb.IBodyProducer` that hands chunks on as they arrive, with real
backpressure: when its consumer (the backend connection) pauses it, reading from the client
socket is paused.

Requests without a body (no ``Content-Length`` or ``Content-Length: 0``, not chunked) take the
stock path and have ``request.body = None``. ``request.content`` is always a valid file object;
for a streamed body it stays empty.

Buffered before processing: a body up to ``server.body_buffer`` bytes is received whole before
``process()`` runs, so a client that trickles it holds no backend slot (or anything else the
resource would take) meanwhile; a larger or chunked body is processed once that much has
arrived and streams on from there. All bodies of the process together buffer at most
``server.body_buffer_total`` bytes (:class:`~mediaproxy.http.connection.BufferBudget`); beyond
it reading pauses and a body that was still waiting to be complete is processed at once, so it
streams on to the backend (with backpressure) instead of every body waiting for another. The
channel's body deadline (:class:`~mediaproxy.http.connection.BudgetedChannel`) ends a body that
takes too long: :meth:`StreamingRequest.body_deadline_passed`.

This leans on three private attributes of :class:`twisted.web.http.HTTPChannel`: ``_command``,
``_path`` and ``_version`` hold the request line between ``lineReceived`` and
``allContentReceived``, and ``gotLength`` is called in between (from ``allHeadersReceived``).
``tests/test_upstream.py::test_streaming_request_relies_on_channel_request_line`` fails if a
Twisted release changes that. A channel without them (HTTP/2) falls back to the stock,
buffering behaviour.
"""

from __future__ import annotations

import io
from collections import deque
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import resource, server
from twisted.web.http import RESPONSES, datetimeToString, parse_qs, unquote
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from .connection import BudgetedChannel, BufferBudget, ClientCounter, ConnectionLimits
from .errors import reason_phrase, write_error
from .head import http_date, server_value
from .requestinfo import (
    adopted_id, client_address, correlation_id, is_trusted, peer_address,
)

#: Request body bytes held in memory (consumer not attached or paused) before reading from the
#: client is paused, at least (``server.body_buffer`` when larger).
PAUSE_AT = 64 * 1024

#: Bytes held in memory beyond the pause point at which the client is disconnected. Only
#: reachable when the channel keeps resuming the socket behind our back (each resume lets one
#: read of at most 64 KiB in) while the backend does not read the body; a bound, not a working
#: size.
HARD_LIMIT = 1024 * 1024


class RequestBodyTimeout(Exception):
    """The client did not send the whole request body within ``server.body_timeout``."""

_log = Logger()


def _ignore(*args: Any) -> None:
    return None




@implementer(IBodyProducer)
class RequestBody:
    """The body of a :class:`StreamingRequest`, produced while the client sends it.

    ``length`` is the client's ``Content-Length`` (so the backend gets the same framing) or
    ``UNKNOWN_LENGTH`` for a chunked body. ``startProducing(consumer)`` writes what has arrived
    and every later chunk to ``consumer`` and returns a Deferred that fires when the whole body
    was written (or fails when the client goes away). ``pauseProducing``/``resumeProducing``
    pause and resume reading from the client socket; ``stopProducing`` discards the rest.

    Chunks that arrive before a consumer is attached, or while it is paused, are kept in memory
    up to :data:`PAUSE_AT` bytes, then the client socket is paused.
    """

    def __init__(self, request: "StreamingRequest", length: int | None, pause_at: int = PAUSE_AT,
                 budget: BufferBudget | None = None):
        self.length = UNKNOWN_LENGTH if length is None else length
        self._request = request
        self._buffer: deque[bytes] = deque()
        self._buffered = 0
        self._pause_at = max(pause_at, PAUSE_AT)
        self._budget = budget
        self._consumer: Any = None
        self._finished: Deferred[None] | None = None
        self._failure: Failure | None = None
        self._paused = False            # by the consumer
        self._transport_paused = False  # by us
        self._stopped = False
        self.receiving = True           # the client has not sent all of it yet
        self.received = 0               # bytes received from the client so far

    # -- IBodyProducer ---------------------------------------------------------------------

    def startProducing(self, consumer) -> Deferred[None]:
        if self._consumer is not None:
            raise RuntimeError("the request body can be produced only once")
        self._consumer = consumer
        self._finished = Deferred(lambda d: self.stopProducing())
        finished = self._finished
        if self._failure is not None:
            finished.errback(self._failure)
            return finished
        self._flush()
        self._maybe_finish()
        self._sync()
        return finished

    def pauseProducing(self) -> None:
        self._paused = True
        self._sync()

    def resumeProducing(self) -> None:
        self._paused = False
        channel = self._request.channel
        if channel is not None and hasattr(channel, "resetTimeout"):
            # The client was idle because we did not read; that is not its fault.
            channel.resetTimeout()
        self._flush()
        self._maybe_finish()
        self._sync()

    def stopProducing(self) -> None:
        """Discard the rest of the body. The Deferred of ``startProducing`` never fires."""
        if self._stopped:
            return
        self._stopped = True
        self._buffer.clear()
        self._set_buffered(0)
        # Keep reading (and discarding) so the channel sees the client disconnect; the request
        # closes the connection when it finishes with the body incomplete.
        self._sync()

    # -- fed by StreamingRequest ------------------------------------------------------------

    def _received(self, data: bytes) -> None:
        self.received += len(data)
        if self._stopped or not data:
            return
        if self._consumer is not None and not self._paused and not self._buffer:
            self._write(data)
        else:
            self._buffer.append(data)
            self._set_buffered(self._buffered + len(data))
            if self._buffered > self._pause_at + HARD_LIMIT:
                self._overflow()
                return
        self._request._body_progress()
        self._sync()

    def _all_received(self) -> None:
        self.receiving = False
        self._maybe_finish()
        self._sync()

    def _lost(self, reason: Failure) -> None:
        if not self.receiving:
            return
        self.receiving = False
        self._failure = reason
        self._buffer.clear()
        self._set_buffered(0)
        if self._budget is not None:
            self._budget.forget(id(self))
        if self._finished is not None and not self._finished.called and not self._stopped:
            self._finished.errback(reason)

    # -- internals ------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        try:
            self._consumer.write(data)
        except Exception:
            failure = Failure()
            self.stopProducing()
            if self._finished is not None and not self._finished.called:
                self._finished.errback(failure)

    def _flush(self) -> None:
        while self._buffer and self._consumer is not None and not self._paused \
                and not self._stopped:
            data = self._buffer.popleft()
            self._set_buffered(self._buffered - len(data))
            self._write(data)

    def _maybe_finish(self) -> None:
        if (self._consumer is not None and not self.receiving and not self._buffer
                and self._failure is None and not self._stopped
                and self._finished is not None and not self._finished.called):
            self._finished.callback(None)

    def _set_buffered(self, n: int) -> None:
        if self._budget is not None and n != self._buffered:
            self._budget.add(n - self._buffered)
        self._buffered = n

    def _sync(self) -> None:
        """Pause the client socket while we want no more data, else let it read.

        HTTPChannel resumes the socket itself when its write buffer drains (it only keeps the
        socket paused once the body is complete), so this pauses again on every chunk that
        arrives while we want to be paused: at most one read slips through per resume.

        While the process-wide budget is full, a body that is still buffering (nothing reads
        it yet) waits for room."""
        transport = self._request.transport
        budget = self._budget
        starved = (budget is not None and budget.full and self.receiving and not self._stopped
                   and (self._consumer is None or self._paused))
        if budget is not None:
            if starved:
                budget.wait(id(self), self._sync)
                # Nothing else would free the budget if every body waited: this one is
                # processed now and streams on (with backpressure) instead of waiting.
                self._request._budget_starved()
            else:
                budget.forget(id(self))
        want_paused = (self.receiving and not self._stopped
                       and (self._paused or self._buffered >= self._pause_at or starved))
        if want_paused:
            if transport is not None:
                transport.pauseProducing()
            self._transport_paused = True
        elif self._transport_paused:
            self._transport_paused = False
            if transport is not None and self._request.channel is not None:
                transport.resumeProducing()

    def _overflow(self) -> None:
        _log.warn("request body buffer over {limit} bytes while the backend is not reading; "
                  "closing the client connection", limit=self._pause_at + HARD_LIMIT,
                  correlation_id=getattr(self._request, "mediaproxy_correlation_id", ""))
        self.stopProducing()
        transport = self._request.transport
        if transport is not None:
            abort = getattr(transport, "abortConnection", None) or transport.loseConnection
            abort()


class _Ended:
    """What Twisted's ``Request`` calls for each of its ``notifications`` (the Deferreds of
    ``notifyFinish``): ``callback(None)`` when the response ended, ``errback(reason)`` when the
    connection was lost first. Calls one function instead (:meth:`StreamingRequest.when_done`)."""

    __slots__ = ("call",)

    def __init__(self, call):
        self.call = call

    def callback(self, result) -> None:
        self._run(result)

    def errback(self, reason) -> None:
        self._run(reason)

    def _run(self, result) -> None:
        try:
            self.call(result)
        except Exception:   # logged, as a Deferred's unhandled error would be; the others run
            _log.failure("a request's end callback raised")


_TOO_MANY = (429, "too_many_connections", "Too many concurrent connections from this client.")


class StreamingRequest(server.Request):
    """A :class:`twisted.web.server.Request` that is processed as soon as its headers are in.

    ``request.body`` is a :class:`RequestBody` for a request with a body (``Content-Length`` >
    0 or chunked), else ``None``. It is processed once the whole body, or ``server.body_buffer``
    bytes of it, arrived (see the module docstring). When the response is finished before the
    client sent all of the body, the connection is closed after the response: the unread rest
    of the body is never parsed as another request.

    Before the resource sees it, :meth:`process` refuses a request with more than one ``Host``
    header (400, RFC 9112 3.2) and one over the per-client cap (429). The ``Server`` header of
    the proxy's own responses is ``server.server_header``.
    """

    #: the TCP transport (also a push producer, with abortConnection): Twisted types it ITransport | None
    transport: Any

    body: RequestBody | None = None
    body_timed_out = False
    #: ready header lines written after ``responseHeaders``' own (:meth:`add_head`)
    _head: bytes = b""
    _streaming = False
    _processing = False
    _process_at: int | None = None

    def setResponseCode(self, code: int, message: bytes | None = None) -> None:
        if not message:   # ours, or a backend's empty one: the standard phrase when known
            message = None if code in RESPONSES else reason_phrase(code) or message
        super().setResponseCode(code, message)

    def _limits(self) -> ConnectionLimits:
        site = getattr(self.channel, "site", None)
        return getattr(site, "limits", None) or ConnectionLimits()

    def gotLength(self, length: int | None) -> None:
        channel = self.channel
        if length == 0 or not all(hasattr(channel, attr)
                                  for attr in ("_command", "_path", "_version")):
            super().gotLength(length)
            return
        limits = self._limits()
        self._streaming = True
        self.content = io.BytesIO()  # type: ignore[assignment]  # Request.content: None until a body
        self.body = RequestBody(self, length, limits.body_buffer,
                                getattr(getattr(channel, "site", None), "body_budget", None))
        # What requestReceived would set; HTTPChannel keeps the request line in private
        # attributes until the body is complete (see the module docstring).
        self._set_request_line(channel._command, channel._path, channel._version)
        if limits.body_buffer and self._refusal() is None:
            # Processed when the whole body, or body_buffer bytes of it, are in.
            self._process_at = limits.body_buffer if length is None \
                else min(length, limits.body_buffer)
            return
        # Never start processing inside the channel's parsing: the channel still has to send
        # 100-continue and feed the rest of the data it holds.
        channel.callLater(0, self._process_early)

    def _budget_starved(self) -> None:
        if self._process_at is not None and not self._processing and self.channel is not None:
            self._process_at = None
            self.channel.callLater(0, self._process_early)

    def _body_progress(self) -> None:
        """More of the body arrived and was buffered: process once enough is in."""
        at = self._process_at
        if (at is not None and not self._processing and self.body is not None
                and self.body.received >= at and self.channel is not None):
            self._process_at = None
            self.channel.callLater(0, self._process_early)

    def _set_request_line(self, command: bytes, path: bytes, version: bytes) -> None:
        self.args = {}  # type: ignore[assignment]  # Request.args: None until parsed
        self.method, self.uri = command, path
        self.clientproto = version
        parts = self.uri.split(b"?", 1)
        if len(parts) == 1:
            self.path = self.uri
        else:
            self.path, argstring = parts
            self.args = parse_qs(argstring, 1)

    def _process_early(self) -> None:
        if self._processing or self._disconnected or self.channel is None:
            return
        self._processing = True
        self.process()

    def handleContentChunk(self, data: bytes) -> None:
        if self.body is not None:
            self.body._received(data)
        else:
            super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if not self._streaming:
            super().requestReceived(command, path, version)
            return
        # The whole body is in; processing started (or is scheduled) from gotLength already,
        # or starts now for a body that was buffered whole.
        self.body._all_received()  # type: ignore[union-attr]  # streaming: gotLength made it
        if not self._processing and self.channel is not None:
            self._processing = True
            self.process()

    def _refusal(self) -> tuple[int, str, str] | None:
        """What this request is refused before anything looks at it (a request that will be
        refused is processed at once, without buffering its body)."""
        if len(self.requestHeaders.getRawHeaders(b"host", ())) > 1:
            return 400, "bad_request", "The request has more than one Host header."
        if getattr(self.channel, "over_cap", False):
            return _TOO_MANY
        return None

    def process(self) -> None:
        channel = self.channel
        refusal = self._refusal()
        if refusal is None and not self._count_client():
            refusal = _TOO_MANY
        if refusal is None:
            self._process()
            return
        self.site = channel.site  # type: ignore[attr-defined]  # Site.buildProtocol sets it
        self.setHeader(b"Date", datetimeToString())
        self._answer_and_close(*refusal)

    def _process(self) -> None:
        """Twisted's ``server.Request.process``, but with the ``Server`` header this proxy
        sends set once (not Twisted's, replaced when the response starts) and the ``Date``
        header made once a second (:func:`~mediaproxy.http.head.http_date`), not formatted per
        request."""
        self.site = self.channel.site  # type: ignore[attr-defined]  # Site.buildProtocol sets it
        headers = self.responseHeaders
        value = self._limits().server_header
        if value:
            headers.setRawHeaders(b"Server", [server_value(value)])
        headers.setRawHeaders(b"Date", [http_date()])
        self.prepath = []
        self.postpath = list(map(unquote, self.path[1:].split(b"/")))
        if self.path == b"*":
            self._handleStar()
            return
        try:
            resrc = self.site.getResourceFor(self)
            if resource._IEncodingResource.providedBy(resrc):
                encoder = resrc.getEncoder(self)
                if encoder is not None:
                    self._encoder = encoder
            self.render(resrc)
        except BaseException:
            self.processingFailed(Failure())

    def _answer_and_close(self, status: int, error: str, message: str) -> None:
        channel = self.channel
        if channel is not None:
            channel.persistent = False
        self.responseHeaders.setRawHeaders(b"Connection", [b"close"])
        write_error(self, status, error, message,
                    correlation_id(adopted_id(self.requestHeaders)))

    def _count_client(self) -> bool:
        """Behind a trusted proxy: count this request for its X-Forwarded-For client while it
        is in flight; False over the cap."""
        site = getattr(self.channel, "site", None)
        clients = getattr(site, "clients", None)
        trusted = self._limits().trusted_proxies
        peer = peer_address(self)
        if clients is None or not clients.cap or not is_trusted(peer, trusted):
            return True
        xff = [v.decode("latin-1")
               for v in self.requestHeaders.getRawHeaders(b"x-forwarded-for", ())]
        client = client_address(peer, xff, trusted)
        if not clients.acquire(client):
            return False
        self.notifyFinish().addBoth(lambda _: clients.release(client))
        return True

    def body_deadline_passed(self) -> None:
        """The channel's body deadline: the client did not send the whole body in time.

        Not processed yet (still buffering): answer 408 and close. Processed: the body fails
        with :class:`RequestBodyTimeout` (its consumer, the backend exchange, answers 408 while
        nothing of the response went out) and the connection closes after the response; a
        response already under way is aborted."""
        body = self.body
        if body is None or not body.receiving or self.finished or self.channel is None:
            return
        if not self._processing:
            self._processing = True
            self.site = self.channel.site  # type: ignore[attr-defined]  # Site.buildProtocol sets it
            self.setHeader(b"Date", datetimeToString())
            self._answer_and_close(408, "request_timeout",
                                   "The request body did not arrive in time.")
            return
        self.body_timed_out = True
        channel = self.channel
        channel.persistent = False
        channel.allContentReceived = _ignore  # type: ignore[method-assign]  # the rest is dropped
        channel.dataReceived = _ignore  # type: ignore[method-assign]
        if self.startedWriting:
            self.transport.abortConnection()
            return
        self.responseHeaders.setRawHeaders(b"Connection", [b"close"])
        body._lost(Failure(RequestBodyTimeout("request body deadline passed")))

    def when_done(self, call) -> None:
        """Call ``call(None)`` when the response has ended, or ``call(failure)`` when the
        connection is lost first: ``notifyFinish().addBoth(call)`` without a Deferred and its
        callback chain per request (what ``call`` raises is logged)."""
        self.notifications.append(_Ended(call))  # type: ignore[arg-type]  # fired like a Deferred

    def add_head(self, lines: bytes) -> None:
        """Add ready header lines to the response: ``b"Name: value\\r\\n"`` lines
        (:func:`~mediaproxy.http.head.head_lines` makes them: canonical names, no CR or LF
        inside), written as they are after the headers of ``responseHeaders``. An image
        response carries some fifteen headers, and fifteen checked ``addRawHeader`` calls cost
        more than the rest of a hit's answer; its block is made once per response shape
        instead. ``Content-Length`` must not be among them (Twisted reads it from
        ``responseHeaders``)."""
        if self.startedWriting:
            raise RuntimeError("add_head after the response started")
        self._head += lines

    def write(self, data: bytes) -> None:
        if self.startedWriting:
            super().write(data)
            return
        self._set_server_header()
        channel = self.channel
        if (self._streaming and self.body is not None and self.body.receiving
                and channel is not None):
            # The response starts before the client sent all of its body: this connection
            # ends with this response (see _abandon_body), so say so.
            channel.persistent = False
            self.responseHeaders.setRawHeaders(b"Connection", [b"close"])
        head = self._head
        if head:
            self._head = b""
            if b"\r\nContent-Type: " in b"\r\n" + head:
                self.defaultContentType = None   # it has one: Twisted adds none
            if isinstance(channel, BudgetedChannel):
                channel.head_lines = head
            else:   # another channel (a test's): through responseHeaders
                for line in head.split(b"\r\n"):
                    if line:
                        name, value = line.split(b": ", 1)
                        self.responseHeaders.addRawHeader(name, value)
        try:
            super().write(data)
        finally:
            if head and isinstance(channel, BudgetedChannel):
                channel.head_lines = b""

    def _set_server_header(self) -> None:
        """Our own responses say ``server.server_header``, not Twisted's name and version (a
        pass-through response keeps the backend's Server header)."""
        if self.responseHeaders.getRawHeaders(b"server") in (None, [server.version]):
            value = self._limits().server_header
            if value:
                self.responseHeaders.setRawHeaders(b"Server", [value.encode("ascii")])
            else:
                self.responseHeaders.removeHeader(b"Server")

    def finish(self) -> None:
        if self._streaming and self.body is not None and self.body.receiving \
                and self.channel is not None and not self.finished:
            self._abandon_body()
        channel = self.channel
        super().finish()
        if isinstance(channel, BudgetedChannel) and self.finished and not self._disconnected:
            channel.send_now()   # the response leaves now, not in a later reactor turn

    def _abandon_body(self) -> None:
        """The response is complete but the client is still sending the body: close the
        connection after the response instead of parsing the rest of the body as a new request
        (request smuggling)."""
        channel = self.channel
        self.body.stopProducing()  # type: ignore[union-attr]  # only called while streaming a body
        channel.persistent = False
        # After this request is done the channel's request queue is empty, and the body decoder
        # would call allContentReceived (which uses requests[-1]) if the rest of the body is
        # already buffered. Like HTTPChannel.lineReceived does for a non-persistent
        # connection, stop the channel from acting on any more data.
        channel.allContentReceived = _ignore  # type: ignore[method-assign]  # the rest is dropped
        channel.dataReceived = _ignore  # type: ignore[method-assign]

    def connectionLost(self, reason: Failure) -> None:
        if self.body is not None:
            self.body._lost(reason)
        super().connectionLost(reason)


class StreamingSite(server.Site):
    """A :class:`twisted.web.server.Site` whose requests stream their bodies, on
    :class:`~mediaproxy.http.connection.BudgetedChannel` connections under ``limits``
    (``server.*``: deadlines, buffers, the per-client cap; ``clients`` counts them, and
    ``body_budget`` the request body bytes the process buffers)."""

    requestFactory = StreamingRequest
    protocol = BudgetedChannel  # type: ignore[assignment]  # an HTTPChannel, as Twisted builds it
    displayTracebacks = False

    def __init__(self, resource, *args, limits: ConnectionLimits | None = None, **kwargs):
        super().__init__(resource, *args, **kwargs)
        self.limits = limits or ConnectionLimits()
        self.clients = ClientCounter(self.limits.max_client_connections)
        self.body_budget = BufferBudget(self.limits.body_buffer_total)
