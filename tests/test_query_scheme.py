"""The query scheme parser and the cache key: unit tests and properties."""

from urllib.parse import quote

import pytest
from hypothesis import given, strategies as st

from mediaproxy.builtin import routing
from mediaproxy.builtin.params import parse_colour
from mediaproxy.imaging.negotiation import negotiate_format
from mediaproxy.cache.keys import cache_key, key_parts
from mediaproxy.models import ImageRequest, Rejection, RequestInfo
from mediaproxy.testing import make_runtime

RUNTIME = make_runtime()


def match(path, query=(), method="GET"):
    return routing.mediaproxy_match_request(
        RequestInfo(method=method, path=path, query=query), RUNTIME)


def key_of(result, fmt=None):
    return cache_key(result, RUNTIME.params, fmt)


def test_transform_parameters_make_an_image_request_with_canonical_values():
    result = match("/media/uploads/a.jpg", [("w", "300"), ("h", "200"), ("fit", "cover"),
                                             ("pos", "center"), ("bg", "FFF"), ("q", "75"),
                                             ("fmt", "jpg"), ("enlarge", "1")])
    assert isinstance(result, ImageRequest)
    assert result.source_path == "/media/uploads/a.jpg"
    assert dict(result.params) == {"w": 300, "h": 200, "fit": "cover", "pos": "centre",
                                   "bg": (255, 255, 255, 255), "q": 75, "fmt": "jpeg",
                                   "enlarge": True, "trim": 0, **EFFECTS_OFF}


#: mediaproxy.builtin.effects's parameters at their defaults (tests/test_effects.py)
EFFECTS_OFF = {"crop": None, "flip": "", "orig": "", "adaptive": False, "clamp": False,
               "max_bytes": 0, "grey": False, "brightness": 0, "contrast": 0, "blur": 0,
               "rotate": 0}


def test_defaults_when_absent():
    result = match("/media/a.png", [("w", "10")])
    assert result.params["fit"] == "inside"
    assert result.params["q"] == 80
    assert result.params["fmt"] is None
    assert result.params["enlarge"] is False


@pytest.mark.parametrize("path, query", [
    ("/media/uploads/a.jpg", []),                      # no transform parameters
    ("/media/uploads/a.jpg", [("v", "123")]),           # a cache buster alone
    ("/api/products/", [("w", "300")]),                 # not a media prefix
    ("/media/uploads/report.pdf", [("w", "300")]),      # not an image extension
])
def test_passes_through(path, query):
    assert match(path, query) is None


def test_only_get_and_head_are_image_requests():
    assert match("/media/a.jpg", [("w", "1")], method="POST") is None
    assert isinstance(match("/media/a.jpg", [("w", "1")], method="HEAD"), ImageRequest)


@pytest.mark.parametrize("query, parameter", [
    ([("w", "abc")], "w"), ([("h", "-5")], "h"), ([("w", "9999999")], "w"),
    ([("q", "0")], "q"), ([("q", "101")], "q"), ([("fit", "banana")], "fit"),
    ([("pos", "url(javascript:1)")], "pos"), ([("fmt", "exe")], "fmt"),
    ([("bg", "red")], "bg"), ([("enlarge", "maybe")], "enlarge"), ([("trim", "101")], "trim"),
])
def test_bad_parameters_are_rejections_naming_the_parameter(query, parameter):
    result = match("/media/a.jpg", query)
    assert isinstance(result, Rejection)
    assert result.status == 400 and result.parameter == parameter


@pytest.mark.parametrize("path", ["/media/../etc/passwd.jpg", "/media/%2e%2e/x.jpg",
                                  "/media/a%00.jpg", "/media/a%5c..%5cb.jpg", "/media/%ZZ.jpg",
                                  "/media/%ff.jpg"])
def test_unsafe_paths_are_refused(path):
    result = match(path, [("w", "10")])
    assert isinstance(result, Rejection) and result.status == 400
    assert result.parameter == "path"


