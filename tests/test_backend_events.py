"""What the backend policy reports per attempt (the events behind the backend metrics), on a
task.Clock: its duration, its purpose and status, a retry, and nothing for an attempt we
cancelled ourselves."""

from __future__ import annotations

import random

from twisted.internet.task import Clock
from twisted.logger import Logger

from mediaproxy.config import BackendConfig, BreakerConfig
from mediaproxy.http.breaker import RetryPolicy
from mediaproxy.http.policy import (
    ANSWERED, CANCELLED, CONNECTION, SOURCE_FAILURES, BackendPolicy,
)


def policy(clock, events) -> BackendPolicy:
    backend = BackendConfig(retries=2, retry_backoff=0.1, retry_backoff_max=1.0)
    made = BackendPolicy.from_config(
        clock, backend, BreakerConfig(), SOURCE_FAILURES, name="images",
        log=Logger(namespace="test", observer=lambda e: None), purpose="source",
        retry=RetryPolicy.from_config(backend, random.Random(1)))
    made.emit = lambda name, value=1.0, correlation_id="", **fields: events.append(
        (name, value, fields))
    return made


def test_each_attempt_reports_its_time_and_outcome_and_a_retry_is_counted():
    clock, events = Clock(), []
    call = policy(clock, events).call()
    assert call.admit() is None and call.attempt() is None
    clock.advance(0.25)
    call.record(ANSWERED, 503)
    delay = call.retry_delay(ANSWERED, 503)
    call.retry_later(delay, lambda: None)
    clock.advance(delay)
    assert call.attempt() is None
    clock.advance(0.5)
    call.record(CONNECTION)
    assert call.attempt() is None
    call.record(ANSWERED, 200)
    call.release()
    assert events == [
        ("backend.response", 0.25, {"purpose": "source", "status": 503}),
        ("backend.retry", 1.0, {"purpose": "source"}),
        ("backend.response", 0.5, {"purpose": "source", "status": None}),
        ("backend.response", 0.0, {"purpose": "source", "status": 200}),
    ]


def test_an_attempt_cancelled_on_our_side_reports_nothing():
    clock, events = Clock(), []
    call = policy(clock, events).call()
    assert call.admit() is None and call.attempt() is None
    clock.advance(1.0)
    call.record(CANCELLED)
    call.record(ANSWERED, 200)   # a second record of the same attempt is ignored
    call.release()
    assert events == []


def test_without_emit_nothing_is_reported_and_nothing_fails():
    clock = Clock()
    made = policy(clock, [])
    made.emit = None
    call = made.call()
    assert call.admit() is None and call.attempt() is None
    call.record(ANSWERED, 500)
    call.release()
