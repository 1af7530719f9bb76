"""The monitoring listener: Prometheus metrics and health, over real sockets."""

import json
import urllib.request

import pytest

import mediaproxy

from mediaproxy.testing import ImageOrigin, make_image, start_proxy


@pytest.fixture
def proxy(live_reactor):
    origin = ImageOrigin({"/media/a.jpg": (200, make_image((300, 200)), "image/jpeg", [])})
    running = start_proxy(origin=origin, overrides={
        "monitoring": {"listen": "tcp:0:interface=127.0.0.1"}})
    yield running
    running.stop()


def monitoring_url(running, path):
    svc = next(s for s in running.services if getattr(s, "what", "").startswith("monitoring"))
    return f"http://127.0.0.1:{svc.port.getHost().port}{path}"


def test_metrics_count_requests_hits_and_transforms(proxy):
    proxy.get("/media/a.jpg?w=100")
    proxy.get("/media/a.jpg?w=100")
    proxy.get("/media/a.jpg?w=abc")
    proxy.get("/media/missing.jpg?w=10")
    proxy.get("/other")
    text = urllib.request.urlopen(monitoring_url(proxy, "/metrics"), timeout=10).read().decode()
    lines = dict(line.rsplit(" ", 1) for line in text.splitlines()
                 if line and not line.startswith("#"))
    # the refusal (w=abc) and the 404 placeholder are image requests too; the origin's 404
    # page for /other a pass-through one
    requests = 'mediaproxy_http_requests_total{{kind="{}",method="GET",status="{}"}}'
    assert float(lines[requests.format("image", "2xx")]) == 2
    assert float(lines[requests.format("image", "4xx")]) == 2
    assert float(lines[requests.format("passthrough", "4xx")]) == 1
    assert float(lines['mediaproxy_http_request_duration_seconds_count{kind="image"}']) == 4
    assert float(lines['mediaproxy_cache_lookups_total{result="hit"}']) == 1
    assert float(lines['mediaproxy_cache_lookups_total{result="miss"}']) == 2
    assert float(lines['mediaproxy_source_errors_total{status="404"}']) == 1
    assert float(lines['mediaproxy_transform_seconds_count{format="jpeg"}']) == 1
    assert float(lines['mediaproxy_cache_items{layer="memory"}']) == 1
    assert "mediaproxy_transform_queue" in lines


def test_rejections_are_counted_by_error(proxy):
    proxy.get("/media/a.jpg?w=999999")
    text = urllib.request.urlopen(monitoring_url(proxy, "/metrics"), timeout=10).read().decode()
    assert 'mediaproxy_rejections_total{error="invalid_parameter"} 1.0' in text
    counters = proxy.runtime.pm.get_plugin("mediaproxy.builtin.metrics.counters")
    assert counters.count("rejection", error="invalid_parameter") == 1


def test_health_reports_every_indicator(proxy):
    with urllib.request.urlopen(monitoring_url(proxy, "/health"), timeout=10) as response:
        assert response.status == 200
        assert response.headers["Cache-Control"] == "no-store"
        assert response.headers["Content-Type"] == "application/json"
        body = json.loads(response.read())
    assert body["status"] == "healthy"
    assert body["version"] == mediaproxy.__version__
    assert body["uptime"] >= 0 and body["snapshot"]["round"] >= 1
    indicators = {i["name"]: i for i in body["indicators"]}
    # no Redis, no file layer and (the test kit's default) no backend probe configured here:
    # those indicators are left out (tests/test_health.py has them all); the alerts plugin
    # adds its own
    assert set(indicators) == {"breakers", "transform_pool", "memory", "alerts"}
    assert {(name, i["status"], i["critical"]) for name, i in indicators.items()} == {
        ("breakers", "ok", True), ("transform_pool", "ok", False), ("memory", "ok", False),
        ("alerts", "ok", False)}
    assert indicators["breakers"]["data"] == {"images": "closed", "passthrough": "closed"}
    pool = indicators["transform_pool"]["data"]
    assert (pool["running"], pool["pending"], pool["queue_limit"]) == (True, 0, 256)
    assert indicators["memory"]["data"]["rss_bytes"] > 0


def test_the_monitoring_listener_names_no_version(proxy):
    with urllib.request.urlopen(monitoring_url(proxy, "/metrics"), timeout=10) as response:
        assert response.headers.get_all("Server") == ["mediaproxy"]


