"""The circuit breaker's rules at their boundaries, on a task.Clock: when it opens (``min_calls``
and ``failure_ratio``, over a sliding ``window``), how long it stays open (a late failure never
stretches it), the half-open probes, ``Retry-After``; then the retry policy, the concurrency
bound, and which backend statuses are retried, over real sockets."""

from __future__ import annotations

import random

import pytest
from twisted.internet.task import Clock

from mediaproxy.http.breaker import (
    CLOSED, HALF_OPEN, OPEN, CircuitBreaker, ConcurrencyLimit, RetryPolicy,
)
from mediaproxy.config import BackendConfig, BreakerConfig

from mediaproxy.testing import ImageOrigin, start_proxy


def make(clock=None, **kw):
    clock = clock or Clock()
    changes = []
    settings = {"failure_ratio": 0.5, "min_calls": 4, "window": 10, "open_for": 5,
                "probes": 2, "consecutive_failures": 0, **kw}
    b = CircuitBreaker(clock, "rules", on_change=lambda *c: changes.append(c), **settings)
    return b, clock, changes


def open_it(b):
    while b.state == CLOSED:
        assert b.allow()
        b.failure()
    assert b.state == OPEN


# -- when it opens -----------------------------------------------------------------------------

@pytest.mark.parametrize("min_calls", [1, 2, 4, 7])
def test_min_calls_minus_one_failures_stay_closed_the_next_one_opens(min_calls):
    b, clock, changes = make(min_calls=min_calls)
    for _ in range(min_calls - 1):
        assert b.allow()
        b.failure()
    assert b.state == CLOSED and b.allow()
    b.failure()
    assert b.state == OPEN and not b.allow()
    assert changes == [("rules", CLOSED, OPEN)]


@pytest.mark.parametrize("ratio, failures, successes, opens", [
    (0.5, 2, 2, True),       # exactly the ratio opens
    (0.5, 1, 3, False),
    (0.75, 3, 1, True),
    (0.75, 2, 2, False),     # 50 % < 75 %
    (1.0, 4, 0, True),
    (1.0, 3, 1, False),
    (0.25, 1, 3, True),
])
def test_the_failure_ratio_boundary(ratio, failures, successes, opens):
    b, _, _ = make(failure_ratio=ratio, min_calls=4)
    for _ in range(successes):
        b.success()
    for _ in range(failures - 1):
        b.failure()
    assert b.state == CLOSED
    b.failure()                       # the 4th call, judged with the window full
    assert b.state == (OPEN if opens else CLOSED)


def test_successes_alone_never_open_it():
    b, _, changes = make(failure_ratio=0.01, min_calls=1)
    for _ in range(50):
        assert b.allow()
        b.success()
    assert b.state == CLOSED and changes == []


def test_a_success_is_never_judged_but_counts_for_the_next_failure():
    # The issue: a breaker judged on a success tripped after the backend had recovered (the
    # first successes filled the window up to min_calls while old failures were still in it).
    b, _, _ = make(failure_ratio=0.5, min_calls=4)
    for _ in range(3):
        b.failure()
    assert b.state == CLOSED          # three calls: not enough to judge
    b.success()                       # the 4th call is a success: 3 of 4 failed, still closed
    assert b.state == CLOSED
    b.failure()                       # 4 of 5 failed, judged on a failure
    assert b.state == OPEN


def test_the_window_slides_a_whole_window_later():
    b, clock, _ = make(min_calls=2, failure_ratio=1.0, window=10)
    b.failure()                       # second 0
    clock.advance(9.5)
    b.failure()                       # second 9: the first failure is still in the window
    assert b.state == OPEN

    b, clock, _ = make(min_calls=2, failure_ratio=1.0, window=10)
    b.failure()                       # second 0
    clock.advance(10)
    b.failure()                       # second 10: second 0 has left the 10 s window
    assert b.state == CLOSED
    clock.advance(1)
    b.failure()
    assert b.state == OPEN


def test_successes_that_left_the_window_no_longer_dilute_failures():
    b, clock, _ = make(min_calls=4, failure_ratio=0.5, window=10)
    for _ in range(10):
        b.success()
    clock.advance(5)
    for _ in range(3):
        b.failure()
    assert b.state == CLOSED          # 3 of 13
    clock.advance(5)                  # the successes of second 0 are gone
    b.failure()
    assert b.state == OPEN            # 4 of 4


def test_the_window_keeps_old_failures_that_a_later_failure_reveals():
    b, clock, _ = make(min_calls=4, failure_ratio=0.5, window=30)
    b.failure()
    b.failure()
    clock.advance(20)
    b.success()                       # 2 of 3 in the last 30 s: a success never opens it
    assert b.state == CLOSED
    b.failure()                       # 3 of 4 in the last 30 s
    assert b.state == OPEN


