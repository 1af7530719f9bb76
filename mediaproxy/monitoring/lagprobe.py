"""
The reactor's lag, as the alert rules read it (``reactor.lag``): a call scheduled every
:data:`INTERVAL` seconds notes how late it ran; :meth:`LagProbe.lag` is the worst delay of the
last :data:`SPAN` seconds. A blocked or starved reactor runs every timed call late by the same
amount, so this small probe sees what every request sees. Its own cost: one timed call per
quarter second.
"""

from __future__ import annotations

from collections import deque

#: Seconds between two probes.
INTERVAL = 0.25
#: Seconds of probes the worst lag is taken over.
SPAN = 5.0


class LagProbe:
    def __init__(self, clock, interval: float = INTERVAL, span: float = SPAN):
        self.clock = clock
        self.interval = interval
        self.span = span
        self._samples: deque = deque(maxlen=int(span / interval) + 2)   # (when, lag)
        self._call = None
        self._due = 0.0

    def start(self) -> None:
        if self._call is None:
            self._due = self.clock.seconds() + self.interval
            self._call = self.clock.callLater(self.interval, self._tick)

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _tick(self) -> None:
        now = self.clock.seconds()
        self._samples.append((now, max(0.0, now - self._due)))
        self._due = now + self.interval
        self._call = self.clock.callLater(self.interval, self._tick)

    def lag(self) -> float:
        """The worst lag (seconds) of the probes of the last ``span`` seconds; the time since
        a probe was due when it is overdue now (a reactor blocked at this very moment cannot
        answer, but one that just came back shows how long it was away)."""
        now = self.clock.seconds()
        worst = max((lag for when, lag in self._samples if now - when <= self.span),
                    default=0.0)
        if self._call is not None:
            worst = max(worst, now - self._due)
        return worst
