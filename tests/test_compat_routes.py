"""The grooveshop-media-stream routes: the original service's own test vectors, verbatim, as
one table, plus the shapes and the shared cache key."""

import json

import pytest
from hypothesis import given, strategies as st

from mediaproxy.builtin import compat, routing
from mediaproxy.cache.keys import cache_key
from mediaproxy.models import ImageRequest, Rejection, RequestInfo
from mediaproxy.testing import ImageOrigin, make_image, make_runtime, start_proxy

RUNTIME = make_runtime()
P = "/media_stream-image"
TAIL = "300/200/cover/centre/transparent/0/80.webp"


def match(path):
    return compat.mediaproxy_match_request(RequestInfo(method="GET", path=path), RUNTIME)


# (name, path, expected): expected is a source path (match), or an int status (rejection),
# optionally with the parameter named.
VECTORS = [
    # decoding
    ("space", f"{P}/media/uploads/my%20photo.jpg/{TAIL}", "/media/uploads/my photo.jpg"),
    ("double-encoded slash", f"{P}/media/uploads/a%252Fb.jpg/{TAIL}", "/media/uploads/a/b.jpg"),
    ("double-encoded greek", f"{P}/media/uploads/%2525CF%252584_cover.png/{TAIL}",
     "/media/uploads/τ_cover.png"),
    ("malformed", f"{P}/media/uploads/%ZZ.jpg/{TAIL}", (400, "path")),
    ("encoded traversal", f"{P}/media/uploads/%2e%2e%2f%2e%2e%2fetc%2fpasswd/{TAIL}", 404),
    ("double-encoded traversal", f"{P}/media/uploads/%252e%252e/secret.jpg/{TAIL}", 404),
    # validator rejects
    ("width abc", f"{P}/media/uploads/a.jpg/abc/200/cover/centre/transparent/0/80.webp",
     (400, "width")),
    ("height -5", f"{P}/media/uploads/a.jpg/300/-5/cover/centre/transparent/0/80.webp",
     (400, "height")),
    ("width 9999999", f"{P}/media/uploads/a.jpg/9999999/200/cover/centre/transparent/0/80.webp",
     (400, "width")),
    ("quality 0", f"{P}/media/uploads/a.jpg/300/200/cover/centre/transparent/0/0.webp",
     (400, "quality")),
    ("quality 101", f"{P}/media/uploads/a.jpg/300/200/cover/centre/transparent/0/101.webp",
     (400, "quality")),
    ("trim 101", f"{P}/media/uploads/a.jpg/300/200/cover/centre/transparent/101/80.webp",
     (400, "trim")),
    ("fit banana", f"{P}/media/uploads/a.jpg/300/200/banana/centre/transparent/0/80.webp",
     (400, "fit")),
    ("position javascript", f"{P}/media/uploads/a.jpg/300/200/cover/url(javascript:1)/"
     "transparent/0/80.webp", (400, "position")),
    ("format exe", f"{P}/media/uploads/a.jpg/300/200/cover/centre/transparent/0/80.exe",
     (400, "format")),
    # validator accepts
    ("0/0", f"{P}/media/uploads/a.jpg/0/0/cover/centre/transparent/0/80.webp",
     "/media/uploads/a.jpg"),
    ("cover", f"{P}/media/uploads/a.jpg/{TAIL}", "/media/uploads/a.jpg"),
    ("attention", f"{P}/media/uploads/a.jpg/300/200/cover/attention/transparent/0/80.webp",
     "/media/uploads/a.jpg"),
    ("avif", f"{P}/media/uploads/a.jpg/300/200/cover/centre/transparent/0/80.avif",
     "/media/uploads/a.jpg"),
    # shapes
    ("tenant", f"{P}/media/shop_2/uploads/products/a.jpg/{TAIL}",
     "/media/shop_2/uploads/products/a.jpg"),
    ("bad tenant", f"{P}/media/Shop-2/uploads/a.jpg/{TAIL}", 404),
    ("static", f"{P}/static/images/logo.png/{TAIL}", "/static/images/logo.png"),
    ("static two segments", f"{P}/static/images/a/logo.png/{TAIL}", 404),
    ("missing segment", f"{P}/media/uploads/a.jpg/300/200/cover/centre/0/80.webp", 404),
    ("quality and format apart", f"{P}/media/uploads/a.jpg/300/200/cover/centre/"
     "transparent/0/80/webp", 404),
    ("bogus", f"{P}/nothing/here", 404),
]


@pytest.mark.parametrize("name, path, expected", VECTORS, ids=[v[0] for v in VECTORS])
def test_original_vectors(name, path, expected):
    result = match(path)
    if isinstance(expected, str):
        assert isinstance(result, ImageRequest), result
        assert result.source_path == expected
    elif isinstance(expected, int):
        assert isinstance(result, Rejection) and result.status == expected
    else:
        status, parameter = expected
        assert isinstance(result, Rejection)
        assert (result.status, result.parameter) == (status, parameter)


@pytest.mark.parametrize("raw, rgba", [
    ("#f00", (255, 0, 0, 255)), ("#ff0000", (255, 0, 0, 255)), ("#ff000080", (255, 0, 0, 128)),
    ("FFFFFF", (255, 255, 255, 255)), ("transparent", (0, 0, 0, 0)),
    ("red", (255, 255, 255, 255)), ("inherit", (255, 255, 255, 255)),
    ("url(x)", (255, 255, 255, 255)),
])
def test_colours(raw, rgba):
    assert compat.compat_background(raw) == rgba
    result = match(f"{P}/media/uploads/a.jpg/300/200/cover/centre/"
                   f"{raw.replace('#', '%23')}/0/80.webp")
    assert result.params["bg"] == rgba


