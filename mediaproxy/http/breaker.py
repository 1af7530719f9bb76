"""
The parts of the backend client's policy: circuit breakers, the retry backoff, the concurrency
limit. :mod:`mediaproxy.http.policy` puts them together, once for pass-through and once for
source fetches, and decides when each is asked and told.

A :class:`CircuitBreaker` watches the outcome of calls to one dependency over a short sliding
window (``window`` seconds, kept in one-second slots, so memory is bounded whatever the
traffic):

* **closed**: every call goes through. It **opens** on a failure when either
  ``consecutive_failures`` calls in a row failed (a dead backend is known dead after a handful
  of calls, however quiet the traffic), or the window holds at least ``min_calls`` calls and
  ``failure_ratio`` of them failed (a backend failing one call in two). Only a failure is
  judged: a success never opens it, so failures from before a recovery cannot trip it once the
  backend answers again.
* **open**: :meth:`~CircuitBreaker.allow` says no, at once, until the end of a period of
  ``open_for`` seconds of the clock, the first that ends at least half of ``open_for`` away
  (between 0.5 and 1.5 ``open_for``: opened at 10.3 s with periods of 1 s, it probes at 11.0;
  at 10.6, at 12.0). On the wall clock every breaker of a host ends its periods at the same
  moments, so the workers (a breaker each) probe together: a backend that came back is used
  by all of them at once, not by one while another stays open for up to a second more.
* **half-open**: up to ``probes`` calls go through at a time; ``probes`` successes in a row
  close it (with the default of one probe: the first success closes it at once), one failure
  opens it again until the end of a period.

So after the backend comes back, calls go through again within ``open_for`` seconds (the time
until the next probe) plus one call: with the defaults (window 5 s, open 1 s, one probe) about
a second, never the tens of seconds a long window and a long open time would take.

What a failure is belongs to the caller (:class:`mediaproxy.http.policy.Failures`): the image
breaker counts connection errors, timeouts and 5xx, the pass-through breaker only connection
errors and timeouts, and neither ever counts a 4xx. A call that ends in neither (cancelled by
the client) is :meth:`~CircuitBreaker.release`\\ d without a verdict.

Time comes from an injected clock (the reactor, or ``task.Clock`` in tests); nothing here does
I/O or schedules calls, so a breaker costs a few attribute reads per call.
"""

from __future__ import annotations

import math
import random
from typing import Any, Callable

import attrs

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


