"""Health: ``/health/live``, ``/health/ready`` and the detailed ``/health`` (issue 13).

The snapshot logic runs on ``task.Clock`` (rounds, timeouts, the previous snapshot served
while a round is under way); everything else over real sockets with real parts: a real
redis-server stopped and started, a real origin stopped and started on the same port, a cache
directory on a tmpfs remounted read-only, a plugin whose indicator never answers.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from contextlib import contextmanager

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

import mediaproxy
from mediaproxy import hookimpl
from mediaproxy.config import ConfigError, load_config
from mediaproxy.models import HealthStatus
from mediaproxy.monitoring.health import (
    DEGRADED, HEALTHY, UNHEALTHY, HealthMonitor, overall, readiness,
)
from mediaproxy.testing import (
    DroppingSite, ImageOrigin, call_in_reactor, make_image, start_proxy, wait_for,
)

IMAGE = make_image((60, 40))
FAST = {"health_interval": 0.05, "health_timeout": 2.0, "health_backend_probe": "/",
        "listen": "tcp:0:interface=127.0.0.1", "health_prefix": "/_mp"}


# -- the snapshot logic, on a Clock ------------------------------------------------------------

class Fixed:
    def __init__(self, name, status):
        self.name, self.status, self.calls = name, status, 0

    def check(self):
        self.calls += 1
        return self.status


class Pending:
    """Answers only when the test says so (``answer``); counts calls and cancellations."""

    def __init__(self, name):
        self.name, self.calls, self.cancelled, self.waiting = name, 0, 0, []

    def check(self):
        self.calls += 1

        def cancel(_):
            self.cancelled += 1

        d = Deferred(cancel)
        self.waiting.append(d)
        return d

    def answer(self, ok=True):
        d = self.waiting.pop(0)
        d.callback(HealthStatus(self.name, ok, "answered"))


class Raises:
    name = "broken"

    def check(self):
        raise RuntimeError("indicator bug")


def monitor(*indicators, interval=5.0, timeout=2.0):
    clock = Clock()
    m = HealthMonitor(clock, lambda: indicators, interval=interval, timeout=timeout,
                      clock=lambda: 1_700_000_000.0 + clock.seconds())
    return m, clock


def test_an_indicator_that_never_answers_is_reported_timed_out_after_the_timeout():
    fine = Fixed("fine", HealthStatus("fine", True, "ok"))
    slow = Pending("slow")
    m, clock = monitor(fine, slow, timeout=2.0)
    m.start()
    first = m.current()
    assert m.snapshot is None and not first.called      # the first round waits for "slow"
    clock.advance(1.999)
    assert not first.called
    clock.advance(0.001)
    snapshot = first.result
    assert m.snapshot is snapshot and snapshot.round == 1
    assert [(r.status.name, r.status.ok, r.status.detail) for r in snapshot.readings] == [
        ("fine", True, "ok"), ("slow", False, "timed out")]
    assert snapshot.reading("slow").duration == 2.0
    assert slow.cancelled == 1
    assert snapshot.status == DEGRADED and snapshot.http_status == 200
    m.stop()


def test_the_previous_snapshot_is_served_while_a_round_waits_for_a_slow_indicator():
    slow = Pending("slow")
    m, clock = monitor(slow, interval=5.0, timeout=2.0)
    m.start()
    slow.answer(True)
    first = m.snapshot
    assert (first.round, first.status) == (1, HEALTHY)
    clock.advance(5.0)                                   # round 2 starts and waits for "slow"
    assert slow.calls == 2
    answer = m.current()
    assert answer.called and answer.result is first      # at once, the previous round
    clock.advance(2.0)
    assert m.snapshot.round == 2
    assert m.snapshot.reading("slow").status.detail == "timed out"
    assert m.current().result is m.snapshot
    m.stop()


def test_rounds_come_every_interval_and_never_overlap():
    slow = Pending("slow")
    m, clock = monitor(slow, interval=1.0, timeout=3.0)
    m.start()
    clock.advance(2.5)                 # round 1 still under way: no second round started
    assert slow.calls == 1
    slow.answer(True)                  # round 1 ends at 2.5 s; the loop's next tick is at 3 s
    clock.advance(0.5)
    assert slow.calls == 2
    assert m.snapshot.round == 1
    slow.answer(False)
    assert (m.snapshot.round, m.snapshot.status) == (2, DEGRADED)
    clock.advance(1.0)                 # round 3 starts...
    m.stop()                           # ...and is cut short: the snapshot stays round 2's
    assert (slow.calls, slow.cancelled, m.snapshot.round) == (3, 1, 2)
    clock.advance(10)
    assert slow.calls == 3             # stopped: no more rounds


def test_an_indicator_that_raises_is_reported_not_ok_with_its_error():
    m, clock = monitor(Raises(), Fixed("fine", HealthStatus("fine", True)))
    m.start()
    broken = m.snapshot.reading("broken").status
    assert (broken.ok, broken.critical, broken.detail) == (False, False, "indicator bug")
    assert m.snapshot.status == DEGRADED
    m.stop()


@pytest.mark.parametrize("answers, expected", [
    ([], HEALTHY),
    ([(True, False), (True, True)], HEALTHY),
    ([(False, False), (True, True)], DEGRADED),
    ([(False, False), (False, True)], UNHEALTHY),
    ([(True, False), (False, True)], UNHEALTHY),
    ([(True, True), (False, False), (False, False)], DEGRADED),
])
def test_the_overall_status(answers, expected):
    statuses = [HealthStatus(f"i{n}", ok, critical=critical)
                for n, (ok, critical) in enumerate(answers)]
    assert overall(statuses) == expected


class FakeBreaker:
    def __init__(self, state):
        self.state = state


@pytest.mark.parametrize("kw, reasons", [
    ({}, ()),
    ({"started": False}, ("starting",)),
    ({"draining": True}, ("draining",)),
    ({"pool_running": False}, ("transform_pool_stopped",)),
    ({"breakers": {"images": FakeBreaker("open"), "passthrough": FakeBreaker("half_open")}},
     ("breaker_open:images",)),
    ({"draining": True, "breakers": {"passthrough": FakeBreaker("open"),
                                     "images": FakeBreaker("open")}},
     ("draining", "breaker_open:images", "breaker_open:passthrough")),
])
def test_readiness_reasons(kw, reasons):
    args = {"started": True, "pool_running": True, "draining": False,
            "breakers": {"images": FakeBreaker("closed"), "passthrough": FakeBreaker("closed")},
            **kw}
    found = readiness(**args)
    assert (found.ready, found.reasons) == (not reasons, reasons)


@pytest.mark.parametrize("key, value", [
    ("health_path", "health"), ("live_path", "/a?b"), ("ready_path", "/"),
    ("health_prefix", "/ops/"), ("health_prefix", "ops"), ("health_backend_probe", "up"),
])
def test_bad_health_settings_are_refused(key, value):
    with pytest.raises(ConfigError) as info:
        load_config(environ={}, overrides={"monitoring": {key: value}})
    assert info.value.key == f"monitoring.{key}"


# -- over real sockets ------------------------------------------------------------------------

def monitoring_port(running) -> int:
    svc = next(s for s in running.services if getattr(s, "what", "").startswith("monitoring"))
    return svc.port.getHost().port


def ask(running, path, main=False, method="GET"):
    """(status, headers, parsed JSON body) of a health path, on the monitoring listener or
    (``main``) on the main port under the prefix."""
    port = running.port if main else monitoring_port(running)
    url = f"http://127.0.0.1:{port}{'/_mp' if main else ''}{path}"
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, headers, body = response.status, response.headers, response.read()
    except urllib.error.HTTPError as e:
        status, headers, body = e.code, e.headers, e.read()
    assert headers["Cache-Control"] == "no-store"
    assert headers["Content-Type"] == "application/json"
    return status, headers, json.loads(body) if body else None


def indicator(body, name):
    return next(i for i in body["indicators"] if i["name"] == name)


def status_of(running, main=False):
    status, _, body = ask(running, "/health", main)
    return status, body["status"]


def live(running):
    status, _, body = ask(running, "/health/live")
    assert body["status"] == "alive"
    return status



def test_every_health_answer_is_json_and_never_limited_nor_counted_on_the_main_port(
        live_reactor):
    origin = ImageOrigin({"/media/a.jpg": IMAGE})
    with start_proxy(origin=origin, overrides={
            "monitoring": FAST,
            "ratelimit": {"passthrough_rate": 0.001, "passthrough_burst": 1,
                          "exempt": []}}) as running:
        for _ in range(5):
            for main in (False, True):
                assert ask(running, "/health", main)[0] == 200
                assert ask(running, "/health/live", main)[0] == 200
                status, _, body = ask(running, "/health/ready", main)
                assert (status, body["status"], "reasons" in body) == (200, "ready", False)
        status, headers, body = ask(running, "/health", main=True, method="HEAD")
        assert (status, body) == (200, None) and int(headers["Content-Length"]) > 100
        status, headers, body = ask(running, "/health", main=True, method="POST")
        assert (status, body["error"], headers["Allow"]) == (405, "method_not_allowed",
                                                              "GET, HEAD")
        counters = running.runtime.pm.get_plugin("mediaproxy.builtin.metrics.counters")
        assert counters.count("request") == 0            # never seen as traffic
        assert set(origin.hits) == {"/"}                 # only the backend probe's HEAD
        # anything else under the prefix is the backend's, rate limit and all
        assert running.get("/_mp/other").status == 404
        assert running.get("/_mp/other").status == 429
        assert counters.count("request") == 2


def test_the_detailed_report(live_reactor):
    with start_proxy(files={"/media/a.jpg": IMAGE}, overrides={"monitoring": FAST}) as running:
        status, _, body = ask(running, "/health")
        assert status == 200
        assert (body["status"], body["version"]) == ("healthy", mediaproxy.__version__)
        assert body["uptime"] >= 0 and body["time"].endswith("Z")
        assert body["snapshot"]["taken_at"].endswith("Z") and body["snapshot"]["age"] >= 0
        assert [i["name"] for i in body["indicators"]] == [
            "alerts", "backend", "breakers", "transform_pool", "memory"]
        assert indicator(body, "backend")["data"]["status"] == 404
        assert indicator(body, "memory")["data"]["transform_budget_bytes"] == \
            running.runtime.admission.capacity


def test_redis_down_is_degraded_with_200_and_ready_stays_200(live_reactor, redis_server):
    with start_proxy(files={"/media/a.jpg": IMAGE}, overrides={
            "monitoring": FAST, "cache": {"redis": {"url": redis_server.url}}}) as running:
        wait_for(lambda: status_of(running) == (200, "healthy"), 20, what="healthy")
        redis = indicator(ask(running, "/health")[2], "redis")
        assert (redis["status"], redis["critical"]) == ("ok", False)
        assert redis["data"]["nodes"] == {f"{redis_server.address}/0": {"ok": True,
                                                                     "detail": "up"}}

        redis_server.stop()
        wait_for(lambda: status_of(running) == (200, "degraded"), 20, what="degraded")
        body = ask(running, "/health")[2]
        redis = indicator(body, "redis")
        assert (redis["status"], redis["ok"]) == ("degraded", False)
        assert redis_server.address in redis["detail"]
        assert [i["name"] for i in body["indicators"] if not i["ok"]] == ["redis"]
        status, _, body = ask(running, "/health/ready")
        assert (status, body["status"], "reasons" in body) == (200, "ready", False)
        assert live(running) == 200

        redis_server.start()
        wait_for(lambda: status_of(running) == (200, "healthy"), 30, what="healthy again")
        assert live(running) == 200


def test_a_stopped_backend_is_unhealthy_and_its_open_breaker_unready_until_it_is_back(
        live_reactor):
    origin = ImageOrigin({"/media/a.jpg": IMAGE})
    site = DroppingSite(origin)
    listening = call_in_reactor(live_reactor.listenTCP, 0, site, interface="127.0.0.1")
    port = listening.getHost().port
    with start_proxy(backend_port=port, overrides={
            "monitoring": FAST, "backend": {"retry_backoff": 0.001}}) as running:
        wait_for(lambda: status_of(running) == (200, "healthy"), 10, what="healthy")

        call_in_reactor(listening.stopListening)
        call_in_reactor(site.drop_all)                       # the backend process died
        wait_for(lambda: status_of(running) == (503, "unhealthy"), 10, what="unhealthy")
        body = ask(running, "/health")[2]
        backend = indicator(body, "backend")
        assert (backend["status"], backend["critical"]) == ("unhealthy", True)
        assert backend["data"]["reachable"] is False
        assert live(running) == 200
        # no traffic yet: the breakers are closed, the node still says it can serve
        assert ask(running, "/health/ready")[0] == 200

        assert [running.get("/other").status for _ in range(2)] == [502, 502]
        assert running.runtime.upstream.breaker.state == "open"
        status, _, body = ask(running, "/health/ready")
        assert (status, body["status"], body["reasons"]) == (
            503, "not_ready", ["breaker_open:passthrough"])
        assert ask(running, "/health/ready", main=True)[0] == 503
        assert live(running) == 200

        hits_before = sum(origin.hits.values())
        listening = call_in_reactor(live_reactor.listenTCP, port, site, interface="127.0.0.1")
        try:
            # No client request comes (a balancer sends none to an unready node): the health
            # probe is the breaker's half-open probe, and closes it.
            wait_for(lambda: ask(running, "/health/ready")[0] == 200, 10, what="ready again")
            # ready once the breaker is no longer open: half-open while the probe is out
            wait_for(lambda: running.runtime.upstream.breaker.state == "closed", 10,
                     what="the probe's success closes the breaker")
            wait_for(lambda: status_of(running) == (200, "healthy"), 10, what="healthy again")
            assert set(origin.hits) == {"/"} and sum(origin.hits.values()) > hits_before
            assert live(running) == 200
        finally:
            call_in_reactor(listening.stopListening)


def test_draining_is_not_ready_and_still_alive(live_reactor):
    with start_proxy(files={"/media/a.jpg": IMAGE}, overrides={"monitoring": FAST}) as running:
        assert ask(running, "/health/ready")[0] == 200
        call_in_reactor(setattr, running.runtime, "draining", True)
        status, _, body = ask(running, "/health/ready")
        assert (status, body["status"], body["reasons"]) == (503, "not_ready", ["draining"])
        assert ask(running, "/health/ready", main=True)[0] == 503
        assert live(running) == 200
        assert status_of(running) == (200, "healthy")    # draining is not a fault
        call_in_reactor(setattr, running.runtime, "draining", False)


@contextmanager
def switchable_directory(tmp_path):
    """A directory and ``make_read_only(bool)``. The tests run as root, for whom a mode bit
    stops nothing, so the directory is a tmpfs remounted read-only: a real EROFS. Where the
    process may not mount (no CAP_SYS_ADMIN) it is a real chmod for a non-root user."""
    directory = tmp_path / "cache"
    directory.mkdir()
    if os.geteuid() != 0:
        yield str(directory), lambda ro: directory.chmod(0o555 if ro else 0o755)
        return
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(directory)],
                   check=True)
    try:
        def make_read_only(ro: bool):
            subprocess.run(["mount", "-o", f"remount,{'ro' if ro else 'rw'}", str(directory)],
                           check=True)

        yield str(directory), make_read_only
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=True)


def test_a_read_only_cache_directory_is_degraded(live_reactor, tmp_path):
    with switchable_directory(tmp_path) as (directory, make_read_only), start_proxy(
            files={"/media/a.jpg": IMAGE},
            overrides={"monitoring": FAST, "cache": {"file": {"dir": directory}}}) as running:
        wait_for(lambda: status_of(running) == (200, "healthy"), 10, what="healthy")
        cache_dir = indicator(ask(running, "/health")[2], "cache_dir")
        assert (cache_dir["status"], cache_dir["data"]["writable"]) == ("ok", True)
        assert cache_dir["data"]["path"] == directory
        assert (cache_dir["data"]["warning_percent"], cache_dir["data"]["critical_percent"]) \
            == (10.0, 5.0)

        make_read_only(True)
        try:
            wait_for(lambda: status_of(running) == (200, "degraded"), 10, what="degraded")
            cache_dir = indicator(ask(running, "/health")[2], "cache_dir")
            assert (cache_dir["status"], cache_dir["critical"]) == ("degraded", False)
            assert cache_dir["data"]["writable"] is False
            assert cache_dir["detail"].startswith(f"{directory} not writable: ")
            assert ask(running, "/health/ready")[0] == 200
        finally:
            make_read_only(False)
        wait_for(lambda: status_of(running) == (200, "healthy"), 10, what="healthy again")


class NeverAnswers:
    """A plugin's indicator whose check answers the first time and never again."""

    name = "slow_plugin"

    def __init__(self, first=True):
        self.calls = 0
        self.first = first

    def check(self):
        self.calls += 1
        if self.first and self.calls == 1:
            return succeed(HealthStatus(self.name, True, "fine"))
        return Deferred()


