"""
Storage names as a Django backend spells them in URLs: non-ASCII, spaces, ``+``, ``(``, ``)``,
``,``, ``'``, ``~`` and a literal ``%``. Every route fetches the very path the client sent when
the client sent Django's spelling (the origin here serves exact raw paths, so a re-encoding bug
is a 404), the pass-through forwards it untouched, and other spellings of the same name are the
same image (one cache entry, one backend request, Django's spelling fetched).
"""

from __future__ import annotations

import json

import pytest

from mediaproxy.builtin.validation import path_refusal
from mediaproxy.testing import ImageOrigin, assert_image, make_image, start_proxy

PHOTO = make_image((80, 60))

#: storage name -> its URL spelling, written out by hand from Django's rule (UTF-8 percent
#: encoding, ``~!*()'`` kept); checked against Django's own function below.
NAMES = {
    "café.jpg": "caf%C3%A9.jpg",
    "my photo.jpg": "my%20photo.jpg",
    "a+b.jpg": "a%2Bb.jpg",
    "p(1).jpg": "p(1).jpg",
    "a,b.jpg": "a%2Cb.jpg",
    "it's.jpg": "it's.jpg",
    "a~b.jpg": "a~b.jpg",
    "100%.jpg": "100%25.jpg",
    "50%25off.jpg": "50%2525off.jpg",
    "x%41.jpg": "x%2541.jpg",
}
#: names the compat routes cannot carry: they decode until stable, as the original service did
#: (``%2541`` is ``%41``, then ``A``; ``%25`` alone is ``%``, then a malformed escape)
WITH_PERCENT = {"100%.jpg", "50%25off.jpg", "x%41.jpg"}
DIRS = ("query", "plain", "thumbor", "compat")


@pytest.fixture(scope="module")
def proxy(live_reactor):
    files = {f"/media/uploads/{d}/{url}": PHOTO for d in DIRS for url in NAMES.values()}
    running = start_proxy(origin=ImageOrigin(files), overrides={
        "thumbor": {"allow_unsafe": True}, "cache": {"negative_ttl": 0}})
    yield running
    running.stop()


@pytest.fixture
def hits(proxy):
    proxy.origin.hits.clear()
    return proxy.origin.hits


def test_the_spellings_are_djangos():
    from django.utils.encoding import filepath_to_uri
    assert {name: filepath_to_uri(name) for name in NAMES} == NAMES


@pytest.mark.parametrize("name", sorted(NAMES))
def test_the_query_scheme_fetches_the_path_the_client_sent(proxy, hits, name):
    path = f"/media/uploads/query/{NAMES[name]}"
    status, headers, body, _ = proxy.get(path + "?w=40")
    assert status == 200, body
    assert_image(body, (40, 30), "JPEG")
    assert dict(hits) == {path: 1}


@pytest.mark.parametrize("name", sorted(NAMES))
def test_the_pass_through_forwards_the_path_untouched(proxy, hits, name):
    path = f"/media/uploads/plain/{NAMES[name]}"
    status, _, body, _ = proxy.get(path)
    assert (status, body) == (200, PHOTO)
    assert dict(hits) == {path: 1}


@pytest.mark.parametrize("name", sorted(NAMES))
def test_the_thumbor_endpoint_fetches_the_path_the_client_sent(proxy, hits, name):
    path = f"/media/uploads/thumbor/{NAMES[name]}"
    status, _, body, _ = proxy.get(f"/thumbor/unsafe/fit-in/40x40{path}")
    assert status == 200, body
    assert_image(body, (40, 30), "JPEG")
    assert dict(hits) == {path: 1}


@pytest.mark.parametrize("name", sorted(set(NAMES) - WITH_PERCENT))
def test_the_compat_routes_fetch_the_path_the_client_sent(proxy, hits, name):
    path = f"/media/uploads/compat/{NAMES[name]}"
    status, headers, body, _ = proxy.get(
        f"/media_stream-image{path}/40/30/cover/centre/ffffff/0/80.png")
    assert (status, "x-placeholder" in headers) == (200, False), body
    assert_image(body, (40, 30), "PNG")
    assert dict(hits) == {path: 1}


def test_a_literal_percent_on_the_compat_routes_is_a_400_as_in_the_original(proxy, hits):
    status, _, body, _ = proxy.get(
        "/media_stream-image/media/uploads/compat/100%25.jpg/40/30/cover/centre/ffffff/0/80.png")
    data = json.loads(body)
    assert (status, data["error"], data["parameter"]) == (400, "invalid_path", "path")
    assert dict(hits) == {}


@pytest.mark.parametrize("other, django", [
    ("a+b.jpg", "a%2Bb.jpg"), ("a%2cb.jpg", "a%2Cb.jpg"), ("p%281%29.jpg", "p(1).jpg"),
    ("it%27s.jpg", "it's.jpg"), ("caf%c3%a9.jpg", "caf%C3%A9.jpg"), ("a%7Eb.jpg", "a~b.jpg"),
])
def test_another_spelling_is_the_same_image_fetched_in_djangos_spelling(live_reactor, other,
                                                                        django):
    # the backend (Django, nginx) decodes the path before it looks the file up: the two
    # spellings name one file, so they share one cache entry and one backend request
    path = f"/media/uploads/{django}"
    with start_proxy(files={path: PHOTO}) as running:
        first = running.get(f"/media/uploads/{other}?w=40")
        second = running.get(f"{path}?w=40")
        assert (first.status, first.headers["x-cache"]) == (200, "MISS")
        assert (second.status, second.headers["x-cache"], second.body) == (
            200, "HIT-MEMORY", first.body)
        assert dict(running.origin.hits) == {path: 1}


@pytest.mark.parametrize("raw", [
    "%2e%2e/secret.jpg", "a%2fb.jpg", "%252e%252e/secret.jpg", "a%252Fb.jpg",
    "%25252e%25252e/secret.jpg", "5%2510.jpg", "a%25257f.jpg", "a%255cb.jpg", "a%zz.jpg",
    "a%2.jpg",
])
def test_encoded_dots_separators_controls_and_malformed_escapes_stay_refused(proxy, hits, raw):
    status, _, body, _ = proxy.get(f"/media/uploads/query/{raw}?w=40")
    data = json.loads(body)
    assert (status, data["error"], data["parameter"]) == (400, "invalid_path", "path")
    assert dict(hits) == {}


@pytest.mark.parametrize("path, refused", [
    ("/m/100%.jpg", False), ("/m/100%25.jpg", False), ("/m/%2525.jpg", False),
    ("/m/%252.jpg", False), ("/m/%25", False), ("/m/%", False), ("/m/%41%20.jpg", False),
    ("/m/%2e", True), ("/m/%2E", True), ("/m/%252e", True), ("/m/%25252E", True),
    ("/m/%2f", True), ("/m/%252f", True), ("/m/%5c", True), ("/m/%255C", True),
    ("/m/%00", True), ("/m/%251f", True), ("/m/%2520", False), ("/m/%7f", True),
    ("/m/%257F", True), ("/m/%20", False), ("/m/%2d", False), ("/m/%80", False),
])
def test_a_literal_percent_is_refused_only_when_it_spells_an_unsafe_character(path, refused):
    assert (path_refusal(path, 1024) is not None) is refused
