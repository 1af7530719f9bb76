"""
The main port's site, which knows its open connections so that a graceful stop can end them
politely: :meth:`ServingSite.start_drain` closes every idle keep-alive connection at once and
marks the others to close after their current response, and every response whose headers go
out during the drain says ``Connection: close`` (a client then opens its next connection to
another node instead of finding this one gone). :meth:`ServingSite.close_all` ends what is
left once no request is in flight, and :meth:`ServingSite.when_closed` fires when the last
connection is gone (its buffered bytes written: the reactor's shutdown would drop them).

The stop itself (ports first, the drain under ``server.drain_timeout``, then the rest) is
:mod:`mediaproxy.lifecycle`'s.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure

from .connection import BudgetedChannel
from .streaming import StreamingSite


class ServingChannel(BudgetedChannel):
    """A :class:`BudgetedChannel` that its site counts, and that ends with its response while
    the site drains."""

    def connectionMade(self) -> None:
        super().connectionMade()
        self.site.channel_opened(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        try:
            super().connectionLost(reason)
        finally:
            self.site.channel_closed(self)

    @property
    def idle(self) -> bool:
        """No request started on it: no byte of one received, none being answered."""
        return not self.requests and self._phase == "idle"

    def writeHeaders(self, version, code, reason, headers):
        if self.site.draining:
            # checkPersistence ran when the request's headers arrived; this response is the
            # last of the connection whatever it said.
            self.persistent = False
            headers.setRawHeaders(b"Connection", [b"close"])
        super().writeHeaders(version, code, reason, headers)


class ServingSite(StreamingSite):
    """A :class:`StreamingSite` that keeps the set of its open connections (see the module
    docstring)."""

    protocol = ServingChannel

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.channels: set[ServingChannel] = set()
        self.draining = False
        self._closed: list[Deferred] = []

    def channel_opened(self, channel: ServingChannel) -> None:
        self.channels.add(channel)

    def channel_closed(self, channel: ServingChannel) -> None:
        self.channels.discard(channel)
        if not self.channels and self._closed:
            waiting, self._closed = self._closed, []
            for d in waiting:
                d.callback(None)

    def start_drain(self) -> int:
        """Close the idle connections, mark the busy ones to close after their response;
        returns how many were closed at once."""
        self.draining = True
        closed = 0
        for channel in list(self.channels):
            if channel.idle:
                closed += 1
                channel.loseConnection()
            else:
                channel.persistent = False
        return closed

    def close_all(self) -> None:
        """Nothing is in flight any more: close what is still open (a connection whose
        request has not arrived whole, so was never started; an answered one closes by
        itself). A closing connection first writes what it holds, within
        ``server.write_timeout``."""
        for channel in list(self.channels):
            channel.persistent = False
            if channel.transport is not None:
                channel.loseConnection()

    def when_closed(self) -> Deferred:
        """Fires when no connection is open (at once when none is)."""
        d: Deferred = Deferred()
        if not self.channels:
            d.callback(None)
        else:
            self._closed.append(d)
        return d
