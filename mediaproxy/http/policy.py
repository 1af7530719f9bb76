"""
The backend client's one policy: admission, breaker verdicts, retries and the header timeout.

Both halves of the backend client go through it: the pass-through (:mod:`.upstream`) and
source fetches (:mod:`.fetch`). Each builds its own :class:`BackendPolicy` once, from the
``backend`` settings, with its own parts: its own circuit breaker
(``backend.passthrough_breaker``, ``backend.image_breaker``), its own concurrency limit
(``backend.max_concurrent`` each), its own retry budget and jitter (``backend.retries``,
``retry_backoff``, ``retry_backoff_max``) and its own definition of a failure
(:data:`PASSTHROUGH_FAILURES`, :data:`SOURCE_FAILURES`). What really differs between the two
stays with them: streaming a request body and a response to a client, or collecting a bounded
body and sniffing it, and what each answers when the policy says no.

One call (one client request or one source fetch) goes like this, through a :class:`Call`:

1. :meth:`Call.admit` takes a slot of the concurrency limit, or returns a :class:`Refusal`
   (:data:`BUSY`: the caller answers a fast 503 at once instead of queueing).
2. :meth:`Call.attempt`, before every attempt, asks the breaker, or returns a Refusal
   (:data:`CIRCUIT_OPEN`: a fast 503, ``Retry-After`` the seconds until the breaker lets a
   probe through). While the attempt waits for response headers,
   :meth:`Call.start_header_timer` keeps ``backend.header_timeout``.
3. :meth:`Call.record` tells how the attempt went, once, in a small vocabulary
   (:data:`ANSWERED` with its status, :data:`CONNECTION`, :data:`TIMEOUT`, :data:`ERROR`,
   :data:`CANCELLED`; :func:`failure_kind` names a request's failure); the policy's
   :class:`Failures` decide whether the breaker counts it as a failure, a success or not at all.
4. :meth:`Call.retry_delay` says whether that outcome is worth another attempt (a connection
   error, or a 502/503/504: :data:`RETRY_STATUSES`; never a timeout) while the attempt budget
   lasts and the breaker is not open, and after how long (full jitter);
   :meth:`Call.retry_later` waits that long. Whether the request may be repeated at all (the
   pass-through only repeats a bodiless idempotent request before anything went to the
   client) is the caller's to check first.

The attempt budget is the only one: a call makes at most ``1 + backend.retries`` attempts,
each a real request to the backend. The connection pool does not retry on its own
(``retryAutomatically`` is off in :mod:`.upstream`), so a request lost on a keep-alive
connection the backend was closing is one attempt of this budget, not a hidden extra one.
5. :meth:`Call.release` when the call is over: stops its timers and gives back the slot it
   took, once, and nothing it did not take.

Time comes from the injected clock (the reactor, or ``task.Clock`` in tests).

Events (through ``emit``, the runtime's event sender, which the runtime sets on both clients'
policies): every attempt that ended with an answer or a failure of the backend sends
``backend.response`` (value: seconds from the attempt's start to its outcome; fields
``purpose``, ``source`` or ``passthrough``, and ``status``, the answer's status code or None
when there was none); an attempt cancelled on our side (the client went away) tells nothing
about the backend and sends nothing. Every retry sends ``backend.retry`` (field ``purpose``).
"""

from __future__ import annotations

from typing import Any, Callable

import attrs
from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectError, ConnectingCancelledError, DNSLookupError
from twisted.python.failure import Failure
from twisted.web.client import RequestTransmissionFailed, ResponseFailed

from .breaker import OPEN, CircuitBreaker, ConcurrencyLimit, RetryPolicy

#: How an attempt ended. ANSWERED: the backend sent response headers (with a status).
ANSWERED = "answered"
#: The backend could not be reached, or the connection broke before a whole answer.
CONNECTION = "connection"
#: No response headers in time, a body that stalled, a deadline that passed.
TIMEOUT = "timeout"
#: Failed in some other way.
ERROR = "error"
#: Ended without telling anything about the backend (cancelled, or given up on our side).
CANCELLED = "cancelled"

#: Backend statuses worth another attempt (the backend or a balancer in front of it hiccupped).
RETRY_STATUSES = frozenset({502, 503, 504})

