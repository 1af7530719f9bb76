"""
The transform memory budget: admits work into the transform pool by its estimated bytes, in
priority order (the one place of ordering of the transform queue).

Every transform declares, before it starts, an upper bound of the bytes it will allocate
(``imaging.estimate_bytes``: header only, no decode). :class:`MemoryBudget` admits it only
while the sum of the admitted estimates fits the process's capacity and a thread is free for
it; otherwise the request waits in a bounded queue, for at most ``queue_timeout`` seconds, and
is refused with :class:`Overloaded` (503 with an honest ``Retry-After``) when the queue is full
or the wait too long. So the memory the transforms hold is known and bounded before any pixel
is decoded, whatever the mix of requests.

Two classes of work (:class:`Priority`): ``LIVE`` (a client waits) and ``BACKGROUND`` (warm-up,
pre-rendering, revalidation: :mod:`mediaproxy.jobs`). The ordering:

* **Live before background**: a background waiter is admitted only when no live request waits.
* **Background never displaces live work**: a background reservation is granted only while it
  leaves a thread free (background holds at most ``slots - 1`` reservations; with one thread,
  only when nothing else runs) and at most :data:`BACKGROUND_SHARE` of the capacity in bytes.
  A live request arriving while background work runs finds that thread and that memory.
  (An admitted background render is not stopped: it runs to its end, a few hundred ms.)
* **Within live, FIFO while the queue is short**: in arrival order; one that does not fit yet
  blocks those behind it (a big image is not starved by a stream of small ones).
* **Cheap first when it is long**: once ``cheap_first_after`` or more live requests wait, the
  one of least *effective cost* goes first (``cost``: the estimate's bytes unless the caller
  gives one; it grows with the source's pixels). Aging keeps an expensive one from starving:
  its effective cost halves every ``cost_half_life`` seconds it has waited (a quarter of
  ``queue_timeout`` by default), and it is shed at ``queue_timeout`` anyway. Ties go to the
  earlier arrival. The chosen one blocks the others while it does not fit, as in FIFO.

What it guarantees, whatever the priorities:

* **Never over capacity**: the reserved bytes never exceed ``capacity``; a request whose
  estimate alone exceeds it (for background work: its share of it) can never run and is
  refused at once (:class:`TooLarge`), rather than blocking the queue forever.
* **No more running than threads**: at most ``slots`` reservations are held at once (the pool's
  size), so an admitted transform runs at once and holds its reservation only while it
  computes, never while it waits for a thread nor while its client reads the response.
* **Counted from the door**: a live request the door lets in (:meth:`MemoryBudget.door`, asked
  before its source is fetched and inspected) holds a :class:`Ticket` until it reserves or
  gives up, and the door counts those tickets as if they waited already (they will be in the
  queue before anyone arriving after them): in count against ``queue_limit``, in the predicted
  wait against ``queue_timeout``, and against the free threads. Without it, every request
  arriving while the first ones fetch found the queue empty, a 4x overload put hundreds of
  fetches and inspections in flight only for most to be shed (or to wait their
  ``queue_timeout``) once inspected, and the accepted requests' latency was that pile-up, not
  the queue's budget.
* **Bounded queue and wait**: ``queue_limit`` waiters at most per class; a waiter is refused
  after ``queue_timeout`` seconds, counted from the door for a request that came through it
  (its fetch and inspection are part of its wait: the budget is what its client waits
  before its render starts, not what it waited in this queue alone). A waiter whose
  Deferred is cancelled (its client went away, its job timed out) leaves the queue at once.
  :meth:`promote` moves a background waiter to the live queue (a client now waits for that
  render).
* **Released when the work really ends**: :meth:`Reservation.release` is called when the pool
  thread returns, not when a caller's deadline gives up on it: a timed-out transform still
  holds its memory until its thread stops.

**A standing queue is cut to ``queue_target``** (controlled delay, after CoDel): a burst may
fill the queue up to ``queue_timeout`` of predicted waiting and drains within it, but when
every request admitted for ``standing_after`` seconds (twice ``queue_target`` by default) had
waited more than ``queue_target``, the queue is not a burst draining but a standing queue: an
overload. The door then admits only requests predicted to wait at most ``queue_target``, so
those it lets in wait that long rather than the whole ``queue_timeout`` (with a 4x overload
every accepted request waited about the whole budget before, and those it could not fit in
the budget had fetched their source for nothing), and the rest are refused at once with their
``Retry-After``. The cores stay as busy: a queue of ``queue_target`` still waits for them.
It ends once the door has turned no live request away for ``standing_after`` seconds: the
arrivals then fit in the short queue (neither a thread found free for a moment, which the
short queue makes likely, nor short waits, which the door itself makes, can say so: ended on
either, the door let a whole ``queue_timeout`` of waiting in again each time, and the queue
swung between the two limits).
``queue_target`` 0: the door admits up to ``queue_timeout`` always.

Events (through ``emit``, as ``mediaproxy_event``): ``admission.wait`` (value: seconds waited,
for every admission; ``priority``), ``admission.shed`` (``reason``: ``queue_full``,
``timeout`` or ``too_large``; ``priority``), ``admission.cancel`` (a waiter's client went
away) and ``admission.standing`` (value 1 when the live queue begins standing, 0 when it
ends). ``priority`` is ``live`` or ``background``.

Core room: imports nothing of mediaproxy, runs on the reactor thread only (the pool thread
hands its release back with ``callFromThread``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import sys
from collections import deque
from enum import IntEnum
from typing import Any, Callable

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger

log = Logger(namespace="mediaproxy.admission")

#: Seconds a reservation is assumed to be held before any has been released (Retry-After);
#: the first release replaces it.
INITIAL_HOLD = 1.0
#: Weight of the newest hold time in the moving average (the first ``1 / HOLD_WEIGHT`` holds
#: are averaged plainly).
HOLD_WEIGHT = 0.2
#: Retry-After is never more than this many seconds.
MAX_RETRY_AFTER = 60
#: Reservations released before the predicted wait sheds new waiters.
HOLDS_BEFORE_PREDICTING = 8
#: Most of the capacity (in bytes) background reservations may hold together.
BACKGROUND_SHARE = 0.5
#: Live waiters from which the cheapest goes first (``processing.cheap_first_after``).
CHEAP_FIRST_AFTER = 4


class Priority(IntEnum):
    """The classes of transform work, most urgent first."""

    LIVE = 0
    BACKGROUND = 1

    @property
    def label(self) -> str:
        return self.name.lower()


LIVE = Priority.LIVE
BACKGROUND = Priority.BACKGROUND
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
    priority: Priority = Priority.LIVE

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.budget._release(self)


@attrs.define(eq=False)
class Ticket:
    """A live request let in by :meth:`MemoryBudget.door`, on its way to :meth:`reserve
    <MemoryBudget.reserve>` (fetching and inspecting its source): counted ahead of later
    arrivals until :meth:`leave` (idempotent; call it before reserving, and whatever else ends
    the request). A background request's ticket counts nothing."""

    budget: MemoryBudget
    counted: bool = True
    #: when the door let it in (the reactor's clock): the request's queue_timeout counts
    #: from then
    since: float | None = None

    def leave(self) -> None:
        if self.counted:
            self.counted = False
            self.budget.approaching -= 1

    def passing(self, result):
        """:meth:`leave`, as a callback that passes ``result`` on."""
        self.leave()
        return result


