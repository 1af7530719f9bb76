"""
The validation plugin over HTTP: the re-check of every parameter whatever built the request,
the source prefixes, the path length, encoded separators and unknown parameters.

A route plugin (:class:`BuildsRequests`, registered with ``extra_plugins``) builds image
requests with parameter values no query could produce, so validation's own checks are what
answers: each bad value must be a 400 naming exactly that parameter, and nothing is fetched.
"""

from __future__ import annotations

import json

import pytest

from mediaproxy import hookimpl
from mediaproxy.models import ImageRequest, Rejection, SourceError, SourceImage

from mediaproxy.testing.images import decode, make_jpeg, make_png
from mediaproxy.testing import ImageOrigin, start_proxy

SOURCE = make_png(40, 20)


class BuildsRequests:
    """A route: ``/plugin/{case}`` is an image request of ``/media/p.png`` (or the case's own
    source path) with exactly the parameters of ``CASES[case]``."""

    def __init__(self, cases):
        self.cases = cases

    @hookimpl
    def mediaproxy_match_request(self, request, runtime):
        if not request.path.startswith("/plugin/"):
            return None
        params = dict(self.cases[request.path.removeprefix("/plugin/")])
        source = params.pop("_source", "/media/p.png")
        return ImageRequest(route="plugin", source_path=source, params=params)


#: case -> (params the plugin sets, the parameter the 400 names)
BAD = {
    "w_over_max": ({"w": 8193}, "w"),
    "w_negative": ({"w": -1}, "w"),
    "w_text": ({"w": "300"}, "w"),
    "w_float": ({"w": 30.0}, "w"),
    "w_bool": ({"w": True}, "w"),
    "w_none": ({"w": None}, "w"),
    "h_over_max": ({"h": 8193}, "h"),
    "h_negative": ({"h": -1}, "h"),
    "h_text": ({"h": "20"}, "h"),
    "h_float": ({"h": 20.0}, "h"),
    "area": ({"w": 8192, "h": 4051}, "w"),        # 33 185 792 > 7680 x 4320
    "w_text_with_h": ({"w": "x", "h": 10}, "w"),
    "q_zero": ({"q": 0}, "q"),
    "q_101": ({"q": 101}, "q"),
    "q_text": ({"q": "80"}, "q"),
    "q_float": ({"q": 80.0}, "q"),
    "trim_101": ({"trim": 101}, "trim"),
    "trim_negative": ({"trim": -1}, "trim"),
    "trim_text": ({"trim": "5"}, "trim"),
    "fit_unknown": ({"fit": "banana"}, "fit"),
    "fit_upper": ({"fit": "COVER"}, "fit"),
    "fit_none": ({"fit": None}, "fit"),
    "pos_alias": ({"pos": "center"}, "pos"),      # a spelling, not the canonical value
    "pos_unknown": ({"pos": "url(javascript:1)"}, "pos"),
    "fmt_alias": ({"fmt": "jpg"}, "fmt"),
    "fmt_unknown": ({"fmt": "exe"}, "fmt"),
    "bg_rgb": ({"bg": (255, 255, 255)}, "bg"),
    "bg_list": ({"bg": [255, 255, 255, 255]}, "bg"),
    "bg_256": ({"bg": (256, 0, 0, 255)}, "bg"),
    "bg_alpha_256": ({"bg": (0, 0, 0, 256)}, "bg"),
    "bg_negative": ({"bg": (0, -1, 0, 255)}, "bg"),
    "bg_text": ({"bg": "#ffffff"}, "bg"),
    "bg_text_channel": ({"bg": ("ff", 0, 0, 255)}, "bg"),
    "bg_five": ({"bg": (0, 0, 0, 0, 0)}, "bg"),
    "enlarge_int": ({"enlarge": 1}, "enlarge"),
    "enlarge_text": ({"enlarge": "1"}, "enlarge"),
    "enlarge_none": ({"enlarge": None}, "enlarge"),
}

