"""The transform memory budget (mediaproxy/admission.py): unit tests on a Clock, a random
sequence test against an oracle, and over HTTP with the test kit (a gate step holds transforms
in their threads, so what waits and what is refused is decided by the budget, not by timing)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given, settings, strategies as st
from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock

from mediaproxy import TransformStep, hookimpl
from mediaproxy.admission import BACKGROUND, MemoryBudget, Overloaded, TooLarge
from mediaproxy.runtime import default_transform_memory
from mediaproxy.testing import call_in_reactor, decode, make_image, start_proxy, wait_for

MiB = 1024 * 1024


class Events:
    def __init__(self):
        self.seen = []

    def __call__(self, name, value=1.0, correlation_id="", **labels):
        self.seen.append((name, value, correlation_id, labels))

    def names(self):
        return [(name, labels.get("reason")) for name, _, _, labels in self.seen]


def budget(capacity=100, slots=10, queue_limit=10, queue_timeout=5.0):
    clock = Clock()
    events = Events()
    return MemoryBudget(capacity=capacity, slots=slots, queue_limit=queue_limit,
                        queue_timeout=queue_timeout, reactor=clock, emit=events), clock, events


def outcome(d):
    """What a Deferred has come to: ('granted', reservation), ('failed', exception type) or
    ('waiting', None)."""
    out = []
    d.addCallbacks(lambda r: out.append(("granted", r)),
                   lambda f: out.append(("failed", f.type)))
    return out[0] if out else ("waiting", None)


# -- unit tests ---------------------------------------------------------------------------------

def test_a_wait_predicted_longer_than_the_queue_timeout_is_refused_at_once():
    b, clock, events = budget(capacity=100, slots=1, queue_limit=50, queue_timeout=3.0)
    for _ in range(8):                     # eight transforms of one second each: a measure
        _, r = outcome(b.reserve(10))
        clock.advance(1.0)
        r.release()
    assert b.holds == 8 and b.mean_hold == pytest.approx(1.0)
    _, running = outcome(b.reserve(10, "run"))
    waiters = [b.reserve(10, f"w{i}") for i in range(2)]
    assert [outcome(d)[0] for d in waiters] == ["waiting", "waiting"]
    # a third waiter would wait 3 holds (two before it, one running): not more than 3 s
    third = b.reserve(10, "w2")
    assert outcome(third)[0] == "waiting"
    # a fourth would wait 4 s: refused now, with an honest Retry-After
    fourth = []
    b.reserve(10, "w3").addErrback(lambda f: fourth.append(f.value))
    assert type(fourth[0]) is Overloaded and fourth[0].retry_after == 4
    assert events.names()[-1] == ("admission.shed", "queue_full")
    assert b.waiting == 3


def test_no_wait_is_predicted_before_the_hold_time_is_a_measure():
    b, clock, events = budget(capacity=100, slots=1, queue_limit=50, queue_timeout=0.5)
    _, running = outcome(b.reserve(10))
    waiting = [b.reserve(10) for _ in range(5)]
    assert all(outcome(d)[0] == "waiting" for d in waiting)    # the initial guess sheds none

def test_a_reservation_that_fits_is_granted_at_once_and_given_back():
    b, clock, events = budget()
    kind, r = outcome(b.reserve(60, "c1"))
    assert kind == "granted" and r.nbytes == 60
    assert (b.reserved, b.active, b.waiting) == (60, 1, 0)
    r.release()
    r.release()   # idempotent
    assert (b.reserved, b.active) == (0, 0)
    assert events.seen == [("admission.wait", 0.0, "c1", {"priority": "live"})]


def test_waiters_are_admitted_in_arrival_order_and_a_big_head_blocks_small_ones():
    b, clock, events = budget()
    first = outcome(b.reserve(60))[1]
    big, small = b.reserve(50), b.reserve(10)
    # 10 bytes would fit now, but the 50 bytes came first: FIFO, nobody starves.
    assert outcome(big)[0] == outcome(small)[0] == "waiting"
    assert (b.waiting, b.waiting_bytes) == (2, 60)
    clock.advance(2)
    first.release()
    assert outcome(big)[0] == "granted" and outcome(small)[0] == "granted"
    assert (b.reserved, b.active, b.waiting) == (60, 2, 0)
    assert [v for name, v, _, _ in events.seen if name == "admission.wait"] == [0.0, 2.0, 2.0]


def test_no_more_reservations_than_slots_even_when_bytes_fit():
    b, clock, _ = budget(slots=2)
    one, two = outcome(b.reserve(1))[1], outcome(b.reserve(1))[1]
    third = b.reserve(1)
    assert outcome(third)[0] == "waiting"
    two.release()
    assert outcome(third)[0] == "granted"
    assert one.released is False


def test_an_estimate_larger_than_the_whole_budget_is_refused_at_once():
    b, clock, events = budget(capacity=100)
    assert outcome(b.reserve(101, "c9")) == ("failed", TooLarge)
    assert outcome(b.reserve(100))[0] == "granted"   # exactly the capacity fits
    assert events.names()[0] == ("admission.shed", "too_large")
    assert b.waiting == 0


def test_a_full_queue_refuses_at_once_with_an_honest_retry_after():
    b, clock, events = budget(capacity=100, slots=4, queue_limit=2)
    outcome(b.reserve(100))
    b.reserve(50), b.reserve(50)
    refused = []
    b.reserve(30).addErrback(lambda f: refused.append(f.value))
    assert isinstance(refused[0], Overloaded)
    # Nothing released yet: one hold time (1 s) per capacity's worth of bytes ahead, plus its
    # own: 1 x (1 + (100 + 30) / 100) = 2.3 -> 3 s.
    assert refused[0].retry_after == 3
    assert events.names()[-1] == ("admission.shed", "queue_full")
    assert b.waiting == 2


# -- the door: tickets of the requests let in and still fetching -------------------------------

def door_outcome(b, correlation_id="", **kw):
    got = b.door(correlation_id, **kw)
    return "refused" if isinstance(got, Overloaded) else "ticket", got


def test_the_door_counts_the_requests_let_in_as_waiting_already():
    b, clock, events = budget(capacity=100, slots=1, queue_limit=2)
    first = door_outcome(b, "a")
    # one thread: the first takes it; the next two are the queue's two places
    assert [first[0], door_outcome(b, "b")[0], door_outcome(b, "c")[0]] == ["ticket"] * 3
    assert b.approaching == 3 and b.waiting == 0
    kind, refused = door_outcome(b, "d")
    assert kind == "refused" and refused.retry_after == 3   # 1 s a hold x (2 ahead + itself) / 1
    assert events.seen[-1] == ("admission.shed", 1.0, "d",
                               {"reason": "queue_full", "priority": "live"})
    assert b.refusal(0, "e") is not None          # the plain question counts them too
    first[1].leave()
    first[1].leave()                              # idempotent
    assert b.approaching == 2
    assert door_outcome(b, "f")[0] == "ticket"


def test_the_door_lets_in_one_request_per_free_thread_before_counting_the_queue():
    b, clock, events = budget(capacity=100, slots=2, queue_limit=1)
    assert [door_outcome(b)[0] for _ in range(3)] == ["ticket", "ticket", "ticket"]
    assert door_outcome(b)[0] == "refused"
    assert b.approaching == 3


def test_only_as_many_as_the_free_threads_pass_the_door_without_a_predicted_wait():
    b, clock, events = budget(capacity=100, slots=2, queue_limit=50, queue_timeout=0.4)
    for _ in range(8):                     # eight transforms of one second each: a measure
        _, r = outcome(b.reserve(10))
        clock.advance(1.0)
        r.release()
    # two free threads: two tickets; a third would wait half a hold, past the 0.4 s timeout
    assert [door_outcome(b)[0] for _ in range(3)] == ["ticket", "ticket", "refused"]


def test_the_door_counts_tickets_in_the_predicted_wait():
    b, clock, events = budget(capacity=100, slots=1, queue_limit=50, queue_timeout=3.0)
    for _ in range(8):                     # eight transforms of one second each: a measure
        _, r = outcome(b.reserve(10))
        clock.advance(1.0)
        r.release()
    _, running = outcome(b.reserve(10, "run"))
    # waits of 1, 2 and 3 holds: let in; a fourth would wait 4 s, past the queue timeout
    assert [door_outcome(b)[0] for _ in range(3)] == ["ticket"] * 3
    kind, refused = door_outcome(b)
    assert kind == "refused" and refused.retry_after == 4
    assert b.approaching == 3


def test_a_request_that_reaches_its_reservation_is_not_held_behind_those_still_fetching():
    b, clock, _ = budget(capacity=100, slots=1, queue_limit=5)
    mine, other = b.door(), b.door()
    mine.leave()                                   # inspected: it reserves now
    assert outcome(b.reserve(10))[0] == "granted"  # the other one's ticket does not stop it
    assert b.approaching == 1
    assert other.passing("result") == "result" and b.approaching == 0


def test_background_and_refresh_tickets_count_nothing_and_a_refresh_is_never_shed():
    b, clock, _ = budget(capacity=100, slots=1, queue_limit=1)
    outcome(b.reserve(10))
    outcome(b.reserve(10))                          # the queue's one place taken
    assert door_outcome(b)[0] == "refused"
    kind, ticket = door_outcome(b, stale=object())  # has a copy to answer with
    assert kind == "ticket" and b.approaching == 0
    ticket.leave()
    assert b.approaching == 0
    assert door_outcome(b, priority=BACKGROUND)[0] == "ticket"   # its own queue is empty
    assert b.approaching == 0


def test_retry_after_follows_the_measured_hold_time():
    b, clock, _ = budget(capacity=100, slots=1)
    r = outcome(b.reserve(10))[1]
    clock.advance(11)
    r.release()
    assert b.mean_hold == pytest.approx(11.0)      # the first hold replaces the guess
    # Idle: one turnover of 11 s for a request of 50 bytes: 11 x 1.5 = 16.5 -> 17.
    assert b.retry_after(50) == 17
    for held in (1.0, 4.0):                         # then the plain mean of the first ones
        r = outcome(b.reserve(10))[1]
        clock.advance(held)
        r.release()
    assert b.mean_hold == pytest.approx((11 + 1 + 4) / 3)
    for _ in range(2):
        r = outcome(b.reserve(10))[1]
        clock.advance(1.0)
        r.release()
    assert b.mean_hold == pytest.approx((11 + 1 + 4 + 1 + 1) / 5)    # 3.6: five holds
    r = outcome(b.reserve(10))[1]                   # from the sixth, the moving average
    clock.advance(8.6)
    r.release()
    assert b.mean_hold == pytest.approx(3.6 + 0.2 * (8.6 - 3.6))     # 4.6, not the mean 4.43
    # Never above a minute, never below a second.
    b.mean_hold = 1000.0
    assert b.retry_after() == 60
    b.mean_hold = 0.0
    assert b.retry_after() == 1


def test_a_waiter_past_the_queue_timeout_is_refused_and_those_behind_move_up():
    b, clock, events = budget(capacity=100, queue_timeout=5.0)
    held = outcome(b.reserve(70))[1]
    head = b.reserve(50)
    clock.advance(3)
    behind = b.reserve(30)   # fits, but waits behind the head (FIFO)
    assert outcome(behind)[0] == "waiting"
    clock.advance(2)
    assert outcome(head) == ("failed", Overloaded)
    # the head left: the 30 bytes behind it fit beside the 70 held
    assert outcome(behind)[0] == "granted"
    assert (b.reserved, b.waiting) == (100, 0)
    assert ("admission.shed", "timeout") in events.names()
    held.release()
    assert b.reserved == 30


def test_the_timeout_error_carries_a_retry_after():
    b, clock, _ = budget(capacity=100, queue_timeout=5.0)
    outcome(b.reserve(100))
    errors = []
    b.reserve(100).addErrback(lambda f: errors.append(f.value))
    clock.advance(5)
    # after it left: nothing waits, 1 s hold, 1 turnover
    assert errors[0].retry_after == 1 and "5 s" in str(errors[0])


def test_a_cancelled_waiter_leaves_the_queue_and_its_timer_is_stopped():
    b, clock, events = budget(capacity=100, queue_limit=1)
    held = outcome(b.reserve(100))[1]
    d = b.reserve(10, "gone")
    d.cancel()
    assert outcome(d) == ("failed", CancelledError)
    assert b.waiting == 0 and clock.getDelayedCalls() == []
    assert events.seen[-1] == ("admission.cancel", 1.0, "gone", {"priority": "live"})
    # its place is free again
    assert outcome(b.reserve(10))[0] == "waiting"
    held.release()
    assert b.reserved == 10


def test_a_granted_reservation_is_not_taken_back_by_cancelling():
    b, clock, _ = budget()
    d = b.reserve(10)
    d.cancel()
    assert b.reserved == 10 and b.active == 1


def test_the_automatic_budget_is_an_eighth_of_the_machine_at_most_640_mib():
    assert default_transform_memory(24 * 1024 * MiB) == 640 * MiB
    assert default_transform_memory(2048 * MiB) == 256 * MiB
    assert default_transform_memory(512 * MiB) == 64 * MiB


def test_the_runtime_builds_its_budget_from_the_settings_and_the_machine():
    import psutil

    from mediaproxy.admission import return_freed_images_to_the_os
    from mediaproxy.testing import make_runtime

    auto = make_runtime({"processing": {"threads": 3, "queue_limit": 7, "queue_timeout": 2.5}})
    b = auto.admission
    # the decoded-image cache's quarter comes out of the budget (tests/test_decoded_cache.py)
    assert (b.capacity + auto.decoded.capacity, b.slots, b.queue_limit, b.queue_timeout) == (
        default_transform_memory(psutil.virtual_memory().total), 3, 7, 2.5)
    assert make_runtime({"limits": {"transform_memory": "1MiB"}}).admission.capacity == (
        MiB - MiB // 4)
    # on glibc (the Linux the proxy runs on) freed images go back to the system
    assert return_freed_images_to_the_os() is True


# -- the budget against an oracle ---------------------------------------------------------------

class Oracle:
    """The rules written out plainly: a list in arrival order, the one whose turn it is (the
    head, or the cheapest once four wait) admitted while it fits (bytes and count), refusals
    decided by size, queue length and (once eight holds are known) the predicted wait: the
    mean hold time (the plain mean of the first five, then a moving average weighing the
    newest by a fifth) times the turnovers the waiting bytes need, or the waiters ahead per
    thread, whichever is more."""

    def __init__(self, capacity, slots, limit, timeout):
        self.capacity, self.slots, self.limit, self.timeout = capacity, slots, limit, timeout
        self.queue = []        # [ident, nbytes, deadline]
        self.held = {}         # ident -> nbytes
        self.granted_at = {}   # ident -> when
        self.state = {}        # ident -> granted | too_large | overloaded | cancelled | waiting
        self.now = 0.0
        self.holds, self.mean_hold = 0, 1.0

    def grant(self, ident, n):
        self.held[ident] = n
        self.granted_at[ident] = self.now
        self.state[ident] = "granted"

    def predicted_wait(self, n):
        if self.holds < 8:
            return 0.0
        waiting = sum(w[1] for w in self.queue) + n
        return self.mean_hold * max(waiting / self.capacity, (len(self.queue) + 1) / self.slots)

    def turn(self):
        """Arrival order while fewer than 4 wait; else the least bytes / 2 ** (seconds waited
        / (timeout / 4)), the earliest arrival on ties."""
        if len(self.queue) < 4:
            return self.queue[0]
        half_life = self.timeout / 4
        best = None
        for w in self.queue:
            cost = w[1] / 2 ** ((self.now - (w[2] - self.timeout)) / half_life)
            if best is None or cost < best[0]:
                best = (cost, w)
        return best[1]

    def admit(self):
        while self.queue:
            w = self.turn()
            ident, n, _ = w
            if len(self.held) < self.slots and sum(self.held.values()) + n <= self.capacity:
                self.queue.remove(w)
                self.grant(ident, n)
            else:
                break

    def reserve(self, ident, n):
        if n > self.capacity:
            self.state[ident] = "too_large"
        elif not self.queue and len(self.held) < self.slots and \
                sum(self.held.values()) + n <= self.capacity:
            self.grant(ident, n)
        elif len(self.queue) >= self.limit or self.predicted_wait(n) > self.timeout:
            self.state[ident] = "overloaded"
        else:
            self.queue.append([ident, n, self.now + self.timeout])
            self.state[ident] = "waiting"

    def release(self, ident):
        del self.held[ident]
        self.holds += 1
        held = self.now - self.granted_at.pop(ident)
        self.mean_hold += max(0.2, 1 / self.holds) * (held - self.mean_hold)
        self.admit()

    def cancel(self, ident):
        self.queue = [w for w in self.queue if w[0] != ident]
        self.state[ident] = "cancelled"
        self.admit()

    def advance(self, seconds):
        self.now += seconds
        # expire in arrival order, admitting after each departure (what a reactor does)
        for w in sorted(self.queue, key=lambda w: w[2]):
            if w in self.queue and w[2] <= self.now:
                self.queue.remove(w)
                self.state[w[0]] = "overloaded"
                self.admit()


#: (operation, argument): reserve that many bytes; release / cancel the argument-th (modulo)
#: held / waiting one; advance the clock by ADVANCES[argument % 4] seconds.
operations = st.lists(st.tuples(
    st.sampled_from(["reserve", "reserve", "reserve", "release", "cancel", "advance"]),
    st.integers(0, 120)), min_size=5, max_size=60)
ADVANCES = (0.5, 1.0, 2.0, 3.0)


@settings(max_examples=300, deadline=None)
@given(operations, st.integers(1, 4), st.integers(0, 6))
def test_the_budget_agrees_with_the_oracle_and_never_exceeds_its_capacity(ops, slots, limit):
    capacity, timeout = 100, 2.5
    b, clock, _ = budget(capacity=capacity, slots=slots, queue_limit=limit,
                         queue_timeout=timeout)
    oracle = Oracle(capacity, slots, limit, timeout)
    deferreds, results = [], []
    for op, arg in ops:
        if op == "reserve":
            ident = len(deferreds)
            d = b.reserve(arg)
            result = {}
            d.addCallbacks(lambda r, out=result: out.update(granted=r),
                           lambda f, out=result: out.update(failed=f.type))
            deferreds.append(d)
            results.append(result)
            oracle.reserve(ident, arg)
        elif op == "release":
            granted = [i for i, r in enumerate(results)
                       if "granted" in r and not r["granted"].released]
            if granted:
                ident = granted[arg % len(granted)]
                results[ident]["granted"].release()
                oracle.release(ident)
        elif op == "cancel":
            waiting = [i for i, s in oracle.state.items() if s == "waiting"]
            if waiting:
                ident = waiting[arg % len(waiting)]
                deferreds[ident].cancel()
                oracle.cancel(ident)
        else:
            clock.advance(ADVANCES[arg % 4])
            oracle.advance(ADVANCES[arg % 4])
        assert b.reserved <= capacity and b.active <= slots and b.waiting <= limit
        assert b.reserved == sum(oracle.held.values())
        assert b.waiting == len(oracle.queue)
        seen = {}
        for i, r in enumerate(results):
            if "granted" in r:
                seen[i] = "granted"
            elif "failed" in r:
                seen[i] = {TooLarge: "too_large", Overloaded: "overloaded",
                           CancelledError: "cancelled"}[r["failed"]]
            else:
                seen[i] = "waiting"
        assert seen == oracle.state


# -- over HTTP ----------------------------------------------------------------------------------

class Gate:
    """A transform step that holds every render of ``w=50`` in its thread until opened: the
    budget's reservations stay held as long as the test wants."""

    def __init__(self):
        self.open = threading.Event()
        self.entered = 0
        self.lock = threading.Lock()

    def wait(self, image, spec, request):
        with self.lock:
            self.entered += 1
        self.open.wait(30)
        return image

    @hookimpl
    def mediaproxy_transform_steps(self, image_request, spec):
        if image_request.params.get("w") == 50:
            return [TransformStep("gate", self.wait, order=600)]
        return None


