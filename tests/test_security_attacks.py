"""
The attack table: path traversal in every encoding, absolute URLs, Host forgery and
absolute-form targets against a real proxy. (The SSRF guard of plugin fetches is tested in
test_ssrf_refusals.py and test_ssrf_oracle.py.)

Everything runs behind a **connect guard**: the reactor's ``connectTCP`` is replaced for the
test so that a connection to anything but 127.0.0.1 is recorded and refused instead of being
dialled, and the test fails if one was attempted.
"""

from __future__ import annotations

import socket
import json
from urllib.parse import quote

import pytest

from mediaproxy import TransformStep, hookimpl
from mediaproxy.testing import ImageOrigin, make_image, start_proxy


# -- the connect guard ---------------------------------------------------------------------------

class ConnectGuard:
    """Wraps ``reactor.connectTCP``: only ``allowed`` hosts are dialled, anything else is
    recorded in ``refused`` and fails without a packet being sent."""

    def __init__(self, reactor, allowed=("127.0.0.1",)):
        self.reactor = reactor
        self.allowed = set(allowed)
        self.dialled: list[tuple[str, int]] = []
        self.refused: list[tuple[str, int]] = []
        self._real = reactor.connectTCP

    def connectTCP(self, host, port, factory, timeout=30, bindAddress=None):
        if host not in self.allowed:
            self.refused.append((host, port))
            raise ConnectionRefusedError(f"connect guard: {host}:{port} is not to be dialled")
        self.dialled.append((host, port))
        return self._real(host, port, factory, timeout, bindAddress)

    def __getattr__(self, name):
        return getattr(self.reactor, name)


@pytest.fixture
def guard(live_reactor, monkeypatch):
    g = ConnectGuard(live_reactor)
    monkeypatch.setattr(live_reactor, "connectTCP", g.connectTCP)
    yield g
    assert g.refused == [], f"something tried to dial {g.refused}"


@pytest.fixture
def proxy(guard):
    origin = ImageOrigin({"/media/uploads/a.jpg": (200, make_image((300, 200)), "image/jpeg",
                                                   [])})
    running = start_proxy(origin=origin)
    yield running
    running.stop()


# -- traversal -----------------------------------------------------------------------------------

TRAVERSALS = [
    "/media/../etc/passwd.jpg",
    "/media/uploads/../../etc/passwd.jpg",
    "/media/%2e%2e/etc/passwd.jpg",
    "/media/%2E%2E/etc/passwd.jpg",
    "/media/.%2e/etc/passwd.jpg",
    "/media/%2e./etc/passwd.jpg",
    "/media/..%2fetc/passwd.jpg",
    "/media/..%2Fetc%2Fpasswd.jpg",
    "/media/..%5cetc/passwd.jpg",
    "/media/..\\etc/passwd.jpg",
    "/media/%252e%252e/etc/passwd.jpg",
    "/media/%252e%252e%252fetc/passwd.jpg",
    "/media/%25252e%25252e/etc/passwd.jpg",
    "/media/%c0%ae%c0%ae/etc/passwd.jpg",
    "/media/%e0%80%ae%e0%80%ae/etc/passwd.jpg",
    "/media/%ef%bc%8e%ef%bc%8e/etc/passwd.jpg",
    "/media/..;/etc/passwd.jpg",
    "/media/a%00.jpg",
    "/media/a%0a.jpg",
    "/media/%2fetc/passwd.jpg",
    "/media/%",
    "/media/a%zz.jpg",
    "/media/" + "a/" * 600 + "x.jpg",
]

ABSOLUTE = [
    "/media/uploads/http://169.254.169.254/latest.jpg",
    "/media/uploads/http:%2f%2f169.254.169.254/latest.jpg",
    "/media/uploads/%68ttp://127.0.0.1:22/x.jpg",
    "/media/uploads/%68ttp:%2f/127.0.0.1:22/x.jpg",
    "/media/\\\\evil.example\\x.jpg",
]


@pytest.mark.parametrize("path", TRAVERSALS + ABSOLUTE)
def test_traversal_and_absolute_urls_are_refused_before_any_fetch(proxy, path):
    status, headers, body, _ = proxy.get(quote(path, safe="/%:;\\") + "?w=10")
    assert status in (400, 404), (path, status)
    assert headers["content-type"] == "application/json"
    data = json.loads(body)
    assert data["parameter"] == "path" or status == 404
    assert "/etc" not in data["message"] and "127.0.0.1" not in data["message"]
    assert sum(proxy.origin.hits.values()) == 0