#: case -> (params, decoded size of the 40x20 source's answer)
GOOD = {
    "nothing": ({}, (40, 20)),
    "w_zero": ({"w": 0, "h": 0}, (40, 20)),
    "w_one": ({"w": 1, "fit": "fill", "h": 1}, (1, 1)),
    "w_max": ({"w": 8192}, (40, 20)),
    "h_max": ({"h": 8192}, (40, 20)),
    "area_max": ({"w": 7680, "h": 4320}, (40, 20)),
    "q_one": ({"q": 1}, (40, 20)),
    "q_100": ({"q": 100}, (40, 20)),
    "trim_zero": ({"trim": 0}, (40, 20)),
    "trim_100": ({"trim": 100}, (40, 20)),
    "bg_black_transparent": ({"bg": (0, 0, 0, 0), "w": 20, "h": 20, "fit": "contain"},
                             (20, 20)),
    "bg_white": ({"bg": (255, 255, 255, 255), "w": 20, "h": 20, "fit": "contain"}, (20, 20)),
    "every_fit": ({"fit": "outside", "w": 10, "h": 10}, (20, 10)),
    "pos_canonical": ({"pos": "northwest", "w": 10, "h": 10, "fit": "cover"}, (10, 10)),
    "fmt_canonical": ({"fmt": "webp", "w": 20}, (20, 10)),
    "fmt_auto": ({"fmt": "auto", "w": 20}, (20, 10)),
    "fmt_none": ({"fmt": None, "w": 20}, (20, 10)),
    "enlarge_bool": ({"enlarge": True, "w": 80}, (80, 40)),
    "enlarge_false": ({"enlarge": False, "w": 80}, (40, 20)),
}

CASES = {name: params for name, (params, _) in {**BAD, **GOOD}.items()}


def _origin():
    return ImageOrigin({"/media/p.png": (200, SOURCE, "image/png", []),
                        "/media/uploads/a.png": (200, SOURCE, "image/png", []),
                        "/media/private/a.png": (200, SOURCE, "image/png", []),
                        "/static/a.png": (200, SOURCE, "image/png", [])})


@pytest.fixture(scope="module")
def plugged(live_reactor):
    running = start_proxy(origin=_origin(), plugins=[BuildsRequests(CASES)])
    yield running
    running.stop()


def error_of(running, path, fetched=0):
    """The status, error and parameter of a JSON refusal; ``fetched``: how many requests the
    origin must have seen meanwhile (refusals come before any fetch)."""
    before = sum(running.origin.hits.values())
    status, headers, body, _ = running.get(path)
    assert sum(running.origin.hits.values()) - before == fetched
    assert headers["content-type"] == "application/json", (status, body)
    data = json.loads(body)
    assert data["status"] == status
    return status, data["error"], data["parameter"]


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_plugin_built_request_with_a_bad_parameter_is_a_400_naming_it(plugged, case):
    assert error_of(plugged, f"/plugin/{case}") == (400, "invalid_parameter", BAD[case][1])


@pytest.mark.parametrize("case", sorted(GOOD))
def test_a_plugin_built_request_with_good_parameters_is_served(plugged, case):
    status, _, body, _ = plugged.get(f"/plugin/{case}")
    assert status == 200, body
    assert decode(body).size == GOOD[case][1]


@pytest.fixture(scope="module")
def small_area(live_reactor):
    running = start_proxy(origin=_origin(), overrides={"limits": {"max_output_pixels": 1000}},
                          plugins=[BuildsRequests({
                              "h_alone": {"h": 1500}, "w_alone": {"w": 1500},
                              "both": {"w": 40, "h": 26}})])
    yield running
    running.stop()


