"""
Every refusal of the signed-URL check, over HTTP against a real proxy in front of a real
origin: the exact status, JSON error code, parameter and message, and that a refused request
never reached the origin (each case fetches a source no other request fetches, and the same
URL correctly signed is served as the positive control).

The expected signatures are computed here from the documented canonical form (``MP1``, the
decoded path re-quoted, the known parameters sorted, the expiry; HMAC-SHA256, base64url without
padding), written out literally per case, never with the module's own ``canonical``/``sign_url``.
Time is a :class:`twisted.internet.task.Clock` put in as the runtime's clock, so expiry
boundaries are exact.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from urllib.parse import quote

import pytest
from twisted.internet.task import Clock

from mediaproxy import cli, hookimpl
from mediaproxy.builtin import routing
from mediaproxy.config import load_config
from mediaproxy.models import RequestInfo
from mediaproxy.tap import reload_config
from mediaproxy.testing import call_in_reactor

from mediaproxy.testing import ImageOrigin, make_image, start_proxy

KEY = "k1-0123456789abcdef0123456789abcdef"
OLD_KEY = "k0-fedcba9876543210fedcba9876543210"
OTHER_KEY = "k2-" + "x" * 32
NOW = 1_700_000_000
JPEG = make_image((120, 80))
COMPAT = "/media_stream-image/media/uploads/{name}/60/40/cover/centre/ffffff/0/80.webp"

REQUIRED = (403, "signature_required", "sig", "this URL must be signed")
MISMATCH = (403, "invalid_signature", "sig", "the signature does not match this URL")
TWO_SIGS = (403, "invalid_signature", "sig", "the URL carries more than one signature")
TWO_EXPIRES = (403, "invalid_signature", "expires", "the URL carries more than one expiry")
NOT_A_TIME = (403, "invalid_signature", "expires", "the expiry is not a Unix time")
EXPIRED = (403, "signature_expired", "expires", "this signed URL has expired")
BAD_PATH = (400, "invalid_path", "path", "the path is not valid percent-encoded UTF-8")


def mac(key: str, message: str) -> str:
    """base64url(HMAC-SHA256(key, message)) without padding, as the module docstring defines."""
    digest = hmac.new(key.encode(), message.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


class ClockedReactor:
    """The real reactor, except that ``seconds()`` reads a Clock (the signer's notion of now)."""

    def __init__(self, reactor, clock):
        self._reactor, self.clock = reactor, clock

    def seconds(self):
        return self.clock.seconds()

    def __getattr__(self, name):
        return getattr(self._reactor, name)


class RawRoute:
    """A third-party route (``/raw/<anything>``) that does not decode its path: the signer must
    still refuse a path it cannot decode, itself."""

    @hookimpl(tryfirst=True)
    def mediaproxy_match_request(self, request, runtime):
        if not request.path.startswith("/raw/"):
            return None
        inner = routing.mediaproxy_match_request(
            RequestInfo(method=request.method, path="/media/uploads/raw.jpg",
                        query=request.query), runtime)
        return inner.evolve(route="raw")


def names(*stems):
    return {f"/media/uploads/{s}.jpg": (200, JPEG, "image/jpeg", []) for s in stems}


FILES = names("served", "nosig", "badsig", "twosigs", "twoexp", "twoexp-same", "expired",
              "boundary", "soon", "neg", "space", "exp13", "exp12", "arabic", "wrongkey",
              "oldkey", "newkey", "compat", "exempt-q", "raw", "blank")


def start(**signing):
    clock = Clock()
    clock.advance(NOW)
    running = start_proxy(origin=ImageOrigin(FILES), plugins=[RawRoute()],
                          overrides={"signing": {"keys": [KEY, OLD_KEY], **signing}})
    call_in_reactor(setattr, running.runtime, "reactor",
                    ClockedReactor(running.runtime.reactor, clock))
    return running, clock


@pytest.fixture(scope="module")
def proxy(live_reactor):
    running, _ = start()
    yield running
    running.stop()


def clock_of(running) -> Clock:
    return running.runtime.reactor.clock


def answer(proxy, url):
    """(status, error, parameter, message) of a refusal; (200, image/webp or jpeg) when served."""
    status, headers, body, _ = proxy.get(url)
    if status == 200:
        return 200, headers["content-type"]
    assert headers["content-type"] == "application/json", (status, headers)
    data = json.loads(body)
    assert data["status"] == status
    return status, data["error"], data["parameter"], data["message"]


def hits(proxy, stem):
    return proxy.origin.hits[f"/media/uploads/{stem}.jpg"]


def refused(proxy, url, stem, expected):
    assert answer(proxy, url) == expected
    assert hits(proxy, stem) == 0, f"{url} reached the origin"


def test_a_correctly_signed_url_is_served(proxy):
    sig = mac(KEY, "MP1\n/media/uploads/served.jpg\nw=50\n")
    url = f"/media/uploads/served.jpg?w=50&sig={sig}"
    assert answer(proxy, url) == (200, "image/jpeg")
    assert hits(proxy, "served") == 1


def test_a_missing_signature(proxy):
    refused(proxy, "/media/uploads/nosig.jpg?w=50", "nosig", REQUIRED)
    # a signature under another name is no signature
    good = mac(KEY, "MP1\n/media/uploads/nosig.jpg\nw=50\n")
    refused(proxy, f"/media/uploads/nosig.jpg?w=50&SIG={good}", "nosig", REQUIRED)
    refused(proxy, f"/media/uploads/nosig.jpg?w=50&signature={good}", "nosig", REQUIRED)


def test_a_bad_signature(proxy):
    good = mac(KEY, "MP1\n/media/uploads/badsig.jpg\nw=50\n")
    for sig in ("", good[:-1], good + "A", good.swapcase(), "A" * 43,
                mac(KEY, "MP1\n/media/uploads/badsig.jpg\nw=51\n")):
        refused(proxy, f"/media/uploads/badsig.jpg?w=50&sig={quote(sig)}", "badsig", MISMATCH)
    assert answer(proxy, f"/media/uploads/badsig.jpg?w=50&sig={good}") == (200, "image/jpeg")


def test_two_signatures_even_both_valid(proxy):
    good = mac(KEY, "MP1\n/media/uploads/twosigs.jpg\nw=50\n")
    refused(proxy, f"/media/uploads/twosigs.jpg?w=50&sig={good}&sig={good}", "twosigs",
            TWO_SIGS)
    refused(proxy, f"/media/uploads/twosigs.jpg?w=50&sig=x&sig={good}", "twosigs", TWO_SIGS)


def test_two_expiries_are_refused_even_when_the_first_is_signed(proxy):
    later = NOW + 3600
    good = mac(KEY, f"MP1\n/media/uploads/twoexp.jpg\nw=50\n{later}")
    refused(proxy, f"/media/uploads/twoexp.jpg?w=50&expires={later}&expires=1&sig={good}",
            "twoexp", TWO_EXPIRES)
    same = mac(KEY, f"MP1\n/media/uploads/twoexp-same.jpg\nw=50\n{later}")
    refused(proxy, f"/media/uploads/twoexp-same.jpg?w=50&expires={later}&expires={later}"
                   f"&sig={same}", "twoexp-same", TWO_EXPIRES)
    # the positive control: one expiry, the same signature
    assert answer(proxy, f"/media/uploads/twoexp.jpg?w=50&expires={later}&sig={good}") == \
        (200, "image/jpeg")


def test_expiry_is_exact_to_the_second(proxy):
    now = int(clock_of(proxy).seconds())

    def url(expires):
        sig = mac(KEY, f"MP1\n/media/uploads/expired.jpg\nw=50\n{expires}")
        return f"/media/uploads/expired.jpg?w=50&expires={expires}&sig={sig}"

    refused(proxy, url(now - 1), "expired", EXPIRED)
    refused(proxy, url(now), "expired", EXPIRED)          # "until" means before that second
    assert answer(proxy, url(now + 1)) == (200, "image/jpeg")
    # The same URL, one second later, has expired.
    sig = mac(KEY, f"MP1\n/media/uploads/boundary.jpg\nw=50\n{now + 1}")
    boundary = f"/media/uploads/boundary.jpg?w=50&expires={now + 1}&sig={sig}"
    clock_of(proxy).advance(1)
    try:
        refused(proxy, boundary, "boundary", EXPIRED)
    finally:
        clock_of(proxy).advance(-1)


def test_pushing_the_expiry_out_breaks_the_signature(proxy):
    sig = mac(KEY, f"MP1\n/media/uploads/expired.jpg\nw=50\n{NOW - 10}")
    assert answer(proxy, f"/media/uploads/expired.jpg?w=50&expires={NOW + 10}&sig={sig}") == \
        MISMATCH


@pytest.mark.parametrize("stem, expires", [
    ("soon", "soon"), ("neg", "-5"), ("space", " 1800000000"), ("exp13", "1" + "0" * 12),
    ("arabic", "\u0661\u0668\u0660\u0660\u0660\u0660\u0660\u0660\u0660\u0660"),
])
def test_an_expiry_that_is_not_a_unix_time_is_refused_even_when_signed(proxy, stem, expires):
    """Signed over exactly what was sent, so only the expiry's form is wrong."""
    sig = mac(KEY, f"MP1\n/media/uploads/{stem}.jpg\nw=50\n{expires}")
    refused(proxy, f"/media/uploads/{stem}.jpg?w=50&expires={quote(expires)}&sig={sig}", stem,
            NOT_A_TIME)


def test_a_twelve_digit_expiry_is_a_unix_time(proxy):
    expires = "1" + "0" * 11
    sig = mac(KEY, f"MP1\n/media/uploads/exp12.jpg\nw=50\n{expires}")
    assert answer(proxy, f"/media/uploads/exp12.jpg?w=50&expires={expires}&sig={sig}") == \
        (200, "image/jpeg")


def test_only_the_configured_keys_verify(proxy):
    message = "MP1\n/media/uploads/wrongkey.jpg\nw=50\n"
    refused(proxy, f"/media/uploads/wrongkey.jpg?w=50&sig={mac(OTHER_KEY, message)}",
            "wrongkey", MISMATCH)
    # rotation: the second key verifies as well as the first
    old = mac(OLD_KEY, "MP1\n/media/uploads/oldkey.jpg\nw=50\n")
    assert answer(proxy, f"/media/uploads/oldkey.jpg?w=50&sig={old}") == (200, "image/jpeg")


def test_the_compat_route_is_signed_too(proxy):
    path = COMPAT.format(name="compat.jpg")
    refused(proxy, path, "compat", REQUIRED)
    decoded = "/media_stream-image/media/uploads/compat.jpg/60/40/cover/centre/ffffff/0/80.webp"
    sig = mac(KEY, f"MP1\n{decoded}\n\n")
    assert answer(proxy, f"{path}?sig={sig}") == (200, "image/webp")


def test_a_bad_compat_value_is_a_signature_refusal_first(proxy):
    # the width "6o" on an unsigned or tampered URL says nothing about the limits: 403 first
    bad = "/media_stream-image/media/uploads/compat-bad.jpg/6o/40/cover/centre/ffffff/0/80.webp"
    good = "/media_stream-image/media/uploads/compat-bad.jpg/60/40/cover/centre/ffffff/0/80.webp"
    refused(proxy, bad, "compat-bad", REQUIRED)
    tampered = mac(KEY, f"MP1\n{good}\n\n")
    refused(proxy, f"{bad}?sig={tampered}", "compat-bad", MISMATCH)
    signed = mac(KEY, f"MP1\n{bad}\n\n")
    refused(proxy, f"{bad}?sig={signed}", "compat-bad",
            (400, "invalid_parameter", "width", "width must be a whole number from 0 to 8192"))


def test_a_path_the_signer_cannot_decode_is_refused_on_any_route(proxy):
    """A plugin's route that does not decode its path: the signature check refuses it."""
    for raw in ("/raw/%zz.jpg", "/raw/%ff.jpg", "/raw/a%2"):
        refused(proxy, f"{raw}?w=50&sig={'A' * 43}", "raw", BAD_PATH)
    sig = mac(KEY, "MP1\n/raw/ok.jpg\nw=50\n")
    assert answer(proxy, f"/raw/ok.jpg?w=50&sig={sig}") == (200, "image/jpeg")


def test_exempt_routes(live_reactor):
    running, _ = start(exempt_routes=["compat"])
    try:
        assert answer(running, COMPAT.format(name="compat.jpg")) == (200, "image/webp")
        # an exempt route answers its own refusals, unsigned
        bad = "/media_stream-image/media/uploads/compat-bad.jpg/6o/40/cover/centre/ffffff/0/80.png"
        refused(running, bad, "compat-bad",
                (400, "invalid_parameter", "width", "width must be a whole number from 0 to 8192"))
        refused(running, "/media/uploads/exempt-q.jpg?w=50", "exempt-q", REQUIRED)
    finally:
        running.stop()


def test_a_reload_changes_the_keys_and_the_exempt_routes(live_reactor, tmp_path):
    running, _ = start()
    path = tmp_path / "mediaproxy.toml"
    backend = f"http://127.0.0.1:{running.origin.port}"
    path.write_text(f'[backend]\nurl = "{backend}"\n[signing]\nkeys = ["{OTHER_KEY}"]\n'
                    'exempt_routes = ["compat"]\n')
    try:
        call_in_reactor(reload_config, running.runtime, str(path))
        new = mac(OTHER_KEY, "MP1\n/media/uploads/newkey.jpg\nw=50\n")
        assert answer(running, f"/media/uploads/newkey.jpg?w=50&sig={new}") == \
            (200, "image/jpeg")
        old = mac(KEY, "MP1\n/media/uploads/oldkey.jpg\nw=50\n")
        refused(running, f"/media/uploads/oldkey.jpg?w=50&sig={old}", "oldkey", MISMATCH)
        assert answer(running, COMPAT.format(name="compat.jpg")) == (200, "image/webp")
    finally:
        running.stop()


def test_the_cli_signs_exactly_what_it_was_given():
    """Blank parameters are kept as sent (the URL is not rewritten), unknown ones unsigned."""
    config = load_config(environ={}, overrides={"signing": {"keys": [KEY, OLD_KEY]}})
    signed = cli.sign("/media/uploads/blank.jpg?w=50&enlarge=&v=", config)
    sig = mac(KEY, "MP1\n/media/uploads/blank.jpg\nenlarge=&w=50\n")
    assert signed == f"/media/uploads/blank.jpg?w=50&enlarge=&v=&sig={sig}"
    expiring = cli.sign("/media/uploads/blank.jpg?w=50", config, 60, now=NOW)
    sig = mac(KEY, f"MP1\n/media/uploads/blank.jpg\nw=50\n{NOW + 60}")
    assert expiring == f"/media/uploads/blank.jpg?w=50&expires={NOW + 60}&sig={sig}"
