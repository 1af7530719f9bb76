"""
The transform memory budget: admits work into the transform pool by its estimated bytes.

Every transform declares, before it starts, an upper bound of the bytes it will allocate
(``imaging.estimate_bytes``: header only, no decode). :class:`MemoryBudget` admits it only
while the sum of the admitted estimates fits the process's capacity and a thread is free for
it; otherwise the request waits in a bounded FIFO queue, for at most ``queue_timeout``
seconds, and is refused with :class:`Overloaded` (503 with an honest ``Retry-After``) when the
queue is full or the wait too long. So the memory the transforms hold is known and bounded
before any pixel is decoded, whatever the mix of requests.

What it guarantees:

* **Never over capacity**: the reserved bytes never exceed ``capacity``; a request whose
  estimate alone exceeds it can never run and is refused at once (:class:`TooLarge`), rather
  than blocking the queue forever.
* **No more running than threads**: at most ``slots`` reservations are held at once (the pool's
  size), so an admitted transform runs at once and holds its reservation only while it
  computes, never while it waits for a thread nor while its client reads the response.
* **FIFO**: waiters are admitted in arrival order; one that does not fit yet blocks those
  behind it (a big image is not starved by a stream of small ones).
* **Bounded queue and wait**: ``queue_limit`` waiters at most; a waiter is refused after
  ``queue_timeout`` seconds. A waiter whose Deferred is cancelled (its client went away) leaves
  the queue at once.
* **Released when the work really ends**: :meth:`Reservation.release` is called when the pool
  thread returns, not when a caller's deadline gives up on it: a timed-out transform still
  holds its memory until its thread stops.

The ordering lives in one place (:meth:`MemoryBudget._pump` over ``_waiting``), so a priority
queue (live before background, cheap before expensive) can replace the FIFO later.

Events (through ``emit``, as ``mediaproxy_event``): ``admission.wait`` (value: seconds waited,
for every admission), ``admission.shed`` (``reason``: ``queue_full``, ``timeout`` or
``too_large``) and ``admission.cancel`` (a waiter's client went away).

Core room: imports nothing of mediaproxy, runs on the reactor thread only (the pool thread
hands its release back with ``callFromThread``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import sys
from collections import deque
from typing import Any, Callable

import attrs
from twisted.internet.defer import Deferred, fail, succeed

#: Seconds a reservation is assumed to be held before any has been released (Retry-After).
INITIAL_HOLD = 1.0
#: Weight of the newest hold time in the moving average.
HOLD_WEIGHT = 0.2
#: Retry-After is never more than this many seconds.
MAX_RETRY_AFTER = 60
#: Reservations released before the predicted wait sheds new waiters.
HOLDS_BEFORE_PREDICTING = 8
#: Allocations from this size up are mapped and unmapped on their own (see
#: :func:`return_freed_images_to_the_os`); Pillow allocates images in blocks of up to 16 MiB.
MMAP_THRESHOLD = 4 * 1024 * 1024
_M_MMAP_THRESHOLD = -3   # glibc's mallopt parameter


def return_freed_images_to_the_os(threshold: int = MMAP_THRESHOLD) -> bool:
    """Make glibc map every allocation of ``threshold`` bytes or more on its own, so a
    decoded image's memory goes back to the system when it is freed.

    Without it glibc raises its mmap threshold to the size of the first large block freed (up
    to 32 MiB), after which Pillow's 16 MiB image blocks come from each pool thread's own heap
    and stay in the process after use: serial transforms in different threads each leave
    their peak behind, and the RSS ratchets past what the budget admits (measured: 1072 MiB
    peak for one admitted 286 MiB estimate at a time on 8 threads, 591 MiB with this; see
    docs/performance.md). Returns whether it applied (glibc only; elsewhere a no-op)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(threshold)))
    except (OSError, AttributeError):
        return False


class Overloaded(Exception):
    """The transform queue is full or the wait for memory too long: the request is answered
    503 with ``Retry-After: retry_after`` (whole seconds, at least 1)."""

    def __init__(self, message: str = "transform queue full", retry_after: int = 1):
        super().__init__(message)
        self.retry_after = max(1, int(retry_after))


class TooLarge(Exception):
    """The estimate alone exceeds the whole budget: the work can never be admitted."""

    def __init__(self, nbytes: int, capacity: int):
        super().__init__(f"the transform needs about {nbytes} bytes; the process budget for "
                         f"all transforms is {capacity} bytes")
        self.nbytes = nbytes
        self.capacity = capacity


@attrs.define(eq=False)
class Reservation:
    """``nbytes`` of the budget, held until :meth:`release` (idempotent)."""

    budget: MemoryBudget
    nbytes: int
    granted_at: float
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.budget._release(self)


@attrs.define(eq=False)
class _Waiter:
    nbytes: int
    deferred: Deferred
    since: float
    correlation_id: str
    timer: Any = None


