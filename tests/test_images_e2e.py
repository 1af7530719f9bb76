"""Image requests end to end over loopback: a real origin, a real proxy, real sockets."""

import io
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image
from twisted.logger import globalLogPublisher
from twisted.python import threadable

from mediaproxy import TransformStep, hookimpl
from mediaproxy.testing import ImageOrigin, make_image, start_proxy

JPEG = make_image((800, 600))
PNG_ALPHA = make_image((400, 400), "PNG", (0, 128, 255, 100), mode="RGBA")
LAST_MODIFIED = "Tue, 01 Sep 2026 10:00:00 GMT"


def files():
    return {
        "/media/uploads/a.jpg": (200, JPEG, "image/jpeg", [("Last-Modified", LAST_MODIFIED)]),
        "/media/uploads/alpha.png": (200, PNG_ALPHA, "image/png", []),
        "/media/uploads/broken.jpg": (200, b"\xff\xd8\xff\xe0 not really a jpeg", "image/jpeg",
                                      []),
        "/media/uploads/fail.jpg": (500, b"<h1>Server Error</h1>", "text/html", []),
    }


@pytest.fixture
def proxy(live_reactor):
    running = start_proxy(origin=ImageOrigin(files()))
    yield running
    running.stop()


def decode(body):
    image = Image.open(io.BytesIO(body))
    image.load()
    return image


@pytest.mark.parametrize("fit, size", [("cover", (300, 200)), ("contain", (300, 200)),
                                       ("fill", (300, 200)), ("inside", (267, 200)),
                                       ("outside", (300, 225))])
@pytest.mark.parametrize("fmt, pil", [("jpeg", "JPEG"), ("png", "PNG"), ("webp", "WEBP"),
                                      ("avif", "AVIF"), ("gif", "GIF"), ("tiff", "TIFF")])
def test_every_fit_and_format(proxy, fit, size, fmt, pil):
    status, headers, body, _ = proxy.get(f"/media/uploads/a.jpg?w=300&h=200&fit={fit}&fmt={fmt}")
    assert status == 200
    image = decode(body)
    assert (image.format, image.size) == (pil, size)
    assert headers["content-type"] == f"image/{fmt}"


def test_caching_headers_and_a_second_request_from_memory(proxy):
    status, headers, body, _ = proxy.get("/media/uploads/a.jpg?w=300&fmt=webp")
    assert status == 200 and headers["x-cache"] == "MISS"
    assert headers["cache-control"] == "public, max-age=31536000, immutable"
    assert headers["etag"].startswith('"') and headers["last-modified"] == LAST_MODIFIED
    assert headers["x-content-type-options"] == "nosniff"
    assert int(headers["content-length"]) == len(body)
    again = proxy.get("/media/uploads/a.jpg?w=300&fmt=webp&v=2")
    assert again[0] == 200 and again[1]["x-cache"] == "HIT-MEMORY" and again[2] == body
    assert again[1]["etag"] == headers["etag"]
    assert proxy.origin.hits["/media/uploads/a.jpg"] == 1


def test_conditional_requests_and_head(proxy):
    _, headers, body, _ = proxy.get("/media/uploads/a.jpg?w=100")
    etag = headers["etag"]
    status, h, b, _ = proxy.get("/media/uploads/a.jpg?w=100", headers={"If-None-Match": etag})
    assert (status, b) == (304, b"") and h["etag"] == etag
    status, _, _, _ = proxy.get("/media/uploads/a.jpg?w=100",
                                headers={"If-None-Match": f'"other", W/{etag}'})
    assert status == 304
    status, _, b, _ = proxy.get("/media/uploads/a.jpg?w=100", headers={"If-None-Match": '"x"'})
    assert status == 200 and b == body
    status, _, _, _ = proxy.get("/media/uploads/a.jpg?w=100",
                                headers={"If-Modified-Since": LAST_MODIFIED})
    assert status == 304
    status, _, _, _ = proxy.get("/media/uploads/a.jpg?w=100",
                                headers={"If-Modified-Since": "Mon, 01 Jun 2026 10:00:00 GMT"})
    assert status == 200
    status, h, b, _ = proxy.request("HEAD", "/media/uploads/a.jpg?w=100")
    assert status == 200 and b == b"" and int(h["content-length"]) == len(body)
    assert h["etag"] == etag