# -- failures in a row ---------------------------------------------------------------------------

@pytest.mark.parametrize("streak", [1, 2, 5])
def test_streak_minus_one_failures_in_a_row_stay_closed_the_next_one_opens(streak):
    b, _, changes = make(consecutive_failures=streak, min_calls=100)
    for _ in range(streak - 1):
        b.failure()
    assert b.state == CLOSED
    b.failure()
    assert b.state == OPEN and changes == [("rules", CLOSED, OPEN)]


def test_a_success_breaks_the_streak():
    b, _, _ = make(consecutive_failures=3, min_calls=100)
    for _ in range(5):
        b.failure()
        b.failure()
        b.success()                   # 10 failures in all, never three in a row
    assert b.state == CLOSED
    b.failure()
    b.failure()
    b.failure()
    assert b.state == OPEN


def test_the_streak_ignores_the_window_and_a_quiet_spell():
    b, clock, _ = make(consecutive_failures=3, min_calls=100, window=2)
    b.failure()
    clock.advance(60)                 # long out of the window, still the last call made
    b.failure()
    clock.advance(60)
    assert b.state == CLOSED
    b.failure()
    assert b.state == OPEN


def test_cancelled_calls_neither_break_nor_extend_the_streak():
    b, _, _ = make(consecutive_failures=2, min_calls=100)
    b.failure()
    b.release()
    assert b.state == CLOSED
    b.failure()
    assert b.state == OPEN


def test_the_streak_starts_afresh_after_each_opening():
    b, clock, _ = make(consecutive_failures=2, min_calls=100, open_for=5, probes=1)
    b.failure()
    b.failure()
    assert b.state == OPEN
    clock.advance(5)
    assert b.allow()
    b.success()                       # the probe closes it
    b.failure()
    assert b.state == CLOSED          # one in a row, not three
    b.failure()
    assert b.state == OPEN


def test_no_streak_rule_when_consecutive_failures_is_zero():
    b, _, _ = make(consecutive_failures=0, min_calls=100)
    for _ in range(99):
        b.failure()
    assert b.state == CLOSED
    b.failure()                       # the ratio rule: 100 of 100
    assert b.state == OPEN


def test_old_failures_cannot_trip_it_once_the_backend_answers_again():
    # The issue: with 9 failures in the window (min_calls 10), the first success after the
    # backend recovered filled the window and opened the breaker for a whole open_for.
    b, clock, changes = make(min_calls=10, failure_ratio=0.5, window=5)
    for _ in range(9):
        b.failure()
        clock.advance(0.1)
    for _ in range(20):
        assert b.allow()
        b.success()
    assert b.state == CLOSED and changes == []


# -- recovery with the defaults ------------------------------------------------------------------

def _first_success_after(recovers_at: float, every: float, limit: float = 30.0):
    """A default breaker in front of a backend that fails every call until ``recovers_at`` and
    answers every call after; a call is tried every ``every`` seconds. Returns (the time of the
    first call that went through and succeeded, calls refused without reaching the backend,
    calls that reached it)."""
    clock = Clock()
    b = CircuitBreaker.from_config(clock, "defaults", BreakerConfig())
    refused = reached = 0
    while clock.seconds() < limit:
        if not b.allow():
            refused += 1
        else:
            reached += 1
            if clock.seconds() >= recovers_at:
                b.success()
                return clock.seconds(), refused, reached
            b.failure()
        clock.advance(every)
    raise AssertionError("never recovered")


@pytest.mark.parametrize("recovers_at", [0.05, 0.5, 1.0, 3.33, 7.7, 20.0, 29.0])
@pytest.mark.parametrize("every", [0.01, 0.1, 0.25])
def test_with_the_defaults_service_returns_within_open_for_of_the_backend(recovers_at, every):
    back, refused, reached = _first_success_after(recovers_at, every)
    # The breaker is open at most open_for (1 s) past the backend's recovery, plus the wait
    # for the next call.
    assert recovers_at <= back < recovers_at + 1.0 + every + 1e-9
    if recovers_at > 5 * every + 1e-9:
        assert refused > 0            # it did open: calls were refused at once meanwhile
        # ... and let about one probe a second through: 5 to open it, then one per open_for
        assert reached <= 5 + int(recovers_at / 1.0) + 2


