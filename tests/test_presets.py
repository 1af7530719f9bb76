"""Presets (``[presets.NAME]``, ``?preset=NAME``): the configuration and its checks at start,
the expansion against an independent oracle, and a real proxy over loopback: the geometry,
the shared cache entry with the explicit equivalent, the refusals, presets-only mode and
signing."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from hypothesis import given, settings, strategies as st

from mediaproxy import cli
from mediaproxy.builtin import routing
from mediaproxy.builtin.signing import canonical
from mediaproxy.cache.keys import cache_key
from mediaproxy.config import ConfigError, load_config
from mediaproxy.models import ImageRequest, Rejection, RequestInfo
from mediaproxy.tap import reload_config
from mediaproxy.urlsign import decode_repeatedly, sign_url
from mediaproxy.testing import (
    ImageOrigin, assert_image, call_in_reactor, make_image, make_runtime, start_proxy,
)

KEY = "presets-key-0123456789abcdef0123"
PRESETS = {
    "thumb": {"w": 300, "h": 300, "fit": "cover", "fmt": "auto"},
    "hero": {"width": 1200, "format": "webp", "enlarge": True, "quality": 70},
    "locked": {"w": 100, "h": 100, "fit": "fill", "fmt": "png", "overrides": "deny"},
    "open": {"w": 50, "fmt": "png", "overrides": "allow"},
}
WEBP = {"Accept": "image/avif;q=0,image/webp,*/*"}


def source(path: str) -> dict:
    return {path: (200, make_image((800, 600)), "image/jpeg", [])}


def files() -> dict:
    out = {}
    for name in ("same", "override", "locked", "unknown", "only", "signed", "hero", "pass"):
        out.update(source(f"/media/uploads/{name}.jpg"))
    return out


@pytest.fixture(scope="module")
def proxy(live_reactor):
    running = start_proxy(origin=ImageOrigin(files()), overrides={"presets": PRESETS})
    yield running
    running.stop()


def error_of(response) -> dict:
    status, headers, body, _ = response
    assert headers["content-type"] == "application/json"
    data = json.loads(body)
    return {"status": status, "error": data["error"], "parameter": data["parameter"],
            "message": data["message"]}


# -- a real proxy ------------------------------------------------------------------------------

def test_a_preset_and_its_explicit_parameters_are_one_cache_entry(proxy):
    preset = "/media/uploads/same.jpg?preset=thumb"
    explicit = "/media/uploads/same.jpg?fit=cover&h=300&fmt=auto&width=300"
    assert proxy.cache_key(preset, WEBP["Accept"]) == proxy.cache_key(explicit, WEBP["Accept"])
    status, headers, body, _ = proxy.get(preset, headers=WEBP)
    assert (status, headers["x-cache"], headers["vary"]) == (200, "MISS", "Accept")
    assert_image(body, (300, 300), "WEBP")
    again = proxy.get(explicit, headers=WEBP)
    assert (again[0], again[1]["x-cache"], again[2]) == (200, "HIT-MEMORY", body)
    third = proxy.get(preset, headers=WEBP)
    assert (third[1]["x-cache"], third[2]) == ("HIT-MEMORY", body)
    assert proxy.origin.hits["/media/uploads/same.jpg"] == 1


def test_explicit_parameters_override_the_preset_where_allowed(proxy):
    url = "/media/uploads/override.jpg?preset=thumb&w=100&fmt=jpeg"
    assert proxy.cache_key(url) == proxy.cache_key(
        "/media/uploads/override.jpg?w=100&h=300&fit=cover&fmt=jpeg")
    status, headers, body, _ = proxy.get(url)
    assert status == 200
    assert_image(body, (100, 300), "JPEG")
    hero = proxy.get("/media/uploads/hero.jpg?preset=hero")
    assert_image(hero[2], (1200, 900), "WEBP")   # enlarge from the preset, width by its alias


def test_a_preset_that_denies_overrides_refuses_them(proxy):
    refused = error_of(proxy.get("/media/uploads/locked.jpg?w=5&preset=locked&q=50"))
    assert refused == {"status": 400, "error": "preset_override", "parameter": "q",
                       "message": "the preset 'locked' may not be overridden: drop 'q' "
                                  "(routes.preset_overrides, presets.locked.overrides)"}
    assert proxy.origin.hits["/media/uploads/locked.jpg"] == 0
    status, _, body, _ = proxy.get("/media/uploads/locked.jpg?preset=locked&v=7")
    assert status == 200   # an unknown parameter (a cache buster) is no override
    assert_image(body, (100, 100), "PNG")


@pytest.mark.parametrize("query, named", [
    ("preset=nope", "'nope'"), ("preset=", "''"), ("preset=Thumb", "'Thumb'"),
    ("preset=" + "x" * 80, "'" + "x" * 80 + "'"),             # quoted whole up to 80
    ("preset=" + "x" * 81, "'" + "x" * 80 + "...'"),
])
def test_an_unknown_preset_is_a_400_naming_it(proxy, query, named):
    assert error_of(proxy.get(f"/media/uploads/unknown.jpg?{query}&w=10")) == {
        "status": 400, "error": "unknown_preset", "parameter": "preset",
        "message": f"there is no preset {named}"}
    assert proxy.origin.hits["/media/uploads/unknown.jpg"] == 0


def test_without_a_preset_nothing_changes(proxy):
    status, headers, body, _ = proxy.get("/media/uploads/pass.jpg?w=200")
    assert_image(body, (200, 150), "JPEG")
    status, headers, body, _ = proxy.get("/media/uploads/pass.jpg?v=3")   # passes through
    assert (status, "x-cache" in headers) == (200, False)
    assert_image(body, (800, 600), "JPEG")


def test_presets_only_mode(live_reactor):
    with start_proxy(origin=ImageOrigin(source("/media/uploads/only.jpg")),
                     overrides={"presets": PRESETS, "routes": {"presets_only": True}}) as proxy:
        assert error_of(proxy.get("/media/uploads/only.jpg?w=300&h=10")) == {
            "status": 400, "error": "preset_required", "parameter": "preset",
            "message": "routes.presets_only is set: a transform must name a preset "
                       "(?preset=NAME), not parameters such as 'h'"}
        # auto: no overriding in presets-only mode, unless the preset allows it
        assert error_of(proxy.get("/media/uploads/only.jpg?preset=thumb&w=10"))["error"] == \
            "preset_override"
        assert_image(proxy.get("/media/uploads/only.jpg?preset=open&w=10")[2], (10, 8), "PNG")
        assert_image(proxy.get("/media/uploads/only.jpg?preset=thumb", headers=WEBP)[2],
                     (300, 300), "WEBP")
        status, headers, body, _ = proxy.get("/media/uploads/only.jpg?v=1")
        assert (status, "x-cache" in headers) == (200, False)   # no transform: passes through
        assert proxy.origin.hits["/media/uploads/only.jpg"] == 2   # the source, the original


COMPAT_URL = "/media_stream-image/media/uploads/only.jpg/60/40/cover/centre/ffffff/0/80.png"


@pytest.mark.parametrize("routes, signing, signed, expected", [
    # presets-only mode: the compat routes name sizes, so unsigned they are refused
    ({"presets_only": True}, {}, False, 400),
    ({"presets_only": True}, {"keys": [KEY], "exempt_routes": ["compat"]}, False, 400),
    # ... unless a setting allows them, or signatures are required on them
    ({"presets_only": True, "compat_in_presets_only": True}, {}, False, 200),
    ({"presets_only": True}, {"keys": [KEY]}, True, 200),
    ({"presets_only": True}, {"keys": [KEY]}, False, 403),
    ({"presets_only": False}, {}, False, 200),
])
def test_presets_only_mode_covers_the_compat_routes(live_reactor, routes, signing, signed,
                                                     expected):
    url = sign_url(COMPAT_URL, KEY, decode=decode_repeatedly) if signed else COMPAT_URL
    with start_proxy(origin=ImageOrigin(source("/media/uploads/only.jpg")), overrides={
            "presets": PRESETS, "routes": routes, "signing": signing}) as proxy:
        response = proxy.get(url)
        if expected == 200:
            assert_image(response, (60, 40), "PNG")
            assert proxy.origin.hits["/media/uploads/only.jpg"] == 1
            return
        assert proxy.origin.hits["/media/uploads/only.jpg"] == 0
        if expected == 403:
            assert error_of(response)["error"] == "signature_required"
            return
        assert error_of(response) == {
            "status": 400, "error": "preset_required", "parameter": "path",
            "message": "routes.presets_only is set: the compat routes name sizes, not presets; "
                       "sign them (signing.keys) or allow them (routes.compat_in_presets_only)"}


def test_the_preset_name_is_signed(live_reactor):
    config = load_config(environ={}, overrides={"presets": PRESETS,
                                                "signing": {"keys": [KEY]}})
    url = cli.sign("/media/uploads/signed.jpg?preset=thumb", config)
    assert canonical("query", "/media/uploads/signed.jpg", [("preset", "thumb")],
                     frozenset({"preset"}), None).split(b"\n")[2] == b"preset=thumb"
    with start_proxy(origin=ImageOrigin(source("/media/uploads/signed.jpg")),
                     overrides={"presets": PRESETS, "signing": {"keys": [KEY]}}) as proxy:
        assert_image(proxy.get(url, headers=WEBP)[2], (300, 300), "WEBP")
        swapped = url.replace("preset=thumb", "preset=hero")
        assert error_of(proxy.get(swapped))["error"] == "invalid_signature"
        added = url + "&w=10"
        assert error_of(proxy.get(added))["error"] == "invalid_signature"
        assert error_of(proxy.get("/media/uploads/signed.jpg?preset=thumb"))["error"] == \
            "signature_required"
        assert proxy.origin.hits["/media/uploads/signed.jpg"] == 1


def test_with_signing_the_signature_is_checked_before_the_preset_and_the_values(live_reactor):
    # An unsigned or tampered URL learns nothing about the presets or the limits: 403 first,
    # as the check chain answers; a URL the key holder signed gets the route's own refusal.
    path = "/media/uploads/signed.jpg"
    good = sign_url(f"{path}?preset=thumb", KEY)
    with start_proxy(origin=ImageOrigin(source(path)),
                     overrides={"presets": PRESETS, "signing": {"keys": [KEY]}}) as proxy:
        def error(url):
            got = error_of(proxy.get(url))
            return got["status"], got["error"], got["parameter"]

        assert error(good.replace("preset=thumb", "preset=thumbx")) == (
            403, "invalid_signature", "sig")
        assert error(f"{path}?preset=thumbx") == (403, "signature_required", "sig")
        assert error(f"{path}?w=abc") == (403, "signature_required", "sig")
        assert error(good.replace("preset=thumb", "preset=thumb&w=abc")) == (
            403, "invalid_signature", "sig")
        assert error(good.replace("preset=thumb", "preset=locked&w=5")) == (
            403, "invalid_signature", "sig")
        assert error(sign_url(f"{path}?preset=thumbx", KEY, expires=1000)) == (
            403, "signature_expired", "expires")
        assert error(sign_url(f"{path}?preset=thumbx", KEY)) == (400, "unknown_preset", "preset")
        assert error(sign_url(f"{path}?w=abc", KEY)) == (400, "invalid_parameter", "w")
        assert error(sign_url(f"{path}?preset=locked&w=5", KEY)) == (
            400, "preset_override", "w")
        assert proxy.origin.hits[path] == 0
    with start_proxy(origin=ImageOrigin(source(path)), overrides={
            "presets": PRESETS, "routes": {"presets_only": True},
            "signing": {"keys": [KEY], "exempt_routes": ["query"]}}) as proxy:
        # a route exempt from signing answers its own refusals, unsigned
        assert error_of(proxy.get(f"{path}?preset=thumbx"))["error"] == "unknown_preset"
        assert error_of(proxy.get(f"{path}?w=10"))["error"] == "preset_required"
        assert proxy.origin.hits[path] == 0


# -- the configuration -------------------------------------------------------------------------

def test_presets_from_the_file_and_the_environment(tmp_path):
    path = tmp_path / "mediaproxy.toml"
    path.write_text('[presets.thumb]\nw = 300\nh = 300\nfit = "cover"\nfmt = "auto"\n')
    config = load_config(path, environ={"MEDIAPROXY_PRESETS__THUMB__W": "320",
                                        "MEDIAPROXY_PRESETS__CARD__Q": "60",
                                        "MEDIAPROXY_PRESETS__CARD__OVERRIDES": "deny"})
    assert [(p.name, p.values, p.overrides) for p in config.presets] == [
        ("card", (("q", "60"),), "deny"),
        ("thumb", (("w", "320"), ("h", 300), ("fit", "cover"), ("fmt", "auto")), "inherit")]
    runtime = make_runtime(environ={"MEDIAPROXY_PRESETS__CARD__Q": "60"})
    assert routing.match(RequestInfo("GET", "/media/a.jpg", (("preset", "card"),)),
                         runtime).params["q"] == 60


@pytest.mark.parametrize("value, ok", [(8192, True), (8193, False), (0, True), ("8192", True),
                                       ("-1", False), (" 12 ", True), ("12px", False)])
def test_each_value_is_checked_as_the_query_parameter_at_start(value, ok):
    overrides = {"presets": {"thumb": {"w": value}}}
    if ok:
        make_runtime(overrides)
        return
    with pytest.raises(ConfigError) as raised:
        make_runtime(overrides)
    assert raised.value.key == "presets.thumb.w"
    assert str(raised.value) == (
        "presets.thumb.w: width must be a whole number from 0 to 8192 ([presets.thumb] w in "
        "the file, or MEDIAPROXY_PRESETS__THUMB__W)")


@pytest.mark.parametrize("table, key, message", [
    ({"thumb": {"zoom": 2}}, "presets.thumb.zoom", "no plugin registered the parameter 'zoom'"),
    ({"thumb": {"w": 1, "width": 2}}, "presets.thumb.width", "'w' is given twice in the preset"),
    ({"thumb": {"preset": "a"}}, "presets.thumb.preset", "a preset cannot name another preset"),
    ({"thumb": {"q": 0}}, "presets.thumb.q", "quality must be a whole number from 1 to 100"),
    ({"thumb": {"q": 101}}, "presets.thumb.q", "quality must be a whole number from 1 to 100"),
    ({"thumb": {"fit": "squash"}}, "presets.thumb.fit",
     "fit must be one of contain, cover, fill, inside, outside"),
])
def test_a_bad_preset_is_a_config_error_naming_the_key(table, key, message):
    with pytest.raises(ConfigError) as raised:
        make_runtime({"presets": table})
    spelling = key.rsplit(".", 1)[1]
    assert raised.value.key == key
    assert str(raised.value) == (f"{key}: {message} ([presets.thumb] {spelling} in the file, "
                                 f"or MEDIAPROXY_PRESETS__THUMB__{spelling.upper()})")


@pytest.mark.parametrize("data, key, message", [
    ({"presets": 3}, "presets", "must be a table of tables"),
    ({"presets": {"Thumb": {}}}, "presets.Thumb", "is not a preset name"),
    ({"presets": {"a" * 65: {}}}, "presets." + "a" * 65, "is not a preset name"),
    ({"presets": {"t": 3}}, "presets.t", "must be a table ([presets.t] in the file, or "
                                         "MEDIAPROXY_PRESETS__T__PARAM)"),
    ({"presets": {"t": {"w": 1.5}}}, "presets.t.w", "1.5 is not a string, a whole number or a "
                                                    "boolean ([presets.t] w in the file, or "
                                                    "MEDIAPROXY_PRESETS__T__W)"),
    ({"presets": {"t": {"overrides": "maybe"}}}, "presets.t.overrides", '"maybe" is not one of'),
    ({"presets": {"t": {"W": 1}}}, "presets.t.W", "is not a parameter name"),
    ({"presets": {"t": {f"p{i}": 1 for i in range(33)}}}, "presets.t", "33 values; at most 32"),
    ({"presets": {f"p{i}": {} for i in range(257)}}, "presets", "257 presets; at most 256"),
    ({"routes": {"preset_overrides": "sometimes"}}, "routes.preset_overrides", '"sometimes"'),
])
def test_the_shape_is_checked_when_the_config_loads(data, key, message):
    with pytest.raises(ConfigError) as raised:
        load_config(environ={}, overrides=data)
    assert raised.value.key == key
    assert message in str(raised.value)


def test_the_bounds_themselves_load():
    names = {f"p{i}": {f"v{j}": 1 for j in range(32)} for i in range(256)}
    assert len(load_config(environ={}, overrides={"presets": names}).presets) == 256
    assert load_config(environ={}, overrides={"presets": {"a" * 64: {}}}).presets[0].values == ()


def test_check_config_reports_a_bad_preset(tmp_path, capsys, monkeypatch):
    for name in [n for n in __import__("os").environ if n.startswith("MEDIAPROXY_")]:
        monkeypatch.delenv(name)
    path = tmp_path / "mediaproxy.toml"
    path.write_text('[plugins]\nload_entrypoints = false\n[presets.thumb]\nfit = "squash"\n')
    assert cli.main(["check-config", "--config", str(path)]) == 2
    assert capsys.readouterr().err == (
        "configuration error: presets.thumb.fit: fit must be one of contain, cover, fill, "
        "inside, outside ([presets.thumb] fit in the file, or MEDIAPROXY_PRESETS__THUMB__FIT)\n")
    path.write_text('[plugins]\nload_entrypoints = false\n[presets.thumb]\nfit = "cover"\n')
    assert cli.main(["check-config", "--config", str(path)]) == 0
    assert '[presets.thumb]\nfit = "cover"\noverrides = "inherit"\n' in capsys.readouterr().out


def test_a_reload_with_a_bad_preset_is_refused(live_reactor, tmp_path, monkeypatch):
    for name in [n for n in __import__("os").environ if n.startswith("MEDIAPROXY_")]:
        monkeypatch.delenv(name)
    with start_proxy(source("/media/uploads/a.jpg"), overrides={"presets": PRESETS}) as proxy:
        before = proxy.runtime.config
        path = tmp_path / "mediaproxy.toml"
        path.write_text('[presets.thumb]\nw = 99999\n')
        call_in_reactor(reload_config, proxy.runtime, str(path))
        assert proxy.runtime.config is before
        path.write_text('[presets.small]\nw = 20\n')
        call_in_reactor(reload_config, proxy.runtime, str(path))
        assert [p.name for p in proxy.runtime.config.presets] == ["small"]
        assert_image(proxy.get("/media/uploads/a.jpg?preset=small")[2], (20, 15), "JPEG")


# -- the expansion against an oracle ------------------------------------------------------------

#: Every spelling of the built-in parameters -> the parameter (written out here, not read from
#: the registry: the oracle must not share the code under test).
SPELLINGS = {"w": "w", "width": "w", "h": "h", "height": "h", "fit": "fit", "pos": "pos",
             "position": "pos", "gravity": "pos", "bg": "bg", "background": "bg", "q": "q",
             "quality": "q", "fmt": "fmt", "format": "fmt", "enlarge": "enlarge", "trim": "trim"}
_VALUES = {
    "w": st.integers(0, 8192), "h": st.integers(0, 8192), "q": st.integers(1, 100),
    "trim": st.integers(0, 100), "enlarge": st.booleans(),
    "fit": st.sampled_from(["cover", "contain", "fill", "inside", "outside", "COVER"]),
    "pos": st.sampled_from(["centre", "center", "top-left", "north", "attention"]),
    "bg": st.sampled_from(["fff", "#00ff0080", "transparent", "ABCDEF"]),
    "fmt": st.sampled_from(["jpg", "jpeg", "webp", "auto", "png", "AVIF"]),
}


def as_query_text(value) -> str:
    if value is True or value is False:
        return "1" if value else "0"
    return str(value)


def assignments(min_size: int):
    """{spelling: TOML value}, at most one spelling per parameter."""
    return st.lists(st.sampled_from(sorted(SPELLINGS)), min_size=min_size, max_size=5,
                    unique_by=lambda s: SPELLINGS[s]).flatmap(
        lambda names: st.fixed_dictionaries({n: _VALUES[SPELLINGS[n]] for n in names}))


def oracle(presets, name, request, presets_only, overrides):
    """What the request (a dict of spellings) means: ("refused", error, parameter) or
    ("as", query pairs written out without a preset)."""
    explicit = {SPELLINGS[s] for s in request}
    if name is None:
        if presets_only and explicit:
            return ("refused", "preset_required", "preset")
        return ("as", list(request.items()))
    if name not in presets:
        return ("refused", "unknown_preset", "preset")
    values, own = presets[name]
    allowed = {"allow": True, "deny": False}.get(own if own != "inherit" else overrides,
                                                 not presets_only)
    if explicit and not allowed:
        return ("refused", "preset_override", min(explicit))
    written = [(s, as_query_text(v)) for s, v in request.items()]
    written += [(s, as_query_text(v)) for s, v in values.items() if SPELLINGS[s] not in explicit]
    return ("as", written)


PLAIN = make_runtime()


@settings(max_examples=150, deadline=None)
@given(presets=st.dictionaries(st.sampled_from(["thumb", "card", "x-1"]),
                               st.tuples(assignments(1),
                                         st.sampled_from(["inherit", "allow", "deny"])),
                               max_size=3),
       name=st.one_of(st.none(), st.sampled_from(["thumb", "card", "x-1", "gone"])),
       request=assignments(0), presets_only=st.booleans(),
       overrides=st.sampled_from(["auto", "allow", "deny"]))
def test_expansion_matches_the_oracle(presets, name, request, presets_only, overrides):
    config = load_config(environ={}, overrides={
        "routes": {"presets_only": presets_only, "preset_overrides": overrides},
        "presets": {n: {**values, "overrides": own} for n, (values, own) in presets.items()}})
    runtime = SimpleNamespace(config=config, params=PLAIN.params,
                              param_names=PLAIN.param_names)
    query = [(s, as_query_text(v)) for s, v in request.items()]
    if name is not None:
        query.append(("preset", name))
    got = routing.match(RequestInfo("GET", "/media/a.jpg", tuple(query)), runtime)
    expected = oracle(presets, name, request, presets_only, overrides)
    if expected[0] == "refused":
        assert isinstance(got, Rejection)
        assert (got.status, got.error, got.parameter) == (400, *expected[1:])
        return
    written = routing.match(RequestInfo("GET", "/media/a.jpg", tuple(expected[1])), PLAIN)
    if not expected[1]:   # nothing asked: no image request
        assert (got, written) == (None, None)
        return
    assert isinstance(got, ImageRequest) and got == written
    for fmt in (None, "webp", "jpeg"):
        assert cache_key(got, PLAIN.params, fmt) == cache_key(written, PLAIN.params, fmt)