def test_an_absent_axis_is_free_not_one_pixel_in_the_area_check(small_area):
    # h=1500 alone: 0 x 1500 pixels asked for; the 40x20 source is not enlarged -> 40x20 = 800
    for path in ("/plugin/h_alone", "/plugin/w_alone", "/media/p.png?h=1500",
                 "/media/p.png?w=1500"):
        status, _, body, _ = small_area.get(path)
        assert status == 200, (path, body)
        assert decode(body).size == (40, 20)
    # both given: 40 x 26 = 1040 > 1000
    assert error_of(small_area, "/plugin/both") == (400, "invalid_parameter", "w")
    assert error_of(small_area, "/media/p.png?w=40&h=26") == (400, "invalid_parameter", "w")


# -- source prefixes -------------------------------------------------------------------------

@pytest.fixture
def uploads_only(live_reactor):
    running = start_proxy(
        origin=_origin(), overrides={"validation": {"source_prefixes": ["/media/uploads/"]}},
        plugins=[BuildsRequests({"outside": {"_source": "/media/private/a.png", "w": 10},
                                       "inside": {"_source": "/media/uploads/a.png", "w": 10}})])
    yield running
    running.stop()


@pytest.mark.parametrize("path", ["/media/private/a.png?w=10", "/static/a.png?w=10",
                                  "/media/uploadsX/a.png?w=10", "/plugin/outside"])
def test_a_path_outside_the_source_prefixes_is_404_and_never_fetched(uploads_only, path):
    status, error, parameter = error_of(uploads_only, path)
    assert (status, error, parameter) == (404, "not_found", "path")


@pytest.mark.parametrize("path", ["/media/uploads/a.png?w=10", "/plugin/inside"])
def test_a_path_inside_the_source_prefixes_is_served(uploads_only, path):
    status, _, body, _ = uploads_only.get(path)
    assert status == 200 and decode(body).size == (10, 5)
    assert uploads_only.origin.hits["/media/uploads/a.png"] == 1


def test_without_source_prefixes_the_route_prefixes_are_the_allowed_ones(live_reactor):
    running = start_proxy(origin=_origin(), overrides={"routes": {"prefixes": ["/media/"]}},
                          plugins=[BuildsRequests({
                              "static": {"_source": "/static/a.png", "w": 10},
                              "media": {"_source": "/media/private/a.png", "w": 10}})])
    try:
        assert error_of(running, "/plugin/static") == (404, "not_found", "path")
        assert running.origin.hits["/static/a.png"] == 0
        status, _, body, _ = running.get("/plugin/media")
        assert status == 200 and decode(body).size == (10, 5)
    finally:
        running.stop()


# -- the path, as a plugin may build it ----------------------------------------------------------

PATHS = {
    "dotdot": "/media/../etc/p.png",
    "dotdot_semicolon": "/media/..;/etc/p.png",
    "dotdot_semicolon_params": "/media/..;jsessionid=1/p.png",
    "relative": "media/p.png",
    "nul": "/media/p\x00.png",
    "backslash": "/media\\p.png",
    "control": "/media/p\x1f.png",
    "delete": "/media/p\x7f.png",
    "scheme": "/media/http://evil/p.png",
    "host": "//evil/media/p.png",
    "encoded_dot": "/media/%2e%2e/p.png",
    "encoded_slash": "/media/a%2Fp.png",
    "encoded_backslash": "/media/a%5cp.png",
    "encoded_percent": "/media/a%252e.png",
    "encoded_control": "/media/a%0a.png",
    "encoded_delete": "/media/a%7F.png",
    "fullwidth_dots": "/media/\uff0e\uff0e/p.png",
    "fullwidth_slash": "/media/a\uff0f..\uff0fp.png",
    "fullwidth_backslash": "/media/a\uff3cp.png",
    "fullwidth_scheme": "/media/http\uff1a\uff0f\uff0fevil/p.png",
    "fullwidth_dotdot_semicolon": "/media/\uff0e\uff0e;/p.png",
    "fullwidth_encoded_dot": "/media/\uff05\uff12\uff45\uff05\uff12\uff45/p.png",
    "fullwidth_encoded_slash": "/media/a\uff05\uff12\uff26p.png",
    "two_dot_leader": "/media/\u2025/p.png",
    "long": "/media/" + "a" * 1100 + ".png",
}
SAFE_PATHS = {
    "dots_in_a_name": "/media/a..b.png",
    "three_dots": "/media/.../p.png",
    "encoded_letter": "/media/%41.png",
    "percent_sign": "/media/100%.png",
    "accented": "/media/caf\u00e9.png",
    "fullwidth_letters": "/media/\uff41.png",
}


