"""The backend client's one policy (mediaproxy.http.policy) on a task.Clock: admission, what each
breaker counts, the retry budget and its backoff, the header and backoff timers, and that the
pass-through and the source fetcher each get their own."""

from __future__ import annotations

import random

import pytest
from twisted.internet import error as ierror
from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseFailed, ResponseNeverReceived

from mediaproxy.config import BackendConfig, BreakerConfig, ServerConfig
from mediaproxy.http.breaker import CLOSED, HALF_OPEN, OPEN, RetryPolicy
from mediaproxy.http.fetch import SourceFetcher
from mediaproxy.http.policy import (
    ANSWERED, BUSY, CANCELLED, CIRCUIT_OPEN, CONNECTION, ERROR, PASSTHROUGH_FAILURES,
    SOURCE_FAILURES, TIMEOUT, BackendPolicy, Refusal, failure_kind, retryable,
)
from mediaproxy.http.upstream import Upstream


def make_policy(clock, failures=SOURCE_FAILURES, *, seed=1, events=None, retries=2,
                max_concurrent=4, **breaker) -> BackendPolicy:
    backend = BackendConfig(retries=retries, max_concurrent=max_concurrent, header_timeout=5,
                            retry_backoff=0.1, retry_backoff_max=1.0)
    config = BreakerConfig(**{"min_calls": 4, "failure_ratio": 0.5, "open_for": 10,
                              "probes": 1, "consecutive_failures": 0, **breaker})
    log = Logger(namespace="test", observer=(events if events is not None else []).append)
    return BackendPolicy.from_config(clock, backend, config, failures, name="test", log=log,
                                     retry=RetryPolicy.from_config(backend, random.Random(seed)))


def one_call(policy, kind, status=None) -> None:
    """A whole call of one attempt that ends as told."""
    call = policy.call()
    assert call.admit() is None and call.attempt() is None
    call.record(kind, status)
    call.release()


# -- what each breaker counts ------------------------------------------------------------------

@pytest.mark.parametrize("kind, status, passthrough, source", [
    (CONNECTION, None, OPEN, OPEN),
    (TIMEOUT, None, OPEN, OPEN),
    (ANSWERED, 500, CLOSED, OPEN),
    (ANSWERED, 503, CLOSED, OPEN),
    (ERROR, None, CLOSED, OPEN),
    (ANSWERED, 404, CLOSED, CLOSED),
    (ANSWERED, 403, CLOSED, CLOSED),
    (ANSWERED, 200, CLOSED, CLOSED),
    (CANCELLED, None, CLOSED, CLOSED),
])
def test_the_same_outcomes_open_each_breaker_per_its_own_definition(kind, status, passthrough,
                                                                     source):
    clock = Clock()
    policies = {"passthrough": make_policy(clock, PASSTHROUGH_FAILURES),
                "source": make_policy(clock, SOURCE_FAILURES)}
    for policy in policies.values():
        for _ in range(4):
            one_call(policy, kind, status)
    assert policies["passthrough"].breaker.state == passthrough
    assert policies["source"].breaker.state == source


def test_an_answer_is_a_success_unless_the_definition_counts_5xx():
    for status in (200, 304, 404, 500, 502):
        assert PASSTHROUGH_FAILURES.verdict(ANSWERED, status) is False
    assert SOURCE_FAILURES.verdict(ANSWERED, 499) is False
    assert SOURCE_FAILURES.verdict(ANSWERED, 500) is True
    assert PASSTHROUGH_FAILURES.verdict(ERROR) is None      # tells nothing: released
    assert SOURCE_FAILURES.verdict(ERROR) is True
    assert PASSTHROUGH_FAILURES.verdict(CANCELLED) is None
    assert SOURCE_FAILURES.verdict(CANCELLED) is None


def test_cancelled_calls_are_not_counted_at_all():
    clock = Clock()
    policy = make_policy(clock)
    for _ in range(3):
        one_call(policy, CONNECTION)
    for _ in range(10):
        one_call(policy, CANCELLED)
    assert policy.breaker.state == CLOSED          # still 3 calls < min_calls
    one_call(policy, ANSWERED, 200)
    assert policy.breaker.state == CLOSED          # a success is never judged
    one_call(policy, CONNECTION)
    assert policy.breaker.state == OPEN            # 4 of 5 failed


def test_each_attempt_is_recorded_once():
    clock = Clock()
    policy = make_policy(clock)
    call = policy.call()
    assert call.admit() is None and call.attempt() is None
    for _ in range(5):
        call.record(CONNECTION)                    # only the first counts
    call.release()
    for _ in range(2):
        one_call(policy, CONNECTION)
    assert policy.breaker.state == CLOSED          # 3 calls < min_calls
    one_call(policy, CONNECTION)
    assert policy.breaker.state == OPEN


def test_a_state_change_is_logged_to_the_clients_log():
    events = []
    policy = make_policy(Clock(), events=events)
    for _ in range(4):
        one_call(policy, CONNECTION)
    [event] = events
    assert event["log_namespace"] == "test"
    assert (event["breaker"], event["old"], event["new"]) == ("test", CLOSED, OPEN)


