"""
The reactor-lag probe: how late the reactor runs what it was asked to run.

Everything the proxy does on the reactor thread (parsing requests, cache hits, writing
responses) waits behind whatever holds the reactor; a reactor held for 200 ms delays every
request by up to 200 ms, whatever the transform pool or the backend do. The probe is a
:class:`~twisted.internet.task.LoopingCall` every ``interval`` seconds (0.25 by default): each
call notes how much later than due it ran. :meth:`ReactorLagProbe.worst` is the largest lateness
over the last ``window`` seconds (5 by default), what ``mediaproxy_reactor_lag_seconds``
exports: a gauge a scrape every 15 s would otherwise miss a one-second stall with.

It costs one timed call per interval, and keeps ``window / interval`` samples at most.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from twisted.application.service import Service
from twisted.internet.task import LoopingCall

#: Seconds between two probes.
DEFAULT_INTERVAL = 0.25
#: Seconds over which the worst lateness is kept.
DEFAULT_WINDOW = 5.0


class ReactorLagProbe(Service):
    """A service measuring the reactor's lateness (see the module docstring). ``clock`` has
    ``seconds()`` and ``callLater()``: the reactor, or a ``task.Clock`` in tests."""

    name = "reactor-lag"

    def __init__(self, clock: Any, interval: float = DEFAULT_INTERVAL,
                 window: float = DEFAULT_WINDOW):
        self.clock = clock
        self.interval = interval
        self.window = window
        # (when, lateness) of the recent probes; bounded by the window (and by maxlen)
        self._samples: deque[tuple[float, float]] = deque(
            maxlen=max(1, int(window / interval) + 2))
        self._due: float | None = None
        self._loop: LoopingCall | None = None

    def startService(self) -> None:
        super().startService()
        self._loop = LoopingCall(self._probe)
        self._loop.clock = self.clock
        self._due = self.clock.seconds()
        self._loop.start(self.interval, now=True)

    def stopService(self) -> None:
        super().stopService()
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()

    def _probe(self) -> None:
        now = self.clock.seconds()
        late = max(0.0, now - self._due) if self._due is not None else 0.0
        self._samples.append((now, late))
        self._due = now + self.interval

    def worst(self) -> float:
        """The largest lateness, in seconds, of the probes of the last ``window`` seconds, and of
        the probe due now if it is overdue (0 before the first probe)."""
        now = self.clock.seconds()
        horizon = now - self.window
        samples = self._samples
        while samples and samples[0][0] < horizon:
            samples.popleft()
        overdue = now - self._due if self._loop is not None and self._due is not None else 0.0
        return max(overdue, max((late for _, late in samples), default=0.0))
