"""
Requests in flight on the main port, by route kind, and the one ``request`` event each request
sends when it ends: the contract the access line, the request metrics, the rolling percentiles
and the graceful stop all read (none of them hooks into the resource itself).

The ``request`` event (:class:`~mediaproxy.models.Event`): ``value`` is the request's duration
in seconds, from the moment the resource saw it to the moment its response ended (or its client
went away); ``correlation_id`` is the request's; its fields:

* ``kind``: ``image`` or ``passthrough`` (a bounded label);
* ``method``: the method when it is one of :data:`METHODS`, else ``other`` (bounded);
* ``status``: the status code sent (an int; 200 when the client left before any);
* ``bytes``: body bytes written to the client;
* ``bytes_in``: request body bytes received from the client;
* ``cache``: the image's cache outcome as X-Cache says it (``HIT-MEMORY``, ``MISS``...) or ``""``;
* ``route``: the image route's name or ``""``;
* ``aborted``: True when the client went away before the response ended;
* ``path`` and ``client``: for the access line only; never a metric label (unbounded).
"""

from __future__ import annotations

import attrs
from twisted.internet.defer import Deferred

#: The route kinds of the main port.
KINDS = ("image", "passthrough")
#: Methods counted by name; any other is ``other`` (a client chooses the method).
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def method_label(method: str) -> str:
    return method if method in METHODS else "other"


@attrs.define(eq=False)
class InFlight:
    """How many requests of each kind have started and not ended; :meth:`when_idle` gives a
    Deferred that fires once none is left (what a graceful stop waits for)."""

    counts: dict = attrs.field(factory=lambda: dict.fromkeys(KINDS, 0))
    _idle: list = attrs.field(factory=list)
    #: requests started since the process began (server.max_worker_requests reads it)
    started: int = 0

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def start(self, kind: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        self.started += 1

    def end(self, kind: str) -> None:
        self.counts[kind] -= 1
        if self._idle and not self.total:
            waiting, self._idle = self._idle, []
            for d in waiting:
                d.callback(None)

    def when_idle(self) -> Deferred:
        """Fires (with None) when no request is in flight: at once if none is now."""
        d: Deferred = Deferred()
        if not self.total:
            d.callback(None)
        else:
            self._idle.append(d)
        return d