@pytest.fixture(scope="module")
def path_plugin(live_reactor):
    cases = {name: {"_source": path, "w": 10} for name, path in {**PATHS, **SAFE_PATHS}.items()}
    running = start_proxy(origin=ImageOrigin({}), plugins=[BuildsRequests(cases)])
    yield running
    running.stop()


@pytest.mark.parametrize("case", sorted(PATHS))
def test_an_unsafe_plugin_built_path_is_refused_before_any_fetch(path_plugin, case):
    assert error_of(path_plugin, f"/plugin/{case}") == (400, "invalid_path", "path")


@pytest.mark.parametrize("case", sorted(SAFE_PATHS))
def test_a_safe_plugin_built_path_is_fetched(path_plugin, case):
    # the origin has nothing: the honest 404 of a fetched, missing source
    status, headers, _, _ = path_plugin.get(f"/plugin/{case}")
    assert (status, headers["x-placeholder"]) == (404, "source_not_found")


# -- path length, encoded separators in the raw path ------------------------------------------

@pytest.fixture(scope="module")
def short_paths(live_reactor):
    exact = "/media/" + "a" * 53 + ".png"                  # 64 bytes
    accented = "/media/" + "a" * 51 + "%C3%A9.png"         # 63 characters, 64 bytes decoded
    origin = ImageOrigin({exact: (200, SOURCE, "image/png", []),
                          accented: (200, SOURCE, "image/png", [])})
    running = start_proxy(origin=origin, overrides={"validation": {"max_path_length": 64}})
    yield running
    running.stop()


def test_a_path_of_exactly_max_path_length_bytes_is_served(short_paths):
    path = "/media/" + "a" * 53 + ".png"
    assert len(path) == 64
    status, _, body, _ = short_paths.get(path + "?w=10")
    assert status == 200 and decode(body).size == (10, 5)
    status, _, body, _ = short_paths.get("/media/" + "a" * 51 + "%C3%A9.png?w=10")
    assert status == 200 and decode(body).size == (10, 5)


@pytest.mark.parametrize("path", [
    "/media/" + "a" * 54 + ".png",                # 65 bytes
    "/media/" + "a" * 52 + "%C3%A9.png",          # 64 characters, 65 bytes
])
def test_a_path_over_max_path_length_bytes_is_refused(short_paths, path):
    assert error_of(short_paths, path + "?w=10") == (400, "invalid_path", "path")


@pytest.fixture
def plain(live_reactor):
    running = start_proxy(origin=_origin())
    yield running
    running.stop()


@pytest.mark.parametrize("path", [
    "/media/%EF%BC%8E%EF%BC%8E;/uploads/a.png",              # full-width '..;'
    "/media/%EF%BC%85%EF%BC%92%EF%BD%85/uploads/a.png",      # full-width '%2e'
    "/media/%E2%80%A5/uploads/a.png",                        # the two dot leader: '..'
])
def test_a_path_that_normalises_into_a_refused_form_is_refused(plain, path):
    assert error_of(plain, path + "?w=10") == (400, "invalid_path", "path")


@pytest.mark.parametrize("path", ["/media/uploads%2Fa.png", "/media/uploads%2fa.png",
                                  "/media/uploads%5Ca.png", "/media/uploads%5ca.png"])
def test_an_encoded_separator_in_the_raw_path_is_refused(plain, path):
    assert error_of(plain, path + "?w=10") == (400, "invalid_path", "path")


