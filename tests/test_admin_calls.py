"""The admin listener's breaker, config and plugin calls (/admin/breakers, /admin/config,
/admin/performance, /admin/alerts), over real sockets."""

import socket

import pytest

from mediaproxy import hookimpl
from mediaproxy.testing import ImageOrigin, make_image, start_proxy, wait_for

from .test_admin import AUTH, TOKEN, call

ADMIN = {"token": TOKEN, "listen": "tcp:0:interface=127.0.0.1"}


def closed_port() -> int:
    """A loopback port nothing listens on: every connection to it is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_breakers_are_listed_and_an_open_one_is_reset(live_reactor):
    with start_proxy(backend_port=closed_port(), overrides={
            "admin": ADMIN, "cache": {"negative_error_ttl": 0},
            "backend": {"retry_backoff": 0.001, "image_breaker": {"open_for": 60}}}) as proxy:
        assert call(proxy, "GET", "/admin/breakers", headers=AUTH) == (200, {"breakers": {
            "images": {"state": "closed", "enabled": True},
            "passthrough": {"state": "closed", "enabled": True}}})
        for i in range(2):          # 3 refused connections each: the 5th in a row opens it
            assert proxy.get(f"/media/{i}.jpg?w=20").status == 502
        assert proxy.get("/media/9.jpg?w=20").headers["x-placeholder"] == "circuit_open"
        status, body = call(proxy, "GET", "/admin/breakers", headers=AUTH)
        assert body["breakers"]["images"]["state"] == "open"
        status, body = call(proxy, "POST", "/admin/breakers/reset", {"breaker": "images"}, AUTH)
        assert status == 200 and body["reset"] == ["images"]
        assert body["breakers"]["images"] == {"state": "closed", "enabled": True}
        assert proxy.runtime.fetcher.breaker.state == "closed"
        status, body = call(proxy, "POST", "/admin/breakers/reset", {"all": True}, AUTH)
        assert (status, body["reset"]) == (200, ["images", "passthrough"])


@pytest.mark.parametrize("body, message", [
    ({"breaker": "redis"}, "no breaker 'redis' (known: images, passthrough)"),
    ({}, 'name a breaker ({"breaker": "images"}) or all ({"all": true})'),
])
def test_resetting_an_unknown_breaker_is_a_400_naming_it(live_reactor, body, message):
    with start_proxy(files={}, overrides={"admin": ADMIN}) as proxy:
        status, answer = call(proxy, "POST", "/admin/breakers/reset", body, AUTH)
        assert (status, answer["error"], answer["parameter"], answer["message"]) == (
            400, "invalid_request", "breaker", message)


def test_the_effective_config_is_shown_with_its_secrets_redacted(live_reactor):
    with start_proxy(files={}, overrides={
            "admin": {**ADMIN, "internal_secret": "grooveshop"},
            "signing": {"keys": ["0123456789abcdef0123"]}}) as proxy:
        status, body = call(proxy, "GET", "/admin/config", headers=AUTH)
        config = body["config"]
        assert status == 200
        assert config["admin"]["token"] == "<redacted>"
        assert config["admin"]["internal_secret"] == "<redacted>"
        assert config["signing"]["keys"] == ["<redacted>"]
        assert config["backend"]["url"] == proxy.runtime.config.backend.url
        assert config["alerts"]["rules"][0] == {
            "name": "image_latency_high", "expr": "image.p99 > 2.5", "for": 120.0,
            "severity": "warning",
            "remedy": proxy.runtime.config.alerts.rules[0].remedy}
        assert TOKEN not in str(body) and "grooveshop" not in str(body)


def test_performance_and_alerts_views(live_reactor):
    files = {"/media/a.jpg": (200, make_image((64, 48)), "image/jpeg", [])}
    rules = [{"name": "busy", "expr": "image.rate > 0.001", "severity": "critical"},
             {"name": "never", "expr": "passthrough.error_rate > 0.5", "for": 60}]
    with start_proxy(origin=ImageOrigin(files), overrides={
            "admin": ADMIN, "alerts": {"interval": 0.1, "min_requests": 2,
                                       "rules": rules}}) as proxy:
        for _ in range(3):
            assert proxy.get("/media/a.jpg?w=32").status == 200
        assert proxy.get("/nothing/").status == 404
        status, perf = call(proxy, "GET", "/admin/performance", headers=AUTH)
        assert status == 200
        assert perf["image"]["requests"] == 3 and perf["passthrough"]["requests"] == 1
        assert perf["image"]["error_rate"] == 0.0 and perf["image"]["p50"] > 0
        assert perf["passthrough"]["p99"] is None          # 1 request: under min_requests
        assert perf["cache"] == {"lookups": 3, "hit_ratio": round(2 / 3, 6)}   # to the µs/ppm
        assert perf["runtime"]["breaker.images.open"] == 0.0
        assert perf["runtime"]["disk.free_ratio"] is None   # no file cache
        assert perf["figures"]["image.requests"] == 3
        wait_for(lambda: call(proxy, "GET", "/admin/alerts", headers=AUTH)[1]["firing"]
                 == ["busy"], 10, what="busy firing")
        status, body = call(proxy, "GET", "/admin/alerts", headers=AUTH)
        busy, never = body["alerts"]
        assert (busy["name"], busy["state"], busy["severity"]) == ("busy", "firing", "critical")
        assert busy["value"] > 0.001 and busy["since"] is not None
        assert (never["name"], never["state"], never["value"]) == ("never", "inactive", None)
        assert call(proxy, "GET", "/admin/alerts")[0] == 401      # the token still applies


class Hello:
    @hookimpl
    def mediaproxy_admin_views(self, runtime):
        return {("GET", "/admin/hello"): lambda body: (200, {"hello": body.get("name", "you")}),
                ("POST", "/admin/hello"): lambda body: (201, {"got": body}),
                ("GET", "/admin/broken"): lambda body: {"not": "a pair"}}


def test_a_plugin_adds_an_admin_call_and_gets_the_body(live_reactor):
    with start_proxy(files={}, overrides={"admin": ADMIN}, plugins=[Hello()]) as proxy:
        assert call(proxy, "GET", "/admin/hello?name=ops", headers=AUTH) == (
            200, {"hello": "ops"})
        assert call(proxy, "POST", "/admin/hello", {"n": [1, 2]}, AUTH) == (
            201, {"got": {"n": [1, 2]}})
        status, body = call(proxy, "POST", "/admin/hello", headers=AUTH | {
            "Content-Type": "application/json"}, raw=b"[1]")
        assert (status, body["message"]) == (400, "the body must be a JSON object")
        assert call(proxy, "DELETE", "/admin/hello", headers=AUTH)[0] == 404
        status, body = call(proxy, "GET", "/admin/broken", headers=AUTH)
        assert (status, body["error"]) == (500, "internal_error")


class Thief:
    @hookimpl
    def mediaproxy_admin_views(self, runtime):
        return {("GET", "/admin/config"): lambda body: (200, {})}


def test_a_plugin_cannot_take_an_admin_call(live_reactor):
    with pytest.raises(ValueError, match="GET /admin/config is claimed twice"):
        start_proxy(files={}, overrides={"admin": ADMIN}, plugins=[Thief()])
