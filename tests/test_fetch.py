"""
SourceFetcher against a real recording origin (tests/origin.py) over loopback, sharing the
Upstream's agent and pool, with the real reactor in a background thread.
"""

from __future__ import annotations

import socket

import pytest

from mediaproxy.config import BackendConfig, ServerConfig
from mediaproxy.http.fetch import SourceFetcher
from mediaproxy.logs import RequestLogger, set_level
from mediaproxy.models import SourceError, SourceImage
from mediaproxy.testing import call_in_reactor
from mediaproxy.http.upstream import Upstream
from tests.origin import IMAGE

MiB = 1024 * 1024


class Fetcher:
    def __init__(self, fetcher: SourceFetcher, port: int):
        self.fetcher = fetcher
        self.port = port
        self.events: list[dict] = []

    def __call__(self, path: str, cid: str = "cid-fetch", headers=None, timeout: float = 10):
        # a fetch that went well says so at debug only; a proxy built by an earlier test may
        # have set the level to info
        set_level("debug")
        log = RequestLogger("mediaproxy.test", observer=self.events.append, correlation_id=cid)
        return call_in_reactor(self.fetcher.fetch, path, cid, log, headers, timeout=timeout)

    def error(self, path: str, **kwargs) -> SourceError:
        with pytest.raises(SourceError) as info:
            self(path, **kwargs)
        error = info.value
        # Messages are for clients: never the backend's address.
        assert "127.0.0.1" not in error.message and str(self.port) not in error.message
        return error


@pytest.fixture
def make_fetcher(live_reactor):
    """``make_fetcher(backend_url, max_bytes=1 MiB, **backend_settings)`` -> Fetcher, sharing a
    fresh Upstream's agent (closed after the test)."""
    upstreams = []

    def make(url: str, max_bytes: int = MiB, **backend) -> Fetcher:
        config = BackendConfig(url=url, **backend)
        upstream = call_in_reactor(lambda: Upstream(live_reactor, config, ServerConfig()))
        upstreams.append(upstream)
        port = int(url.rsplit(":", 1)[1])
        return Fetcher(SourceFetcher(live_reactor, config, max_bytes, upstream.agent), port)

    yield make
    for upstream in upstreams:
        call_in_reactor(upstream.close)


@pytest.fixture
def fetch(make_fetcher, origin):
    return make_fetcher(origin.url)


def test_fetch_ok(fetch, origin):
    image = fetch("/media/uploads/photo.jpg", cid="cid-ok",
                  headers={"If-None-Match": '"old"'})
    assert image == SourceImage(body=IMAGE, content_type="image/jpeg", etag='"img-1"',
                                last_modified="Wed, 21 Oct 2015 07:28:00 GMT")
    received = origin.last()
    assert (received.method, received.uri) == (b"GET", b"/media/uploads/photo.jpg")
    assert received.header("Accept") == ["image/*"]
    assert received.header("X-Correlation-ID") == ["cid-ok"]
    assert received.header("If-None-Match") == ['"old"']
    assert received.header("Host") == [f"127.0.0.1:{origin.port}"]
    assert fetch.events and all(e["correlation_id"] == "cid-ok" for e in fetch.events)
    assert any("ms" in e for e in fetch.events)


@pytest.mark.parametrize("path, sent", [
    ("/media/uploads/τ.jpg", b"/media/uploads/%CF%84.jpg"),
    ("/media/uploads/τ photo.jpg", b"/media/uploads/%CF%84%20photo.jpg"),
    ("/media/uploads/a?b#c%d;e.jpg", b"/media/uploads/a%3Fb%23c%25d%3Be.jpg"),
])
def test_path_is_quoted(fetch, origin, path, sent):
    fetch(path)
    assert origin.last().uri == sent


def test_sequential_fetches_share_a_connection_and_keep_no_cookies(fetch, origin):
    assert fetch("/cookies").body == b"cookies"  # a 200 that sets two cookies
    for _ in range(3):
        fetch("/media/uploads/a.jpg")
    assert all(r.header("Cookie") == [] for r in origin.requests)
    assert origin.connections == 1


@pytest.mark.parametrize("status", [404, 410, 403, 400])
def test_client_errors_are_not_found(fetch, status):
    error = fetch.error(f"/media/status/{status}/x.jpg")
    assert (error.status, error.error) == (404, "source_not_found")


@pytest.mark.parametrize("status", [500, 503])
def test_server_errors_are_bad_gateway(fetch, status):
    error = fetch.error(f"/media/status/{status}/x.jpg")
    assert (error.status, error.error) == (502, "backend_error")


def test_backend_down_is_unavailable(make_fetcher):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    error = make_fetcher(f"http://127.0.0.1:{port}").error("/media/uploads/a.jpg")
    assert (error.status, error.error) == (502, "backend_unavailable")


def test_no_headers_in_time_is_timeout(make_fetcher, origin):
    fetch = make_fetcher(origin.url, header_timeout=0.5)
    error = fetch.error("/media/delay/30/x.jpg")
    assert (error.status, error.error) == (504, "backend_timeout")


def test_stall_mid_body_is_timeout(make_fetcher, origin):
    fetch = make_fetcher(origin.url, idle_timeout=0.5)
    error = fetch.error("/media/stall/1000/x.jpg")
    assert (error.status, error.error) == (504, "backend_timeout")


def test_size_limit_enforced_while_streaming_chunked(fetch, origin):
    error = fetch.error("/media/chunked/%d/x.jpg" % (16 * MiB))
    assert (error.status, error.error) == (413, "source_too_large")
    assert origin.last().header("Transfer-Encoding") == []
    # The transfer was aborted, not read to the end.
    assert origin.stream_stopped.wait(10)
    assert not origin.stream_done.is_set()


def test_size_limit_from_content_length_fails_early(fetch, origin):
    error = fetch.error("/media/sized/%d/x.jpg" % (64 * MiB))
    assert (error.status, error.error) == (413, "source_too_large")
    assert origin.stream_stopped.wait(10)
    assert origin.sent < 32 * MiB


def test_exactly_at_the_limit_is_fine(fetch):
    for kind in ("sized", "chunked"):
        image = fetch(f"/media/{kind}/{MiB}/x.jpg")
        assert len(image.body) == MiB


def test_lying_small_content_length(fetch):
    # The backend says 100 bytes and sends 4 MiB: the framing wins, never more than declared.
    image = fetch("/media/lying/100/%d/x.jpg" % (4 * MiB))
    assert image.body == b"\x00" * 100
    # The connection with the garbage is not reused for the next fetch.
    assert fetch("/media/uploads/a.jpg").body == IMAGE
