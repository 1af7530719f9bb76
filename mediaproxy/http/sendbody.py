"""
Sending a body that is already in memory (a cached image) without a copy per connection.

``request.write(body)`` hands the whole body to the transport, which joins it into its own
write buffer: 100 clients that read nothing of a 12 MB result held 100 copies of it.
:func:`send_body` writes slices of the one shared ``bytes`` object instead, as a push producer:
a slice only when the transport asks for more, so each connection holds at most about two
chunks of it in its write buffer, and a client that reads nothing is cut by the channel's write
deadline (:class:`~mediaproxy.http.connection.BudgetedChannel`).
"""

from __future__ import annotations

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

#: Bytes handed to the transport at a time (its pause point is 64 KiB).
CHUNK = 64 * 1024


@implementer(IPushProducer)
class BytesProducer:
    """Writes ``body`` into ``request`` chunk by chunk while the transport wants more, then
    finishes the request."""

    def __init__(self, request, body: bytes, chunk: int = CHUNK):
        self._request = request
        self._view = memoryview(body)
        self._offset = 0
        self._chunk = chunk
        self._paused = False
        self._done = False

    def start(self) -> None:
        self._request.registerProducer(self, True)
        self.resumeProducing()

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        request = self._request
        view = self._view
        while not self._paused and not self._done:
            if request.channel is None or request.finished:
                self.stopProducing()
                return
            if self._offset >= len(view):
                self._done = True
                request.unregisterProducer()
                request.finish()
                return
            end = self._offset + self._chunk
            # The transport takes bytes only: one chunk is copied, never the whole body.
            data = bytes(view[self._offset:end])
            self._offset = end
            request.write(data)   # may pause us at once

    def stopProducing(self) -> None:
        self._done = True
        self._view.release()


def send_body(request, body: bytes) -> None:
    """Write ``body`` (shared, never modified) into ``request`` and finish it."""
    if not body:
        request.finish()
        return
    if len(body) <= CHUNK:
        request.write(body)
        request.finish()
        return
    BytesProducer(request, body).start()