def test_cors_and_resource_policy(live_reactor):
    running = start_proxy(origin=ImageOrigin(files()), overrides={
        "cors": {"allow_origins": ["https://shop.example"], "max_age": 600}})
    try:
        _, h, _, _ = running.get("/media/uploads/a.jpg?w=50",
                                 headers={"Origin": "https://shop.example"})
        assert h["access-control-allow-origin"] == "https://shop.example"
        assert h["access-control-max-age"] == "600" and "Origin" in h["vary"]
        assert h["cross-origin-resource-policy"] == "cross-origin"
        # a page's script may read what the cache did and which request it was
        exposed = [name.strip() for name in h["access-control-expose-headers"].split(",")]
        assert exposed == ["ETag", "X-Cache", "Cache-Status", "X-Correlation-ID"]
        _, h, _, _ = running.get("/media/uploads/a.jpg?w=50",
                                 headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in h
        assert "access-control-max-age" not in h and "Origin" in h["vary"]
        # an <img> tag sends no Origin: its answer still varies by Origin for shared caches
        _, h, _, _ = running.get("/media/uploads/a.jpg?w=50")
        assert "access-control-allow-origin" not in h and "Origin" in h["vary"]
    finally:
        running.stop()


def test_bad_parameter_is_a_400_json_naming_it(proxy):
    status, headers, body, _ = proxy.get("/media/uploads/a.jpg?w=300&fit=banana",
                                         headers={"X-Correlation-ID": "req-42"})
    assert status == 400 and headers["content-type"] == "application/json"
    data = json.loads(body)
    assert data == {"error": "invalid_parameter", "message": data["message"], "status": 400,
                    "parameter": "fit", "correlation_id": "req-42"}
    assert proxy.origin.hits["/media/uploads/a.jpg"] == 0


@pytest.mark.parametrize("path, status, error", [
    ("/media/uploads/missing.jpg", 404, "source_not_found"),
    ("/media/uploads/fail.jpg", 502, "backend_error"),
    ("/media/uploads/broken.jpg", 422, None),
])
def test_placeholder_with_the_honest_status(proxy, path, status, error):
    got, headers, body, _ = proxy.get(f"{path}?w=120&h=90&fmt=png")
    assert got == status
    assert headers["cache-control"] == "no-store"
    image = decode(body)
    assert (image.format, image.size) == ("PNG", (120, 90))
    if error:
        assert headers["x-placeholder"] == error


def test_auto_format_by_accept(proxy):
    _, h, body, _ = proxy.get("/media/uploads/a.jpg?w=64&fmt=auto",
                              headers={"Accept": "image/avif,image/webp,*/*"})
    assert h["content-type"] == "image/avif" and "Accept" in h["vary"]
    _, h, body, _ = proxy.get("/media/uploads/a.jpg?w=64&fmt=auto",
                              headers={"Accept": "image/webp,*/*"})
    assert h["content-type"] == "image/webp"
    _, h, body, _ = proxy.get("/media/uploads/a.jpg?w=64&fmt=auto", headers={"Accept": "*/*"})
    assert h["content-type"] == "image/jpeg"
    _, h, body, _ = proxy.get("/media/uploads/alpha.png?w=64&fmt=auto",
                              headers={"Accept": "image/*"})
    assert h["content-type"] == "image/png"


def test_media_path_without_transform_passes_through_untouched(proxy):
    status, headers, body, _ = proxy.get("/media/uploads/a.jpg?v=123")
    assert status == 200 and body == JPEG and "x-cache" not in headers


class OffReactorRecorder:
    """A test plugin: a transform step recording the thread and the concurrency it ran at."""

    def __init__(self):
        self.lock = threading.Lock()
        self.active = 0
        self.peak = 0
        self.threads = set()
        self.on_reactor = 0
        self.calls = 0

    def step(self, image, spec, request):
        with self.lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
            self.calls += 1
            self.threads.add(threading.get_ident())
            if threadable.isInIOThread():
                self.on_reactor += 1
        try:
            image.load()
            return image.resize((image.width, image.height))   # a real Pillow call
        finally:
            with self.lock:
                self.active -= 1

    @hookimpl
    def mediaproxy_transform_steps(self, image_request, spec):
        return [TransformStep("record", self.step, order=100)]


def test_pillow_work_runs_off_the_reactor_within_the_pool_size(live_reactor, monkeypatch):
    recorder = OffReactorRecorder()
    opened_on_reactor = []
    original_open = Image.open

    def recording_open(*args, **kwargs):
        opened_on_reactor.append(threadable.isInIOThread())
        return original_open(*args, **kwargs)

    monkeypatch.setattr(Image, "open", recording_open)
    big = make_image((2000, 1500))
    origin = ImageOrigin({"/media/big.jpg": (200, big, "image/jpeg", [])})
    running = start_proxy(origin=origin, overrides={"processing": {"threads": 3}},
                          plugins=[recorder])
    try:
        with ThreadPoolExecutor(20) as pool:
            results = list(pool.map(
                lambda i: running.get(f"/media/big.jpg?w={100 + i}&h={80 + i}&fit=cover"),
                range(20)))
    finally:
        running.stop()
    assert [r[0] for r in results] == [200] * 20
    assert recorder.calls == 20 and recorder.on_reactor == 0
    assert 1 <= recorder.peak <= 3
    assert opened_on_reactor and not any(opened_on_reactor)
    assert origin.hits["/media/big.jpg"] >= 1


def test_every_log_event_of_a_request_carries_its_correlation_id(live_reactor):
    proxy = start_proxy(origin=ImageOrigin(files()),
                        overrides={"monitoring": {"log_level": "debug"}})
    events = []
    observer = events.append
    globalLogPublisher.addObserver(observer)
    try:
        proxy.get("/media/uploads/a.jpg?w=77&fmt=png", headers={"X-Correlation-ID": "trace-me.1"})
        proxy.get("/media/uploads/missing.jpg?w=77", headers={"X-Correlation-ID": "trace-me.2"})
        proxy.get("/api/thing", headers={"X-Correlation-ID": "trace-me.3"})
    finally:
        globalLogPublisher.removeObserver(observer)
        proxy.stop()
    ours = [e for e in events if str(e.get("log_namespace", "")).startswith("mediaproxy")
            and e.get("log_namespace") not in ("mediaproxy.plugins",)]
    namespaces = {e["log_namespace"] for e in ours if e.get("correlation_id") == "trace-me.1"}
    assert {"mediaproxy.request", "mediaproxy.fetch", "mediaproxy.pipeline"} <= namespaces
    assert all(e.get("correlation_id", "").startswith("trace-me.") for e in ours), \
        [(e["log_namespace"], e.get("log_format")) for e in ours if not e.get("correlation_id")]
    assert {e["correlation_id"] for e in ours} == {"trace-me.1", "trace-me.2", "trace-me.3"}
    # sent to the backend too
    assert proxy.origin.headers_seen["/media/uploads/a.jpg"]["x-correlation-id"] == ["trace-me.1"]


@pytest.mark.parametrize("incoming, kept", [("abc-123", True), ("a" * 128, True),
                                            ("a" * 129, False), ("bad id", False),
                                            ("<script>", False)])
def test_correlation_id_kept_only_when_well_formed(proxy, incoming, kept):
    _, headers, _, _ = proxy.get("/media/uploads/a.jpg?w=10",
                                 headers={"X-Correlation-ID": incoming})
    assert (headers["x-correlation-id"] == incoming) is kept
    assert 1 <= len(headers["x-correlation-id"]) <= 128


def test_sizes_of_one_original_fetch_it_once(proxy):
    for width in (320, 480, 640, 800):
        assert proxy.get(f"/media/uploads/a.jpg?w={width}")[0] == 200
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda w: proxy.get(f"/media/uploads/alpha.png?w={w}")[0],
                                 range(100, 108)))
    assert statuses == [200] * 8
    assert proxy.origin.hits["/media/uploads/a.jpg"] == 1
    assert proxy.origin.hits["/media/uploads/alpha.png"] == 1