#: Failures of a request that mean the backend was not reached, or dropped the connection
#: before its answer was whole: before any byte (``ResponseNeverReceived``, a subclass), in the
#: middle of the response headers, or, for a source fetch that reads the body before using it,
#: in the body (``ResponseFailed``). A request cut off there is worth another attempt as much
#: as one never answered (nginx's ``proxy_next_upstream error`` covers "reading the response
#: header" alike); the pass-through can only see the first two, since it streams the body.
CONNECTION_ERRORS = (ConnectError, ConnectingCancelledError, DNSLookupError,
                     ResponseFailed, RequestTransmissionFailed)

#: Why a call or an attempt was refused: the concurrency limit is full / the breaker is open.
BUSY, CIRCUIT_OPEN = "busy", "circuit_open"


def failure_kind(failure: Failure, timed_out: bool) -> str:
    """The outcome kind of a request that failed (``timed_out``: the caller cancelled it when
    its header timeout passed)."""
    if timed_out:
        return TIMEOUT
    if failure.check(*CONNECTION_ERRORS):
        return CONNECTION
    if failure.check(CancelledError):
        return CANCELLED
    return ERROR


@attrs.frozen
class Failures:
    """What a breaker counts as a failure: the outcome ``kinds``, and an answer with a 5xx
    status when ``server_errors``. Any other answer is a success (the backend is up); any other
    outcome is no verdict. A 4xx is never a failure."""

    kinds: frozenset[str]
    server_errors: bool = False

    def verdict(self, kind: str, status: int | None = None) -> bool | None:
        """True: a failure, False: a success, None: tells nothing."""
        if kind == ANSWERED:
            return self.server_errors and status is not None and status >= 500
        if kind in self.kinds:
            return True
        return None


#: Pass-through: only connection errors and timeouts. A backend that answers, even with its
#: own 500 page, is up, so one broken view cannot open the breaker.
PASSTHROUGH_FAILURES = Failures(frozenset({CONNECTION, TIMEOUT}))
#: Source fetches: connection errors, timeouts, 5xx and any error the fetch did not expect.
SOURCE_FAILURES = Failures(frozenset({CONNECTION, TIMEOUT, ERROR}), server_errors=True)


def retryable(kind: str, status: int | None = None) -> bool:
    """Is an attempt that ended so worth another one? A connection error or a 502/503/504,
    never a timeout (the backend may still be working on it)."""
    return kind == CONNECTION or (kind == ANSWERED and status in RETRY_STATUSES)


@attrs.frozen
class Refusal:
    """A call (:data:`BUSY`) or an attempt (:data:`CIRCUIT_OPEN`) that may not go out; the
    caller answers at once. ``retry_after``: whole seconds for a ``Retry-After`` header;
    ``in_flight``: calls holding a slot of the limit."""

    reason: str
    retry_after: int
    in_flight: int


def _log_changes(log) -> Callable[[str, str, str], None]:
    def on_change(name: str, old: str, new: str) -> None:
        log.warn("circuit breaker {breaker}: {old} -> {new}", breaker=name, old=old, new=new)
    return on_change


@attrs.define(eq=False)
class BackendPolicy:
    """One client's policy (see the module docstring): built once, shared by all its calls.
    Only ``emit`` is ever set after it is made (by the runtime, once)."""

    clock: Any                  #: ``seconds()`` and ``callLater()``: the reactor, a task.Clock
    breaker: CircuitBreaker
    retry: RetryPolicy
    limit: ConcurrencyLimit
    header_timeout: float
    failures: Failures
    #: what the calls are for, a metric label: ``source`` or ``passthrough``
    purpose: str = ""
    #: ``emit(name, value, correlation_id, **fields)``: where attempts are reported, or None
    emit: Callable[..., None] | None = None

    @classmethod
    def from_config(cls, clock, backend, breaker_config, failures: Failures, *, name: str, log,
                    breaker: CircuitBreaker | None = None, retry: RetryPolicy | None = None,
                    limit: ConcurrencyLimit | None = None,
                    purpose: str = "") -> "BackendPolicy":
        """From :class:`~mediaproxy.config.BackendConfig` and the
        :class:`~mediaproxy.config.BreakerConfig` of breaker ``name``, whose state changes are
        logged (a warning) to ``log``. A part given is used as it is."""
        if breaker is None:
            breaker = CircuitBreaker.from_config(clock, name, breaker_config, _log_changes(log))
        if retry is None:
            retry = RetryPolicy.from_config(backend)
        if limit is None:
            limit = ConcurrencyLimit(backend.max_concurrent)
        return cls(clock, breaker, retry, limit, backend.header_timeout, failures,
                   purpose=purpose)

    def call(self) -> "Call":
        """A new call; it holds nothing until :meth:`Call.admit`."""
        return Call(self)


