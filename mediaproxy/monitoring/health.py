"""
The health snapshot: every health indicator (``mediaproxy_health_indicators``) is run in the
background, every ``monitoring.health_interval`` seconds, and ``/health`` answers from the
last complete round, so a slow dependency never makes health slow.

Each indicator of a round is bounded by ``monitoring.health_timeout``: one that has not
answered by then is reported not ok with the detail ``"timed out"`` (its Deferred is
cancelled), and one that raises is reported not ok with its error; a round therefore lasts at
most the timeout, whatever the indicators do (short of blocking the reactor, which nothing
may do). The first round starts with the monitor; a ``/health`` asked before it ends waits for
it (:meth:`HealthMonitor.current`), at most the timeout, once in the life of the process.

The overall status follows :class:`~mediaproxy.models.HealthStatus`: every indicator ok is
**healthy**; one not ok and not critical (an optional dependency down: Redis, a full cache
disk) is **degraded**, still served with 200; one not ok and critical (the proxy cannot serve:
the backend unreachable) is **unhealthy**, 503.

Readiness (:func:`readiness`) is not part of the snapshot: it reads a few fields of the
runtime at each probe (configured and started, transform pool running, no backend breaker
open, not draining), cheap and immediate, so a graceful stop turns ``ready`` to 503 at once.

Time comes from the injected reactor (``task.Clock`` in tests) for the schedule, the timeouts
and the durations, and from ``clock`` (``time.time``) for the wall-clock time of a snapshot.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any, Callable, Iterable

import attrs
from twisted.internet.defer import (
    CancelledError, Deferred, DeferredList, TimeoutError, maybeDeferred, succeed,
)
from twisted.application import service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from ..models import HealthStatus

log = Logger(namespace="mediaproxy.health")

HEALTHY, DEGRADED, UNHEALTHY = "healthy", "degraded", "unhealthy"
TIMED_OUT = "timed out"


def overall(statuses: Iterable[HealthStatus]) -> str:
    """``healthy``, ``degraded`` or ``unhealthy`` for a set of indicator answers."""
    worst = HEALTHY
    for status in statuses:
        if not status.ok:
            if status.critical:
                return UNHEALTHY
            worst = DEGRADED
    return worst


def indicator_status(status: HealthStatus) -> str:
    """The word one indicator contributes: ``ok``, ``degraded`` or ``unhealthy``."""
    if status.ok:
        return "ok"
    return UNHEALTHY if status.critical else DEGRADED


def iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, timezone.utc).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


@attrs.frozen
class Reading:
    """One indicator's answer in a round, with how long it took (seconds)."""

    status: HealthStatus
    duration: float

    def to_json(self) -> dict[str, Any]:
        s = self.status
        return {"name": s.name, "status": indicator_status(s), "ok": s.ok,
                "critical": s.critical, "detail": s.detail, "data": dict(s.data),
                "duration_ms": round(self.duration * 1000, 1)}


@attrs.frozen
class HealthSnapshot:
    """One complete round: every indicator's reading and when the round ended."""

    readings: tuple[Reading, ...]
    #: wall-clock time (``time.time()``) the round ended
    taken_at: float
    #: the number of the round (1 for the first)
    round: int

    @property
    def status(self) -> str:
        return overall(r.status for r in self.readings)

    @property
    def failing(self) -> tuple[str, ...]:
        """The names of the indicators that are not ok."""
        return tuple(r.status.name for r in self.readings if not r.status.ok)

    @property
    def http_status(self) -> int:
        return 503 if self.status == UNHEALTHY else 200

    def reading(self, name: str) -> Reading | None:
        return next((r for r in self.readings if r.status.name == name), None)

    def to_json(self, now: float, started: float, version: str) -> dict[str, Any]:
        """The ``/health`` body, as of ``now`` (wall clock) for a process started at
        ``started``."""
        return {"status": self.status, "version": version,
                "uptime": round(max(0.0, now - started), 3),
                "time": iso(now), "snapshot": {"taken_at": iso(self.taken_at),
                                               "age": round(max(0.0, now - self.taken_at), 3),
                                               "round": self.round},
                "indicators": [r.to_json() for r in self.readings]}