# -- admission ---------------------------------------------------------------------------------

def test_a_full_limit_refuses_at_once_and_releases_nothing_it_did_not_take():
    policy = make_policy(Clock(), max_concurrent=1)
    first, second = policy.call(), policy.call()
    assert first.admit() is None
    assert second.admit() == Refusal(BUSY, 1, 1)
    second.release()
    assert policy.limit.in_flight == 1             # the refused call gave back nothing
    first.release()
    first.release()                                # once only
    assert policy.limit.in_flight == 0
    third = policy.call()
    assert third.admit() is None
    first.release()                                # long over: cannot free the third's slot
    assert policy.limit.in_flight == 1


def test_an_open_breaker_refuses_each_attempt_with_its_retry_after():
    clock = Clock()
    policy = make_policy(clock)
    for _ in range(4):
        one_call(policy, TIMEOUT)
    clock.advance(3)
    call = policy.call()
    assert call.admit() is None
    assert call.attempt() == Refusal(CIRCUIT_OPEN, 7, 1)
    assert call.attempts == 0
    call.release()
    assert policy.limit.in_flight == 0


def test_a_refused_attempt_does_not_release_anothers_probe():
    clock = Clock()
    policy = make_policy(clock, probes=1)
    for _ in range(4):
        one_call(policy, CONNECTION)
    clock.advance(10)
    probe, other = policy.call(), policy.call()
    assert probe.admit() is None and other.admit() is None
    assert probe.attempt() is None and policy.breaker.state == HALF_OPEN
    assert other.attempt().reason == CIRCUIT_OPEN
    other.record(CANCELLED)                        # owes no verdict: changes nothing
    other.record(CONNECTION)
    other.release()
    assert policy.call().attempt() is not None     # the probe is still taken
    assert policy.breaker.state == HALF_OPEN
    probe.record(ANSWERED, 200)
    assert policy.breaker.state == CLOSED


# -- retries -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, status, expected", [
    (CONNECTION, None, True),
    (ANSWERED, 502, True), (ANSWERED, 503, True), (ANSWERED, 504, True),
    (ANSWERED, 500, False), (ANSWERED, 404, False), (ANSWERED, 200, False),
    (TIMEOUT, None, False), (ERROR, None, False), (CANCELLED, None, False),
])
def test_what_is_worth_another_attempt(kind, status, expected):
    assert retryable(kind, status) is expected
    clock = Clock()
    call = make_policy(clock).call()
    call.attempt()
    assert (call.retry_delay(kind, status) is not None) is expected


@pytest.mark.parametrize("retries", [0, 1, 2, 5])
def test_retries_stop_at_the_budget(retries):
    clock = Clock()
    policy = make_policy(clock, retries=retries, min_calls=100)
    call = policy.call()
    assert call.admit() is None
    while True:
        assert call.attempt() is None
        call.record(CONNECTION)
        delay = call.retry_delay(CONNECTION)
        if delay is None:
            break
        fired = []
        call.retry_later(delay, lambda: fired.append(True))  # noqa: B023 -- fires in this iteration
        clock.advance(delay)
        assert fired == [True]
    assert call.attempts == retries + 1
    assert call.retry_delay(ANSWERED, 503) is None  # the budget is the call's, whatever failed
    call.release()


def test_no_retry_once_the_breaker_is_open_and_no_jitter_drawn():
    twin = random.Random(3)
    clock = Clock()
    policy = make_policy(clock, seed=3, retries=5, consecutive_failures=2, min_calls=100)
    call = policy.call()
    assert call.admit() is None and call.attempt() is None
    call.record(CONNECTION)
    assert call.retry_delay(CONNECTION) == twin.uniform(0, 0.1)   # one failure: retry
    assert call.attempt() is None
    call.record(CONNECTION)                       # the second in a row opens the breaker
    assert policy.breaker.state == OPEN
    assert call.retry_delay(CONNECTION) is None   # answer now, not after a backoff
    assert call.retry_delay(ANSWERED, 503) is None
    assert policy.retry.rng.random() == twin.random()   # nothing was drawn for the noes
    assert call.attempts == 2
    call.release()


def _dead_backend_call(policy, clock, kind=CONNECTION, status=None) -> tuple[int, str | None]:
    """One whole call against a backend whose every attempt ends as told, the way the fetcher
    and the pass-through drive it. Returns (attempts, the refusal reason if one ended it)."""
    call = policy.call()
    assert call.admit() is None
    ended: list = []

    def attempt():
        refusal = call.attempt()
        if refusal is not None:
            ended.append(refusal.reason)
            return
        call.record(kind, status)
        delay = call.retry_delay(kind, status)
        if delay is None:
            ended.append(None)
            return
        call.retry_later(delay, attempt)

    attempt()
    for _ in range(1000):
        if ended:
            break
        clock.advance(0.01)
    call.release()
    assert ended and not clock.getDelayedCalls()
    return call.attempts, ended[0]


@pytest.mark.parametrize("kind, status", [(CONNECTION, None), (ANSWERED, 502),
                                          (ANSWERED, 503)])