def test_compat_routes_may_encode_separators(plain):
    # the compat routes decode their path up to three times (TinyMCE double encoding): an
    # encoded / inside is a separator there, and the image is fetched
    plain.origin.files["/media/uploads/a/b.png"] = (200, SOURCE, "image/png", [])
    status, _, body, _ = plain.get(
        "/media_stream-image/media/uploads/a%2Fb.png/10/5/fill/centre/ffffff/0/80.png")
    assert status == 200 and decode(body).size == (10, 5)
    assert plain.origin.hits["/media/uploads/a/b.png"] == 1


# -- unknown parameters ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rejecting(live_reactor):
    running = start_proxy(origin=_origin(), overrides={
        "validation": {"unknown_params": "reject"}})
    yield running
    running.stop()


@pytest.mark.parametrize("query, parameter", [
    ("w=10&foo=1", "foo"), ("foo=1&w=10", "foo"), ("w=10&a=1&b=2", "a"),
    ("w=10&v=123", "v"), ("w=10&W=10", "W"), ("w=10&" + "x" * 100 + "=1", "x" * 64),
    ("w=10&signature=1", "signature"),
])
def test_rejecting_unknown_parameters_names_the_first(rejecting, query, parameter):
    assert error_of(rejecting, f"/media/uploads/a.png?{query}") == (
        400, "unknown_parameter", parameter)


@pytest.mark.parametrize("query", [
    "w=10", "width=10", "w=10&sig=abc&expires=4102444800", "w=10&expires=1",
    "width=10&height=5&quality=50&position=center&gravity=north&background=fff&format=png"
    "&fit=fill&enlarge=0&trim=0&bg=fff&pos=centre&q=50&fmt=png",
])
def test_rejecting_unknown_parameters_knows_every_alias_and_the_signature(rejecting, query):
    status, _, body, _ = rejecting.get(f"/media/uploads/a.png?{query}")
    assert status == 200, body
    assert decode(body).size == (10, 5)


def test_unknown_parameters_are_ignored_by_default(plain):
    status, _, body, _ = plain.get("/media/uploads/a.png?w=10&foo=1&" + "x" * 100 + "=2")
    assert status == 200 and decode(body).size == (10, 5)


# -- the source limits handed to the fetcher; a reload ---------------------------------------

def test_the_source_limits_reach_the_fetcher(live_reactor):
    origin = _origin()
    origin.files["/media/uploads/a.jpg"] = (200, make_jpeg(40, 20), "image/jpeg", [])
    origin.files["/media/uploads/big.png"] = (200, make_png(400, 400, mode="RGB",
                                                            colour=(1, 2, 3)) + b"\0" * 2000,
                                              "image/png", [])
    running = start_proxy(origin=origin, overrides={"limits": {
        "source_formats": ["png"], "max_source_bytes_by_format": ["png=2000"]}})
    try:
        status, headers, _, _ = running.get("/media/uploads/a.jpg?w=10")
        assert (status, headers["x-placeholder"]) == (422, "unsupported_format")
        status, headers, _, _ = running.get("/media/uploads/big.png?w=10")
        assert (status, headers["x-placeholder"]) == (413, "source_too_large")
        status, _, body, _ = running.get("/media/uploads/a.png?w=10")
        assert status == 200 and decode(body).size == (10, 5)
    finally:
        running.stop()


