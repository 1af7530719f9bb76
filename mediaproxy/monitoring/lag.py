"""
The reactor-lag probe: how late the reactor runs what it was asked to run.

Everything the proxy does on the reactor thread (parsing requests, cache hits, writing
responses) waits behind whatever holds the reactor; a reactor held for 200 ms delays every
request by up to 200 ms, whatever the transform pool or the backend do. The probe is a timed
call every ``interval`` seconds (0.25 by default; each one schedules the next with
``callLater``, like a LoopingCall, but its due time is exactly the previous run plus the
interval, so its lateness is exact): each call notes how much later than due it ran.
:meth:`ReactorLagProbe.worst` is the largest lateness over the last ``window`` seconds (5 by
default), what ``mediaproxy_reactor_lag_seconds`` exports: the worst of a window, so a scrape
every 15 s still sees a one-second stall that happened between two scrapes (if within 5 s).

It costs one timed call per interval, and keeps ``window / interval`` samples at most.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from twisted.application.service import Service

#: Seconds between two probes.
DEFAULT_INTERVAL = 0.25
#: Seconds over which the worst lateness is kept.
DEFAULT_WINDOW = 5.0


class ReactorLagProbe(Service):
    """A service measuring the reactor's lateness (see the module docstring). ``clock`` has
    ``seconds()`` and ``callLater()``: the reactor, or a ``task.Clock`` in tests."""

    name = "reactor-lag"  # type: ignore[assignment]  # Service.name is untyped None

    def __init__(self, clock: Any, interval: float = DEFAULT_INTERVAL,
                 window: float = DEFAULT_WINDOW):
        self.clock = clock
        self.interval = interval
        self.window = window
        # (when, lateness) of the recent probes; bounded by the window (and by maxlen)
        self._samples: deque[tuple[float, float]] = deque(
            maxlen=max(1, int(window / interval) + 2))
        self._due: float | None = None
        self._call = None

    def startService(self) -> None:
        super().startService()
        self._schedule(self.clock.seconds())

    def stopService(self) -> None:
        super().stopService()
        call, self._call = self._call, None
        self._due = None
        if call is not None and call.active():
            call.cancel()

    def _schedule(self, now: float) -> None:
        self._due = now + self.interval
        self._call = self.clock.callLater(self.interval, self._probe)

    def _probe(self) -> None:
        now = self.clock.seconds()
        self._samples.append((now, max(0.0, now - self._due)))
        self._schedule(now)

    def worst(self) -> float:
        """The largest lateness, in seconds, of the probes of the last ``window`` seconds, and of
        the probe due now if it is overdue (0 before the first probe)."""
        now = self.clock.seconds()
        horizon = now - self.window
        samples = self._samples
        while samples and samples[0][0] < horizon:
            samples.popleft()
        overdue = now - self._due if self._due is not None else 0.0
        return max(0.0, overdue, max((late for _, late in samples), default=0.0))