def test_canonical_params_tenant_and_enlarge():
    result = match(f"{P}/media/shop/uploads/a.jpg/300/0/inside/top/ffffff/5/75.jpg")
    assert result.tenant == "shop" and result.route == "compat"
    assert result.failure_status == 200
    assert dict(result.params) == {"w": 300, "h": 0, "fit": "inside", "pos": "north",
                                   "bg": (255, 255, 255, 255), "q": 75, "fmt": "jpeg",
                                   "enlarge": True, "trim": 5, **EFFECTS_OFF}


#: mediaproxy.builtin.effects's parameters, at their defaults on this route
EFFECTS_OFF = {"crop": None, "flip": "", "orig": "", "adaptive": False, "clamp": False,
               "max_bytes": 0, "grey": False, "brightness": 0, "contrast": 0, "blur": 0,
               "rotate": 0}


def test_svg_from_a_raster_source_gives_png():
    assert match(f"{P}/media/uploads/a.jpg/10/10/cover/centre/fff/0/80.svg").params["fmt"] == "png"


def test_a_compat_url_and_the_equivalent_query_url_share_a_cache_entry():
    a = match(f"{P}/media/uploads/a.jpg/300/200/cover/center/transparent/0/80.webp")
    b = routing.mediaproxy_match_request(RequestInfo(
        method="GET", path="/media/uploads/a.jpg",
        query=[("w", "300"), ("h", "200"), ("fit", "cover"), ("bg", "transparent"),
               ("fmt", "webp"), ("enlarge", "1")]), RUNTIME)
    assert cache_key(a, RUNTIME.params, "webp") == cache_key(b, RUNTIME.params, "webp")
    c = routing.mediaproxy_match_request(RequestInfo(
        method="GET", path="/media/uploads/a.jpg",
        query=[("w", "300"), ("h", "200"), ("fit", "cover"), ("bg", "transparent"),
               ("fmt", "webp")]), RUNTIME)   # enlarge off: a different result
    assert cache_key(c, RUNTIME.params, "webp") != cache_key(a, RUNTIME.params, "webp")


@given(st.text(max_size=80))
def test_never_raises(tail):
    result = match(f"{P}/{tail}")
    assert result is None or isinstance(result, (ImageRequest, Rejection))


# -- the original's end-to-end flow, over real sockets -----------------------------------------

COMPAT_URL = f"{P}/media/shop/uploads/products/%CF%84%20shoe.jpg/300/200/cover/centre/transparent/0/80.webp"


@pytest.fixture
def compat_proxy(live_reactor):
    # The origin sees the raw request path: the proxy must re-encode the decoded UTF-8 name.
    origin = ImageOrigin({"/media/shop/uploads/products/%CF%84%20shoe.jpg": (
        200, make_image((800, 600)), "image/jpeg", [])})
    running = start_proxy(origin=origin)
    yield running
    running.stop()


def test_end_to_end_flow(compat_proxy):
    import io
    from PIL import Image

    status, headers, body, _ = compat_proxy.get(COMPAT_URL)
    assert status == 200 and headers["content-type"] == "image/webp"
    assert Image.open(io.BytesIO(body)).size == (300, 200)
    assert headers["etag"] and "immutable" in headers["cache-control"]
    assert "max-age=31536000" in headers["cache-control"] and headers["x-correlation-id"]
    # the backend received the re-encoded UTF-8 path
    assert list(compat_proxy.origin.hits.values()) == [1]

    status, h2, body2, _ = compat_proxy.get(COMPAT_URL)
    assert status == 200 and body2 == body and h2["x-cache"] == "HIT-MEMORY"
    assert list(compat_proxy.origin.hits.values()) == [1]

    status, _, _, _ = compat_proxy.get(COMPAT_URL, headers={"If-None-Match": headers["etag"]})
    assert status == 304

    status, h, b, _ = compat_proxy.get(
        f"{P}/media/shop/uploads/a.jpg/999999/200/cover/centre/transparent/0/80.webp")
    assert status == 400 and json.loads(b)["parameter"] == "width"

    status, _, b, _ = compat_proxy.get(f"{P}/bogus/route")
    assert status == 404 and json.loads(b)["error"] == "not_found"

    status, h, b, _ = compat_proxy.get(
        f"{P}/media/shop/uploads/missing.jpg/120/80/cover/centre/transparent/0/80.png")
    assert status == 200 and h["cache-control"] == "no-store"
    placeholder = Image.open(io.BytesIO(b))
    assert (placeholder.format, placeholder.size) == ("PNG", (120, 80))


def test_compat_and_query_share_one_cache_entry(compat_proxy):
    status, _, body, _ = compat_proxy.get(COMPAT_URL)
    query = ("/media/shop/uploads/products/%CF%84%20shoe.jpg?w=300&h=200&fit=cover"
             "&bg=transparent&fmt=webp&enlarge=1&q=80")
    status, headers, again, _ = compat_proxy.get(query)
    assert status == 200 and headers["x-cache"] == "HIT-MEMORY" and again == body
    assert list(compat_proxy.origin.hits.values()) == [1]


def test_honest_status_when_configured(live_reactor):
    running = start_proxy(origin=ImageOrigin({}),
                          overrides={"routes": {"compat_placeholder_status": 0}})
    try:
        status, headers, _, _ = running.get(
            f"{P}/media/uploads/missing.jpg/50/50/cover/centre/fff/0/80.jpg")
        assert status == 404 and headers["content-type"] == "image/jpeg"
    finally:
        running.stop()