def test_with_the_defaults_a_dead_backend_is_known_dead_after_five_calls():
    clock = Clock()
    b = CircuitBreaker.from_config(clock, "defaults", BreakerConfig())
    for _ in range(4):
        assert b.allow()
        b.failure()
    assert b.allow() and b.state == CLOSED
    b.failure()
    assert b.state == OPEN and not b.allow() and b.retry_after() == 1
    clock.advance(1)
    assert b.allow() and not b.allow()          # one probe at a time
    b.success()
    assert b.state == CLOSED                    # one success closes it at once
    assert all(b.allow() for _ in range(50))


# -- how long it stays open ----------------------------------------------------------------------

@pytest.mark.parametrize("min_calls", [1, 4])
def test_a_late_failure_while_open_does_not_stretch_the_open_time(min_calls):
    b, clock, changes = make(min_calls=min_calls, open_for=5)
    open_it(b)
    clock.advance(3)
    for _ in range(min_calls):        # calls that were in flight when it opened, failing late
        b.failure()
    assert b.state == OPEN and b.retry_after() == 2
    clock.advance(2)                  # the original deadline
    assert b.allow()                  # a probe goes out
    assert b.state == HALF_OPEN
    assert changes == [("rules", CLOSED, OPEN), ("rules", OPEN, HALF_OPEN)]


def test_a_late_success_while_open_neither_closes_nor_counts():
    b, clock, _ = make(min_calls=4, probes=1)
    open_it(b)
    for _ in range(10):
        b.success()
    assert b.state == OPEN and not b.allow()
    clock.advance(5)
    assert b.allow() and b.state == HALF_OPEN and not b.allow()


def test_open_refuses_until_exactly_open_for():
    b, clock, _ = make(open_for=5)
    open_it(b)
    clock.advance(4.99)
    assert not b.allow() and b.state == OPEN
    clock.advance(0.01)
    assert b.allow() and b.state == HALF_OPEN


@pytest.mark.parametrize("elapsed, expected", [
    (0, 5), (0.5, 5), (0.9, 5), (1.0, 4), (3.5, 2), (4.0, 1), (4.9, 1), (5.0, 1), (7, 1),
])
def test_retry_after_is_the_whole_seconds_left_at_least_one(elapsed, expected):
    b, clock, _ = make(open_for=5)
    open_it(b)
    clock.advance(elapsed)
    assert b.retry_after() == expected


def test_retry_after_is_one_unless_open():
    b, clock, _ = make(open_for=5, probes=1)
    assert b.retry_after() == 1
    open_it(b)
    clock.advance(5)
    assert b.allow() and not b.allow()
    assert b.state == HALF_OPEN and b.retry_after() == 1


# -- half-open -----------------------------------------------------------------------------------

def test_half_open_lets_probes_through_and_their_successes_close_it():
    b, clock, changes = make(probes=3)
    open_it(b)
    clock.advance(5)
    assert [b.allow() for _ in range(4)] == [True, True, True, False]
    b.success()
    assert b.state == HALF_OPEN
    assert b.allow() and not b.allow()      # a finished probe frees its place
    b.success()
    assert b.state == HALF_OPEN
    b.success()
    assert b.state == CLOSED                # three successes in a row
    assert all(b.allow() for _ in range(20))
    assert changes[-1] == ("rules", HALF_OPEN, CLOSED)


def test_a_closed_breaker_starts_afresh():
    b, clock, _ = make(min_calls=4, probes=1)
    open_it(b)
    clock.advance(5)
    assert b.allow()
    b.success()
    assert b.state == CLOSED
    for _ in range(3):
        b.failure()
    assert b.state == CLOSED                # the failures before it opened are forgotten
    b.failure()
    assert b.state == OPEN


def test_a_failed_probe_reopens_until_the_end_of_the_clocks_period():
    b, clock, changes = make(open_for=5, probes=2)
    open_it(b)
    clock.advance(5)
    assert b.allow() and b.allow()
    b.success()
    clock.advance(2)
    b.failure()                            # at t=7: open again until t=10, the period's end
    assert b.state == OPEN and b.retry_after() == 3
    clock.advance(2.99)
    assert not b.allow()
    clock.advance(0.01)
    assert b.allow() and b.state == HALF_OPEN
    assert b.allow() and not b.allow()     # both probe places free again
    assert changes == [("rules", CLOSED, OPEN), ("rules", OPEN, HALF_OPEN),
                       ("rules", HALF_OPEN, OPEN), ("rules", OPEN, HALF_OPEN)]


