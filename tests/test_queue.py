"""The priority job queue (issue 14): the ordering of mediaproxy/admission.py on a real thread
pool (live before background, background never takes the last thread, cheap before expensive
once the queue is long, aging, shedding after the queue-time budget), the background job queue
of mediaproxy/jobs.py on a Clock (retries with backoff, deadlines, bounds, coalescing), and end
to end through the test kit: the nearest cached variant offered to a shed request, a shed
request not re-rendered by warming, pre-rendering a new source and warm-up URLs.

No wall-clock assertions: the budget's and the job queue's time is a Clock; the pool's threads
are held with Events (their waits have timeouts only as guards against a hang)."""

from __future__ import annotations

import contextlib
import json
import queue
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.python.threadpool import ThreadPool

from mediaproxy.admission import BACKGROUND, LIVE, MemoryBudget, Overloaded, TooLarge
from mediaproxy.jobs import JobQueue, Permanent
from mediaproxy.testing import call_in_reactor, decode, make_image, start_proxy, wait_for
from .test_admission import Gate


class Events:
    def __init__(self):
        self.seen = []

    def __call__(self, name, value=1.0, correlation_id="", **labels):
        self.seen.append((name, value, correlation_id, labels))

    def named(self, name):
        return [(value, labels) for n, value, _, labels in self.seen if n == name]


def make_budget(capacity=1000, slots=2, queue_limit=10, queue_timeout=8.0, cheap_first_after=4):
    clock, events = Clock(), Events()
    return MemoryBudget(capacity=capacity, slots=slots, queue_limit=queue_limit,
                        queue_timeout=queue_timeout, reactor=clock, emit=events,
                        cheap_first_after=cheap_first_after), clock, events


class HeldPool:
    """A real ThreadPool running what the budget admits. Each piece of work records that it
    started (in the order the pool's threads began it) and holds its thread until
    :meth:`finish`; the test's thread plays the reactor: it owns the budget and gives the
    reservation back once the work's thread has returned."""

    def __init__(self, budget, threads):
        self.budget = budget
        self.pool = ThreadPool(threads, threads, name="held")
        self.pool.start()
        self.started, self.lock = [], threading.Lock()
        self.gates, self.reservations, self.refused = {}, {}, {}
        self.done = queue.Queue()

    def submit(self, name, nbytes, priority=LIVE, cost=None):
        self.gates[name] = threading.Event()
        d = self.budget.reserve(nbytes, name, priority=priority, cost=cost)
        d.addCallbacks(lambda r: self._run(name, r),
                       lambda f: self.refused.__setitem__(name, f.value))
        return d

    def _run(self, name, reservation):
        entered = threading.Event()

        def work():
            with self.lock:
                self.started.append(name)
            entered.set()
            self.gates[name].wait(30)
            self.done.put(name)

        self.reservations[name] = reservation
        self.pool.callInThread(work)
        assert entered.wait(30), f"{name} never started"

    def finish(self, name):
        self.gates[name].set()
        assert self.done.get(timeout=30) == name
        self.reservations[name].release()

    def stop(self):
        for gate in self.gates.values():
            gate.set()
        self.pool.stop()


@pytest.fixture
def held():
    pools = []

    def make(budget, threads):
        pools.append(HeldPool(budget, threads))
        return pools[-1]

    yield make
    for pool in pools:
        pool.stop()


# -- the ordering on a real pool (issue 14, "Must show") ---------------------------------------

def test_a_background_job_waits_while_live_requests_run_and_never_takes_the_last_thread(held):
    budget, clock, events = make_budget(slots=2)
    pool = held(budget, threads=2)
    pool.submit("B1", 100, BACKGROUND)          # idle: background may take one of two threads
    pool.submit("L1", 100)
    pool.submit("B2", 100, BACKGROUND)
    pool.submit("L2", 100)
    pool.submit("L3", 100)
    assert pool.started == ["B1", "L1"]
    assert budget.waiting_by_priority() == {"live": 2, "background": 1}
    pool.finish("L1")
    assert pool.started == ["B1", "L1", "L2"]    # live first, though B2 came earlier
    pool.finish("B1")
    assert pool.started == ["B1", "L1", "L2", "L3"]
    pool.finish("L2")
    # no live request waits, but B2 would take the last free thread: it keeps waiting
    assert pool.started == ["B1", "L1", "L2", "L3"]
    assert budget.waiting_by_priority() == {"live": 0, "background": 1}
    pool.finish("L3")
    assert pool.started == ["B1", "L1", "L2", "L3", "B2"]
    # a live request arriving now finds the thread background work left free
    pool.submit("L4", 100)
    assert pool.started[-1] == "L4" and budget.active == 2
    assert [labels["priority"] for _, labels in events.named("admission.wait")] == [
        "background", "live", "live", "live", "background", "live"]


