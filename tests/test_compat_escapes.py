"""The compat routes refuse a malformed percent escape with a 400 naming ``path`` (never a
placeholder, never a fetch), as the original service does, and accept the same fit and
position spellings as the query scheme (one parser)."""

from __future__ import annotations

import json

import pytest

from mediaproxy.builtin import compat
from mediaproxy.models import ImageRequest, RequestInfo
from mediaproxy.parsing import POSITIONS
from mediaproxy.testing import ImageOrigin, make_image, make_runtime, start_proxy

P = "/media_stream-image"
TAIL = "300/200/cover/centre/transparent/0/80.webp"
PHOTO = make_image((400, 300))

INVALID = [
    ("%ZZ in the file name", f"{P}/media/uploads/test%ZZpath.png/{TAIL}"),
    ("one hex digit", f"{P}/media/uploads/test%4/{TAIL}"),
    ("% at the end of a segment", f"{P}/media/uploads/a.png%/{TAIL}"),
    ("% at the very end", f"{P}/media/uploads/a.png/300/200/cover/centre/transparent/0/80.webp%"),
    ("in the tenant segment", f"{P}/media/sh%ZZop/uploads/a.png/{TAIL}"),
    ("after a valid escape", f"{P}/media/uploads/my%20photo%ZZ.png/{TAIL}"),
    ("double-encoded %ZZ", f"{P}/media/uploads/a%25ZZ.png/{TAIL}"),
    ("double-encoded one hex digit", f"{P}/media/uploads/a%254.png/{TAIL}"),
    ("double-encoded, not UTF-8", f"{P}/media/uploads/a%25C3%2528.png/{TAIL}"),
    ("not UTF-8", f"{P}/media/uploads/a%C3%28.png/{TAIL}"),
]


@pytest.fixture(scope="module")
def proxy(live_reactor):
    # the origin sees raw paths: the proxy re-encodes the decoded name
    origin = ImageOrigin({"/media/uploads/a.png": PHOTO, "/media/uploads/my%20photo.png": PHOTO})
    running = start_proxy(origin=origin, overrides={"cache": {"negative_ttl": 0}})
    yield running
    running.stop()


@pytest.mark.parametrize("name, path", INVALID, ids=[name for name, _ in INVALID])
def test_a_malformed_escape_is_a_400_naming_the_path(proxy, name, path):
    before = sum(proxy.origin.hits.values())
    status, headers, body, _ = proxy.get(path)
    assert (status, headers["content-type"]) == (400, "application/json"), body
    data = json.loads(body)
    assert (data["error"], data["parameter"], data["status"]) == ("invalid_path", "path", 400)
    assert "x-placeholder" not in headers
    assert sum(proxy.origin.hits.values()) == before       # nothing was fetched


def test_a_valid_double_encoding_still_decodes(proxy):
    # TinyMCE's double-encoded space: %2520 -> %20 -> " "
    status, headers, _, _ = proxy.get(f"{P}/media/uploads/my%2520photo.png/{TAIL}")
    assert (status, headers["content-type"]) == (200, "image/webp")
    assert "x-placeholder" not in headers


# -- positions and fits: the query scheme's spellings, the query scheme's canonical values -----

RUNTIME = make_runtime()


def compat_params(fit: str, position: str) -> dict:
    path = f"{P}/media/uploads/a.png/300/200/{fit}/{position}/transparent/0/80.webp"
    result = compat.mediaproxy_match_request(RequestInfo(method="GET", path=path), RUNTIME)
    assert isinstance(result, ImageRequest), (position, result)
    return dict(result.params)


@pytest.mark.parametrize("spelling", sorted(POSITIONS))
def test_every_query_position_spelling_is_a_compat_position(spelling):
    query = RUNTIME.params["pos"].parse(spelling)
    assert compat_params("cover", spelling)["pos"] == query == POSITIONS[spelling]
    assert compat_params("cover", spelling.upper())["pos"] == query


@pytest.mark.parametrize("spelling, canonical", [("cover", "cover"), ("CONTAIN", "contain"),
                                                 ("Inside", "inside")])
def test_compat_fit_spellings_are_the_query_schemes(spelling, canonical):
    assert compat_params(spelling, "centre")["fit"] == canonical == \
        RUNTIME.params["fit"].parse(spelling)


def test_pos_middle_on_a_compat_route_is_the_query_schemes_centre(proxy):
    status, first, _, _ = proxy.get("/media/uploads/a.png?w=300&h=200&fit=cover&pos=middle"
                                    "&bg=transparent&fmt=webp&enlarge=1&q=80")
    assert status == 200 and first["x-cache"] == "MISS"
    status, headers, _, _ = proxy.get(
        f"{P}/media/uploads/a.png/300/200/cover/middle/transparent/0/80.webp")
    assert (status, headers["x-cache"], headers["etag"]) == (200, "HIT-MEMORY", first["etag"])
    status, headers, body, _ = proxy.get(
        f"{P}/media/uploads/a.png/300/200/cover/sideways/transparent/0/80.webp")
    assert status == 400 and json.loads(body)["parameter"] == "position"