#: 100x100 JPEG sources at w=50: what imaging.estimate_bytes says (mostly its fixed 16 MiB of
#: codec state per render); the budget of 20,000,000 bytes admits one at a time.
ESTIMATE = 16_827_216
NAMES = ("a", "b", "c", "d", "e")


def files():
    out = {f"/media/{n}.jpg": make_image((100, 100), colour=(10 * i, 80, 160))
           for i, n in enumerate(NAMES)}
    out["/media/hot.jpg"] = make_image((100, 100), colour=(250, 250, 0))
    return out


@contextlib.contextmanager
def gated_proxy(gate, **processing_and_limits):
    """A proxy with ``gate`` and a tiny budget; the gate is opened before it stops, whatever
    the test did (a closed gate would hold the pool's threads at shutdown)."""
    limits = {"transform_memory": 20_000_000}
    # the budget's arithmetic exactly: no decoded-image cache taken out of it
    processing = {"threads": 2, "queue_limit": 2, "queue_timeout": 30.0,
                  "decoded_cache_bytes": -1}
    for key, value in processing_and_limits.items():
        (limits if key in ("transform_memory", "transform_timeout") else processing)[key] = value
    running = start_proxy(files(), plugins=[gate], overrides={
        "processing": processing, "limits": limits,
        "cache": {"x_cache_header": True}})
    try:
        yield running
    finally:
        gate.open.set()
        running.stop()