@attrs.define(eq=False)
class HealthMonitor:
    """Runs the indicators every ``interval`` seconds, each bounded by ``timeout``, and keeps
    the last complete round as :attr:`snapshot`. ``indicators`` is called once, at
    :meth:`start` (the plugins are configured by then), and returns the indicator objects
    (``name`` and ``check()``)."""

    reactor: Any
    indicators: Callable[[], Iterable[Any]]
    interval: float = 5.0
    timeout: float = 2.0
    clock: Callable[[], float] = time.time
    snapshot: HealthSnapshot | None = None
    #: True between :meth:`start` and :meth:`stop`
    running: bool = False
    #: the indicators of this run, collected by :meth:`start`
    found: list = attrs.field(factory=list)
    _loop: LoopingCall | None = None
    _round: Deferred | None = None
    _rounds: int = 0
    _first: list = attrs.field(factory=list)   # Deferreds waiting for the first snapshot

    def start(self) -> None:
        """Collect the indicators and take the first snapshot now, then one every
        ``interval`` seconds (a round never overlaps the next: LoopingCall waits for it)."""
        self.found = list(self.indicators())
        self.running = True
        self._loop = LoopingCall(self.refresh)
        self._loop.clock = self.reactor
        self._loop.start(self.interval, now=True).addErrback(
            lambda f: log.failure("the health snapshot loop stopped", f))

    def stop(self) -> None:
        self.running = False
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if self._round is not None and not self._round.called:
            self._round.cancel()

    def current(self) -> Deferred:
        """The last snapshot; before the first round has ended, the first snapshot (at most
        ``timeout`` seconds away)."""
        if self.snapshot is not None:
            return succeed(self.snapshot)
        d: Deferred = Deferred()
        self._first.append(d)
        return d

    def refresh(self) -> Deferred:
        """Run one round now; fires with the new snapshot (never fails)."""
        if self._round is not None and not self._round.called:
            return self._round
        began = self.reactor.seconds()
        readings = [self._run(indicator, began) for indicator in self.found]
        d = self._round = DeferredList(readings, consumeErrors=True)
        d.addCallback(lambda results: self._publish(
            [value for ok, value in results if ok]))
        return d

    def _run(self, indicator, began: float) -> Deferred:
        name = getattr(indicator, "name", type(indicator).__name__)

        def answered(result):
            if isinstance(result, HealthStatus):
                return Reading(result, self.reactor.seconds() - began)
            return Reading(HealthStatus(name, False, f"not a HealthStatus: {result!r}"),
                           self.reactor.seconds() - began)

        def failed(failure):
            if failure.check(TimeoutError):
                detail = TIMED_OUT
            elif failure.check(CancelledError):
                detail = "cancelled"
            else:
                # not logged each round: the status change is (see _publish)
                detail = failure.getErrorMessage() or failure.type.__name__
            return Reading(HealthStatus(name, False, detail), self.reactor.seconds() - began)

        d = maybeDeferred(indicator.check)
        d.addTimeout(self.timeout, self.reactor)
        d.addCallbacks(answered, failed)
        return d

    def _publish(self, readings: list[Reading]) -> HealthSnapshot:
        if not self.running and self.snapshot is not None:
            return self.snapshot     # a round cut short by stop(): its "cancelled" is no news
        self._rounds += 1
        snapshot = HealthSnapshot(tuple(readings), self.clock(), self._rounds)
        previous, self.snapshot = self.snapshot, snapshot
        if previous is None or previous.failing != snapshot.failing:
            # Logged when the set of failing indicators changes, not every round. The first
            # round at start often finds Redis still connecting: said at info; a change after
            # that at warn (back to healthy at info).
            say = log.info if previous is None or snapshot.status == HEALTHY else log.warn
            say("health: {status}{failing}", status=snapshot.status,
                failing="".join(f"; {r.status.name}: {r.status.detail}" for r in readings
                                if not r.status.ok))
        waiting, self._first = self._first, []
        for d in waiting:
            d.callback(snapshot)
        return snapshot


def monitor_for(runtime) -> HealthMonitor:
    """The monitor of a runtime: its indicators are every ``mediaproxy_health_indicators``
    answer (asked at start, once the plugins are configured), its schedule from
    ``monitoring.health_interval`` and ``health_timeout`` (fixed at start)."""
    def indicators():
        for found in runtime.pm.hook.mediaproxy_health_indicators(runtime=runtime):
            yield from found or ()

    m = runtime.config.monitoring
    return HealthMonitor(runtime.reactor, indicators, m.health_interval, m.health_timeout)


class HealthService(service.Service):
    """Starts the health snapshot with the daemon (after the other services, so the first
    round finds Redis and the pools started) and stops it with it."""

    name = "mediaproxy-health"  # type: ignore[assignment]  # Service.name is untyped None

    def __init__(self, monitor: HealthMonitor):
        self.monitor = monitor

    def startService(self):
        super().startService()
        self.monitor.start()

    def stopService(self):
        super().stopService()
        self.monitor.stop()


@attrs.frozen
class Readiness:
    """Whether the process can serve now, and why not."""

    reasons: tuple[str, ...]

    @property
    def ready(self) -> bool:
        return not self.reasons

    def to_json(self, now: float, started: float) -> dict[str, Any]:
        body: dict[str, Any] = {"status": "ready" if self.ready else "not_ready",
                                "uptime": round(max(0.0, now - started), 3)}
        if self.reasons:
            body["reasons"] = list(self.reasons)
        return body


def readiness(*, started: bool, pool_running: bool, breakers: dict[str, Any],
              draining: bool) -> Readiness:
    """Ready when started (configured, services up), the transform pool running, no backend
    breaker open and not draining. Redis and the transform queue never count: an optional
    cache being down or a busy pool is no reason to leave the balancer."""
    reasons = []
    if not started:
        reasons.append("starting")
    if draining:
        reasons.append("draining")
    if not pool_running:
        reasons.append("transform_pool_stopped")
    for name in sorted(breakers):
        if getattr(breakers[name], "state", "closed") == "open":
            reasons.append(f"breaker_open:{name}")
    return Readiness(tuple(reasons))
