"""
mediaproxy.urlsign, the pure signing module both the proxy and applications use: its canonical
form and URL builder checked against literal expectations written from the documented form
(``MP1``, the decoded path re-quoted, the signed parameters sorted, the expiry; HMAC-SHA256,
base64url without padding: the oracle ``mac`` below is written here, not taken from the
module), that a URL it builds is accepted by a real proxy (and the same URL altered is not),
and that importing it, or ``mediaproxy`` itself, loads neither Twisted nor Pillow.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
import sys

import pytest

from mediaproxy import urlsign
from mediaproxy.testing import assert_image, make_image, start_proxy

KEY = "k1-0123456789abcdef0123456789abcdef"


def mac(key: str, message: str) -> str:
    digest = hmac.new(key.encode(), message.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def test_build_url_without_a_key_is_the_path_and_the_parameters_in_order():
    assert urlsign.build_url("/media/a.jpg", {"w": 300, "fit": "cover", "h": None}) == \
        "/media/a.jpg?w=300&fit=cover"
    assert urlsign.build_url("/media/a.jpg") == "/media/a.jpg"
    assert urlsign.build_url("/media/a.jpg", [("w", 1), ("w", 2), ("flip", True),
                                              ("x", False)], base="https://img.example/") == \
        "https://img.example/media/a.jpg?w=1&w=2&flip=1&x=0"


def test_build_url_quotes_what_a_path_cannot_hold_and_keeps_what_is_quoted():
    assert urlsign.build_url("/media/a b/é?#.jpg") == "/media/a%20b/%C3%A9%3F%23.jpg"
    assert urlsign.build_url("/media/a%20b.jpg") == "/media/a%20b.jpg"
    assert urlsign.build_url("/media/(1)+x,y~z.jpg") == "/media/(1)+x,y~z.jpg"


def test_build_url_refuses_a_relative_path_and_an_unsigned_expiry():
    with pytest.raises(ValueError, match="must start with '/'"):
        urlsign.build_url("media/a.jpg")
    with pytest.raises(ValueError, match="expires needs a key"):
        urlsign.build_url("/media/a.jpg", {"w": 1}, expires=5)


def test_a_signed_url_carries_the_hmac_of_the_documented_form():
    url = urlsign.build_url("/media/a%20b.jpg", {"w": 300, "h": 200}, key=KEY)
    assert url == "/media/a%20b.jpg?w=300&h=200&sig=" + mac(KEY, "MP1\n/media/a%20b.jpg\nh=200&w=300\n")
    url = urlsign.build_url("/media/é.jpg", {"w": 3}, key=KEY, expires=1_700_000_000,
                            base="https://img.example")
    assert url == ("https://img.example/media/%C3%A9.jpg?w=3&expires=1700000000&sig="
                   + mac(KEY, "MP1\n/media/%C3%A9.jpg\nw=3\n1700000000"))


def test_the_canonical_form_signs_every_parameter_but_sig_and_expires_without_a_registry():
    query = [("w", "2"), ("sig", "x"), ("expires", "9"), ("a b", "c&d"), ("w", "1")]
    assert urlsign.canonical("/p/q r", query, None, "9") == b"MP1\n/p/q%20r\na%20b=c%26d&w=1&w=2\n9"
    assert urlsign.canonical("/p", query, {"w"}, None) == b"MP1\n/p\nw=1&w=2\n"


def test_signing_replaces_an_old_signature_and_expiry_and_refuses_a_bad_path():
    url = urlsign.sign_url("/m/a.jpg?w=1&sig=old&expires=3", KEY)
    assert url == "/m/a.jpg?w=1&sig=" + mac(KEY, "MP1\n/m/a.jpg\nw=1\n")
    with pytest.raises(urlsign.SigningError):
        urlsign.sign_url("/m/%zz.jpg?w=1", KEY)
    with pytest.raises(urlsign.SigningError):
        urlsign.sign_url("/m/%ff.jpg?w=1", KEY)


def test_the_options_are_keyword_only():
    # a positional third argument would be taken for the wrong option (known for expires, the
    # key for the base): refused
    with pytest.raises(TypeError):
        urlsign.sign_url("/m/a.jpg?w=1", KEY, None)
    with pytest.raises(TypeError):
        urlsign.build_url("/m/a.jpg", {"w": 1}, "https://img.example")


def test_decode_path_is_strict():
    assert urlsign.decode_path("/a%20b%C3%A9") == "/a bé"
    assert urlsign.decode_path("/plain") == "/plain"
    for bad in ("/a%2", "/a%g0", "/a%", "/a%0g"):
        with pytest.raises(ValueError, match="malformed"):
            urlsign.decode_path(bad)


@pytest.mark.parametrize("raw, decoded", [
    ("/plain", "/plain"),
    ("/a%20b", "/a b"),
    ("/a%2520b", "/a b"),                  # twice
    ("/a%252520b", "/a b"),                # three times: the most
    ("/a%25252520b", "/a%20b"),            # a fourth layer stays encoded
    ("/a%2541", "/aA"),                    # stable after two passes
    ("/a%C3%A9", "/a\u00e9"),
])
def test_decode_repeatedly_decodes_until_stable_three_times_at_most(raw, decoded):
    assert urlsign.decode_repeatedly(raw) == decoded


@pytest.mark.parametrize("bad", ["/a%zz", "/a%25zz", "/a%2525zz", "/a%25", "/a%2525b",
                                 "/a%25C3%2528"])
def test_decode_repeatedly_refuses_a_malformed_escape_at_any_layer(bad):
    with pytest.raises(ValueError):
        urlsign.decode_repeatedly(bad)


def test_the_proxy_accepts_what_the_builder_signs_and_nothing_else(live_reactor):
    with start_proxy(files={"/media/uploads/a%20b.jpg": make_image((400, 300))},
                     overrides={"signing": {"keys": [KEY]}}) as proxy:
        url = urlsign.build_url("/media/uploads/a b.jpg", {"w": 100, "fmt": "webp"}, key=KEY)
        response = proxy.get(url)
        assert response.status == 200
        assert_image(response.body, format="WEBP", size=(100, 75))
        tampered = url.replace("w=100", "w=101")
        response = proxy.get(tampered)
        assert (response.status, json.loads(response.body)["error"]) == \
            (403, "invalid_signature")


PURE_IMPORT = """
import sys
import {module}
heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('twisted', 'PIL', 'pluggy', 'treq'))
print(heavy)
"""


@pytest.mark.parametrize("module", ["mediaproxy", "mediaproxy.urlsign", "mediaproxy.django",
                                    "mediaproxy.django.templatetags.mediaproxy"])
def test_importing_the_pure_parts_loads_neither_twisted_nor_pillow(module):
    out = subprocess.run([sys.executable, "-c", PURE_IMPORT.format(module=module)],
                         capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


def test_the_public_surface_still_answers_every_name():
    import mediaproxy

    for name in mediaproxy.__all__ + ["hookimpl"]:
        assert getattr(mediaproxy, name) is not None
    assert mediaproxy.hookimpl is mediaproxy.hookimpl
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        mediaproxy.nope  # noqa: B018 -- the attribute read is what raises