def test_cheap_before_expensive_once_the_queue_is_long_and_fifo_below(held):
    budget, clock, _ = make_budget(slots=1, cheap_first_after=4)
    pool = held(budget, threads=1)
    pool.submit("first", 10)
    for name, nbytes in (("big", 900), ("mid", 500), ("small", 100), ("tiny", 10),
                         ("small2", 50)):
        pool.submit(name, nbytes)
    assert budget.waiting == 5
    for name in ("first", "tiny", "small2", "big", "mid"):
        pool.finish(name)
    # 5 and 4 waiting: the cheapest; 3 waiting (below cheap_first_after): arrival order
    assert pool.started == ["first", "tiny", "small2", "big", "mid", "small"]


def test_the_cost_given_orders_the_long_queue_rather_than_the_bytes(held):
    budget, clock, _ = make_budget(slots=1, cheap_first_after=2)
    pool = held(budget, threads=1)
    pool.submit("first", 10)
    pool.submit("many-pixels", 10, cost=5_000)
    pool.submit("few-pixels", 400, cost=50)
    pool.finish("first")
    assert pool.started == ["first", "few-pixels"]


def test_live_requests_past_the_queue_time_budget_are_shed_and_never_run(held):
    budget, clock, events = make_budget(slots=1, queue_timeout=8.0)
    pool = held(budget, threads=1)
    pool.submit("running", 100)
    pool.submit("late", 100)
    pool.submit("later-bg", 100, BACKGROUND)
    clock.advance(7.999)
    assert pool.refused == {} and budget.waiting == 2
    clock.advance(0.001)
    assert set(pool.refused) == {"late", "later-bg"}
    assert type(pool.refused["late"]) is Overloaded and pool.refused["late"].retry_after == 1
    assert [labels for _, labels in events.named("admission.shed")] == [
        {"reason": "timeout", "priority": "live"},
        {"reason": "timeout", "priority": "background"}]
    pool.finish("running")
    assert pool.started == ["running"] and budget.active == 0


# -- the ordering's rules, exactly (a Clock, no pool) ------------------------------------------

def granted(d):
    """What ``d`` came to (a Reservation or the exception), or None while it waits; the same
    answer when asked again."""
    if not hasattr(d, "seen"):
        d.seen = []
        d.addCallbacks(d.seen.append, lambda f: d.seen.append(f.value))
    return d.seen[0] if d.seen else None


@pytest.mark.parametrize("waited, first", [(6.0, "big"), (4.0, "big"), (3.9, "small")])
def test_an_expensive_waiter_ages_its_cost_halves_every_quarter_of_the_timeout(waited, first):
    budget, clock, _ = make_budget(slots=1, queue_timeout=8.0, cheap_first_after=2)
    held = granted(budget.reserve(10))
    big = budget.reserve(10, "big", cost=800)
    clock.advance(waited)             # 800 / 2 ** (waited / 2): 100, 200 (a tie), 214
    small = budget.reserve(10, "small", cost=200)
    held.release()
    assert (granted(big) is not None, granted(small) is not None) == (
        first == "big", first == "small")


def test_background_holds_at_most_half_the_bytes_and_more_is_refused_at_once():
    budget, clock, events = make_budget(capacity=1000, slots=4)
    assert isinstance(granted(budget.reserve(501, priority=BACKGROUND)), TooLarge)
    one = granted(budget.reserve(300, priority=BACKGROUND))
    second = budget.reserve(201, priority=BACKGROUND)
    assert granted(second) is None                       # 300 + 201 > 500
    assert granted(budget.reserve(200, priority=BACKGROUND)) is None   # behind the second
    granted(budget.reserve(10)).release()                # the queue is looked at again:
    assert granted(second) is None                       # the head still does not fit
    assert budget.background_reserved == 300
    one.release()
    assert granted(second) is not None
    assert budget.background_reserved == 401 and budget.background_active == 2
    live = granted(budget.reserve(599))                  # the rest is live work's
    assert live is not None and budget.reserved == 1000