def test_the_main_port_reserves_no_path(proxy):
    status, headers, body, _ = proxy.get("/metrics")
    assert status == 404 and b"not found" in body.lower()   # the origin's own 404


def test_a_plugins_collector_is_served_with_the_rest(live_reactor):
    from prometheus_client.core import GaugeMetricFamily

    from mediaproxy import hookimpl

    class Collector:
        def collect(self):
            family = GaugeMetricFamily("mediaproxy_example_widgets", "Widgets.")
            family.add_metric([], 7)
            yield family

    class Plugin:
        @hookimpl
        def mediaproxy_metrics_collectors(self, runtime):
            return [Collector()]

    with start_proxy({}, plugins=[Plugin()], overrides={
            "monitoring": {"listen": "tcp:0:interface=127.0.0.1"}}) as running:
        text = urllib.request.urlopen(monitoring_url(running, "/metrics"),
                                      timeout=10).read().decode()
    assert "mediaproxy_example_widgets 7.0" in text.splitlines()


def test_the_event_counts_keep_no_path_nor_client(proxy):
    for n in range(5):
        proxy.get(f"/page{n}")
    counters = proxy.runtime.pm.get_plugin("mediaproxy.builtin.metrics.counters")
    assert counters.count("request", kind="passthrough", status=404) == 5
    assert not any(name in ("path", "client") for (_, labels) in counters.counts
                   for name, _ in labels)


def test_the_event_counts_stay_bounded_whatever_the_fields():
    from mediaproxy.builtin.metrics import MAX_EVENT_KEYS, EventCounters
    from mediaproxy.models import Event

    counters = EventCounters()
    for n in range(MAX_EVENT_KEYS + 50):
        counters.mediaproxy_event(Event("passthrough", fields={"method": f"M{n}"}))
    assert len(counters.counts) == MAX_EVENT_KEYS + 1
    assert counters.count("passthrough") == MAX_EVENT_KEYS + 50
    assert counters.count("passthrough", method="M0") == 1
    fresh = EventCounters()
    fresh.mediaproxy_event(Event("odd", fields={"items": [1, 2]}))   # not hashable as is
    assert fresh.count("odd", items="[1, 2]") == 1


def test_the_event_counts_count_and_sum_each_label_set():
    from mediaproxy.builtin.metrics import EventCounters
    from mediaproxy.models import Event

    counters = EventCounters()
    for value in (0.5, 0.25, 1.0):
        counters.mediaproxy_event(Event("cache.read", value, fields={"layer": "memory"}))
    counters.mediaproxy_event(Event("cache.read", 2.0, fields={"layer": "redis"}))
    key = ("cache.read", (("layer", "memory"),))
    assert (counters.counts[key], counters.sums[key]) == (3, 1.75)
    assert counters.count("cache.read") == 4 and counters.count("cache.read", layer="redis") == 1
    assert counters.count("cache.write") == 0


def test_an_event_made_through_its_slots_is_the_event():
    from mediaproxy.models import Event, make_event

    fields = {"layer": "memory"}
    made = make_event("cache.read", 0.5, "cid", fields)
    assert made == Event("cache.read", 0.5, "cid", fields)
    assert type(made) is Event and made.fields is fields
    assert (made.name, made.value, made.correlation_id) == ("cache.read", 0.5, "cid")


def test_a_failing_or_clashing_plugin_collector_costs_only_its_own_series(live_reactor):
    from prometheus_client.core import GaugeMetricFamily

    from mediaproxy import hookimpl

    class Broken:
        def collect(self):
            raise RuntimeError("broken on purpose")

    class Clashing:
        def describe(self):
            return [GaugeMetricFamily("mediaproxy_breaker_state", "taken")]

        def collect(self):
            return self.describe()

    class Plugin:
        @hookimpl
        def mediaproxy_metrics_collectors(self, runtime):
            return [Broken(), Clashing()]

    with start_proxy({}, plugins=[Plugin()], overrides={
            "monitoring": {"listen": "tcp:0:interface=127.0.0.1"}}) as running:
        with urllib.request.urlopen(monitoring_url(running, "/metrics"), timeout=10) as response:
            assert response.status == 200
            text = response.read().decode()
    assert text.count("# TYPE mediaproxy_breaker_state gauge") == 1
    assert "mediaproxy_http_requests_in_flight" in text
