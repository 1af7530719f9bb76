"""
``fmt=auto`` over HTTP: the output format is negotiated from ``Accept``.

AVIF, then WebP, only when ``Accept`` names them explicitly with a q-value above 0 (a missing
q is 1; a q that is not a number counts as 0); wildcards never select them, and the source's
own format is kept. Every ``fmt=auto`` answer carries ``Vary: Accept``; an explicit format or
none does not (the answer does not depend on ``Accept``).
"""

from __future__ import annotations

import pytest

from mediaproxy.testing.images import decode, make_jpeg
from mediaproxy.testing import ImageOrigin, start_proxy

PIL_NAMES = {"avif": "AVIF", "webp": "WEBP", "jpeg": "JPEG", "png": "PNG"}


@pytest.fixture(scope="module")
def proxy(live_reactor):
    running = start_proxy(origin=ImageOrigin({
        "/media/a.jpg": (200, make_jpeg(40, 20), "image/jpeg", [])}))
    yield running
    running.stop()


def answer(proxy, query, accept):
    headers = {} if accept is None else {"Accept": accept}
    status, response, body, msg = proxy.get(f"/media/a.jpg?{query}", headers=headers)
    assert status == 200, body
    image = decode(body)
    assert image.size == (20, 10)
    fmt = response["content-type"].removeprefix("image/")
    assert PIL_NAMES[fmt] == image.format          # the body is what the header says
    return fmt, msg.get_all("vary") or []


@pytest.mark.parametrize("accept, expected", [
    # explicit, q missing (= 1)
    ("image/avif,image/webp,*/*", "avif"),
    ("image/webp,image/avif", "avif"),                  # AVIF preferred whatever the order
    ("image/webp", "webp"),
    ("image/avif", "avif"),
    ("text/html,application/xhtml+xml,image/webp", "webp"),
    ("image/avif;level=1", "avif"),                     # a parameter that is not q
    # q-values
    ("image/webp;q=1", "webp"),
    ("image/webp;q=1.0", "webp"),
    ("image/webp;q=0.5", "webp"),
    ("image/webp;q=0.001", "webp"),
    ("image/avif;q=0.1,image/webp;q=0.9", "avif"),      # any q > 0 will do; AVIF first
    ("image/avif;q=0,image/webp", "webp"),              # q=0: "not acceptable"
    ("image/avif;q=0.0,image/webp;q=0.8", "webp"),
    ("image/avif;q=0,image/webp;q=0", "jpeg"),
    ("image/webp;q=0", "jpeg"),
    ("image/webp; charset=x; q=0", "jpeg"),
    (" image/webp ; q=0.8 ", "webp"),                   # spaces around the fields
    # a q that is not a number is 0, not 1 and not an error
    ("image/avif;q=abc,image/webp", "webp"),
    ("image/webp;q=", "jpeg"),
    ("image/webp;q=high", "jpeg"),
    ("image/avif;q=1e", "jpeg"),
    # case-insensitive media types and q
    ("IMAGE/WEBP", "webp"),
    ("Image/Avif", "avif"),
    ("image/webp;Q=0", "jpeg"),
    ("image/webp;Q=0.7", "webp"),
    # wildcards and nothing: the source's own format
    ("*/*", "jpeg"),
    ("image/*", "jpeg"),
    ("image/*,*/*;q=0.8", "jpeg"),
    ("", "jpeg"),
    (None, "jpeg"),
    ("image/png", "jpeg"),                              # only AVIF and WebP are negotiated
    ("image/webpx,image/avif2", "jpeg"),
    ("image/jpeg, ,image/webp", "webp"),               # an empty range is skipped, not the end
])
def test_auto_picks_from_accept(proxy, accept, expected):
    fmt, vary = answer(proxy, "w=20&fmt=auto", accept)
    assert fmt == expected
    assert vary == ["Accept"]


@pytest.mark.parametrize("query, expected", [
    ("w=20&fmt=png", "png"), ("w=20&format=webp", "webp"), ("w=20", "jpeg"),
    ("w=20&fmt=jpg", "jpeg"),
])
@pytest.mark.parametrize("accept", ["image/avif,image/webp,*/*", None])
def test_an_explicit_format_or_none_ignores_accept_and_does_not_vary(proxy, query, expected,
                                                                     accept):
    assert answer(proxy, query, accept) == (expected, [])


def test_auto_spelled_format_and_in_any_case(proxy):
    assert answer(proxy, "w=20&format=AUTO", "image/webp") == ("webp", ["Accept"])


def test_each_negotiated_format_is_its_own_cache_entry(live_reactor):
    origin = ImageOrigin({"/media/a.jpg": (200, make_jpeg(40, 20), "image/jpeg", [])})
    running = start_proxy(origin=origin)
    try:
        path = "/media/a.jpg?w=20&fmt=auto"
        seen = []
        for accept in ("image/avif", "image/webp", "*/*", "image/avif", "image/webp", "*/*",
                       "image/webp;q=0.5,image/avif;q=0.2"):
            _, headers, body, _ = running.get(path, headers={"Accept": accept})
            seen.append((headers["x-cache"], headers["content-type"]))
        # AVIF for a client that also names WebP would be an animated WebP for an animated
        # source, a GIF for the avif-only client; this source is a still: one AVIF entry
        assert seen == [("MISS", "image/avif"), ("MISS", "image/webp"), ("MISS", "image/jpeg"),
                        ("HIT-MEMORY", "image/avif"), ("HIT-MEMORY", "image/webp"),
                        ("HIT-MEMORY", "image/jpeg"), ("HIT-MEMORY", "image/avif")]
        # an explicit fmt=webp is the same output as a negotiated WebP: one entry
        _, headers, _, _ = running.get("/media/a.jpg?w=20&fmt=webp")
        assert (headers["x-cache"], headers.get("vary")) == ("HIT-MEMORY", None)
        counters = running.runtime.pm.get_plugin("mediaproxy.builtin.metrics.counters")
        assert counters.count("transform") == 3
        assert origin.hits["/media/a.jpg"] == 1
    finally:
        running.stop()
