"""Alert rules in process (mediaproxy.monitoring.alerts, builtin/alerts.py): pending, firing
after `for`, resolved, logged; the lag probe; and a real proxy's figures, health indicator and
mediaproxy_alert_firing series."""

import re

import pytest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from mediaproxy.config import AlertRule
from mediaproxy.monitoring.alerts import Alerts
from mediaproxy.testing import ImageOrigin, call_in_reactor, make_image, start_proxy, wait_for

from .test_monitoring_files import scrape


@pytest.fixture
def logged():
    events = []

    def keep(event):
        if event.get("log_namespace") == "mediaproxy.alerts":
            events.append((event["log_level"], formatEvent(event)))

    globalLogPublisher.addObserver(keep)
    yield events
    globalLogPublisher.removeObserver(keep)


SLOW = AlertRule("slow", "image.p99 > 2.5", 10.0, "critical", "add threads")


def test_a_rule_is_pending_then_firing_after_for_then_resolved(logged):
    clock = Clock()
    alerts = Alerts([SLOW], clock)
    state = alerts.states[0]
    assert [c for c, _ in alerts.evaluate({"image.p99": 3.0})] == [state]
    assert (state.state, state.since, state.value) == ("pending", 0.0, 3.0)
    clock.advance(9.9)
    assert alerts.evaluate({"image.p99": 4.0}) == [] and state.state == "pending"
    clock.advance(0.1)
    assert alerts.evaluate({"image.p99": 4.0}) == [(state, "pending")]
    assert (state.state, state.since) == ("firing", 10.0)
    assert logged == [(LogLevel.warn, "alert slow firing (critical): image.p99 = 4 > 2.5 for "
                                      "10.0s; remedy: add threads")]
    clock.advance(5)
    assert alerts.evaluate({"image.p99": 1.0}) == [(state, "firing")]
    assert (state.state, state.since) == ("inactive", 15.0)
    assert logged[1] == (LogLevel.info, "alert slow resolved: image.p99 = 1 (threshold > 2.5)")
    assert alerts.as_list()[0]["state"] == "inactive"


def test_a_condition_that_breaks_off_restarts_the_wait(logged):
    clock = Clock()
    alerts = Alerts([SLOW], clock)
    alerts.evaluate({"image.p99": 3.0})
    clock.advance(8)
    alerts.evaluate({"image.p99": None})   # unknown (too few requests): holds nothing
    assert alerts.states[0].state == "inactive"
    alerts.evaluate({"image.p99": 3.0})
    clock.advance(8)
    alerts.evaluate({"image.p99": 3.0})
    assert alerts.states[0].state == "pending" and logged == []   # pending is not logged


@pytest.mark.parametrize("expr, value, holds", [
    ("cache.hit_ratio < 0.5", 0.49, True), ("cache.hit_ratio < 0.5", 0.5, False),
    ("breaker.images.open == 1", 1.0, True), ("breaker.images.open == 1", 0.0, False),
    ("reactor.lag >= 0.5", 0.5, True), ("disk.free_ratio <= 0.1", 0.2, False),
    ("shed.rate != 0", 0.0, False), ("transform.queue > -1", 0.0, True),
])
def test_operators(expr, value, holds):
    alerts = Alerts([AlertRule("r", expr)], Clock())
    alerts.evaluate({expr.split()[0]: value})
    assert alerts.states[0].state == ("firing" if holds else "inactive")


def test_a_reload_keeps_the_state_of_unchanged_rules():
    clock = Clock()
    alerts = Alerts([SLOW, AlertRule("lag", "reactor.lag > 1")], clock)
    alerts.evaluate({"image.p99": 3.0, "reactor.lag": 2.0})
    alerts.replace_rules([SLOW, AlertRule("lag", "reactor.lag > 5")])
    assert [(s.rule.name, s.state) for s in alerts.states] == [("slow", "pending"),
                                                                ("lag", "inactive")]