def test_background_may_hold_exactly_its_share():
    budget, clock, events = make_budget(capacity=1000, slots=4)
    granted(budget.reserve(300, priority=BACKGROUND))
    assert granted(budget.reserve(200, priority=BACKGROUND)) is not None
    assert budget.background_reserved == 500


def test_with_one_thread_background_work_runs_only_when_nothing_else_does():
    budget, clock, _ = make_budget(slots=1)
    live = granted(budget.reserve(10))
    background = budget.reserve(10, priority=BACKGROUND)
    assert granted(background) is None
    live.release()
    assert granted(background) is not None


def test_live_work_never_waits_behind_background_and_a_promoted_waiter_goes_first():
    budget, clock, _ = make_budget(slots=3)
    running = [granted(budget.reserve(10)) for _ in range(3)]
    b1 = budget.reserve(10, "b1", priority=BACKGROUND)
    b2 = budget.reserve(10, "b2", priority=BACKGROUND)
    live = budget.reserve(10, "live")
    assert budget.promote(b2) is True and budget.promote(b2) is False
    running[0].release()
    assert granted(live) is not None
    running[1].release()
    assert granted(b2) is not None and granted(b2).priority == LIVE
    assert granted(b1) is None


def test_a_full_background_queue_refuses_but_live_requests_still_wait():
    budget, clock, events = make_budget(slots=1, queue_limit=1)
    granted(budget.reserve(10))
    assert granted(budget.reserve(10, priority=BACKGROUND)) is None
    assert isinstance(granted(budget.reserve(10, priority=BACKGROUND)), Overloaded)
    assert granted(budget.reserve(10)) is None           # the live queue has its own bound
    assert isinstance(granted(budget.reserve(10)), Overloaded)
    assert [labels["priority"] for _, labels in events.named("admission.shed")] == [
        "background", "live"]


def test_a_negative_estimate_reserves_nothing():
    budget, clock, _ = make_budget(capacity=100, slots=2)
    r = granted(budget.reserve(-5))
    assert r.nbytes == 0 and budget.reserved == 0


@pytest.mark.parametrize("capacity, slots, queue_limit", [(0, 1, 0), (1, 0, 0), (1, 1, -1)])
def test_a_budget_without_capacity_slots_or_with_a_negative_queue_is_refused(
        capacity, slots, queue_limit):
    with pytest.raises(ValueError):
        MemoryBudget(capacity=capacity, slots=slots, queue_limit=queue_limit,
                     queue_timeout=1.0, reactor=Clock())


def test_the_smallest_budget_is_one_byte_one_slot_no_queue():
    budget = MemoryBudget(capacity=1, slots=1, queue_limit=0, queue_timeout=1.0,
                          reactor=Clock())
    assert budget.background_capacity == 1 and budget.cost_half_life == 0.25
    assert make_budget(capacity=3)[0].background_capacity == 1


def test_the_job_queue_defaults_are_the_jobs_settings():
    from mediaproxy.config import JobsConfig

    conf = JobsConfig()
    jobs = JobQueue(reactor=Clock())
    assert (jobs.queue_limit, jobs.concurrency, jobs.timeout, jobs.retries,
            jobs.retry_backoff, jobs.retry_backoff_max) == (
        conf.queue_limit, conf.concurrency, conf.timeout, conf.retries, conf.retry_backoff,
        conf.retry_backoff_max)
    made = JobQueue.from_config(conf, Clock(), None)
    assert (made.queue_limit, made.retry_backoff_max) == (conf.queue_limit,
                                                          conf.retry_backoff_max)


def test_no_aging_with_a_half_life_of_zero():
    budget, clock, _ = make_budget(slots=1, cheap_first_after=1, queue_timeout=1000.0)
    budget.cost_half_life = 0
    held = granted(budget.reserve(10))
    big = budget.reserve(10, "big", cost=800)
    clock.advance(100)
    small = budget.reserve(10, "small", cost=799)
    held.release()
    assert granted(small) is not None and granted(big) is None