@attrs.define(eq=False)
class MemoryBudget:
    """Admission by estimated bytes in front of the transform pool (see the module doc)."""

    #: bytes all admitted transforms may hold together
    capacity: int
    #: reservations held at once at most (the pool's threads)
    slots: int
    #: waiters at most; more are refused at once
    queue_limit: int
    #: seconds a waiter waits at most
    queue_timeout: float
    #: the clock: ``seconds()`` and ``callLater`` (the reactor; a ``Clock`` in unit tests)
    reactor: Any
    #: ``emit(name, value, correlation_id, **labels)``: the runtime's event sender
    emit: Callable[..., None] = lambda *a, **kw: None
    #: bytes reserved now
    reserved: int = 0
    #: reservations held now
    active: int = 0
    #: moving average of how long a reservation is held (seconds), for Retry-After
    mean_hold: float = INITIAL_HOLD
    #: reservations released so far (the mean hold time is a measure once there are a few)
    holds: int = 0
    _waiting: deque = attrs.field(factory=deque)

    def __attrs_post_init__(self):
        if self.capacity < 1 or self.slots < 1 or self.queue_limit < 0:
            raise ValueError("capacity and slots must be positive, queue_limit not negative")

    @property
    def waiting(self) -> int:
        """Requests waiting for admission."""
        return len(self._waiting)

    @property
    def waiting_bytes(self) -> int:
        return sum(w.nbytes for w in self._waiting)

    def reserve(self, nbytes: int, correlation_id: str = "") -> Deferred:
        """A Deferred that fires with a :class:`Reservation` of ``nbytes`` once it fits (at
        once when nobody waits and it fits now), or fails with :class:`TooLarge` (at once) or
        :class:`Overloaded` (queue full: at once; waited ``queue_timeout``: then). Cancelling
        it while it waits takes it out of the queue."""
        nbytes = max(0, int(nbytes))
        now = self.reactor.seconds()
        if nbytes > self.capacity:
            self.emit("admission.shed", correlation_id=correlation_id, reason="too_large")
            return fail(TooLarge(nbytes, self.capacity))
        if not self._waiting and self._fits(nbytes):
            self.emit("admission.wait", 0.0, correlation_id)
            return succeed(self._grant(nbytes, now))
        refused = self.refusal(nbytes, correlation_id)
        if refused is not None:
            return fail(refused)
        waiter = _Waiter(nbytes, Deferred(lambda d: self._cancelled(waiter)), now,
                         correlation_id)
        waiter.timer = self.reactor.callLater(self.queue_timeout, self._expired, waiter)
        self._waiting.append(waiter)
        return waiter.deferred

    def refusal(self, nbytes: int = 0, correlation_id: str = "") -> Overloaded | None:
        """The :class:`Overloaded` a request of ``nbytes`` that cannot run at once would get
        now (None: it may wait): the queue is full in count, or in time (what waits already
        would outlast ``queue_timeout``, so it would only wait to be refused, and after a
        burst a backlog of doomed waiters would delay the first requests after it). The
        pipeline asks it with ``nbytes`` 0 before it fetches and inspects a source, so an
        overload is shed at the door."""
        if self._fits(nbytes) and not self._waiting:
            return None
        if len(self._waiting) >= self.queue_limit or \
                self._predicted_wait(nbytes) > self.queue_timeout:
            self.emit("admission.shed", correlation_id=correlation_id, reason="queue_full")
            return Overloaded("transform queue full", self.retry_after(nbytes))
        return None

    def _predicted_wait(self, nbytes: int) -> float:
        """Seconds a request of ``nbytes`` arriving now would wait, by the mean hold time
        (0 until :data:`HOLDS_BEFORE_PREDICTING` reservations have been seen: the first
        guess of the hold time is not a measure)."""
        if self.holds < HOLDS_BEFORE_PREDICTING:
            return 0.0
        turnovers = (self.waiting_bytes + nbytes) / self.capacity
        return self.mean_hold * max(turnovers, (self.waiting + 1) / self.slots)

    def retry_after(self, nbytes: int = 0) -> int:
        """Whole seconds until a request of ``nbytes`` arriving now could plausibly be
        admitted: the admitted work turns over about once per mean hold time, and the bytes
        already waiting (plus its own) need that many capacities' worth of turnovers."""
        turnovers = 1.0 + (self.waiting_bytes + nbytes) / self.capacity
        seconds = self.mean_hold * max(turnovers, (self.waiting + 1) / self.slots)
        return max(1, min(MAX_RETRY_AFTER, math.ceil(seconds)))

    # -- the ordering: FIFO (the one place a priority queue would change) ----------------------

    def _fits(self, nbytes: int) -> bool:
        return self.active < self.slots and self.reserved + nbytes <= self.capacity

    def _pump(self) -> None:
        """Admit waiters from the head while they fit."""
        now = self.reactor.seconds()
        while self._waiting and self._fits(self._waiting[0].nbytes):
            waiter = self._waiting.popleft()
            waiter.timer.cancel()
            self.emit("admission.wait", now - waiter.since, waiter.correlation_id)
            waiter.deferred.callback(self._grant(waiter.nbytes, now))

    # -- bookkeeping --------------------------------------------------------------------------

    def _grant(self, nbytes: int, now: float) -> Reservation:
        self.reserved += nbytes
        self.active += 1
        return Reservation(self, nbytes, now)

    def _release(self, reservation: Reservation) -> None:
        self.reserved -= reservation.nbytes
        self.active -= 1
        held = self.reactor.seconds() - reservation.granted_at
        self.mean_hold += HOLD_WEIGHT * (held - self.mean_hold)
        self.holds += 1
        self._pump()

    def _leave(self, waiter: _Waiter) -> None:
        self._waiting.remove(waiter)
        if waiter.timer.active():
            waiter.timer.cancel()
        self._pump()   # the head may have left: those behind it may fit now

    def _expired(self, waiter: _Waiter) -> None:
        self._leave(waiter)
        self.emit("admission.shed", correlation_id=waiter.correlation_id, reason="timeout")
        waiter.deferred.errback(Overloaded(
            f"no room for the transform within {self.queue_timeout:g} s",
            self.retry_after()))

    def _cancelled(self, waiter: _Waiter) -> None:
        if waiter in self._waiting:
            self._leave(waiter)
            self.emit("admission.cancel", correlation_id=waiter.correlation_id)