def test_unknown_parameters_are_ignored_and_left_out_of_the_key():
    a = match("/media/a.jpg", [("w", "300"), ("v", "123")])
    b = match("/media/a.jpg", [("w", "300"), ("utm_source", "x")])
    assert key_of(a) == key_of(b)


def test_equivalent_urls_share_a_key():
    a = match("/media/a.jpg", [("w", "300")])
    b = match("/media/a.jpg", [("width", "300"), ("q", "80"), ("fit", "inside"),
                               ("pos", "center"), ("bg", "#ffffff"), ("enlarge", "0")])
    c = match("/media//./a.jpg", [("h", "0"), ("w", "300")])
    assert key_of(a) == key_of(b) == key_of(c)


def test_different_transforms_have_different_keys():
    base = match("/media/a.jpg", [("w", "300")])
    others = [match("/media/a.jpg", [("w", "301")]), match("/media/b.jpg", [("w", "300")]),
              match("/media/a.jpg", [("w", "300"), ("q", "81")]),
              match("/media/a.jpg", [("w", "300"), ("enlarge", "1")])]
    keys = {key_of(base)} | {key_of(o) for o in others} | {key_of(base, "webp")}
    assert len(keys) == 6


def test_negotiated_format_enters_the_key():
    a = match("/media/a.jpg", [("w", "300"), ("fmt", "auto")])
    b = match("/media/a.jpg", [("w", "300"), ("fmt", "webp")])
    assert key_of(a, "webp") == key_of(b, "webp")
    assert "format=webp" in key_parts(a, RUNTIME.params, "webp")


@pytest.mark.parametrize("accept, expected", [
    ("image/avif,image/webp,*/*", "avif~webp"), ("image/webp,*/*;q=0.8", "webp"),
    ("*/*", None), ("image/*", None), (None, None), ("image/avif;q=0, image/webp", "webp"),
    ("text/html,image/webp;q=0.5", "webp"),
])
def test_auto_format_needs_an_explicit_accept(accept, expected):
    assert negotiate_format("auto", accept) == (expected, True)
    assert negotiate_format("png", accept) == ("png", False)


def test_colours():
    assert parse_colour("#f00") == (255, 0, 0, 255)
    assert parse_colour("ff0000") == (255, 0, 0, 255)
    assert parse_colour("#ff000080") == (255, 0, 0, 128)
    assert parse_colour("transparent") == (0, 0, 0, 0)
    with pytest.raises(ValueError):
        parse_colour("inherit")


query_values = st.one_of(st.text(max_size=12), st.integers(-10, 10**8).map(str),
                         st.sampled_from(["cover", "auto", "webp", "center", "#fff", "1"]))
query_names = st.sampled_from(["w", "h", "fit", "pos", "bg", "q", "fmt", "enlarge", "trim",
                               "width", "quality", "v", "x"])


@given(st.text(max_size=40), st.lists(st.tuples(query_names, query_values), max_size=8),
       st.sampled_from(["GET", "HEAD", "POST"]))
def test_parser_never_raises(path, query, method):
    result = match("/media/" + path, query, method)
    assert result is None or isinstance(result, (ImageRequest, Rejection))
    if isinstance(result, Rejection):
        assert 400 <= result.status < 500 and result.parameter


@given(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1,
               max_size=20).filter(lambda s: "/" not in s and s not in (".", "..")),
       st.integers(0, 8192), st.integers(0, 8192),
       st.permutations([("fit", "cover"), ("q", "70"), ("v", "9")]))
def test_key_is_stable_and_equal_for_equivalent_urls(name, w, h, extra):
    path = "/media/uploads/" + quote(name + ".jpg", safe="")
    a = match(path, [("w", str(w)), ("h", str(h)), *extra])
    b = match(path, [*reversed(extra), ("height", str(h)), ("width", str(w)),
                     ("utm", "x")])
    if isinstance(a, ImageRequest):
        assert key_of(a) == key_of(b) == key_of(match(path, [("h", str(h)), ("w", str(w)),
                                                             *extra]))
    else:
        assert a == b