def test_the_wait_is_predicted_from_the_eighth_hold_on():
    budget, clock, _ = make_budget(capacity=100, slots=1, queue_limit=50, queue_timeout=3.0)
    for holds in range(1, 9):
        r = granted(budget.reserve(10))
        clock.advance(1.0)
        r.release()
        assert budget._predicted_wait(10) == (1.0 if holds == 8 else 0.0)


def test_jobs_submitted_before_the_queue_starts_wait_for_it():
    clock = Clock()
    jobs = JobQueue(reactor=clock)
    ran = []
    jobs.submit("url", "k", lambda: ran.append(1))
    assert ran == [] and jobs.depth == 1
    jobs.startService()
    assert ran == [1] and jobs.depth == 0


def test_the_wait_reported_is_the_time_waited():
    budget, clock, events = make_budget(slots=1)
    clock.advance(5)
    held = granted(budget.reserve(10))
    waiting = budget.reserve(10, "w")
    clock.advance(2)
    held.release()
    assert granted(waiting) is not None
    assert [value for value, _ in events.named("admission.wait")] == [0.0, 2.0]


def test_the_predicted_wait_counts_bytes_and_waiters_per_thread():
    budget, clock, _ = make_budget(capacity=100, slots=2, queue_limit=50, queue_timeout=30.0)
    for _ in range(8):                     # eight holds of one second: the mean is 1 s
        r = granted(budget.reserve(10))
        clock.advance(1.0)
        r.release()
    assert budget.mean_hold == 1.0
    assert budget._predicted_wait(300) == 3.0            # three capacities' worth of bytes
    running = [granted(budget.reserve(50)) for _ in range(2)]
    for _ in range(3):
        budget.reserve(0)
    assert budget._predicted_wait(0) == 2.0              # (3 waiting + itself) / 2 threads
    assert all(r is not None for r in running)


def test_an_overload_asks_for_at_least_a_second():
    assert Overloaded().retry_after == 1
    assert Overloaded("busy", 0).retry_after == 1
    assert Overloaded("busy", 7.9).retry_after == 7


def test_aging_with_a_half_life_under_a_second():
    budget, clock, _ = make_budget(slots=1, queue_timeout=2.0, cheap_first_after=2)
    held = granted(budget.reserve(10))
    big = budget.reserve(10, "big", cost=800)
    clock.advance(1.5)                # 800 / 2 ** (1.5 / 0.5) = 100
    small = budget.reserve(10, "small", cost=150)
    held.release()
    assert granted(big) is not None and granted(small) is None


def test_retry_after_without_arguments_counts_no_bytes_of_its_own():
    budget, clock, _ = make_budget(capacity=1, slots=2)
    budget.mean_hold = 59.0
    assert budget.retry_after() == 59


# -- the background job queue on a Clock --------------------------------------------------------

def job_queue(**kw):
    clock, events = Clock(), Events()
    settings = dict(queue_limit=10, concurrency=1, timeout=30.0, retries=3, retry_backoff=1.0,
                    retry_backoff_max=60.0)
    settings.update(kw)
    jobs = JobQueue(reactor=clock, emit=events, **settings)
    jobs.startService()
    return jobs, clock, events


def outcomes(events):
    return [(labels["kind"], labels["outcome"]) for _, labels in events.named("job")]


def test_a_failing_job_is_retried_with_exponential_backoff_then_succeeds():
    jobs, clock, events = job_queue(retry_backoff=1.0, retry_backoff_max=60.0)
    attempts = []

    def work():
        attempts.append(clock.seconds())
        return fail(RuntimeError("busy")) if len(attempts) < 3 else succeed("made")

    result = []
    jobs.submit("warmup", "k", work).addCallback(result.append)
    clock.advance(0.999)
    assert attempts == [0.0]
    clock.advance(0.001)
    assert attempts == [0.0, 1.0]
    clock.advance(2.0)
    assert attempts == [0.0, 1.0, 3.0] and result == ["made"]
    assert [value for value, _ in events.named("job.retry")] == [1.0, 2.0]
    assert outcomes(events) == [("warmup", "done")]
    assert [value for value, _ in events.named("job")] == [3.0]    # submitted at 0
    assert "k" not in jobs and jobs.depth == 0