def counters(running):
    return running.runtime.pm.get_plugin("mediaproxy.builtin.metrics.counters")


def state(running):
    b = running.runtime.admission
    return call_in_reactor(lambda: (b.reserved, b.active, b.waiting))


def metric(running, name, **labels):
    registry = running.runtime.pm.get_plugin("mediaproxy.builtin.metrics.prometheus").registry
    return call_in_reactor(registry.get_sample_value, name, labels)


def cached(running, path):
    key = running.cache_key(path)
    return call_in_reactor(running.runtime.cache.get, key) is not None


def test_over_the_budget_transforms_wait_then_are_served_and_past_the_queue_get_503(
        live_reactor):
    gate = Gate()
    with ThreadPoolExecutor(4) as pool, gated_proxy(gate) as running:
        assert running.get("/media/hot.jpg?w=40")[0] == 200          # a hit for later
        first = pool.submit(running.get, "/media/a.jpg?w=50")
        wait_for(lambda: gate.entered == 1, 30, "a.jpg admitted and rendering")
        waiting = [pool.submit(running.get, f"/media/{n}.jpg?w=50") for n in ("b", "c")]
        wait_for(lambda: state(running) == (ESTIMATE, 1, 2), 30, "b and c waiting")
        assert metric(running, "mediaproxy_admission_queue") == 2
        assert metric(running, "mediaproxy_transform_memory_bytes", state="reserved") == ESTIMATE
        assert metric(running, "mediaproxy_transform_memory_bytes", state="capacity") == 20_000_000

        status, headers, body, _ = running.get("/media/d.jpg?w=50")
        assert status == 503
        assert json.loads(body)["error"] == "overloaded"
        # shed at the door: the queue is full before d.jpg is fetched or inspected
        assert running.origin.hits.get("/media/d.jpg", 0) == 0
        expected = call_in_reactor(running.runtime.admission.retry_after, 0)
        assert headers["retry-after"] == str(expected)
        # hits are served meanwhile, straight from memory
        hit = running.get("/media/hot.jpg?w=40")
        assert hit[0] == 200 and hit[1]["x-cache"] == "HIT-MEMORY"

        gate.open.set()
        for future in [first, *waiting]:
            status, headers, body, _ = future.result(30)
            assert status == 200 and headers["x-cache"] == "MISS"
            assert decode(body).size == (50, 50)
        assert gate.entered == 3
        wait_for(lambda: state(running) == (0, 0, 0), 30, "every reservation given back")
        assert not cached(running, "/media/d.jpg?w=50")
        assert cached(running, "/media/c.jpg?w=50")
        events = counters(running)
        assert events.count("admission.shed", reason="queue_full") == 1
        assert events.count("admission.wait") == 4    # hot, a, b, c
        assert metric(running, "mediaproxy_admission_shed_total", reason="queue_full",
                      priority="live") == 1
        assert metric(running, "mediaproxy_admission_wait_seconds_count", priority="live") == 4
        health = call_in_reactor(lambda: [
            indicator.check() for group in running.runtime.pm.hook.mediaproxy_health_indicators(
                runtime=running.runtime) for indicator in group
            if indicator.name == "transform_pool"][0])
        assert health.ok and "0.0 of 19.1 MiB reserved by 0, 0 waiting" in health.detail