@attrs.define(eq=False)
class CircuitBreaker:
    """One breaker. ``clock`` has ``seconds()``; ``on_change(name, old, new)`` is told about
    every state change (logging, metrics)."""

    clock: Any
    name: str
    failure_ratio: float = 0.5
    min_calls: int = 10
    window: float = 5.0
    open_for: float = 1.0
    probes: int = 1
    enabled: bool = True
    on_change: Callable[[str, str, str], None] | None = None
    consecutive_failures: int = 5     #: failures in a row that open it (0: only the ratio)
    state: str = CLOSED
    _slots: dict = attrs.field(factory=dict)   # second -> [calls, failures]
    _streak: int = 0                           # failures in a row while closed
    _opened_at: float = 0.0
    _probe_at: float = 0.0
    _probing: int = 0
    _probe_successes: int = 0

    @classmethod
    def from_config(cls, clock, name: str, config, on_change=None) -> "CircuitBreaker":
        """From a :class:`~mediaproxy.config.BreakerConfig`."""
        return cls(clock, name, failure_ratio=config.failure_ratio, min_calls=config.min_calls,
                   window=config.window, open_for=config.open_for, probes=config.probes,
                   enabled=config.enabled, on_change=on_change,
                   consecutive_failures=config.consecutive_failures)

    # -- asking ----------------------------------------------------------------------------

    def allow(self) -> bool:
        """May a call go out now? A ``True`` while half-open reserves a probe: the caller must
        then report the call with :meth:`success`, :meth:`failure` or :meth:`release`."""
        if not self.enabled or self.state == CLOSED:
            return True
        if self.state == OPEN:
            if self.clock.seconds() < self._probe_at:
                return False
            self._set(HALF_OPEN)
            self._probing = self._probe_successes = 0
        if self._probing >= self.probes:
            return False
        self._probing += 1
        return True

    def retry_after(self) -> int:
        """Whole seconds until the breaker will let a probe through (at least 1)."""
        if self.state != OPEN:
            return 1
        left = self._probe_at - self.clock.seconds()
        return max(1, int(left + 0.999))

    # -- reporting -------------------------------------------------------------------------

    def success(self) -> None:
        if not self.enabled:
            return
        if self.state == HALF_OPEN:
            self._probing = max(0, self._probing - 1)
            self._probe_successes += 1
            if self._probe_successes >= self.probes:
                self._slots.clear()
                self._set(CLOSED)       # the streak is 0: _open() reset it, nothing since
            return
        if self.state == CLOSED:
            self._streak = 0
            self._count(failed=False)   # dilutes later failures; never judged on its own

    def failure(self) -> None:
        if not self.enabled:
            return
        if self.state == HALF_OPEN:
            self._probing = max(0, self._probing - 1)
            self._open()
            return
        if self.state == OPEN:
            return
        self._streak += 1
        self._judge(*self._count(failed=True))

    def reset(self) -> None:
        """Close the breaker now and forget its window (an operator's reset from the admin
        listener, once the dependency is known to be back)."""
        self._slots.clear()
        self._streak = self._probing = self._probe_successes = 0
        self._set(CLOSED)

    def release(self) -> None:
        """The call ended without telling anything about the dependency (cancelled)."""
        if self.state == HALF_OPEN:
            self._probing = max(0, self._probing - 1)

    # -- internals -------------------------------------------------------------------------

    def _count(self, failed: bool) -> tuple[int, int]:
        now = int(self.clock.seconds())
        slot = self._slots.get(now)
        if slot is None:
            slot = self._slots[now] = [0, 0]
            horizon = now - self.window
            for second in [s for s in self._slots if s <= horizon]:
                del self._slots[second]
        slot[0] += 1
        if failed:
            slot[1] += 1
        calls = failures = 0
        for c, f in self._slots.values():
            calls += c
            failures += f
        return calls, failures

    def _judge(self, calls: int, failures: int) -> None:
        """After every failure while closed: open after ``consecutive_failures`` in a row, or
        once the window holds ``min_calls`` calls and ``failure_ratio`` of them failed."""
        if 0 < self.consecutive_failures <= self._streak or (
                calls >= self.min_calls and failures >= self.failure_ratio * calls):
            self._open()

    def _open(self) -> None:
        self._opened_at = now = self.clock.seconds()
        # The next probe at the end of a period of open_for seconds of the clock (the first
        # that ends at least half of open_for from now), not open_for after now: the breakers
        # of the workers of a host (one each) then probe together and a recovered backend is
        # used by all of them at once, not by one while another stays open for up to
        # open_for more.
        self._probe_at = (math.floor((now + self.open_for / 2) / self.open_for) + 1) \
            * self.open_for
        self._slots.clear()
        self._streak = 0
        self._set(OPEN)

    def _set(self, state: str) -> None:
        old, self.state = self.state, state
        if old != state and self.on_change is not None:
            self.on_change(self.name, old, state)


@attrs.define(eq=False)
class RetryPolicy:
    """Exponential backoff with full jitter: attempt ``n`` (0 for the first retry) waits a
    uniformly random time in ``[0, min(maximum, base * 2**n)]``. ``rng`` is injectable so
    tests are deterministic."""

    retries: int = 2
    base: float = 0.1
    maximum: float = 2.0
    rng: random.Random = attrs.field(factory=random.Random)

    @classmethod
    def from_config(cls, backend, rng: random.Random | None = None) -> "RetryPolicy":
        return cls(backend.retries, backend.retry_backoff, backend.retry_backoff_max,
                   rng or random.Random())

    def delay(self, attempt: int) -> float:
        return self.rng.uniform(0, min(self.maximum, self.base * (2 ** min(attempt, 30))))


@attrs.define(eq=False)
class ConcurrencyLimit:
    """Calls in flight to the backend, bounded: :meth:`acquire` is false when full."""

    limit: int
    in_flight: int = 0

    def acquire(self) -> bool:
        if self.in_flight >= self.limit:
            return False
        self.in_flight += 1
        return True

    def release(self) -> None:
        self.in_flight = max(0, self.in_flight - 1)