def test_the_backoff_doubles_up_to_its_maximum():
    jobs, _, _ = job_queue(retry_backoff=1.5, retry_backoff_max=5.0)
    assert [jobs.backoff(n) for n in (1, 2, 3, 4)] == [1.5, 3.0, 5.0, 5.0]


def test_a_job_that_keeps_failing_fails_after_its_retries_and_a_permanent_one_at_once():
    jobs, clock, events = job_queue(retries=2, retry_backoff=1.0)
    calls = []
    jobs.submit("prerender", "k", lambda: calls.append(1) or fail(RuntimeError("no")))
    clock.pump([1.0] * 10)
    assert len(calls) == 3                       # the first try and two retries
    jobs.submit("url", "p", lambda: calls.append(2) or fail(Permanent("gone")))
    clock.pump([1.0] * 10)
    assert calls.count(2) == 1
    assert outcomes(events) == [("prerender", "failed"), ("url", "failed")]


def test_a_job_past_its_timeout_is_cancelled_and_not_retried():
    jobs, clock, events = job_queue(timeout=5.0)
    cancelled = []
    jobs.submit("refresh", "k", lambda: Deferred(lambda d: cancelled.append(True)))
    clock.advance(4.999)
    assert cancelled == [] and jobs.active == 1
    clock.advance(0.001)
    assert cancelled == [True] and jobs.active == 0
    clock.advance(100)
    assert outcomes(events) == [("refresh", "timeout")]


def test_jobs_are_bounded_coalesced_by_key_and_run_at_most_concurrency_at_once():
    jobs, clock, events = job_queue(queue_limit=3, concurrency=2)
    pending = {}

    def work(name):
        def run():
            pending[name] = Deferred()
            return pending[name]
        return run

    results = []
    for name in ("a", "b", "c"):
        jobs.submit("warmup", name, work(name)).addCallback(results.append)
    again = []
    jobs.submit("warmup", "a", work("a-again")).addCallback(again.append)
    dropped = []
    jobs.submit("url", "d", work("d")).addCallback(dropped.append)
    assert sorted(pending) == ["a", "b"] and jobs.active == 2 and jobs.depth == 1
    assert dropped == [None] and outcomes(events) == [("url", "dropped")]
    pending["a"].callback("A")
    assert sorted(pending) == ["a", "b", "c"]    # c starts when a is done
    assert results == ["A"] and again == ["A"]   # the duplicate got a's result


def test_stopping_drops_queued_waiting_and_running_jobs():
    jobs, clock, events = job_queue(concurrency=1)
    cancelled = []
    jobs.submit("warmup", "running", lambda: Deferred(lambda d: cancelled.append(True)))
    jobs.submit("warmup", "queued", lambda: succeed(None))
    jobs.submit("url", "queued-too", lambda: succeed(None))
    jobs.stopService()
    assert cancelled == [True] and jobs.depth == 0 and jobs.active == 0
    assert outcomes(events) == [("warmup", "dropped"), ("warmup", "dropped"),
                                ("url", "dropped")]
    late = []
    jobs.submit("warmup", "late", lambda: succeed("x")).addCallback(late.append)
    assert late == [None]


# -- end to end -----------------------------------------------------------------------------------

def sources():
    return {f"/media/{n}.jpg": make_image((100, 100), colour=(40 * i, 80, 160))
            for i, n in enumerate(("a", "b", "c", "d", "e", "f"))}


@contextlib.contextmanager
def gated(gate, ratelimit=None, **processing):
    """A proxy whose budget (40,000,000 bytes) admits two 100 px renders at a time (about
    16.8 MB each; background work, up to half of it, one); the gate is opened before it
    stops, whatever the test did. No decoded-image cache: its share would come out of the
    budget, and the arithmetic above is exact."""
    running = start_proxy(sources(), plugins=[gate], overrides={
        "processing": {"threads": 2, "queue_limit": 2, "queue_timeout": 30.0,
                       "decoded_cache_bytes": -1, **processing},
        "limits": {"transform_memory": 40_000_000},
        "cache": {"x_cache_header": True}, "ratelimit": ratelimit or {}})
    try:
        yield running
    finally:
        gate.open.set()
        running.stop()


