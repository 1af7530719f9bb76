"""Signed URLs: the canonical form, tampering of every kind, rotation, exempt routes and the
``mediaproxy sign`` CLI, against a real proxy over loopback. Each refusal's exact answer, expiry
on a controlled clock, reloads and plugin routes are in test_signing_refusals.py."""

from __future__ import annotations

import http.client
import json
import time
from urllib.parse import quote

import pytest

from mediaproxy import cli
from mediaproxy.builtin.signing import canonical, sign_url, signature
from mediaproxy.config import load_config
from mediaproxy.testing import ImageOrigin, make_image, start_proxy

KEY = "k1-0123456789abcdef0123456789abcdef"
OLD_KEY = "k0-fedcba9876543210fedcba9876543210"
COMPAT = "/media_stream-image/media/uploads/a.jpg/300/200/cover/centre/ffffff/0/80.webp"


def files():
    return {"/media/uploads/a.jpg": (200, make_image((400, 300)), "image/jpeg", []),
            "/media/uploads/%C3%A9%20b.jpg": (200, make_image((400, 300)), "image/jpeg", [])}


def config(**signing):
    return load_config(environ={}, overrides={"signing": {"keys": [KEY, OLD_KEY], **signing}})


def signed(url: str, key: str = KEY, expires_in: float | None = None, **signing) -> str:
    c = load_config(environ={}, overrides={"signing": {"keys": [key], **signing}})
    return cli.sign(url, c, expires_in)


@pytest.fixture(scope="module")
def proxy(live_reactor):
    running = start_proxy(origin=ImageOrigin(files()),
                          overrides={"signing": {"keys": [KEY, OLD_KEY]}})
    yield running
    running.stop()


def refusal(proxy, url):
    status, headers, body, _ = proxy.get(url)
    if status == 200:
        return 200, None
    if headers["content-type"] != "application/json":
        return status, headers.get("x-placeholder")
    return status, json.loads(body)["error"]


def test_a_signed_url_is_served_and_the_unsigned_one_refused(proxy):
    url = signed("/media/uploads/a.jpg?w=100&fmt=webp")
    assert refusal(proxy, url) == (200, None)
    assert refusal(proxy, "/media/uploads/a.jpg?w=100&fmt=webp") == (403, "signature_required")


def test_both_keys_verify_for_rotation(proxy):
    assert refusal(proxy, signed("/media/uploads/a.jpg?w=101", key=OLD_KEY)) == (200, None)
    other = "k2-" + "x" * 32
    assert refusal(proxy, signed("/media/uploads/a.jpg?w=101", key=other)) == \
        (403, "invalid_signature")


def test_equivalent_spellings_of_the_path_share_the_signature(proxy):
    url = signed("/media/uploads/%C3%A9%20b.jpg?w=102")
    sig = url.rsplit("sig=", 1)[1]
    assert refusal(proxy, url) == (200, None)
    # The canonical form is the decoded path: another encoding of the same file is the same URL.
    assert refusal(proxy, f"/media/uploads/%c3%a9%20b.jpg?w=102&sig={sig}") == (200, None)


REQUIRED = (403, "signature_required")
MISMATCH = (403, "invalid_signature")


@pytest.mark.parametrize("tamper, expected", [
    # the hash injected mid-path (thumbor's CVE shape), or in another parameter
    (lambda s: f"/media/uploads/{s}/a.jpg?w=103", REQUIRED),
    (lambda s: f"/media/{s}/uploads/a.jpg?w=103", REQUIRED),
    (lambda s: f"/media/uploads/a.jpg?w=103&x={s}", REQUIRED),
    (lambda s: f"/media/uploads/a.jpg?w=103&SIG={s}", REQUIRED),
    (lambda s: f"/media/uploads/a.jpg?w=103&sig%00={s}", REQUIRED),
    # percent-encoding used to change what is fetched while keeping the signature
    (lambda s: f"/media/uploads/a%2ejpg.jpg?w=103&sig={s}", MISMATCH),
    (lambda s: f"/media/uploads/a.jpg?%77=103&%77=5000&sig={s}", MISMATCH),
    # truncated, extended, re-cased, wrong alphabet, empty, doubled
    (lambda s: f"/media/uploads/a.jpg?w=103&sig={s[:-1]}", MISMATCH),
    (lambda s: f"/media/uploads/a.jpg?w=103&sig={s[:20]}", MISMATCH),
    (lambda s: f"/media/uploads/a.jpg?w=103&sig={s}A", MISMATCH),
    (lambda s: f"/media/uploads/a.jpg?w=103&sig={s.swapcase()}", MISMATCH),
    (lambda s: f"/media/uploads/a.jpg?w=103&sig={quote(s + '==')}", MISMATCH),
    (lambda s: "/media/uploads/a.jpg?w=103&sig=", MISMATCH),
    (lambda s: "/media/uploads/a.jpg?w=103&sig=%C3%A9", MISMATCH),
    (lambda s: f"/media/uploads/a.jpg?w=103&sig=bad&sig={s}", MISMATCH),
    (lambda s: f"/media/uploads/a.jpg?w=103&sig={s}&sig={s}", MISMATCH),
    # other parameters changed, added, repeated
    (lambda s: f"/media/uploads/a.jpg?w=104&sig={s}", MISMATCH),
    (lambda s: f"/media/uploads/a.jpg?w=103&h=9&sig={s}", MISMATCH),
    (lambda s: f"/media/uploads/a.jpg?w=103&width=2000&sig={s}", MISMATCH),
    (lambda s: f"/media/uploads/a.jpg?w=103&w=103&sig={s}", MISMATCH),
    (lambda s: f"/media/uploads/b.jpg?w=103&sig={s}", MISMATCH),
    (lambda s: f"/media/uploads/a.jpg?w=103&expires=9999999999&sig={s}", MISMATCH),
])
def test_tampering_is_refused(proxy, tamper, expected):
    url = signed("/media/uploads/a.jpg?w=103")
    sig = url.rsplit("sig=", 1)[1]
    before = proxy.origin.hits["/media/uploads/a.jpg"]
    assert refusal(proxy, tamper(sig)) == expected
    assert proxy.origin.hits["/media/uploads/a.jpg"] == before
    assert proxy.origin.hits["/media/uploads/b.jpg"] == 0