def test_breakers_opened_at_different_moments_of_a_period_probe_together():
    """One breaker per worker process: opened at different moments of one open_for period of
    the (wall) clock, they all let their probe through when it ends, so a backend that came
    back is used by every worker at once, not by one while another stays open."""
    clock = Clock()
    first = CircuitBreaker(clock, "a", open_for=1.0, consecutive_failures=1)
    second = CircuitBreaker(clock, "b", open_for=1.0, consecutive_failures=1)
    clock.advance(10.05)
    first.failure()
    clock.advance(0.4)                     # t=10.45
    second.failure()
    assert first.state == second.state == OPEN
    assert (first.retry_after(), second.retry_after()) == (1, 1)
    clock.advance(0.5499)                  # t=10.9999
    assert not first.allow() and not second.allow()
    clock.advance(0.0001)                  # t=11.0: the period's end
    assert first.allow() and second.allow()
    assert first.state == second.state == HALF_OPEN


def test_a_breaker_opened_late_in_a_period_stays_open_at_least_half_of_open_for():
    """The probe comes at the end of the first period ending more than half of open_for
    away: never a moment after opening."""
    clock = Clock()
    early = CircuitBreaker(clock, "early", open_for=1.0, consecutive_failures=1)
    late = CircuitBreaker(clock, "late", open_for=1.0, consecutive_failures=1)
    clock.advance(10.4)
    early.failure()                        # 0.6 s before the period's end: probes at 11
    clock.advance(0.2)
    late.failure()                         # 0.4 s before it: probes at 12
    clock.advance(0.3999)                  # t=10.9999
    assert not early.allow() and not late.allow()
    clock.advance(0.0001)                  # t=11.0
    assert early.allow() and not late.allow()
    assert late.retry_after() == 1
    clock.advance(0.9999)
    assert not late.allow()
    clock.advance(0.0001)                  # t=12.0
    assert late.allow()


def test_the_success_count_restarts_with_each_half_open():
    b, clock, _ = make(probes=2)
    open_it(b)
    clock.advance(5)
    assert b.allow()
    b.success()                            # one success of the two needed
    assert b.allow()
    b.failure()
    clock.advance(5)
    assert b.allow()
    b.success()                            # one success of this half-open, not two in all
    assert b.state == HALF_OPEN
    assert b.allow()
    b.success()
    assert b.state == CLOSED


def test_release_frees_a_probe_place_only_while_half_open():
    b, clock, _ = make(probes=1)
    b.release()                            # closed: nothing to free, nothing breaks
    assert b.state == CLOSED
    open_it(b)
    b.release()
    assert not b.allow()                   # open: release lets nothing through
    clock.advance(5)
    assert b.allow() and not b.allow()
    b.release()
    b.release()                            # never below zero: still one place
    assert b.allow() and not b.allow()
    assert b.state == HALF_OPEN


def test_each_finished_probe_frees_exactly_one_place():
    b, clock, _ = make(probes=2)
    open_it(b)
    clock.advance(5)
    assert b.allow() and b.allow() and not b.allow()
    b.release()
    assert b.allow() and not b.allow()


def test_a_failure_reported_after_a_release_still_reopens():
    b, clock, _ = make(probes=1)
    open_it(b)
    clock.advance(5)
    assert b.allow()
    b.release()
    b.failure()
    assert b.state == OPEN and not b.allow()


def test_extra_successes_in_half_open_never_free_more_places_than_probes():
    b, clock, _ = make(probes=3)
    open_it(b)
    clock.advance(5)
    assert b.allow()
    b.success()
    b.success()                            # more reports than probes out: floor at zero
    assert [b.allow() for _ in range(4)] == [True, True, True, False]


def test_a_disabled_breaker_ignores_every_report():
    b, clock, changes = make(enabled=False, min_calls=1)
    for _ in range(30):
        assert b.allow()
        b.failure()
    b.success()
    assert b.state == CLOSED and changes == [] and b.retry_after() == 1


def test_a_breaker_without_an_observer_changes_state_all_the_same():
    clock = Clock()
    b = CircuitBreaker(clock, "bare", min_calls=1, open_for=1, probes=1)
    b.failure()
    assert b.state == OPEN
    clock.advance(1)
    assert b.allow() and b.state == HALF_OPEN
    b.success()
    assert b.state == CLOSED