def test_a_reload_applies_the_new_validation_settings(live_reactor, tmp_path):
    from mediaproxy.tap import reload_config
    from mediaproxy.testing import call_in_reactor

    origin = _origin()
    origin.files["/media/uploads/a.jpg"] = (200, make_jpeg(40, 20), "image/jpeg", [])
    origin.files["/media/uploads/b.jpg"] = (200, make_jpeg(40, 20), "image/jpeg", [])
    origin.files["/media/uploads/wide.png"] = (200, make_png(400, 20), "image/png", [])
    running = start_proxy(origin=origin)
    try:
        assert running.get("/media/uploads/a.png?w=10&foo=1")[0] == 200
        assert running.get("/media/private/a.png?w=10")[0] == 200
        assert running.get("/media/uploads/wide.png?h=10")[0] == 200
        assert running.get("/media/uploads/a.jpg?w=10")[0] == 200
        path = tmp_path / "mediaproxy.toml"
        path.write_text('[validation]\nunknown_params = "reject"\n'
                        'source_prefixes = ["/media/uploads/"]\n'
                        '[limits]\nmax_width = 100\nsource_formats = ["png"]\n')
        call_in_reactor(reload_config, running.runtime, str(path))
        assert error_of(running, "/media/uploads/a.png?w=10&foo=1") == (
            400, "unknown_parameter", "foo")
        assert error_of(running, "/media/private/a.png?w=9") == (404, "not_found", "path")
        assert error_of(running, "/media/uploads/a.png?w=101") == (400, "invalid_parameter", "w")
        status, headers, _, _ = running.get("/media/uploads/wide.png?h=9")   # 180 wide now
        assert (status, headers["x-placeholder"]) == (400, "output_too_large")
        # (a.jpg is in the source cache already: a source not fetched before)
        status, headers, _, _ = running.get("/media/uploads/b.jpg?w=9")
        assert (status, headers["x-placeholder"]) == (422, "unsupported_format")
    finally:
        running.stop()


# -- first in the check chain; a fetcher of a plugin's own -----------------------------------

class Gate:
    """Another check: refuses every image request (an authorisation plugin, say)."""

    @hookimpl
    def mediaproxy_check_request(self, image_request, request, runtime):
        return Rejection(403, "forbidden", "not for you")


UNSAFE = "/media/uploads/%EF%BC%8E%EF%BC%8E;/a.png?w=10"     # NFKC: '..;'


def test_validation_answers_before_any_other_check(live_reactor):
    from mediaproxy.testing import call_in_reactor

    running = start_proxy(origin=_origin(), plugins=[Gate()])
    try:
        assert error_of(running, UNSAFE) == (400, "invalid_path", "path")
        assert error_of(running, "/media/uploads/a.png?w=10") == (403, "forbidden", None)
        # also before a check registered once the proxy runs (pluggy calls the latest first)
        call_in_reactor(running.runtime.pm.register, Gate(), "late-gate")
        assert error_of(running, UNSAFE) == (400, "invalid_path", "path")
        assert error_of(running, "/static/a.png?w=10") == (403, "forbidden", None)
    finally:
        running.stop()


class OwnSource:
    """A plugin serving sources from a dict of its own (``mediaproxy_fetch_source``)."""

    def __init__(self, files):
        self.files = files
        self.asked = []

    @hookimpl
    def mediaproxy_fetch_source(self, image_request, request, runtime):
        from twisted.internet.defer import fail, succeed

        path = image_request.source_path
        self.asked.append(path)
        if path not in self.files:
            return fail(SourceError(404, "source_not_found", "no such source"))
        return succeed(SourceImage(body=self.files[path], content_type="image/png"))


def test_a_plugins_own_source_is_validated_the_same_across_a_reload(live_reactor, tmp_path):
    from mediaproxy.tap import reload_config
    from mediaproxy.testing import call_in_reactor

    fetcher = OwnSource({"/media/x.png": SOURCE})
    running = start_proxy(origin=ImageOrigin({}), plugins=[fetcher])
    try:
        status, _, body, _ = running.get("/media/x.png?w=10")
        assert status == 200 and decode(body).size == (10, 5)
        path = tmp_path / "mediaproxy.toml"
        path.write_text("[limits]\nmax_width = 100\n")
        call_in_reactor(reload_config, running.runtime, str(path))
        assert running.runtime.config.limits.max_width == 100        # the reload went through
        assert error_of(running, "/media/x.png?w=101") == (400, "invalid_parameter", "w")
        status, _, body, _ = running.get("/media/x.png?w=20")
        assert status == 200 and decode(body).size == (20, 10)
        assert fetcher.asked == ["/media/x.png"]          # then the source cache had it
        assert sum(running.origin.hits.values()) == 0
    finally:
        running.stop()