def test_with_the_defaults_a_dead_backend_costs_five_attempts_then_none(kind, status):
    # backend.retries 2: three attempts a call; image breaker: five failures in a row open it
    clock = Clock()
    policy = BackendPolicy.from_config(clock, BackendConfig(), BreakerConfig(), SOURCE_FAILURES,
                                       name="images", log=Logger(observer=lambda e: None),
                                       retry=RetryPolicy.from_config(BackendConfig(),
                                                                     random.Random(5)))
    assert _dead_backend_call(policy, clock, kind, status) == (3, None)
    assert _dead_backend_call(policy, clock, kind, status) == (2, None)   # opened on the 5th
    for _ in range(10):
        assert _dead_backend_call(policy, clock, kind, status) == (0, CIRCUIT_OPEN)
    clock.advance(1.01)                          # open_for (and a hair: float sums)
    assert _dead_backend_call(policy, clock, kind, status) == (1, None)   # the probe failed
    assert _dead_backend_call(policy, clock, kind, status) == (0, CIRCUIT_OPEN)
    clock.advance(1.01)
    assert _dead_backend_call(policy, clock, ANSWERED, 200) == (1, None)  # the probe succeeds
    assert policy.breaker.state == CLOSED


def test_the_backoff_is_full_jitter_and_drawn_only_for_a_yes():
    twin = random.Random(7)
    clock = Clock()
    call = make_policy(clock, seed=7, retries=10).call()
    for n in range(6):
        call.attempt()
        assert call.retry_delay(TIMEOUT) is None   # a no draws nothing
        delay = call.retry_delay(CONNECTION)
        assert delay == twin.uniform(0, min(1.0, 0.1 * 2 ** n))
        assert 0 <= delay <= min(1.0, 0.1 * 2 ** n)


def test_a_pending_retry_can_be_cancelled_and_release_cancels_it():
    clock = Clock()
    call = make_policy(clock).call()
    fired = []
    assert call.cancel_retry() is False
    call.retry_later(0.5, lambda: fired.append(1))
    assert call.cancel_retry() is True
    call.retry_later(0.5, lambda: fired.append(2))
    call.release()
    clock.advance(1)
    assert fired == [] and call.cancel_retry() is False
    call.retry_later(0.5, lambda: fired.append(3))
    clock.advance(0.5)
    assert fired == [3] and call.cancel_retry() is False


@pytest.mark.parametrize("failure, timed_out, kind", [
    (ierror.ConnectionRefusedError(), False, CONNECTION),
    (ierror.DNSLookupError(), False, CONNECTION),
    (ResponseNeverReceived([Failure(ierror.ConnectionLost())]), False, CONNECTION),
    (ResponseNeverReceived([Failure(CancelledError())]), True, TIMEOUT),
    (CancelledError(), False, CANCELLED),
    # cut off in the headers (or a fetched body): as worth another attempt as never answered
    (ResponseFailed([Failure(ierror.ConnectionLost())]), False, CONNECTION),
    (ValueError("odd"), False, ERROR),
])
def test_failure_kinds(failure, timed_out, kind):
    assert failure_kind(Failure(failure), timed_out) == kind


# -- the header timeout ------------------------------------------------------------------------

def test_the_header_timer_fires_once_after_the_header_timeout():
    clock = Clock()
    call = make_policy(clock).call()
    fired = []
    call.start_header_timer(fired.append, "late")
    call.start_header_timer(fired.append, "again")  # already running: nothing new
    clock.advance(4.9)
    assert fired == []
    clock.advance(0.1)
    assert fired == ["late"]
    clock.advance(10)
    assert fired == ["late"]
    call.start_header_timer(fired.append, "next")   # the next attempt's
    call.stop_header_timer()
    clock.advance(10)
    assert fired == ["late"]
    call.start_header_timer(fired.append, "last")
    call.release()
    clock.advance(10)
    assert fired == ["late"] and not clock.getDelayedCalls()


# -- one policy per client, each its own parts -------------------------------------------------

def test_passthrough_and_source_fetches_each_have_their_own_policy():
    clock = Clock()
    backend = BackendConfig(url="http://127.0.0.1:1", max_concurrent=3, header_timeout=7)
    upstream = Upstream(clock, backend, ServerConfig())
    fetcher = SourceFetcher(clock, backend, 1024, upstream.agent)
    through, source = upstream.backend_policy, fetcher.backend_policy
    assert (through.breaker.name, source.breaker.name) == ("passthrough", "images")
    assert (through.failures, source.failures) == (PASSTHROUGH_FAILURES, SOURCE_FAILURES)
    assert through.breaker is upstream.breaker and source.breaker is fetcher.breaker
    assert through.retry is upstream.retry and source.retry is fetcher.retry
    assert through.limit is upstream.limit and source.limit is fetcher.limit
    assert through.breaker is not source.breaker and through.limit is not source.limit
    assert through.limit.limit == source.limit.limit == 3
    assert through.header_timeout == source.header_timeout == 7
    for _ in range(5):                  # backend.image_breaker.consecutive_failures
        one_call(source, ANSWERED, 500)
    assert source.breaker.state == OPEN and through.breaker.state == CLOSED