@pytest.mark.parametrize("path, fetched", [
    ("/media///evil.example/x.jpg", "/media/evil.example/x.jpg"),
    ("/media/uploads/./a.jpg", "/media/uploads/a.jpg"),
    ("/media/uploads//a.jpg", "/media/uploads/a.jpg"),
])
def test_duplicate_slashes_and_dots_are_normalised_within_the_backend(proxy, path, fetched):
    proxy.get(path + "?w=10")
    assert list(proxy.origin.hits) == [fetched]


def test_a_scheme_inside_the_path_is_refused_and_never_dialled(guard, proxy):
    # An origin-form target that contains "://" is a path like any other (only a target that
    # does not start with "/" is absolute-form); as an image source it is refused.
    status, _, body, _ = proxy.get("/media/http://169.254.169.254/latest.jpg?w=10")
    assert status == 400 and b'"parameter":"path"' in body
    assert list(proxy.origin.hits) == []
    assert {h for h, _ in guard.dialled} <= {"127.0.0.1"}


COMPAT = "/media_stream-image/media/uploads/{}/300/200/cover/centre/ffffff/0/80.webp"


@pytest.mark.parametrize("segment", [
    "..", "%2e%2e", "%252e%252e", "%25252e%25252e", "..%2f..%2fsecret", "%2e%2e%252f",
    "a%00b", "a%5cb", "%c0%ae%c0%ae",
])
def test_compat_traversal_in_every_encoding_is_refused(proxy, segment):
    status, _, _, _ = proxy.get(COMPAT.format(f"{segment}/a.jpg"))
    assert status in (400, 404)
    assert sum(proxy.origin.hits.values()) == 0


def test_validation_rejections_name_the_parameter_and_are_counted(proxy):
    cases = {"/media/uploads/a.jpg?w=9000": "w", "/media/uploads/a.jpg?w=8000&h=8000": "w",
             "/media/uploads/a.jpg?q=0": "q", "/media/uploads/a.jpg?w=1&fit=x": "fit",
             "/media/uploads/a.jpg?w=-1": "w", "/media/uploads/a.jpg?w=1e3": "w"}
    for path, parameter in cases.items():
        status, headers, body, _ = proxy.get(path)
        assert (status, json.loads(body)["parameter"]) == (400, parameter), path
    counters = proxy.runtime.pm.get_plugin("mediaproxy.builtin.metrics.counters")
    assert counters.count("rejection") == len(cases)


def test_unknown_parameters_are_ignored_by_default_and_400_when_rejected(guard):
    origin = ImageOrigin({"/media/uploads/a.jpg": (200, make_image((300, 200)), "image/jpeg",
                                                   [])})
    running = start_proxy(origin=origin)
    try:
        assert running.get("/media/uploads/a.jpg?w=10&v=123")[0] == 200
    finally:
        running.stop()
    running = start_proxy(origin=ImageOrigin(origin.files),
                          overrides={"validation": {"unknown_params": "reject"}})
    try:
        status, _, body, _ = running.get("/media/uploads/a.jpg?w=10&v=123")
        assert status == 400
        assert json.loads(body)["parameter"] == "v"
        assert json.loads(body)["error"] == "unknown_parameter"
        assert running.get("/media/uploads/a.jpg?width=10&quality=50")[0] == 200
    finally:
        running.stop()


def test_enlarging_past_the_output_budget_is_refused(proxy):
    proxy.origin.files["/media/uploads/thin.png"] = (200, make_image((2, 400), "PNG"),
                                                     "image/png", [])
    status, headers, _, _ = proxy.get("/media/uploads/thin.png?w=8000&enlarge=1")
    assert (status, headers["x-placeholder"]) == (400, "output_too_large")
    status, headers, _, _ = proxy.get("/media/uploads/thin.png?w=8000&h=10&fit=cover&enlarge=1")
    assert (status, headers["x-placeholder"]) == (400, "output_too_large")
    assert proxy.get("/media/uploads/thin.png?w=20&enlarge=1")[0] == 200


# -- Host forgery and absolute-form targets --------------------------------------------------------

def raw_request(running, request: bytes) -> tuple[int, bytes]:
    with socket.create_connection((running.host, running.port), timeout=10) as s:
        s.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data or len(data) < 12:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return int(data.split(b" ", 2)[1]), data