def test_a_wait_past_the_queue_timeout_is_a_503_and_a_timed_out_transform_keeps_its_memory(
        live_reactor):
    gate = Gate()
    with ThreadPoolExecutor(2) as pool, \
            gated_proxy(gate, queue_timeout=0.3, transform_timeout=0.6) as running:
        first = pool.submit(running.get, "/media/a.jpg?w=50")
        wait_for(lambda: gate.entered == 1, 30, "a.jpg admitted and rendering")
        status, headers, body, _ = running.get("/media/b.jpg?w=50")
        assert status == 503 and json.loads(body)["error"] == "overloaded"
        assert headers["retry-after"] == str(
            call_in_reactor(running.runtime.admission.retry_after))
        assert counters(running).count("admission.shed", reason="timeout") == 1

        status, headers, body, _ = first.result(30)
        assert status == 503 and json.loads(body)["error"] == "transform_timeout"
        # The client was answered, but the thread still renders: its memory stays reserved.
        assert state(running) == (ESTIMATE, 1, 0)
        gate.open.set()
        wait_for(lambda: state(running) == (0, 0, 0), 30, "released when the thread returned")
        assert not cached(running, "/media/b.jpg?w=50")
        status, _, body, _ = running.get("/media/b.jpg?w=50")
        assert status == 200 and decode(body).size == (50, 50)