def test_from_config_takes_every_setting():
    seen = []
    config = BreakerConfig(enabled=True, failure_ratio=1.0, min_calls=3, window=2.0,
                           open_for=7.0, probes=1, consecutive_failures=4)
    clock = Clock()
    b = CircuitBreaker.from_config(clock, "images", config,
                                   on_change=lambda *c: seen.append(c))
    b.failure()
    b.success()
    clock.advance(2)                       # the window is 2 s: both calls are gone
    b.failure()
    b.failure()
    assert b.state == CLOSED
    b.failure()                            # 3 of 3 failed
    assert b.state == OPEN and seen == [("images", CLOSED, OPEN)]
    assert b.retry_after() == 5              # opened at t=2: the 7 s period ends at t=7
    clock.advance(7)
    assert b.allow() and not b.allow()     # one probe
    disabled = CircuitBreaker.from_config(clock, "x", BreakerConfig(enabled=False,
                                                                    min_calls=1))
    disabled.failure()
    assert disabled.state == CLOSED
    streak = CircuitBreaker.from_config(clock, "y", BreakerConfig(min_calls=100,
                                                                  consecutive_failures=4))
    for _ in range(3):
        streak.failure()
    assert streak.state == CLOSED
    streak.failure()
    assert streak.state == OPEN


def test_a_breaker_built_without_settings_has_the_documented_defaults():
    b, c = CircuitBreaker(Clock(), "plain"), BreakerConfig()
    assert (b.failure_ratio, b.min_calls, b.window, b.open_for, b.probes, b.enabled,
            b.consecutive_failures) == (c.failure_ratio, c.min_calls, c.window, c.open_for,
                                        c.probes, c.enabled, c.consecutive_failures)
    assert (c.window, c.open_for, c.probes, c.consecutive_failures) == (5.0, 1.0, 1, 5)
    assert (b.state, b.on_change) == (CLOSED, None)
    policy, backend = RetryPolicy(), BackendConfig()
    assert (policy.retries, policy.base, policy.maximum) == (
        backend.retries, backend.retry_backoff, backend.retry_backoff_max)


# -- retries and the concurrency bound -------------------------------------------------------------

@pytest.mark.parametrize("attempt, cap", [(0, 0.1), (1, 0.2), (2, 0.4), (3, 0.8), (4, 1.0),
                                          (10, 1.0), (100, 1.0), (10**6, 1.0)])
def test_backoff_is_full_jitter_up_to_the_cap(attempt, cap):
    policy = RetryPolicy(3, 0.1, 1.0, random.Random(7))
    delays = [policy.delay(attempt) for _ in range(400)]
    assert all(0 <= d <= cap for d in delays)
    assert max(delays) > 0.95 * cap and min(delays) < 0.05 * cap


def test_retry_policy_from_config():
    backend = BackendConfig(retries=4, retry_backoff=0.5, retry_backoff_max=3.0)
    policy = RetryPolicy.from_config(backend, random.Random(1))
    assert (policy.retries, policy.base, policy.maximum) == (4, 0.5, 3.0)
    delays = [policy.delay(3) for _ in range(400)]   # 0.5 * 8 = 4, capped at 3
    assert max(delays) <= 3.0 and max(delays) > 2.85


def test_the_concurrency_bound_is_exact_and_never_negative():
    limit = ConcurrencyLimit(2)
    assert [limit.acquire() for _ in range(3)] == [True, True, False]
    assert limit.in_flight == 2
    limit.release()
    assert limit.acquire() and not limit.acquire()
    for _ in range(5):
        limit.release()
    assert limit.in_flight == 0
    assert [limit.acquire() for _ in range(3)] == [True, True, False]


def test_only_502_503_and_504_are_retried(live_reactor):
    statuses = (500, 501, 502, 503, 504, 505)
    origin = ImageOrigin({f"/s/{s}/": (s, b"down", "text/plain", []) for s in statuses})
    running = start_proxy(origin=origin, overrides={"backend": {
        "retries": 2, "retry_backoff": 0.001, "retry_backoff_max": 0.001,
        "passthrough_breaker": {"enabled": False}}})
    try:
        for status in statuses:
            assert running.get(f"/s/{status}/")[0] == status
        assert {s: origin.hits[f"/s/{s}/"] for s in statuses} == {
            500: 1, 501: 1, 502: 3, 503: 3, 504: 3, 505: 1}
    finally:
        running.stop()


def test_a_retry_reaches_the_backend_once_per_attempt(live_reactor):
    # With no backoff the retry is sent at once: it must not go out on the connection the
    # discarded 503 is closing (it used to, the Agent resent it, and the backend saw every
    # retry twice).
    origin = ImageOrigin({"/busy/": (503, b"busy", "text/plain", [])})
    running = start_proxy(origin=origin, overrides={"backend": {
        "retries": 1, "retry_backoff": 0, "retry_backoff_max": 0,
        "passthrough_breaker": {"enabled": False}}})
    try:
        assert [running.get("/busy/")[0] for _ in range(10)] == [503] * 10
        assert origin.hits["/busy/"] == 20
    finally:
        running.stop()
