"""The admin listener and purging, over real sockets (and across nodes through Redis)."""

import json
import urllib.error
import urllib.request

import pytest

from mediaproxy.testing import ImageOrigin, make_image, start_proxy, wait_for

TOKEN = "s3cret-token"


def files():
    jpeg = make_image((400, 300))
    return {"/media/uploads/a.jpg": (200, jpeg, "image/jpeg", []),
            "/media/uploads/b.jpg": (200, jpeg, "image/jpeg", []),
            "/media/shop/uploads/c.jpg": (200, jpeg, "image/jpeg", [])}


def admin_port(running):
    svc = next(s for s in running.services if getattr(s, "what", "") == "admin")
    wait_for(lambda: svc.port is not None, 10, what="admin listening")
    return svc.port.getHost().port


def call(running, method, path, body=None, headers=None, raw=None):
    data = json.dumps(body).encode() if body is not None else raw
    request = urllib.request.Request(f"http://127.0.0.1:{admin_port(running)}{path}", data=data,
                                     method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def proxy(live_reactor):
    running = start_proxy(origin=ImageOrigin(files()), overrides={"admin": {
        "token": TOKEN, "internal_secret": "grooveshop", "listen": "tcp:0:interface=127.0.0.1"}})
    yield running
    running.stop()


def test_without_a_token_nothing_listens(live_reactor):
    running = start_proxy(origin=ImageOrigin(files()))
    try:
        assert not [s for s in running.services if getattr(s, "what", "") == "admin"]
        # and the main port reserves no admin path: it is the backend's
        status, _, body, _ = running.get("/admin/cache/stats")
        assert status == 404 and body == b"not found"
    finally:
        running.stop()


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"},
                                     {"Authorization": f"Basic {TOKEN}"},
                                     {"x-internal-secret": "nope"}])
def test_credentials_are_required(proxy, headers):
    status, body = call(proxy, "GET", "/admin/cache/stats", headers=headers)
    assert status == 401 and body["error"] == "unauthorized"


def test_the_admin_listener_says_the_configured_server_name(live_reactor):
    running = start_proxy(origin=ImageOrigin(files()), overrides={
        "admin": {"token": TOKEN, "listen": "tcp:0:interface=127.0.0.1"},
        "server": {"server_header": ""}})
    try:
        request = urllib.request.Request(
            f"http://127.0.0.1:{admin_port(running)}/admin/cache/stats", headers=AUTH)
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
            assert response.headers.get_all("Server") is None
    finally:
        running.stop()


def test_stats(proxy):
    proxy.get("/media/uploads/a.jpg?w=50")
    status, body = call(proxy, "GET", "/admin/cache/stats", headers=AUTH)
    assert status == 200 and body["layers"]["memory"]["items"] == 1


def test_purge_one_source_a_tenant_and_everything(proxy):
    for path in ("/media/uploads/a.jpg", "/media/uploads/b.jpg", "/media/shop/uploads/c.jpg"):
        for width in (50, 60):
            assert proxy.get(f"{path}?w={width}")[1]["x-cache"] == "MISS"
    status, body = call(proxy, "POST", "/admin/cache/purge",
                        {"source": "/media/uploads/a.jpg"}, AUTH)
    assert status == 200 and body["purged"]["memory"] == 2
    assert proxy.get("/media/uploads/a.jpg?w=50")[1]["x-cache"] == "MISS"
    assert proxy.get("/media/uploads/b.jpg?w=50")[1]["x-cache"] == "HIT-MEMORY"

    status, body = call(proxy, "POST", "/admin/cache/flush-tenant", {"tenant": "shop"},
                        {"x-internal-secret": "grooveshop"})
    assert status == 200 and body["success"] is True and body["purged"]["memory"] == 2
    assert proxy.get("/media/shop/uploads/c.jpg?w=50")[1]["x-cache"] == "MISS"
    assert proxy.get("/media/uploads/b.jpg?w=60")[1]["x-cache"] == "HIT-MEMORY"

    status, body = call(proxy, "POST", "/admin/cache/purge?all=1", None, AUTH)
    assert status == 200 and body["purged"]["memory"] >= 3
    assert proxy.get("/media/uploads/b.jpg?w=60")[1]["x-cache"] == "MISS"


def test_the_flush_tenant_call_grooveshops_django_makes_works_unchanged(proxy):
    """grooveshop's Django (tenant/media_flush.py) posts {"tenantSchema": schema} with
    x-internal-secret and only looks at the status (docs/migration-grooveshop.md)."""
    assert proxy.get("/media/shop/uploads/c.jpg?w=50")[1]["x-cache"] == "MISS"
    assert proxy.get("/media/uploads/a.jpg?w=50")[1]["x-cache"] == "MISS"
    status, body = call(proxy, "POST", "/admin/cache/flush-tenant", {"tenantSchema": "shop"},
                        {"x-internal-secret": "grooveshop", "Content-Type": "application/json"})
    assert status == 200 and body["tenant"] == "shop" and body["purged"]["memory"] == 1
    assert proxy.get("/media/shop/uploads/c.jpg?w=50")[1]["x-cache"] == "MISS"
    assert proxy.get("/media/uploads/a.jpg?w=50")[1]["x-cache"] == "HIT-MEMORY"


@pytest.mark.parametrize("body", [{}, {"tenant": "Bad-Tenant"}, {"source": "relative.jpg"},
                                  {"source": "/media/../etc/passwd"}])
def test_bad_purge_requests_are_400(proxy, body):
    status, answer = call(proxy, "POST", "/admin/cache/purge", body, AUTH)
    assert status == 400 and answer["error"] == "invalid_request"


def test_a_purge_reaches_the_memory_of_every_node(live_reactor, redis_server):
    nodes = [start_proxy(origin=ImageOrigin(files()), overrides={
        "cache": {"redis": {"url": redis_server.url}},
        "admin": {"token": TOKEN, "listen": "tcp:0:interface=127.0.0.1"}}) for _ in range(2)]
    try:
        for node in nodes:
            wait_for(lambda node=node: node.runtime.redis.healthy,
                     10, what="redis up")
            node.get("/media/uploads/a.jpg?w=70")
            assert node.get("/media/uploads/a.jpg?w=70")[1]["x-cache"] == "HIT-MEMORY"
        status, body = call(nodes[0], "POST", "/admin/cache/purge",
                            {"source": "/media/uploads/a.jpg"}, AUTH)
        # the result and the note of what the source's own format is (jpeg: see docs/cache.md)
        assert status == 200 and body["purged"]["redis"] == 2
        feed = nodes[1].runtime.purge_feed
        wait_for(lambda: feed.applied == 1, 10, what="the other node applies the purge")
        assert nodes[1].get("/media/uploads/a.jpg?w=70")[1]["x-cache"] == "MISS"
    finally:
        for node in nodes:
            node.stop()