def test_unknown_parameters_are_not_signed(proxy):
    url = signed("/media/uploads/a.jpg?w=105")
    assert refusal(proxy, url + "&v=2") == (200, None)
    assert refusal(proxy, url.replace("?", "?utm_source=x&")) == (200, None)


def test_compat_routes_need_a_signature_unless_exempted(proxy, live_reactor):
    assert refusal(proxy, COMPAT) == (403, "signature_required")
    assert refusal(proxy, signed(COMPAT)) == (200, None)
    running = start_proxy(origin=ImageOrigin(files()), overrides={
        "signing": {"keys": [KEY], "exempt_routes": ["compat"]}})
    try:
        assert refusal(running, COMPAT) == (200, None)
        assert refusal(running, "/media/uploads/a.jpg?w=100") == (403, "signature_required")
    finally:
        running.stop()


def test_the_compat_path_is_signed_as_that_route_decodes_it(proxy):
    double = COMPAT.replace("a.jpg", "%2561.jpg")   # "%2561" decodes to "%61", then to "a"
    assert refusal(proxy, signed(double)) == (200, None)
    sig = signed(COMPAT).rsplit("sig=", 1)[1]
    assert refusal(proxy, f"{double}?sig={sig}") == (200, None)


def test_without_keys_nothing_is_required(live_reactor):
    running = start_proxy(origin=ImageOrigin(files()))
    try:
        assert refusal(running, "/media/uploads/a.jpg?w=100") == (200, None)
    finally:
        running.stop()


def test_the_canonical_form_is_defined_and_stable():
    known = frozenset({"w", "h", "width"})
    message = canonical("query", "/media/a%20b.jpg", [("w", "1"), ("v", "x"), ("h", "2"),
                                                      ("w", "0")], known, "123")
    assert message == b"MP1\n/media/a%20b.jpg\nh=2&w=0&w=1\n123"
    assert signature(b"k", b"MP1\n/\n\n") == \
        "YPSUa5JK8pS7kfyUVXC3_P5mHtK9lOfOtKe8NpeO5N8"  # openssl dgst -sha256 -hmac k
    assert canonical("compat", "/x/%2561", [], known, None) == b"MP1\n/x/a\n\n"
    url = sign_url("https://img.example/media/a.jpg?w=1&sig=old", "query", known, "k" * 16)
    assert url.startswith("https://img.example/media/a.jpg?w=1&sig=") and "old" not in url


def test_cli_sign(capsys, monkeypatch):
    monkeypatch.setenv("MEDIAPROXY_SIGNING__KEYS", KEY)
    assert cli.main(["sign", "/media/uploads/a.jpg?w=300", "--expires-in", "60"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("/media/uploads/a.jpg?w=300&expires=") and "&sig=" in out
    assert cli.main(["sign", "/not/an/image"]) == 2
    assert "cannot sign" in capsys.readouterr().err
    monkeypatch.delenv("MEDIAPROXY_SIGNING__KEYS")
    assert cli.main(["sign", "/media/uploads/a.jpg?w=300"]) == 2
    assert "no signing key" in capsys.readouterr().err


def test_short_keys_are_a_config_error():
    from mediaproxy.config import ConfigError
    with pytest.raises(ConfigError, match="signing.keys"):
        load_config(environ={"MEDIAPROXY_SIGNING__KEYS": "short"})


def test_an_expiring_url_is_cached_until_it_expires_at_most(proxy):
    # the configured Cache-Control says a year and immutable: a CDN would keep serving the
    # image long after the URL died
    lasting = proxy.get(signed("/media/uploads/a.jpg?w=120"))
    assert lasting.headers["cache-control"] == "public, max-age=31536000, immutable"
    url = signed("/media/uploads/a.jpg?w=120", expires_in=600)
    expires = int(url.split("expires=")[1].split("&")[0])
    before = int(time.time())
    for _ in range(2):                              # a miss, then a hit from memory
        status, headers, _, _ = proxy.get(url)
        after = int(time.time()) + 1
        assert status == 200
        public, age = headers["cache-control"].split(", ")
        assert public == "public" and age.startswith("max-age=")
        assert expires - after <= int(age.removeprefix("max-age=")) <= expires - before
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    try:                                            # one Cache-Control, not the year beside it
        conn.request("GET", url)
        answer = conn.getresponse()
        answer.read()
        (only,) = [v for k, v in answer.getheaders() if k.lower() == "cache-control"]
        assert only.startswith("public, max-age=") and "immutable" not in only
    finally:
        conn.close()