# -- a real proxy ------------------------------------------------------------------------------

RULES = [{"name": "busy_images", "expr": "image.rate > 0.01", "for": 0, "severity": "critical",
          "remedy": "nothing: a test"},
         {"name": "slow_images", "expr": "image.p99 > 100", "severity": "warning"},
         {"name": "warm", "expr": "cache.hit_ratio > 0.2", "severity": "warning"}]


def test_a_real_proxy_fires_exports_and_reports_its_alerts(live_reactor, logged):
    files = {"/media/a.jpg": (200, make_image((64, 48)), "image/jpeg", [])}
    with start_proxy(origin=ImageOrigin(files), overrides={
            "alerts": {"interval": 0.1, "min_requests": 3, "rules": RULES},
            "monitoring": {"listen": "tcp:0:interface=127.0.0.1"}}) as proxy:
        for _ in range(4):
            assert proxy.get("/media/a.jpg?w=32").status == 200
        rt = proxy.runtime
        (health,) = [i for found in rt.pm.hook.mediaproxy_health_indicators(runtime=rt)
                     for i in found if i.name == "alerts"]
        wait_for(lambda: not health.check().ok, 10, what="the critical alert firing")
        status = health.check()
        assert status.detail == "busy_images (critical), warm (warning) firing"
        assert (status.critical, status.data["critical"], status.data["warning"]) == (
            False, ["busy_images"], ["warm"])
        # the series, in a real scrape of the monitoring listener
        samples = {(s.labels["alert"], s.labels["severity"]): s.value
                   for family in text_string_to_metric_families(scrape(proxy))
                   if family.name == "mediaproxy_alert_firing" for s in family.samples}
        assert samples == {("busy_images", "critical"): 1.0, ("slow_images", "warning"): 0.0,
                           ("warm", "warning"): 1.0}
        # the rate depends on how long the proxy has run: the line's shape is what is fixed
        fired = [(level, line) for level, line in logged if "busy_images firing" in line]
        assert len(fired) == 1 and fired[0][0] == LogLevel.warn
        assert re.fullmatch(r"alert busy_images firing \(critical\): image\.rate = [0-9.e+-]+ "
                            r"> 0\.01 for 0\.0s; remedy: nothing: a test", fired[0][1])


def test_alerts_disabled_adds_nothing(live_reactor):
    with start_proxy(files={}, overrides={"alerts": {"enabled": False}}) as proxy:
        rt = proxy.runtime
        assert [i.name for found in rt.pm.hook.mediaproxy_health_indicators(runtime=rt)
                for i in found if i.name == "alerts"] == []
        assert all(not found for found in rt.pm.hook.mediaproxy_admin_views(runtime=rt))
        assert rt.pm.get_plugin("mediaproxy.builtin.alerts.state") is None


def test_a_reload_replaces_the_rules(live_reactor, tmp_path):
    from mediaproxy.tap import reload_config

    path = tmp_path / "mediaproxy.toml"
    path.write_text('[[alerts.rules]]\nname = "lag"\nexpr = "reactor.lag > 2"\n'
                    'severity = "critical"\n')
    with start_proxy(files={}, overrides={"alerts": {"rules": [
            {"name": "lag", "expr": "reactor.lag > 2", "severity": "critical"},
            {"name": "slow", "expr": "image.p99 > 1"}]}}) as proxy:
        rt = proxy.runtime
        (view,) = [found[("GET", "/admin/alerts")]
                   for found in rt.pm.hook.mediaproxy_admin_views(runtime=rt) if found]
        before = call_in_reactor(lambda: view({}))[1]["alerts"]
        assert [a["name"] for a in before] == ["lag", "slow"]
        call_in_reactor(reload_config, rt, str(path))
        status, body = call_in_reactor(lambda: view({}))
        assert [(a["name"], a["expr"]) for a in body["alerts"]] == [("lag", "reactor.lag > 2")]