class Call:
    """One call under a :class:`BackendPolicy`: the slot it holds, its attempts (each owing the
    breaker one verdict), and its header and backoff timers."""

    def __init__(self, policy: BackendPolicy):
        self.policy = policy
        self.attempts = 0
        self._slot = False
        self._verdict_pending = False
        self._header_timer = None
        self._backoff_timer = None
        self._started = 0.0

    # -- admission -------------------------------------------------------------------------

    def admit(self) -> Refusal | None:
        """Take a slot of the concurrency limit; a :data:`BUSY` Refusal when it is full."""
        limit = self.policy.limit
        if not limit.acquire():
            return Refusal(BUSY, 1, limit.in_flight)
        self._slot = True
        return None

    def attempt(self) -> Refusal | None:
        """Before each attempt: a :data:`CIRCUIT_OPEN` Refusal while the breaker says no.
        Otherwise the attempt is counted, and owes the breaker a :meth:`record`."""
        breaker = self.policy.breaker
        if not breaker.allow():
            return Refusal(CIRCUIT_OPEN, breaker.retry_after(), self.policy.limit.in_flight)
        self._verdict_pending = True
        self.attempts += 1
        self._started = self.policy.clock.seconds()
        return None

    # -- outcome and retries ---------------------------------------------------------------

    def record(self, kind: str, status: int | None = None) -> None:
        """How the attempt under way ended; the breaker hears it once (a second record of the
        same attempt, or one without an attempt, is ignored)."""
        if not self._verdict_pending:
            return
        self._verdict_pending = False
        policy = self.policy
        if policy.emit is not None and kind != CANCELLED:
            policy.emit("backend.response", value=policy.clock.seconds() - self._started,
                        purpose=policy.purpose, status=status if kind == ANSWERED else None)
        breaker = policy.breaker
        verdict = policy.failures.verdict(kind, status)
        if verdict is None:
            breaker.release()
        elif verdict:
            breaker.failure()
        else:
            breaker.success()

    def retry_delay(self, kind: str, status: int | None = None) -> float | None:
        """Seconds to wait before the next attempt, or None: the outcome is not worth another
        attempt (:func:`retryable`), the attempt budget (``retries`` after the first) is
        spent, or the breaker has just opened (the next attempt would be refused anyway: the
        caller answers now instead of after a backoff). The jitter is drawn only for a yes."""
        retry = self.policy.retry
        if (not retryable(kind, status) or self.attempts > retry.retries
                or self.policy.breaker.state == OPEN):
            return None
        return retry.delay(self.attempts - 1)

    def retry_later(self, delay: float, then: Callable[[], None]) -> None:
        """Call ``then`` (the next attempt) after ``delay`` seconds."""
        if self.policy.emit is not None:
            self.policy.emit("backend.retry", purpose=self.policy.purpose)
        self._backoff_timer = self.policy.clock.callLater(delay, self._backoff_over, then)

    def _backoff_over(self, then: Callable[[], None]) -> None:
        self._backoff_timer = None
        then()

    def cancel_retry(self) -> bool:
        """Drop a retry waiting for its backoff; True when there was one."""
        timer, self._backoff_timer = self._backoff_timer, None
        if timer is not None and timer.active():
            timer.cancel()
            return True
        return False

    # -- the header timeout ----------------------------------------------------------------

    def start_header_timer(self, on_timeout: Callable[..., None], *args) -> None:
        """Call ``on_timeout(*args)`` if the header timeout passes before
        :meth:`stop_header_timer`; nothing when the timer already runs."""
        if self._header_timer is None:
            self._header_timer = self.policy.clock.callLater(
                self.policy.header_timeout, self._header_timeout, on_timeout, args)

    def _header_timeout(self, on_timeout: Callable[..., None], args: tuple) -> None:
        self._header_timer = None
        on_timeout(*args)

    def stop_header_timer(self) -> None:
        timer, self._header_timer = self._header_timer, None
        if timer is not None and timer.active():
            timer.cancel()

    # -- the end ---------------------------------------------------------------------------

    def release(self) -> None:
        """The call is over: stop its timers and give back its slot, if it took one (once)."""
        self.stop_header_timer()
        self.cancel_retry()
        if self._slot:
            self._slot = False
            self.policy.limit.release()
