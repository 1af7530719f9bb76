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
from twisted.web import server
from twisted.web.http import parse_qs
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

#: Request body bytes held in memory (consumer not attached or paused) before reading from the
#: client is paused.
PAUSE_AT = 64 * 1024

#: Bytes held in memory beyond which the client is disconnected. Only reachable when the channel
#: keeps resuming the socket behind our back (each resume lets one read of at most 64 KiB in)
#: while the backend does not read the body; a bound, not a working size.
HARD_LIMIT = 1024 * 1024

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

    def __init__(self, request: "StreamingRequest", length: int | None):
        self.length = UNKNOWN_LENGTH if length is None else length
        self._request = request
        self._buffer: deque[bytes] = deque()
        self._buffered = 0
        self._consumer = None
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
        self._buffered = 0
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
            self._buffered += len(data)
            if self._buffered > HARD_LIMIT:
                self._overflow()
                return
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
        self._buffered = 0
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
            self._buffered -= len(data)
            self._write(data)

    def _maybe_finish(self) -> None:
        if (self._consumer is not None and not self.receiving and not self._buffer
                and self._failure is None and not self._stopped
                and self._finished is not None and not self._finished.called):
            self._finished.callback(None)

    def _sync(self) -> None:
        """Pause the client socket while we want no more data, else let it read.

        HTTPChannel resumes the socket itself when its write buffer drains (it only keeps the
        socket paused once the body is complete), so this pauses again on every chunk that
        arrives while we want to be paused: at most one read slips through per resume."""
        transport = self._request.transport
        want_paused = (self.receiving and not self._stopped
                       and (self._paused or self._buffered >= PAUSE_AT))
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
                  "closing the client connection", limit=HARD_LIMIT)
        self.stopProducing()
        transport = self._request.transport
        if transport is not None:
            abort = getattr(transport, "abortConnection", None) or transport.loseConnection
            abort()


class StreamingRequest(server.Request):
    """A :class:`twisted.web.server.Request` that is processed as soon as its headers are in.

    ``request.body`` is a :class:`RequestBody` for a request with a body (``Content-Length`` >
    0 or chunked), else ``None``. When the response is finished before the client sent all of
    the body, the connection is closed after the response: the unread rest of the body is never
    parsed as another request.
    """

    body: RequestBody | None = None
    _streaming = False
    _processing = False

    def gotLength(self, length: int | None) -> None:
        channel = self.channel
        if length == 0 or not all(hasattr(channel, attr)
                                  for attr in ("_command", "_path", "_version")):
            super().gotLength(length)
            return
        self._streaming = True
        self.content = io.BytesIO()
        self.body = RequestBody(self, length)
        # What requestReceived would set; HTTPChannel keeps the request line in private
        # attributes until the body is complete (see the module docstring).
        self._set_request_line(channel._command, channel._path, channel._version)
        # Never start processing inside the channel's parsing: the channel still has to send
        # 100-continue and feed the rest of the data it holds.
        channel.callLater(0, self._process_early)

    def _set_request_line(self, command: bytes, path: bytes, version: bytes) -> None:
        self.args = {}
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
        # The whole body is in; processing started (or is scheduled) from gotLength already.
        self.body._all_received()

    def write(self, data: bytes) -> None:
        if (not self.startedWriting and self._streaming and self.body is not None
                and self.body.receiving and self.channel is not None):
            # The response starts before the client sent all of its body: this connection
            # ends with this response (see _abandon_body), so say so.
            self.channel.persistent = False
            self.responseHeaders.setRawHeaders(b"Connection", [b"close"])
        super().write(data)

    def finish(self) -> None:
        if self._streaming and self.body is not None and self.body.receiving \
                and self.channel is not None and not self.finished:
            self._abandon_body()
        return super().finish()

    def _abandon_body(self) -> None:
        """The response is complete but the client is still sending the body: close the
        connection after the response instead of parsing the rest of the body as a new request
        (request smuggling)."""
        channel = self.channel
        self.body.stopProducing()
        channel.persistent = False
        # After this request is done the channel's request queue is empty, and the body decoder
        # would call allContentReceived (which uses requests[-1]) if the rest of the body is
        # already buffered. Like HTTPChannel.lineReceived does for a non-persistent
        # connection, stop the channel from acting on any more data.
        channel.allContentReceived = _ignore
        channel.dataReceived = _ignore

    def connectionLost(self, reason: Failure) -> None:
        if self.body is not None:
            self.body._lost(reason)
        super().connectionLost(reason)


class StreamingSite(server.Site):
    """A :class:`twisted.web.server.Site` whose requests stream their bodies."""

    requestFactory = StreamingRequest
    displayTracebacks = False