def fill_the_queue(pool, running, gate):
    """b.jpg and c.jpg rendering (held), e.jpg and f.jpg waiting: the queue (limit 2) is
    full."""
    futures = [pool.submit(running.get, f"/media/{n}.jpg?w=50") for n in ("b", "c")]
    wait_for(lambda: gate.entered == 2, 30, "b.jpg and c.jpg rendering")
    futures += [pool.submit(running.get, f"/media/{n}.jpg?w=50") for n in ("e", "f")]
    wait_for(lambda: call_in_reactor(lambda: running.runtime.admission.waiting) == 2, 30,
             "e.jpg and f.jpg waiting")
    assert metric(running, "mediaproxy_queue_depth", priority="live") == 2
    assert metric(running, "mediaproxy_queue_depth", priority="background") == 0
    assert metric(running, "mediaproxy_queue_standing") == 0   # a burst, not an overload yet
    return futures


def metric(running, name, **labels):
    registry = running.runtime.pm.get_plugin("mediaproxy.builtin.metrics.prometheus").registry
    return call_in_reactor(registry.get_sample_value, name, labels)


def test_a_request_shed_at_the_door_spends_no_transform_token_and_fetches_nothing(
        live_reactor):
    """A miss refused because the queue is full is refused before the coalescing lock, the
    client's transform token and the fetch: under an overload most requests are refused, and
    a refusal must neither cost much nor spend the client's transform budget."""
    gate = Gate()
    limits = {"exempt": [], "ip_transform_rate": 0.001, "ip_transform_burst": 5}
    with ThreadPoolExecutor(4) as pool, gated(gate, ratelimit=limits) as running:
        waiting = fill_the_queue(pool, running, gate)      # four renders: four tokens
        for _ in range(3):
            status, _, body, _ = running.get("/media/d.jpg?w=50")
            assert (status, json.loads(body)["error"]) == (503, "overloaded")
        assert running.origin.hits.get("/media/d.jpg", 0) == 0
        gate.open.set()
        assert [f.result(30)[0] for f in waiting] == [200] * 4
        # the fifth token is still there for d.jpg; the next transform is refused
        assert running.get("/media/d.jpg?w=50")[0] == 200
        assert running.origin.hits["/media/d.jpg"] == 1
        assert running.get("/media/a.jpg?w=50")[0] == 429


def test_a_shed_request_is_offered_the_nearest_cached_variant_else_a_503(live_reactor):
    gate = Gate()
    with ThreadPoolExecutor(4) as pool, gated(gate) as running:
        for path in ("/media/a.jpg?w=40", "/media/a.jpg?w=90", "/media/a.jpg?w=90&fmt=png",
                     "/media/a.jpg?w=45&trim=10"):
            assert running.get(path)[0] == 200
        waiting = fill_the_queue(pool, running, gate)

        status, headers, body, _ = running.get("/media/a.jpg?w=50")
        assert status == 200 and headers["x-cache"] == "NEAREST"
        assert headers["content-location"] == "/media/a.jpg?w=40"    # nearest width, same shape
        assert headers["cache-status"] == "mediaproxy; hit; detail=nearest"
        # short (cache.transient_max_age), never immutable
        assert headers["cache-control"] == "public, max-age=10"
        assert decode(body).size == (40, 40)
        # the format asked for first, though its width is farther
        status, headers, body, _ = running.get("/media/a.jpg?w=50&fmt=png")
        assert (status, headers["content-location"]) == (200, "/media/a.jpg?w=90&fmt=png")
        assert decode(body).format == "PNG"
        # no variant of d.jpg: the 503 of an overload
        status, headers, body, _ = running.get("/media/d.jpg?w=50")
        assert status == 503 and json.loads(body)["error"] == "overloaded"
        assert headers["retry-after"] == str(
            call_in_reactor(running.runtime.admission.retry_after, 0))

        pipeline = running.runtime.pm.get_plugin("mediaproxy.builtin.pipeline.instance")
        shed = running.cache_key("/media/a.jpg?w=50")
        assert shed not in pipeline.popular                 # forgotten by the access counts
        gate.open.set()
        assert [f.result(30)[0] for f in waiting] == [200] * 4
        counts = running.runtime.pm.get_plugin("mediaproxy.builtin.metrics.counters")
        assert counts.count("admission.nearest") == 2
        assert counts.count("admission.shed", reason="queue_full", priority="live") == 3
        assert metric(running, "mediaproxy_nearest_offers_total") == 2
        assert metric(running, "mediaproxy_admission_shed_total", reason="queue_full",
                      priority="live") == 3

        # the warm-up does not render the shed request ...
        from mediaproxy.builtin.warmup import WarmUp
        warm = WarmUp(running.runtime, pipeline, 10)
        call_in_reactor(warm.run, timeout=30)
        assert warm.rendered == 0     # everything else it counts is fresh in the cache
        assert call_in_reactor(running.runtime.cache.get, shed) is None
        # ... until it is asked for again
        assert running.get("/media/a.jpg?w=50")[1]["x-cache"] == "MISS"
        call_in_reactor(lambda: running.runtime.cache.purge(""))
        call_in_reactor(warm.run, timeout=30)
        # the nine variants served (four of a, b c e f at w=50, a at w=50 now), not the two
        # still only shed (d at w=50, a at w=50 in PNG)
        assert warm.rendered == 9
        assert call_in_reactor(running.runtime.cache.get, shed) is not None
        assert call_in_reactor(running.runtime.cache.get,
                               running.cache_key("/media/d.jpg?w=50")) is None