class SlowPlugin:
    def __init__(self, first=True):
        self.indicator = NeverAnswers(first)

    @hookimpl
    def mediaproxy_health_indicators(self, runtime):
        return [self.indicator]


def test_a_slow_indicator_never_delays_health(live_reactor):
    plugin = SlowPlugin()
    with start_proxy(files={"/media/a.jpg": IMAGE}, plugins=[plugin], overrides={
            "monitoring": {**FAST, "health_interval": 3600, "health_timeout": 60}}) as running:
        status, _, body = ask(running, "/health")
        assert (status, body["status"], body["snapshot"]["round"]) == (200, "healthy", 1)
        round_two = call_in_reactor(lambda: [running.runtime.health.refresh()])[0]
        assert plugin.indicator.calls == 2
        # round 2 waits up to a minute for the plugin; /health answers now, from round 1
        for main in (False, True):
            status, _, body = ask(running, "/health", main)
            assert (status, body["snapshot"]["round"]) == (200, 1)
            assert indicator(body, "slow_plugin")["detail"] == "fine"
        assert not round_two.called
        assert plugin.indicator.calls == 2            # no probe ran an indicator


def test_an_indicator_that_never_answers_is_reported_timed_out(live_reactor):
    plugin = SlowPlugin(first=False)
    with start_proxy(files={"/media/a.jpg": IMAGE}, plugins=[plugin], overrides={
            "monitoring": {**FAST, "health_interval": 3600, "health_timeout": 0.2}}) as running:
        status, _, body = ask(running, "/health")
        assert (status, body["status"]) == (200, "degraded")
        slow = indicator(body, "slow_plugin")
        assert (slow["status"], slow["ok"], slow["detail"]) == ("degraded", False, "timed out")
        assert [i["name"] for i in body["indicators"] if not i["ok"]] == ["slow_plugin"]
