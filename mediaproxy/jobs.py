"""
The background job queue: work nobody waits for (warm-up, pre-rendering new sources, refreshing
stale copies), run behind every live request.

A job is a ``kind`` (a bounded set: :data:`KINDS`), a ``key`` (what it makes: a cache key) and
``work``, a callable returning a Deferred. The queue runs at most ``concurrency`` jobs at once;
the work itself reserves its transform with ``BACKGROUND`` priority in the memory budget
(:mod:`mediaproxy.admission`), so it waits behind every live request and never takes the last
thread. This module orders nothing among transforms: the budget does.

What it guarantees:

* **Bounded**: ``queue_limit`` jobs at most (queued, running, or waiting to retry); a job past
  it is dropped at once (outcome ``dropped``).
* **Coalesced**: a job whose key is already in the queue is not added again (its Deferred is
  the one already there).
* **A deadline per job**: ``timeout`` seconds from its start, waits included; then its work is
  cancelled (a render waiting for the budget leaves its queue) and the outcome is ``timeout``,
  not retried (what took too long once would again).
* **Retries with exponential backoff**: a failed job is tried again after ``retry_backoff`` x
  2^(attempt - 1) seconds (at most ``retry_backoff_max``), ``retries`` times, unless it failed
  with :class:`Permanent`. Then ``failed``.
* **Runs while started**: jobs submitted before :meth:`startService` wait for it;
  :meth:`stopService` cancels the queued, waiting and running jobs (outcome ``dropped``), and
  drops any submitted after it.

Events (``emit``): ``job`` once per job with its ``kind`` and ``outcome`` (``done``,
``failed``, ``timeout``, ``dropped``), value: seconds from submission to the outcome;
``job.retry`` per retry (``kind``).

Core room: imports nothing of mediaproxy; runs on the reactor thread.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

#: The kinds of job (the ``kind`` label of the job metrics); another is counted as ``other``.
KINDS = ("warmup", "url", "prerender", "refresh")
#: The outcomes of a job.
OUTCOMES = ("done", "failed", "timeout", "dropped")

log = Logger(namespace="mediaproxy.jobs")


class Permanent(Exception):
    """A job failure that retrying cannot mend (the source is gone, the request refused)."""


@attrs.define(eq=False)
class Job:
    kind: str
    key: str
    work: Callable[[], Deferred]
    submitted: float
    #: fires with the work's result, or None when it failed, timed out or was dropped
    done: Deferred = attrs.field(factory=Deferred)
    attempts: int = 0
    #: the running attempt's Deferred, or the retry timer while it waits to retry
    running: Any = None
    timer: Any = None


@attrs.define(eq=False)
class JobQueue(Service):
    """Background jobs, bounded, with retries and deadlines (see the module doc). A Twisted
    service: :meth:`startService` lets jobs run, :meth:`stopService` drops what is left."""

    reactor: Any
    emit: Callable[..., None] = lambda *a, **kw: None
    queue_limit: int = 1000
    concurrency: int = 1
    timeout: float = 60.0
    retries: int = 3
    retry_backoff: float = 1.0
    retry_backoff_max: float = 60.0
    #: key -> Job: every job not finished (queued, running, or waiting to retry)
    _jobs: dict = attrs.field(factory=dict)
    _queued: deque = attrs.field(factory=deque)
    _active: int = 0
    #: jobs run only between :meth:`startService` and :meth:`stopService` (queued before)
    _started: bool = False
    _stopped: bool = False

    def __attrs_post_init__(self):
        self.name = "jobs"

    @classmethod
    def from_config(cls, conf, reactor, emit) -> "JobQueue":
        """The queue ``conf`` (the ``[jobs]`` section) describes."""
        return cls(reactor=reactor, emit=emit, queue_limit=conf.queue_limit,
                   concurrency=conf.concurrency, timeout=conf.timeout, retries=conf.retries,
                   retry_backoff=conf.retry_backoff, retry_backoff_max=conf.retry_backoff_max)

    # -- what callers see ---------------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Jobs waiting to start (queued or waiting to retry)."""
        return len(self._jobs) - self._active

    @property
    def active(self) -> int:
        return self._active

    def __contains__(self, key: str) -> bool:
        return key in self._jobs

    def submit(self, kind: str, key: str, work: Callable[[], Deferred]) -> Deferred:
        """Queue ``work`` (called with no arguments, returning a Deferred or a value) as a
        job; a Deferred firing with its result, or None when it did not succeed. A key already
        in the queue gets that job's Deferred (tied to it, never cancelling it)."""
        existing = self._jobs.get(key)
        if existing is not None:
            return _follow(existing.done)
        job = Job(kind, key, work, self.reactor.seconds())
        if self._stopped or len(self._jobs) >= self.queue_limit:
            self._outcome(job, "dropped")
            return job.done
        self._jobs[key] = job
        self._queued.append(job)
        self._next()
        return _follow(job.done)

    # -- the service ---------------------------------------------------------------------------

    def startService(self):
        Service.startService(self)
        self._started, self._stopped = True, False
        self._next()

    def stopService(self):
        """Drop every job not finished: queued, waiting to retry, or running (its work is
        cancelled: a render waiting for the budget leaves its queue)."""
        self._stopped = True
        for job in list(self._jobs.values()):
            self._drop(job)
        self._queued.clear()
        return Service.stopService(self)

    # -- running -------------------------------------------------------------------------------

    def _next(self) -> None:
        while self._started and not self._stopped and self._queued and \
                self._active < self.concurrency:
            self._start(self._queued.popleft())

    def _start(self, job: Job) -> None:
        self._active += 1
        job.attempts += 1
        d = maybeDeferred(job.work)
        job.running = d
        state = {"timed_out": False}

        def expired():
            state["timed_out"] = True
            d.cancel()

        deadline = self.reactor.callLater(self.timeout, expired)

        def finished(result):
            if deadline.active():
                deadline.cancel()
            if job.running is not d:
                return None   # dropped meanwhile: already accounted for
            job.running = None
            self._active -= 1
            if state["timed_out"]:
                log.info("background job {kind} {key} passed its {timeout} s",
                         kind=job.kind, key=job.key, timeout=self.timeout)
                self._end(job, "timeout")
            elif isinstance(result, Failure):
                self._failed(job, result)
            else:
                self._end(job, "done", result)
            self._next()
            return None

        d.addBoth(finished)

    def _failed(self, job: Job, failure: Failure) -> None:
        if failure.check(Permanent) or job.attempts > self.retries or self._stopped:
            log.info("background job {kind} {key} failed after {attempts} attempt(s): {why}",
                     kind=job.kind, key=job.key, attempts=job.attempts,
                     why=failure.getErrorMessage())
            self._end(job, "failed")
            return
        delay = self.backoff(job.attempts)
        self.emit("job.retry", delay, kind=_kind(job.kind))
        log.debug("background job {kind} {key} failed ({why}); retry in {delay} s",
                  kind=job.kind, key=job.key, why=failure.getErrorMessage(), delay=delay)
        job.timer = self.reactor.callLater(delay, self._retry, job)

    def backoff(self, attempt: int) -> float:
        """Seconds before retry number ``attempt`` (1 for the first)."""
        return min(self.retry_backoff * 2 ** (attempt - 1), self.retry_backoff_max)

    def _retry(self, job: Job) -> None:
        job.timer = None
        if self._jobs.get(job.key) is job:
            self._queued.append(job)
            self._next()

    def _drop(self, job: Job) -> None:
        if job.timer is not None and job.timer.active():
            job.timer.cancel()
        running, job.running = job.running, None
        if running is not None:
            self._active -= 1
        self._end(job, "dropped")
        if running is not None:
            running.cancel()

    def _end(self, job: Job, outcome: str, result=None) -> None:
        if self._jobs.get(job.key) is job:
            del self._jobs[job.key]
        self._outcome(job, outcome, result)

    def _outcome(self, job: Job, outcome: str, result=None) -> None:
        self.emit("job", self.reactor.seconds() - job.submitted, kind=_kind(job.kind),
                  outcome=outcome)
        if not job.done.called:
            job.done.callback(result if outcome == "done" else None)


def _kind(kind: str) -> str:
    return kind if kind in KINDS else "other"


def _follow(done: Deferred) -> Deferred:
    """A Deferred of its own firing with ``done``'s result (cancelling it leaves ``done``)."""
    out: Deferred = Deferred()

    def fire(result):
        if not out.called:
            out.callback(result)
        return result

    done.addBoth(fire)
    return out