def test_offer_nearest_off_answers_503(live_reactor):
    gate = Gate()
    with ThreadPoolExecutor(4) as pool, gated(gate, offer_nearest=False) as running:
        assert running.get("/media/a.jpg?w=40")[0] == 200
        waiting = fill_the_queue(pool, running, gate)
        status, headers, body, _ = running.get("/media/a.jpg?w=50")
        assert status == 503 and json.loads(body)["error"] == "overloaded"
        gate.open.set()
        assert [f.result(30)[0] for f in waiting] == [200] * 4


def job_outcomes(running):
    counts = running.runtime.pm.get_plugin("mediaproxy.builtin.metrics.counters")
    return {(kind, outcome): counts.count("job", kind=kind, outcome=outcome)
            for kind in ("prerender", "url") for outcome in ("done", "failed", "dropped")
            if counts.count("job", kind=kind, outcome=outcome)}


def test_a_new_source_gets_its_prerender_variants_from_one_backend_fetch(live_reactor):
    files = {"/media/p.jpg": make_image((400, 300))}
    with start_proxy(files, overrides={
            "warmup": {"prerender": ["w=100", "w=200&fmt=webp", "w=-1"]},
            "cache": {"x_cache_header": True}}) as running:
        status, _, body, _ = running.get("/media/p.jpg?w=50")
        assert status == 200 and decode(body).size == (50, 38)
        wait_for(lambda: job_outcomes(running).get(("prerender", "done")) == 2, 30,
                 "the two valid variants pre-rendered (w=-1 is refused by validation)")
        status, headers, body, _ = running.get("/media/p.jpg?w=100")
        assert headers["x-cache"] == "HIT-MEMORY" and decode(body).size == (100, 75)
        status, headers, body, _ = running.get("/media/p.jpg?w=200&fmt=webp")
        assert headers["x-cache"] == "HIT-MEMORY" and decode(body).format == "WEBP"
        assert running.origin.hits["/media/p.jpg"] == 1
        running.get("/media/p.jpg?w=60")                   # the source is not new any more
        assert job_outcomes(running) == {("prerender", "done"): 2}
        assert metric(running, "mediaproxy_jobs_total", kind="prerender", outcome="done") == 2
        assert metric(running, "mediaproxy_admission_wait_seconds_count",
                      priority="background") == 2
        assert metric(running, "mediaproxy_jobs_queue", state="running") == 0


def test_warm_up_urls_are_rendered_at_start_through_the_request_checks(live_reactor):
    files = {"/media/p.jpg": make_image((400, 300))}
    with start_proxy(files, overrides={
            "warmup": {"urls": ["/media/p.jpg?w=120", "http://elsewhere.example/media/p.jpg",
                                "/media/p.jpg?w=-3", "/not-an-image"]},
            "cache": {"x_cache_header": True}}) as running:
        wait_for(lambda: job_outcomes(running).get(("url", "done")) == 1, 30,
                 "the one valid URL rendered")
        status, headers, body, _ = running.get("/media/p.jpg?w=120")
        assert headers["x-cache"] == "HIT-MEMORY" and decode(body).size == (120, 90)
        assert running.origin.hits == {"/media/p.jpg": 1}
        assert job_outcomes(running) == {("url", "done"): 1}