def test_a_waiter_whose_client_goes_away_leaves_the_queue(live_reactor):
    gate = Gate()
    with ThreadPoolExecutor(1) as pool, gated_proxy(gate) as running:
        first = pool.submit(running.get, "/media/a.jpg?w=50")
        wait_for(lambda: gate.entered == 1, 30, "a.jpg admitted and rendering")
        client = socket.create_connection(("127.0.0.1", running.port), timeout=10)
        client.sendall(b"GET /media/b.jpg?w=50 HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_for(lambda: state(running)[2] == 1, 30, "b.jpg waiting")
        client.close()
        wait_for(lambda: state(running)[2] == 0, 30, "b.jpg left the queue")
        assert counters(running).count("admission.cancel") == 1
        gate.open.set()
        assert first.result(30)[0] == 200
        assert gate.entered == 1                     # b.jpg was never rendered
        assert not cached(running, "/media/b.jpg?w=50")
        # the next request for it starts afresh
        status, _, body, _ = running.get("/media/b.jpg?w=50")
        assert status == 200 and decode(body).size == (50, 50)
        assert gate.entered == 2


def test_a_shared_transform_stays_queued_while_one_of_its_clients_remains(live_reactor):
    gate = Gate()
    with ThreadPoolExecutor(2) as pool, gated_proxy(gate) as running:
        pipeline = running.runtime.pm.get_plugin("mediaproxy.builtin.pipeline.instance")
        key = running.cache_key("/media/b.jpg?w=50")
        first = pool.submit(running.get, "/media/a.jpg?w=50")
        wait_for(lambda: gate.entered == 1, 30, "a.jpg admitted and rendering")
        client = socket.create_connection(("127.0.0.1", running.port), timeout=10)
        client.sendall(b"GET /media/b.jpg?w=50 HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_for(lambda: state(running)[2] == 1, 30, "b.jpg waiting")
        staying = pool.submit(running.get, "/media/b.jpg?w=50")
        wait_for(lambda: len(pipeline._inflight.get(key, ())) == 2, 30, "two clients for b")
        client.close()
        wait_for(lambda: len(pipeline._inflight.get(key, ())) == 1, 30, "one client left")
        assert state(running) == (ESTIMATE, 1, 1)      # b.jpg still waits, for the other
        gate.open.set()
        assert first.result(30)[0] == 200
        status, headers, body, _ = staying.result(30)
        assert status == 200 and decode(body).size == (50, 50)
        assert counters(running).count("admission.cancel") == 0
        assert gate.entered == 2


def test_a_transform_larger_than_the_whole_budget_is_refused_at_once(live_reactor):
    gate = Gate()
    with gated_proxy(gate, transform_memory=10_000_000) as running:
        # the request's own budget is never more than the process's: refused by its estimate
        status, headers, body, _ = running.get("/media/a.jpg?w=50")
        assert status == 422 and "x-placeholder" not in headers
        answer = json.loads(body)
        assert answer["error"] == "over_memory_budget"
        assert answer["message"].endswith("at most 10 MiB are allowed.")
        assert gate.entered == 0
        assert not cached(running, "/media/a.jpg?w=50")


def test_a_full_queue_serves_a_copy_within_stale_if_error_rather_than_a_503(live_reactor):
    gate = Gate()
    with ThreadPoolExecutor(3) as pool, gated_proxy(gate) as running:
        assert running.get("/media/hot.jpg?w=40")[0] == 200
        running.age("/media/hot.jpg?w=40", 86400 + 100)   # past its TTL, within stale-if-error
        first = pool.submit(running.get, "/media/a.jpg?w=50")
        wait_for(lambda: gate.entered == 1, 30, "a.jpg admitted and rendering")
        waiting = [pool.submit(running.get, f"/media/{n}.jpg?w=50") for n in ("b", "c")]
        wait_for(lambda: state(running) == (ESTIMATE, 1, 2), 30, "b and c waiting")
        status, headers, body, _ = running.get("/media/hot.jpg?w=40")
        assert status == 200 and headers["x-cache"] == "STALE"
        assert decode(body).size == (40, 40)
        assert counters(running).count("admission.shed", reason="queue_full") == 1
        gate.open.set()
        assert [f.result(30)[0] for f in [first, *waiting]] == [200, 200, 200]


def test_transform_threads_run_nicer_than_the_reactor(live_reactor):
    import threading as _threading

    def nice(tid):
        return os.getpriority(os.PRIO_PROCESS, tid)

    seen = []

    class Probe:
        @hookimpl
        def mediaproxy_transform_steps(self, image_request, spec):
            def record(image, spec, request):
                seen.append(nice(_threading.get_native_id()))
                return image
            return [TransformStep("probe", record, order=600)]

    base = nice(os.getpid())
    with start_proxy(files(), plugins=[Probe()],
                     overrides={"processing": {"thread_niceness": 3}}) as running:
        assert running.get("/media/a.jpg?w=40")[0] == 200
    reactor_tid = call_in_reactor(_threading.get_native_id)
    assert seen == [min(19, base + 3)]
    assert nice(reactor_tid) == base          # the reactor keeps the process's priority


# -- the queue budget counts from the door; a standing queue is cut to queue_target -------------

def measured(b, clock, hold=1.0, count=8):
    """``count`` transforms of ``hold`` seconds each, one after the other: the mean hold time
    is a measure (the door's predictions use it)."""
    for _ in range(count):
        _, r = outcome(b.reserve(10))
        clock.advance(hold)
        r.release()


def test_the_queue_timeout_counts_from_the_door():
    b, clock, events = budget(capacity=100, slots=1, queue_limit=50, queue_timeout=3.0)
    _, running = outcome(b.reserve(10, "run"))
    ticket = b.door("late")
    assert ticket.since == clock.seconds()
    clock.advance(2.0)                     # its fetch and inspection took 2 s
    ticket.leave()
    late = b.reserve(10, "late", since=ticket.since)
    fresh = b.reserve(10, "fresh")         # no door: counted from now
    clock.advance(0.999)
    assert b.waiting == 2
    clock.advance(0.002)                   # 3 s after the door
    assert b.waiting == 1
    assert outcome(late) == ("failed", Overloaded)
    clock.advance(1.99)
    assert b.waiting == 1
    clock.advance(0.02)
    assert outcome(fresh) == ("failed", Overloaded)
    assert [n for n in events.names() if n[0] == "admission.shed"] == [
        ("admission.shed", "timeout")] * 2


def test_a_request_past_its_budget_when_it_reserves_is_refused_at_once_unless_a_thread_is_free():
    b, clock, _ = budget(capacity=100, slots=1, queue_limit=50, queue_timeout=1.0)
    ticket = b.door("slow origin")
    clock.advance(5.0)                     # its backend took 5 s
    ticket.leave()
    granted = outcome(b.reserve(10, since=ticket.since))
    assert granted[0] == "granted"         # nothing to wait for: it runs
    ticket = b.door("slow origin, busy")
    clock.advance(5.0)
    ticket.leave()
    d = b.reserve(10, since=ticket.since)
    clock.advance(0)
    assert outcome(d) == ("failed", Overloaded)


def standing_budget(target=0.5, queue_timeout=3.0):
    b, clock, events = budget(capacity=100, slots=1, queue_limit=50, queue_timeout=queue_timeout)
    b.queue_target, b.standing_after = target, 2 * target
    measured(b, clock, hold=0.25)
    return b, clock, events


def run_queue(b, clock, seconds: float, arrivals_per_hold: int, hold=0.25, running=None):
    """Keep the one thread busy for ``seconds`` with transforms of ``hold`` s while
    ``arrivals_per_hold`` requests arrive through the door in each hold; what each got.
    ``running``: a list that keeps the reservations not yet released."""
    got = []
    running = [] if running is None else running

    def start(reservation):
        running.append(reservation)
        return reservation

    t = 0.0
    while t < seconds:
        for i in range(arrivals_per_hold):
            ticket = b.door()
            if isinstance(ticket, Overloaded):
                got.append("refused")
                continue
            ticket.leave()
            d = b.reserve(10, since=ticket.since)
            d.addCallbacks(start, lambda f: got.append("shed"))
            d.addCallback(lambda r: got.append("admitted"))
        clock.advance(hold)
        t += hold
        if running:
            running.pop(0).release()
    return got


def test_a_burst_is_absorbed_but_a_standing_queue_is_cut_to_the_target():
    b, clock, events = standing_budget(target=0.5, queue_timeout=3.0)
    assert not b.standing and b.wait_limit == 3.0
    # a burst: 5 at once (1.25 s of work), then nothing: all of it is let in, waits (up to
    # 1 s, over the target for less than standing_after) and is served
    served = []
    for _ in range(5):
        ticket = b.door()
        assert not isinstance(ticket, Overloaded)
        ticket.leave()
        d = b.reserve(10, since=ticket.since)
        d.addCallback(lambda r: (served.append(r), clock.callLater(0.25, r.release)))
    clock.pump([0.05] * 40)
    assert len(served) == 5 and b.waiting == 0 and b.active == 0
    assert not b.standing
    # an overload: four arrivals per transform, for 10 s
    got = run_queue(b, clock, 10.0, 4)
    assert b.standing
    assert ("admission.standing", 1.0) in [(n, v) for n, v, _, _ in events.seen]
    assert b.wait_limit == pytest.approx(0.5 + b.lead)
    # once standing, the door lets in about one transform per hold (what the thread takes)
    # and refuses the rest at once; no admitted request waits out its budget
    assert got.count("shed") == 0
    assert got.count("refused") > 2 * got.count("admitted")
    # what waits now is what the target allows, not the queue timeout
    assert len(b._live) * b.mean_hold <= 0.5 + b.mean_hold


def test_the_standing_queue_ends_once_short_for_as_long():
    b, clock, events = standing_budget(target=0.5)
    running: list = []
    run_queue(b, clock, 6.0, 4, running=running)
    assert b.standing
    # a thread found free for a moment (nothing waits) does not end it
    while b._live:
        clock.advance(0.25)
        running.pop(0).release()
    running.pop(0).release()
    assert b.active == 0
    _, r = outcome(b.reserve(10))
    assert b.standing
    r.release()
    # the overload goes on: it stays standing
    run_queue(b, clock, 3.0, 4, running=running)
    assert b.standing
    while running:                         # the load stops: the queue drains
        clock.advance(0.25)
        running.pop(0).release()
    assert b.waiting == 0 and b.active == 0
    clock.advance(1.0)                     # twice the target with nothing over it
    ticket = b.door()                      # the next burst finds the door open
    assert not b.standing and b.wait_limit == 3.0
    assert not isinstance(ticket, Overloaded)
    ticket.leave()
    assert [v for n, v, _, _ in events.seen if n == "admission.standing"] == [1.0, 0.0]


def test_a_load_the_short_queue_can_take_ends_the_standing():
    b, clock, _ = standing_budget(target=0.5)
    running: list = []
    run_queue(b, clock, 6.0, 4, running=running)
    assert b.standing
    # the load falls to one arrival per hold, what the thread takes: the short queue takes
    # them all, nothing is refused; standing until standing_after (1 s) has passed so
    got = run_queue(b, clock, 0.5, 1, running=running)
    assert b.standing and "refused" not in got
    got = run_queue(b, clock, 1.0, 1, running=running)
    assert not b.standing and "refused" not in got and "shed" not in got


def test_a_target_of_zero_never_stands():
    b, clock, _ = standing_budget(target=0.0)
    run_queue(b, clock, 6.0, 4)
    assert not b.standing and b.wait_limit == 3.0


# -- the door's figures, exactly (what the mutation run of admission_door asked for) ------------

def test_the_lead_is_a_moving_average_of_live_door_to_queue_times():
    b, clock, _ = budget(capacity=100, slots=1)
    ticket = b.door()
    clock.advance(0.5)
    ticket.leave()
    _, r = outcome(b.reserve(10, since=ticket.since))
    assert b.lead == pytest.approx(0.2 * 0.5)
    r.release()
    ticket = b.door()
    clock.advance(0.25)
    ticket.leave()
    _, r = outcome(b.reserve(10, since=ticket.since))
    assert b.lead == pytest.approx(0.1 + 0.2 * (0.25 - 0.1))
    r.release()
    lead = b.lead
    background = b.door(priority=BACKGROUND)
    clock.advance(3.0)
    background.leave()
    _, r = outcome(b.reserve(10, since=background.since, priority=BACKGROUND))
    assert b.lead == lead                  # background work has no client waiting
    r.release()
    _, r = outcome(b.reserve(10, since=clock.seconds() + 1.0))   # a door time ahead of now
    assert b.lead == pytest.approx(lead * 0.8)                    # counts as 0, not less
    r.release()


def test_standing_the_door_admits_the_target_plus_the_lead():
    b, clock, _ = standing_budget(target=0.5)
    run_queue(b, clock, 6.0, 4)
    assert b.standing
    b.lead = 0.25                          # requests take 0.25 s from the door to the queue
    assert b.wait_limit == 0.75
    b.lead = 5.0
    assert b.wait_limit == 3.0             # never more than queue_timeout


def test_a_background_ticket_counts_nothing():
    b, clock, _ = budget(capacity=100, slots=1)
    ticket = b.door(priority=BACKGROUND)
    assert b.approaching == 0
    ticket.leave()
    assert b.approaching == 0


def admit_after(b, clock, seconds, running):
    """One live waiter admitted after waiting exactly ``seconds`` (the thread is held by
    ``running[0]`` until then); it keeps the thread."""
    d = b.reserve(10)
    clock.advance(seconds)
    running.pop(0).release()
    kind, r = outcome(d)
    assert kind == "granted"
    running.append(r)


def target_budget(target=0.5):
    b, clock, events = budget(capacity=100, slots=1, queue_limit=50, queue_timeout=10.0)
    b.queue_target, b.standing_after = target, 2 * target
    measured(b, clock, hold=0.25)
    _, r = outcome(b.reserve(10))
    return b, clock, [r]


def test_standing_counts_from_when_the_wait_crossed_the_target():
    b, clock, running = target_budget(target=0.5)
    # one admission after 1.5 s: over the target since 1.0 s ago, exactly standing_after
    admit_after(b, clock, 1.5, running)
    assert b.standing


def test_standing_needs_the_whole_standing_after_over_the_target():
    b, clock, running = target_budget(target=0.5)
    admit_after(b, clock, 1.25, running)   # over the target for 0.75 s
    assert not b.standing
    admit_after(b, clock, 0.25, running)   # a wait under the target starts again
    admit_after(b, clock, 1.25, running)
    assert not b.standing
    admit_after(b, clock, 0.75, running)   # over since 0.25 s into it ... 1.0 s now
    assert b.standing


def test_a_wait_of_exactly_the_target_is_not_over_it():
    b, clock, running = target_budget(target=0.5)
    admit_after(b, clock, 1.25, running)   # over the target since 0.75 s ago
    admit_after(b, clock, 0.5, running)    # exactly the target: the clock starts again
    admit_after(b, clock, 0.75, running)   # over it for 0.25 s only
    assert not b.standing


def test_a_live_request_granted_at_once_starts_the_clock_again():
    b, clock, running = target_budget(target=0.5)
    admit_after(b, clock, 1.25, running)   # over the target for 0.75 s
    running.pop().release()
    _, r = outcome(b.reserve(10))          # the thread was free: waited 0
    running.append(r)
    admit_after(b, clock, 0.75, running)   # 0.25 s over the target
    assert not b.standing


def test_the_standing_ends_exactly_standing_after_the_last_refusal():
    b, clock, running = target_budget(target=0.5)
    admit_after(b, clock, 1.5, running)
    assert b.standing
    began = clock.seconds()
    clock.advance(0.99)
    b.door().leave()
    assert b.standing
    clock.advance(0.01)
    assert clock.seconds() - began == pytest.approx(1.0)
    b.door().leave()
    assert not b.standing


@pytest.fixture
def logged():
    from twisted.logger import globalLogPublisher
    events = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def test_each_change_is_logged(logged):
    from twisted.logger import formatEvent
    b, clock, running = target_budget(target=0.5)
    admit_after(b, clock, 1.5, running)
    clock.advance(1.0)
    b.door().leave()
    lines = [formatEvent(e) for e in logged if e.get("log_namespace") == "mediaproxy.admission"]
    assert len(lines) == 2
    assert lines[0].startswith("the transform queue is standing")
    assert lines[1].startswith("the transform queue is no longer standing")


def test_a_budget_already_spent_is_refused_on_the_real_reactor(live_reactor):
    """On the reactor (whose callLater refuses a negative delay), a request whose budget
    ran out during its fetch, with a thread busy, is refused at once."""
    from mediaproxy.testing import call_in_reactor

    def scenario():
        from twisted.internet import reactor
        b = MemoryBudget(capacity=100, slots=1, queue_limit=10, queue_timeout=1.0,
                         reactor=reactor)
        _, running = outcome(b.reserve(10))
        d = b.reserve(10, since=reactor.seconds() - 5.0)
        return b, running, d

    b, running, d = call_in_reactor(scenario)
    got = []
    call_in_reactor(lambda: d.addErrback(lambda f: got.append(f.type)))
    wait_for(lambda: got, 10, "the refusal")
    assert got == [Overloaded]
    call_in_reactor(running.release)