def test_source_cache_can_be_turned_off(live_reactor):
    running = start_proxy(origin=ImageOrigin(files()),
                          overrides={"cache": {"source": {"memory_bytes": 0}}})
    try:
        for width in (320, 480):
            assert running.get(f"/media/uploads/a.jpg?w={width}")[0] == 200
        assert running.origin.hits["/media/uploads/a.jpg"] == 2
    finally:
        running.stop()


def test_missing_and_failing_sources_are_remembered_briefly(live_reactor):
    # A 5xx is remembered for cache.negative_error_ttl (1 s by default): long here, so the
    # count does not depend on how fast the machine is.
    with start_proxy(origin=ImageOrigin(files()),
                     overrides={"cache": {"negative_error_ttl": 600}}) as proxy:
        for width in (10, 20, 30):
            assert proxy.get(f"/media/uploads/missing.jpg?w={width}")[0] == 404
            assert proxy.get(f"/media/uploads/fail.jpg?w={width}")[0] == 502
        assert proxy.origin.hits["/media/uploads/missing.jpg"] == 1
        assert proxy.origin.hits["/media/uploads/fail.jpg"] == 1


def test_negative_cache_expires(live_reactor):
    running = start_proxy(origin=ImageOrigin(files()), overrides={"cache": {"negative_ttl": 0}})
    try:
        for width in (10, 20):
            assert running.get(f"/media/uploads/missing.jpg?w={width}")[0] == 404
        assert running.origin.hits["/media/uploads/missing.jpg"] == 2
    finally:
        running.stop()