@pytest.mark.parametrize("target, host", [
    (b"http://169.254.169.254/latest/meta-data/", b"169.254.169.254"),
    (b"http://127.0.0.1:22/", b"127.0.0.1:22"),
    (b"http://[::1]/admin", b"[::1]"),
    (b"/admin", b"metadata.google.internal"),
    (b"//169.254.169.254/latest", b"evil.example"),
])
def test_host_and_absolute_form_only_ever_reach_the_backend(guard, origin, target, host):
    running = start_proxy(backend_port=origin.port)
    try:
        status, _ = raw_request(running, b"GET " + target + b" HTTP/1.1\r\nHost: " + host +
                                b"\r\nConnection: close\r\n\r\n")
        assert status == 200
        received = origin.last()
        assert received.uri.startswith(b"/")
        assert all(h == ("127.0.0.1", origin.port) for h in guard.dialled)
    finally:
        running.stop()


def test_absolute_form_image_request_fetches_from_the_backend(guard, proxy):
    status, data = raw_request(proxy, b"GET http://169.254.169.254/media/uploads/a.jpg?w=10 "
                                      b"HTTP/1.1\r\nHost: 169.254.169.254\r\n"
                                      b"Connection: close\r\n\r\n")
    assert status == 200
    assert proxy.origin.hits["/media/uploads/a.jpg"] == 1
    assert {h for h, _ in guard.dialled} == {"127.0.0.1"}


# -- error responses leak nothing -------------------------------------------------------------------

class Exploding:
    """A transform step that fails the way a bug does (not an ImageError)."""

    @staticmethod
    def apply(image, spec, request):
        raise RuntimeError(f"secret detail at {__file__}")

    @hookimpl
    def mediaproxy_transform_steps(self, image_request, spec):
        if image_request.params.get("w") == 13:
            return [TransformStep("explode", self.apply, order=600)]
        return None


def test_error_responses_leak_no_internals_and_the_log_has_the_details(guard):
    from twisted.logger import globalLogPublisher

    events = []
    globalLogPublisher.addObserver(events.append)
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]
    dead.close()
    origin = ImageOrigin({
        "/media/uploads/x.jpg": (200, make_image((60, 40)), "image/jpeg", []),
        "/media/status/500/x.jpg": (500, b"Traceback (most recent call last): /srv/app.py",
                                    "text/html", [])})
    running = start_proxy(origin=origin, plugins=[Exploding()])
    origin.port = running.origin.port
    down = start_proxy(backend_port=dead_port, overrides={"backend": {"retries": 0}})
    try:
        answers = [
            running.get("/media/uploads/x.jpg?w=13", headers={"X-Correlation-ID": "cid-bug"}),
            running.get("/media/uploads/x.jpg?w=abc"),
            running.get("/media/status/500/x.jpg?w=10"),
            down.get("/anything", headers={"X-Correlation-ID": "cid-down"}),
            down.get("/media/uploads/x.jpg?w=10"),
        ]
    finally:
        globalLogPublisher.removeObserver(events.append)
        running.stop()
        down.stop()
    secrets = ["Traceback", "secret detail", "/work/", ".py", "127.0.0.1", str(origin.port),
               str(dead_port), "RuntimeError", "ConnectionRefused"]
    for status, headers, body, _ in answers:
        text = body.decode("latin-1") + " ".join(f"{k}: {v}" for k, v in headers.items()
                                                 if k != "x-correlation-id")
        assert status >= 400
        assert not [s for s in secrets if s in text], (status, text[:300])
    assert answers[0][0] == 500 and json.loads(answers[0][2])["correlation_id"] == "cid-bug"
    assert answers[3][0] == 502
    logged = [e for e in events if e.get("correlation_id") == "cid-bug"
              and e.get("log_failure") is not None]
    assert logged and "secret detail" in logged[0]["log_failure"].getTraceback()
    assert any(e.get("correlation_id") == "cid-down" for e in events)


def test_the_security_doc_names_every_related_key():
    from pathlib import Path

    from mediaproxy.config import iter_settings

    text = (Path(__file__).resolve().parent.parent / "docs" / "security.md").read_text()
    related = [key for key, f in iter_settings() if f.metadata["kind"] != "section" and
               key.split(".")[0] in ("validation", "signing", "ratelimit", "ssrf")
               or key.startswith(("limits.", "backend.retr", "backend.source_timeout",
                                  "backend.max_concurrent"))]
    missing = [key for key in related
               if f"`{key}`" not in text and f"`{key.rsplit('.', 1)[0]}.*`" not in text]
    assert missing == []