@attrs.define(eq=False)
class _Waiter:
    nbytes: int
    deferred: Deferred
    since: float
    correlation_id: str
    priority: Priority = LIVE
    cost: float = 0.0
    timer: Any = None


@attrs.define(eq=False)
class MemoryBudget:
    """Admission by estimated bytes in front of the transform pool (see the module doc)."""

    #: bytes all admitted transforms may hold together
    capacity: int
    #: reservations held at once at most (the pool's threads)
    slots: int
    #: waiters at most (per priority); more are refused at once
    queue_limit: int
    #: seconds a waiter waits at most
    queue_timeout: float
    #: the clock: ``seconds()`` and ``callLater`` (the reactor; a ``Clock`` in unit tests)
    reactor: Any
    #: ``emit(name, value, correlation_id, **labels)``: the runtime's event sender
    emit: Callable[..., None] = lambda *a, **kw: None
    #: live waiters from which the cheapest goes first (below: arrival order)
    cheap_first_after: int = CHEAP_FIRST_AFTER
    #: seconds of waiting that halve a live waiter's effective cost (None: queue_timeout / 4)
    cost_half_life: float | None = None
    #: seconds of predicted wait the door admits while the queue is standing (0: no limit
    #: beyond queue_timeout)
    queue_target: float = 0.0
    #: seconds of admissions all over ``queue_target`` that make the queue standing (None:
    #: twice queue_target)
    standing_after: float | None = None
    #: whether the live queue is standing (the door admits up to ``queue_target``)
    standing: bool = False
    #: moving average of the seconds from the door to :meth:`reserve` (fetch, inspection):
    #: what a request admitted now spends before it can join the queue
    lead: float = 0.0
    #: since when every admission has waited more than ``queue_target`` (None: the last did
    #: not)
    _above_since: float | None = None
    #: when the door last turned a live request away (or the queue began standing)
    _refused_at: float | None = None
    #: bytes reserved now
    reserved: int = 0
    #: reservations held now
    active: int = 0
    #: bytes and reservations held now by background work
    background_reserved: int = 0
    background_active: int = 0
    #: moving average of how long a reservation is held (seconds), for Retry-After
    mean_hold: float = INITIAL_HOLD
    #: reservations released so far (the mean hold time is a measure once there are a few)
    holds: int = 0
    #: live requests let in by the door and not yet reserved (their :class:`Ticket`)
    approaching: int = 0
    #: the waiters of each priority, in arrival order
    _live: deque = attrs.field(factory=deque)
    _background: deque = attrs.field(factory=deque)

    def __attrs_post_init__(self):
        if self.capacity < 1 or self.slots < 1 or self.queue_limit < 0:
            raise ValueError("capacity and slots must be positive, queue_limit not negative")
        if self.cost_half_life is None:
            self.cost_half_life = self.queue_timeout / 4
        if self.standing_after is None:
            self.standing_after = 2 * self.queue_target

    @property
    def waiting(self) -> int:
        """Requests waiting for admission (every priority)."""
        return len(self._live) + len(self._background)

    def waiting_by_priority(self) -> dict[str, int]:
        return {"live": len(self._live), "background": len(self._background)}

    @property
    def waiting_bytes(self) -> int:
        """Bytes the live waiters ask for (what a new live request waits behind)."""
        return sum(w.nbytes for w in self._live)

    @property
    def background_capacity(self) -> int:
        """Bytes background reservations may hold together (:data:`BACKGROUND_SHARE`)."""
        return max(1, int(self.capacity * BACKGROUND_SHARE))

    def reserve(self, nbytes: int, correlation_id: str = "", *, priority: Priority = LIVE,
                cost: float | None = None, since: float | None = None) -> Deferred:
        """A Deferred that fires with a :class:`Reservation` of ``nbytes`` once it fits and its
        turn has come (at once when nothing of its priority or above waits and it fits now), or
        fails with :class:`TooLarge` (at once) or :class:`Overloaded` (queue full: at once;
        waited ``queue_timeout``: then). Cancelling it while it waits takes it out of the
        queue. ``cost`` orders live waiters when the queue is long (default: ``nbytes``).
        ``since``: when the request came through the door (:attr:`Ticket.since`): its
        ``queue_timeout`` counts from then (default: now)."""
        nbytes = max(0, int(nbytes))
        priority = Priority(priority)
        now = self.reactor.seconds()
        if since is not None and priority == LIVE:
            self.lead += HOLD_WEIGHT * (max(0.0, now - since) - self.lead)
        limit = self.capacity if priority == LIVE else self.background_capacity
        if nbytes > limit:
            self.emit("admission.shed", correlation_id=correlation_id, reason="too_large",
                      priority=priority.label)
            return fail(TooLarge(nbytes, limit))
        if self._may_start(nbytes, priority):
            self.emit("admission.wait", 0.0, correlation_id, priority=priority.label)
            if priority == LIVE:
                self._waited(0.0, now)
            return succeed(self._grant(nbytes, now, priority))
        refused = self._refusal(nbytes, correlation_id, priority, 0)
        if refused is not None:
            return fail(refused)
        waiter = _Waiter(nbytes, Deferred(lambda d: self._cancelled(waiter)), now,
                         correlation_id, priority, float(nbytes if cost is None else cost))
        deadline = self.queue_timeout if since is None else since + self.queue_timeout - now
        waiter.timer = self.reactor.callLater(max(0.0, deadline), self._expired, waiter)
        self._queue(priority).append(waiter)
        return waiter.deferred

    def refusal(self, nbytes: int = 0, correlation_id: str = "", *,
                priority: Priority = LIVE) -> Overloaded | None:
        """The :class:`Overloaded` a request of ``nbytes`` arriving now would get (None: it may
        go on): its queue is full in count, or (live only) in time (what waits already would
        outlast ``queue_timeout``, so it would only wait to be refused, and after a burst a
        backlog of doomed waiters would delay the first requests after it). Live requests
        holding a :class:`Ticket` count as waiting already. The pipeline asks it with
        ``nbytes`` 0 before it looks for a coalescing lock, so an overload is shed at the
        door; :meth:`door` is the same question, answered with a ticket."""
        priority = Priority(priority)
        return self._refusal(nbytes, correlation_id, priority,
                             self.approaching if priority == LIVE else 0)

    def door(self, correlation_id: str = "", priority: Priority = LIVE,
             stale: Any = None) -> Ticket | Overloaded:
        """Asked before a source is fetched and inspected: the :class:`Overloaded` of
        :meth:`refusal`, else a :class:`Ticket` that counts this request ahead of later
        arrivals until it reserves (or gives up): the requests fetching at once are bounded by
        what the queue can take in time, not by how fast they arrive. A request with a
        ``stale`` copy to fall back on (a refresh: not None) is never shed here and counts
        nothing."""
        priority = Priority(priority)
        if stale is not None:
            return Ticket(self, counted=False)
        if priority == LIVE:
            self._end_standing(self.reactor.seconds())
        refused = self.refusal(0, correlation_id, priority=priority)
        if refused is not None:
            return refused
        if priority != LIVE:
            return Ticket(self, counted=False, since=self.reactor.seconds())
        self.approaching += 1
        return Ticket(self, since=self.reactor.seconds())

    def _refusal(self, nbytes: int, correlation_id: str, priority: Priority,
                 ahead: int) -> Overloaded | None:
        """:meth:`refusal` with ``ahead`` more live requests on their way (the tickets): the
        first of them take the free threads, the rest count as waiting."""
        free = max(0, self.slots - self.active)
        if self._may_start(nbytes, priority) and ahead < free:
            return None
        ahead = max(0, ahead - free)
        queue = self._queue(priority)
        if len(queue) + ahead >= self.queue_limit or (
                priority == LIVE and self._predicted_wait(nbytes, ahead) > self.wait_limit):
            self.emit("admission.shed", correlation_id=correlation_id, reason="queue_full",
                      priority=priority.label)
            if priority == LIVE:
                self._refused_at = self.reactor.seconds()
            return Overloaded("transform queue full", self.retry_after(nbytes, ahead))
        return None

    @property
    def wait_limit(self) -> float:
        """The predicted wait the door admits now: ``queue_target`` while the queue is
        standing, else ``queue_timeout``. Standing, the door's prediction (the work ahead)
        is compared with ``queue_target`` plus the :attr:`lead`: the queue drains while the
        request fetches its source, and a request that waits ``queue_target`` once in the
        queue keeps the threads as busy as before (with ``queue_target`` alone, the requests
        on their way took the whole allowance, and the threads waited for them)."""
        if self.standing and self.queue_target > 0:
            return min(self.queue_target + self.lead, self.queue_timeout)
        return self.queue_timeout

    def _waited(self, seconds: float, now: float) -> None:
        """A live request was admitted after waiting ``seconds``: the standing-queue watch."""
        if self.queue_target <= 0:
            return
        self._end_standing(now)
        if seconds <= self.queue_target:
            self._above_since = None
            return
        if self._above_since is None:
            self._above_since = now - seconds + self.queue_target  # over the target since then
        if now - self._above_since >= self.standing_after:  # type: ignore[operator]
            self._stand(True)

    def _end_standing(self, now: float) -> None:
        """End a standing queue once the door has refused no live request for
        ``standing_after`` seconds (asked at each admission, and at the door: after an
        overload nothing may be admitted for a while, and the next burst must find the door
        open)."""
        if (self.standing and self._refused_at is not None
                and now - self._refused_at >= self.standing_after):  # type: ignore[operator]
            self._stand(False)

    def _stand(self, standing: bool) -> None:
        if standing != self.standing:
            self.standing = standing
            self._above_since = None
            # standing lasts at least standing_after: the window of refusals starts now
            self._refused_at = self.reactor.seconds()
            self.emit("admission.standing", 1.0 if standing else 0.0)
            if standing:
                log.info("the transform queue is standing (admissions waited over {target} s "
                         "for {after} s): the door admits up to {target} s of waiting",
                         target=self.queue_target, after=self.standing_after)
            else:
                log.info("the transform queue is no longer standing (nothing refused for "
                         "{after} s)", after=self.standing_after)

    def promote(self, deferred: Deferred) -> bool:
        """Move the background waiter of ``deferred`` to the live queue (a client now waits
        for it), keeping its arrival time; whether it was waiting there."""
        for waiter in self._background:
            if waiter.deferred is deferred:
                self._background.remove(waiter)
                waiter.priority = LIVE
                self._live.append(waiter)
                self._pump()
                return True
        return False

    def _predicted_wait(self, nbytes: int, ahead: int = 0) -> float:
        """Seconds a live request of ``nbytes`` arriving now would wait, by the mean hold time,
        behind the live waiters and ``ahead`` requests on their way to the queue (0 until
        :data:`HOLDS_BEFORE_PREDICTING` reservations have been seen: the first guess of the
        hold time is not a measure)."""
        if self.holds < HOLDS_BEFORE_PREDICTING:
            return 0.0
        turnovers = (self.waiting_bytes + nbytes) / self.capacity
        return self.mean_hold * max(turnovers, (len(self._live) + ahead + 1) / self.slots)

    def retry_after(self, nbytes: int = 0, ahead: int = 0) -> int:
        """Whole seconds until a request of ``nbytes`` arriving now could plausibly be
        admitted: the admitted work turns over about once per mean hold time, and the bytes
        already waiting (plus its own) need that many capacities' worth of turnovers; the
        live waiters and ``ahead`` (on their way to the queue) go first."""
        turnovers = 1.0 + (self.waiting_bytes + nbytes) / self.capacity
        seconds = self.mean_hold * max(turnovers, (len(self._live) + ahead + 1) / self.slots)
        return max(1, min(MAX_RETRY_AFTER, math.ceil(seconds)))

    # -- the ordering (the one place of it) ---------------------------------------------------

    def _queue(self, priority: Priority) -> deque:
        return self._live if priority == LIVE else self._background

    def _fits(self, nbytes: int) -> bool:
        return self.active < self.slots and self.reserved + nbytes <= self.capacity

    def _fits_background(self, nbytes: int) -> bool:
        """Room for background work that leaves a thread (and most of the memory) to live
        work: with one thread, only when nothing at all runs."""
        if not self._fits(nbytes) or                 self.background_reserved + nbytes > self.background_capacity:
            return False
        if self.slots == 1:
            return self.active == 0
        return self.active < self.slots - 1

    def _may_start(self, nbytes: int, priority: Priority) -> bool:
        """Whether a new request may be granted at once: nothing of its class or above waits
        (it would go before them) and it fits."""
        if self._live:
            return False
        if priority == LIVE:
            return self._fits(nbytes)
        return not self._background and self._fits_background(nbytes)

    def effective_cost(self, waiter: _Waiter, now: float) -> float:
        """A live waiter's cost, halved for every ``cost_half_life`` seconds it has waited."""
        half_life: float = self.cost_half_life  # type: ignore[assignment]  # set by __attrs_post_init__
        if half_life <= 0:
            return waiter.cost
        return waiter.cost * 0.5 ** ((now - waiter.since) / half_life)

    def _next_live(self, now: float) -> _Waiter:
        """The live waiter whose turn it is: the first to arrive while fewer than
        ``cheap_first_after`` wait, else the cheapest by effective cost (earlier on ties)."""
        if len(self._live) < self.cheap_first_after:
            return self._live[0]
        return min(self._live, key=lambda w: self.effective_cost(w, now))

    def _pump(self) -> None:
        """Admit live waiters in turn while they fit, then background ones when no live one
        waits; the one whose turn it is and does not fit blocks the rest of its class."""
        now = self.reactor.seconds()
        while self._live:
            waiter = self._next_live(now)
            if not self._fits(waiter.nbytes):
                return   # live work waits: no background work may start either
            self._live.remove(waiter)
            self._admit(waiter, now)
        while self._background and self._fits_background(self._background[0].nbytes):
            self._admit(self._background.popleft(), now)

    def _admit(self, waiter: _Waiter, now: float) -> None:
        waiter.timer.cancel()
        self.emit("admission.wait", now - waiter.since, waiter.correlation_id,
                  priority=waiter.priority.label)
        if waiter.priority == LIVE:
            self._waited(now - waiter.since, now)
        waiter.deferred.callback(self._grant(waiter.nbytes, now, waiter.priority))

    # -- bookkeeping --------------------------------------------------------------------------

    def _grant(self, nbytes: int, now: float, priority: Priority = LIVE) -> Reservation:
        self.reserved += nbytes
        self.active += 1
        if priority != LIVE:
            self.background_reserved += nbytes
            self.background_active += 1
        return Reservation(self, nbytes, now, priority=priority)

    def _release(self, reservation: Reservation) -> None:
        self.reserved -= reservation.nbytes
        self.active -= 1
        if reservation.priority != LIVE:
            self.background_reserved -= reservation.nbytes
            self.background_active -= 1
        held = self.reactor.seconds() - reservation.granted_at
        self.holds += 1
        # the plain mean of the first holds, then the moving average: started from
        # INITIAL_HOLD (1 s, a guess), the average still said 0.2 s after eight renders of
        # 0.01 s, and the first waiters of a fresh process were shed as if they would wait
        # twenty times longer than they would
        self.mean_hold += max(HOLD_WEIGHT, 1.0 / self.holds) * (held - self.mean_hold)
        self._pump()

    def _leave(self, waiter: _Waiter) -> None:
        self._queue(waiter.priority).remove(waiter)
        if waiter.timer.active():
            waiter.timer.cancel()
        self._pump()   # the head may have left: those behind it may fit now

    def _expired(self, waiter: _Waiter) -> None:
        self._leave(waiter)
        self.emit("admission.shed", correlation_id=waiter.correlation_id, reason="timeout",
                  priority=waiter.priority.label)
        waiter.deferred.errback(Overloaded(
            f"no room for the transform within {self.queue_timeout:g} s",
            self.retry_after()))

    def _cancelled(self, waiter: _Waiter) -> None:
        if waiter in self._queue(waiter.priority):
            self._leave(waiter)
            self.emit("admission.cancel", correlation_id=waiter.correlation_id,
                      priority=waiter.priority.label)
