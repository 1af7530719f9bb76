"""plugins/mediaproxy-watermark (installed editable by ``./dev setup``, loaded through its
``mediaproxy`` entry point) in real proxies with real origins and real images: the overlay's
pixels where its parameters put them and nowhere else, on every frame of an animation; the
overlay fetched once and decoded once for several renders; the cache key; a missing or broken
overlay answered with JSON naming ``wm`` and nothing cached; presets carrying a watermark;
thumbor's ``watermark()`` filter against geometry recorded from a real thumbor
(bench/thumbor_watermark_record.py); an overlay from an allowed host; disabled by name.

The geometry module (pure arithmetic) is checked exactly against thumbor's formulas written
out here, and by hypothesis against an oracle that places boxes by a different method."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mediaproxy.testing import (
    ImageOrigin, assert_image, call_in_reactor, decode, make_animated, make_image, start_origin,
    start_proxy,
)
from mediaproxy_watermark import geometry
from mediaproxy_watermark.draw import MAX_OVERLAY_PIXELS, MAX_TEXT
from PIL import Image, ImageChops, ImageSequence

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "thumbor_watermark.json"
BLUE, RED, MAGENTA = (0, 0, 255), (255, 0, 0), (255, 0, 255)


def png(size, colour, mode="RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, colour).save(out, "PNG")
    return out.getvalue()


def files() -> dict:
    return {
        "/media/a.png": png((400, 300), BLUE),                  # lossless: exact colours
        "/media/a.jpg": make_image((800, 600), colour=BLUE),
        "/media/anim.gif": make_animated("GIF", count=3, size=(60, 40)),
        "/media/anim.webp": make_animated("WEBP", count=3, size=(60, 40)),
        **{f"/media/logo{n}.png": png((100, 50), RED) for n in range(8)},
        "/media/magenta.png": png((20, 10), MAGENTA),
        "/media/half.png": png((100, 50), (255, 0, 0, 255), "RGBA"),
        "/media/text.txt": (200, b"not an image at all", "image/png", {}),
        "/media/broken.png": (200, b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "image/png", {}),
        "/media/huge.png": png((2001, 2000), RED),
        "/media/limit.png": png((2000, 2000), RED),
    }


@pytest.fixture(scope="module")
def proxy():
    with start_proxy(origin=ImageOrigin(files()), load_entrypoints=True,
                     overrides={"thumbor": {"allow_unsafe": True}}) as running:
        yield running


def flat(image: Image.Image) -> list:
    """Every pixel of ``image`` (Pillow 13 names it get_flattened_data)."""
    get = getattr(image, "get_flattened_data", None) or image.getdata
    return list(get())


def rgb(body) -> Image.Image:
    return decode(body).convert("RGB")


def red_box(image: Image.Image, colour=RED, tolerance=40):
    """The bounding box of the pixels within ``tolerance`` of ``colour`` in every channel
    (the oracle: Pillow's band arithmetic, no code of the plugin)."""
    masks = [band.point([255 if abs(v - c) <= tolerance else 0 for v in range(256)])
             for band, c in zip(image.convert("RGB").split(), colour)]
    return ImageChops.darker(ImageChops.darker(masks[0], masks[1]), masks[2]).getbbox()


def the_watermarker(proxy):
    return proxy.runtime.pm.get_plugin("mediaproxy_watermark.instance")


# -- geometry, exactly ---------------------------------------------------------------------

@pytest.mark.parametrize("raw, canonical", [
    ("center", "center"), (" CENTER ", "center"), ("0", "0"), ("-0", "-0"), ("10", "10"),
    ("-10", "-10"), ("007", "7"), ("8192", "8192"), ("-8192", "-8192"), ("100p", "100p"),
    ("-0p", "-0p"), ("25P", "25p")])
def test_an_axis_in_its_canonical_spelling(raw, canonical):
    assert geometry.parse_axis(raw, "x") == canonical


@pytest.mark.parametrize("raw", ["8193", "-8193", "101p", "", "1.5", "+3", "repeat", "p",
                                 "--1", "10px", "123456"])
def test_a_bad_axis_is_refused(raw):
    with pytest.raises(ValueError):
        geometry.parse_axis(raw, "x")


def test_an_axis_over_its_bound_names_the_bound():
    with pytest.raises(ValueError, match=r"^x must be at most 100p$"):
        geometry.parse_axis("101p", "x")
    with pytest.raises(ValueError, match=r"^y must be at most 8192$"):
        geometry.parse_axis("-8193", "y")


@pytest.mark.parametrize("axis, length, size, expected", [
    ("0", 300, 60, 0), ("10", 300, 60, 10), ("-10", 300, 60, 230), ("-0", 300, 60, 240),
    ("center", 300, 60, 120), ("center", 301, 60, 120), ("center", 50, 60, -5),
    ("center", 51, 60, -4),                 # int() truncates toward zero, as thumbor's does
    ("10p", 300, 60, 30), ("-20p", 200, 45, 115), ("5p", 338, 10, 17), ("5p", 330, 10, 17),
    ("5p", 310, 10, 16), ("100p", 300, 60, 300), ("-100p", 300, 60, -60), ("1p", 50, 1, 1)])
def test_thumbor_offsets(axis, length, size, expected):
    assert geometry.axis_offset(axis, length, size) == expected


@pytest.mark.parametrize("pos, expected", [
    ("nw", (7, 7)), ("n", (150, 7)), ("ne", (293, 7)), ("w", (7, 125)), ("c", (150, 125)),
    ("e", (293, 125)), ("sw", (7, 243)), ("s", (150, 243)), ("se", (293, 243))])
def test_named_positions_with_a_margin(pos, expected):
    assert geometry.place((400, 300), (100, 50), pos, 7) == expected


def test_an_offset_replaces_the_named_position_on_its_axis_only():
    assert geometry.place((400, 300), (100, 50), "se", 7, x="10") == (10, 243)
    assert geometry.place((400, 300), (100, 50), "se", 7, y="-0") == (293, 250)
    assert geometry.place((400, 300), (100, 50), "nw", 7, "center", "center") == (150, 125)


@pytest.mark.parametrize("canvas, natural, w, h, expected", [
    ((400, 300), (100, 50), 0, 0, (100, 50)),        # its own size
    ((400, 300), (100, 50), 50, 0, (200, 100)),      # half the width, aspect kept
    ((300, 200), (800, 600), 20, 0, (60, 45)),       # thumbor's cases (the fixture)
    ((300, 200), (800, 600), 0, 25, (67, 50)),
    ((300, 200), (800, 600), 10, 10, (27, 20)),      # the height binds
    ((300, 200), (600, 800), 10, 10, (15, 20)),
    ((300, 200), (800, 200), 10, 10, (30, 8)),       # the width binds
    ((100, 100), (100, 100), 10, 10, (10, 10)),      # a tie: the width's branch
    ((400, 300), (800, 600), 0, 0, (400, 300)),      # larger than the output: shrunk to fit
    ((400, 300), (900, 600), 0, 0, (400, 266)),
    ((400, 300), (600, 900), 0, 0, (200, 300)),
    ((400, 300), (400, 300), 0, 0, (400, 300)),      # exactly the output: kept
    ((400, 300), (401, 300), 0, 0, (400, 299)),
    ((400, 300), (400, 301), 0, 0, (398, 300)),
    ((400, 300), (1000, 1), 100, 0, (400, 1)),       # never below one pixel
    ((400, 300), (1, 1000), 0, 1, (1, 3)),
    ((10, 10), (1, 5000), 0, 0, (1, 10)),
    ((400, 300), (100, 400), 100, 0, (75, 300)),     # scaled past the output's height
])
def test_overlay_size(canvas, natural, w, h, expected):
    assert geometry.overlay_size(canvas, natural, w, h) == expected


@settings(max_examples=200, deadline=None)
@given(cw=st.integers(1, 3000), ch=st.integers(1, 3000), ow=st.integers(1, 3000),
       oh=st.integers(1, 3000), pos=st.sampled_from(sorted(geometry.POSITIONS)),
       margin=st.integers(0, 50))
def test_a_named_position_against_an_independent_oracle(cw, ch, ow, oh, pos, margin):
    size = geometry.overlay_size((cw, ch), (ow, oh))
    assert 1 <= size[0] <= cw and 1 <= size[1] <= ch
    if (ow, oh) != size:   # shrunk: one side touches the output, the aspect kept within 1 px
        assert size[0] == cw or size[1] == ch
        assert abs(size[0] * oh - size[1] * ow) <= max(ow, oh)
    left, top = geometry.place((cw, ch), size, pos, margin)
    # the oracle: each compass letter pins one edge; no letter on an axis centres it
    want_left = {"w": margin, "e": cw - size[0] - margin}.get(
        next((c for c in pos if c in "we"), ""), int((cw - size[0]) / 2))
    want_top = {"n": margin, "s": ch - size[1] - margin}.get(
        next((c for c in pos if c in "ns"), ""), int((ch - size[1]) / 2))
    if pos == "c":
        want_left, want_top = int((cw - size[0]) / 2), int((ch - size[1]) / 2)
    assert (left, top) == (want_left, want_top)


# -- the proxy --------------------------------------------------------------------------------

def test_an_overlay_lands_where_asked_fetched_once_and_decoded_once(proxy):
    first = proxy.get("/media/a.jpg?w=400&wm=/media/logo0.png")
    assert (first.status, first.headers["x-cache"]) == (200, "MISS")
    image = assert_image(first.body, (400, 300), "JPEG").convert("RGB")
    # se, margin 10: the 100x50 logo's box is (290, 240)-(390, 290); a JPEG pixel is the
    # logo's when it is nearer red than blue
    assert red_box(image, tolerance=127) == (290, 240, 390, 290)
    assert image.getpixel((340, 265))[0] > 230 and image.getpixel((10, 10))[2] > 230
    again = proxy.get("/media/a.jpg?w=200&wm=/media/logo0.png")
    assert red_box(rgb(again.body), tolerance=127) == (90, 90, 190, 140)
    assert proxy.origin.hits["/media/logo0.png"] == 1
    assert proxy.origin.hits["/media/a.jpg"] == 1
    assert the_watermarker(proxy)._decoded["/media/logo0.png"][1].size == (100, 50)
    hit = proxy.get("/media/a.jpg?w=400&wm=/media/logo0.png")
    assert (hit.headers["x-cache"], hit.body) == ("HIT-MEMORY", first.body)


def test_one_decode_serves_many_renders(proxy):
    watermarker = the_watermarker(proxy)
    before = watermarker.decodes
    for width in (100, 150, 250):
        assert proxy.get(f"/media/a.png?w={width}&wm=/media/logo1.png").status == 200
    assert watermarker.decodes - before == 1
    assert proxy.origin.hits["/media/logo1.png"] == 1


@pytest.mark.parametrize("pos, box", [
    ("nw", (0, 0, 100, 50)), ("n", (150, 0, 250, 50)), ("ne", (300, 0, 400, 50)),
    ("w", (0, 125, 100, 175)), ("c", (150, 125, 250, 175)), ("e", (300, 125, 400, 175)),
    ("sw", (0, 250, 100, 300)), ("s", (150, 250, 250, 300)), ("se", (300, 250, 400, 300))])
def test_every_position_exactly_on_a_lossless_output(proxy, pos, box):
    response = proxy.get(f"/media/a.png?wm=/media/logo2.png&wm_pos={pos}&wm_margin=0")
    image = assert_image(response.body, (400, 300), "PNG").convert("RGB")
    assert red_box(image, tolerance=0) == box
    assert red_box(image, BLUE, tolerance=0) is not None
    # every pixel is the logo's or the source's, nothing else
    assert set(flat(image)) == {RED, BLUE}


def test_margin_scale_and_offsets(proxy):
    image = rgb(proxy.get("/media/a.png?wm=/media/logo2.png&wm_pos=nw&wm_margin=33").body)
    assert red_box(image, tolerance=0) == (33, 33, 133, 83)
    image = rgb(proxy.get("/media/a.png?wm=/media/logo2.png&wm_scale=50&wm_pos=c").body)
    assert red_box(image, tolerance=0) == (100, 100, 300, 200)
    image = rgb(proxy.get("/media/a.png?wm=/media/logo2.png&wm_x=-0&wm_y=10p").body)
    assert red_box(image, tolerance=0) == (300, 30, 400, 80)


def test_opacity_blends(proxy):
    image = rgb(proxy.get("/media/a.png?wm=/media/logo2.png&wm_opacity=50&wm_pos=nw"
                          "&wm_margin=0").body)
    # alpha 255 * 50 // 100 = 127 over blue: red 127/255, blue 128/255
    assert image.getpixel((50, 25)) == (127, 0, 128)
    assert image.getpixel((150, 25)) == BLUE
    image = rgb(proxy.get("/media/a.png?wm=/media/logo2.png&wm_opacity=0").body)
    assert set(flat(image)) == {BLUE}


def test_an_rgba_output_keeps_its_alpha_under_the_overlay(proxy):
    proxy.origin.files["/media/clear.png"] = png((200, 100), (0, 0, 255, 0), "RGBA")
    image = decode(proxy.get("/media/clear.png?wm=/media/half.png&wm_scale=50&wm_pos=nw"
                             "&wm_margin=0").body)
    assert image.mode == "RGBA"
    assert image.getpixel((10, 10)) == (255, 0, 0, 255)
    assert image.getpixel((150, 80))[3] == 0


def test_text(proxy):
    plain = rgb(proxy.get("/media/a.png?w=400").body)
    marked = rgb(proxy.get("/media/a.png?w=400&wm_text=Hello%20world&wm_pos=c").body)
    assert marked.size == (400, 300)
    changed = Image.frombytes("L", marked.size, bytes(
        255 if a != b else 0 for a, b in zip(flat(plain), flat(marked))))
    left, top, right, bottom = changed.getbbox()
    # centred: as much room on both sides (one pixel of rounding), within the middle band
    assert abs(left - (400 - right)) <= 1 and abs(top - (300 - bottom)) <= 1
    assert 60 < right - left < 300 and 10 < bottom - top < 60
    whites = [p for p in flat(marked.crop((left, top, right, bottom))) if min(p) > 240]
    assert len(whites) > 100
    # wm_scale sizes the text by the output's width
    wide = rgb(proxy.get("/media/a.png?w=400&wm_text=Hello%20world&wm_pos=c"
                         "&wm_scale=80").body)
    changed = Image.frombytes("L", wide.size, bytes(
        255 if a != b else 0 for a, b in zip(flat(plain), flat(wide))))
    left, _, right, _ = changed.getbbox()
    assert 300 <= right - left <= 330


@pytest.mark.parametrize("path, fmt", [("/media/anim.gif", "GIF"), ("/media/anim.webp", "WEBP")])
def test_every_frame_of_an_animation(proxy, path, fmt):
    response = proxy.get(f"{path}?wm=/media/magenta.png&wm_pos=nw&wm_margin=0")
    assert response.status == 200
    image = decode(response.body)
    assert image.format == fmt
    frames = [frame.convert("RGB") for frame in ImageSequence.Iterator(image)]
    assert len(frames) == 3
    backgrounds = [RED, (0, 160, 0), BLUE]
    for frame, background in zip(frames, backgrounds):
        assert frame.size == (60, 40)
        assert all(abs(a - b) <= 40 for a, b in zip(frame.getpixel((10, 5)), MAGENTA))
        assert all(abs(a - b) <= 40 for a, b in zip(frame.getpixel((40, 25)), background))


def test_the_cache_key(proxy):
    plain = proxy.cache_key("/media/a.jpg?w=300")
    # the parameters at their defaults add nothing to a key
    assert proxy.cache_key("/media/a.jpg?w=300&wm_pos=se&wm_margin=10&wm_opacity=100"
                           "&wm_scale=0&wm_scale_h=0") == plain
    keys = {proxy.cache_key(f"/media/a.jpg?w=300&{q}") for q in (
        "wm=/media/logo3.png", "wm=/media/logo4.png", "wm=/media/logo3.png&wm_pos=nw",
        "wm=/media/logo3.png&wm_margin=0", "wm=/media/logo3.png&wm_opacity=50",
        "wm=/media/logo3.png&wm_scale=20", "wm=/media/logo3.png&wm_scale_h=20",
        "wm=/media/logo3.png&wm_x=5", "wm=/media/logo3.png&wm_y=5", "wm_text=a",
        "wm_text=b")}
    assert len(keys) == 11 and plain not in keys
    # spellings of one value: one key
    assert (proxy.cache_key("/media/a.jpg?w=300&wm=/media/logo3.png&wm_pos=northwest")
            == proxy.cache_key("/media/a.jpg?w=300&wm=/media/logo3.png&wm_pos=nw"))


@pytest.mark.parametrize("query, status, error, parameter", [
    ("wm=/media/missing.png", 404, "watermark_not_found", "wm"),
    ("wm=/media/text.txt", 422, "invalid_watermark", "wm"),
    ("wm=/media/broken.png", 422, "invalid_watermark", "wm"),
    ("wm=/media/huge.png", 422, "watermark_too_large", "wm"),
    ("wm=media/logo0.png", 400, "invalid_parameter", "wm"),
    ("wm=/media/../logo0.png", 400, "invalid_parameter", "wm"),
    ("wm=http://evil.example/x.png", 400, "invalid_parameter", "wm"),
    ("wm=ftp://127.0.0.1/x.png", 400, "invalid_parameter", "wm"),
    ("wm_text=" + "x" * (MAX_TEXT + 1), 400, "invalid_parameter", "wm_text"),
    ("wm_text=a%0Ab", 400, "invalid_parameter", "wm_text"),
    ("wm=/media/logo0.png&wm_text=hi", 400, "invalid_parameter", "wm_text"),
    ("wm_pos=middle", 400, "invalid_parameter", "wm_pos"),
    ("wm_margin=1001", 400, "invalid_parameter", "wm_margin"),
    ("wm_opacity=101", 400, "invalid_parameter", "wm_opacity"),
    ("wm_scale=101", 400, "invalid_parameter", "wm_scale"),
    ("wm_scale_h=-1", 400, "invalid_parameter", "wm_scale_h"),
    ("wm_x=8193", 400, "invalid_parameter", "wm_x"),
    ("wm_y=101p", 400, "invalid_parameter", "wm_y"),
])
def test_a_bad_watermark_is_json_naming_it(proxy, query, status, error, parameter):
    got = proxy.json(f"/media/a.jpg?w=120&{query}")
    assert (got.status, got.data["error"], got.data["parameter"]) == (status, error, parameter)
    assert got.headers["content-type"].startswith("application/json")


def test_the_limits_themselves_are_accepted(proxy):
    assert proxy.get(f"/media/a.jpg?w=120&wm_text={'x' * MAX_TEXT}").status == 200
    assert proxy.get("/media/a.jpg?w=120&wm=/media/limit.png").status == 200
    assert 2000 * 2000 == MAX_OVERLAY_PIXELS


def cached(proxy, url):
    key = proxy.cache_key(url)
    return call_in_reactor(lambda: proxy.runtime.cache.get(key))


def test_an_overlay_that_was_no_image_leaves_nothing_cached(proxy):
    proxy.origin.files["/media/later.png"] = (200, b"<html>a page</html>", "image/png", {})
    url = "/media/a.png?w=90&wm=/media/later.png&wm_pos=nw&wm_margin=0"
    refused = proxy.json(url)
    assert (refused.status, refused.data["error"]) == (422, "invalid_watermark")
    assert cached(proxy, url) is None
    proxy.origin.files["/media/later.png"] = png((30, 20), RED)
    fixed = proxy.get(url)
    assert (fixed.status, fixed.headers["x-cache"]) == (200, "MISS")
    assert red_box(rgb(fixed.body), tolerance=0) == (0, 0, 30, 20)
    assert cached(proxy, url) is not None
    # one that passes the sniff but does not decode: refused in the pool, nothing cached
    broken = "/media/a.png?w=91&wm=/media/broken.png"
    assert proxy.json(broken).data["error"] == "invalid_watermark"
    assert cached(proxy, broken) is None


def test_a_preset_carries_the_watermark_and_presets_only_keeps_it_on(proxy):
    presets = {"shop": {"w": 200, "fmt": "png", "wm": "/media/logo5.png", "wm_pos": "nw",
                        "wm_margin": 0}}
    with start_proxy(origin=ImageOrigin(files()), load_entrypoints=True,
                     overrides={"presets": presets, "routes": {"presets_only": True}}) as p:
        response = p.get("/media/a.png?preset=shop")
        image = assert_image(response.body, (200, 150), "PNG").convert("RGB")
        assert red_box(image, tolerance=0) == (0, 0, 100, 50)
        for query in ("preset=shop&wm_opacity=0", "preset=shop&wm=/media/magenta.png",
                      "w=200"):
            refused = p.json(f"/media/a.png?{query}")
            assert refused.status == 400, query
            assert refused.data["error"] == (
                "preset_override" if "preset=" in query else "preset_required"), query
        # the same key as its explicit twin: a preset is its parameters written out
        assert p.cache_key("/media/a.png?preset=shop") == proxy.cache_key(
            "/media/a.png?w=200&fmt=png&wm=/media/logo5.png&wm_pos=nw&wm_margin=0")


def test_disabled_by_name_the_watermark_is_gone():
    origin = ImageOrigin(files())
    with start_proxy(origin=origin, load_entrypoints=True,
                     overrides={"plugins": {"disabled": ["watermark"]}}) as p:
        marked = p.get("/media/a.png?w=200&wm=/media/logo6.png")
        plain = p.get("/media/a.png?w=200")
        assert marked.status == 200 and marked.body == plain.body
        assert set(flat(rgb(marked.body))) == {BLUE}
        assert origin.hits["/media/logo6.png"] == 0
        assert p.runtime.pm.get_plugin("mediaproxy_watermark.instance") is None


def test_an_overlay_from_an_allowed_host_through_the_ssrf_guard():
    logos = ImageOrigin({"/brand/logo.png": png((40, 20), RED)})
    listening = start_origin(logos)
    port = listening.getHost().port
    try:
        with start_proxy(origin=ImageOrigin(files()), load_entrypoints=True,
                         overrides={"ssrf": {"allowed_hosts": ["127.0.0.1"],
                                             "allow_networks": ["127.0.0.0/8"]}}) as p:
            url = f"http://127.0.0.1:{port}/brand/logo.png"
            for width in (400, 200):
                response = p.get(f"/media/a.png?w={width}&wm={url}&wm_pos=nw&wm_margin=0")
                assert red_box(rgb(response.body), tolerance=0) == (0, 0, 40, 20)
            assert logos.hits["/brand/logo.png"] == 1
            missing = p.json(f"/media/a.png?w=100&wm=http://127.0.0.1:{port}/brand/none.png")
            assert (missing.status, missing.data["parameter"]) == (404, "wm")
            other = p.json("/media/a.png?w=100&wm=http://localhost:1/x.png")
            assert (other.status, other.data["parameter"]) == (400, "wm")
    finally:
        call_in_reactor(listening.stopListening)


# -- thumbor -------------------------------------------------------------------------------

RECORDED = json.loads(FIXTURE.read_text())


@pytest.fixture(scope="module")
def thumbor_proxy():
    source, overlay = RECORDED["source"], RECORDED["overlay"]
    stand_ins = {f"/media/uploads/{source[0]}": make_image(tuple(source[1:]), colour=BLUE),
                 f"/media/uploads/{overlay[0]}": png(tuple(overlay[1:]), RED)}
    with start_proxy(files=stand_ins, load_entrypoints=True,
                     overrides={"thumbor": {"allow_unsafe": True}}) as running:
        yield running


@pytest.mark.parametrize("case", RECORDED["cases"], ids=lambda c: f"{c['options']}:{c['args']}")
def test_thumbor_watermark_geometry_matches_the_real_thumbor(thumbor_proxy, case):
    source, overlay = RECORDED["source"][0], RECORDED["overlay"][0]
    response = thumbor_proxy.get(f"/thumbor/unsafe/{case['options']}/filters:watermark("
                                 f"media/uploads/{overlay},{case['args']})/media/uploads/{source}")
    assert response.status == 200
    image = rgb(response.body)
    assert list(image.size) == case["size"]
    box = red_box(image, tolerance=100)
    # thumbor's box is where its JPEG differs past a threshold: an edge column may fall short
    assert all(abs(a - b) <= 1 for a, b in zip(box, case["box"])), (box, case["box"])


def test_a_thumbor_watermark_and_its_query_twin_share_one_entry(proxy):
    first = proxy.get("/thumbor/unsafe/200x100/filters:watermark(media/logo7.png,10,-10,50,"
                      "25)/media/a.jpg")
    assert (first.status, first.headers["x-cache"]) == (200, "MISS")
    twin = proxy.get("/media/a.jpg?w=200&h=100&fit=cover&enlarge=1&wm=/media/logo7.png"
                     "&wm_x=10&wm_y=-10&wm_opacity=50&wm_scale=25")
    assert (twin.headers["x-cache"], twin.body) == ("HIT-MEMORY", first.body)
    assert proxy.origin.hits["/media/logo7.png"] == 1


@pytest.mark.parametrize("filters", [
    "watermark(media/logo0.png,0,0)", "watermark(media/logo0.png,repeat,0,0)",
    "watermark(media/logo0.png,0,0,101)", "watermark(media/logo0.png,0,0,0,-5)",
    "watermark(media/logo0.png,x,0,0)", "watermark(media/../a.png,0,0,0)",
    "watermark(evil.example/a.png,0,0,0,10,10,10)"])
def test_bad_thumbor_watermark_arguments(proxy, filters):
    got = proxy.json(f"/thumbor/unsafe/100x100/filters:{filters}/media/a.jpg")
    assert (got.status, got.data["error"], got.data["parameter"]) == (
        400, "invalid_filter", "filters:watermark")


def test_a_missing_overlay_is_never_remembered_as_the_image_missing(proxy):
    proxy.origin.files["/media/b.jpg"] = make_image((300, 200), colour=BLUE)
    refused = proxy.json("/media/b.jpg?w=100&wm=/media/missing2.png")
    assert (refused.status, refused.data["error"]) == (404, "watermark_not_found")
    plain = proxy.get("/media/b.jpg?w=100")
    assert (plain.status, plain.headers["x-cache"]) == (200, "MISS")
    assert proxy.origin.hits["/media/b.jpg"] == 1          # kept by the source cache
    assert proxy.origin.hits["/media/missing2.png"] == 1


def test_with_a_file_layer_the_overlay_is_fetched_once(tmp_path):
    origin = ImageOrigin(files())
    with start_proxy(origin=origin, load_entrypoints=True,
                     overrides={"cache": {"file": {"dir": str(tmp_path)}}}) as p:
        for width in (300, 200):
            response = p.get(f"/media/a.png?w={width}&wm=/media/logo0.png&wm_pos=nw"
                             "&wm_margin=0")
            assert red_box(rgb(response.body), tolerance=0) == (0, 0, 100, 50)
        assert (origin.hits["/media/logo0.png"], origin.hits["/media/a.png"]) == (1, 1)
        missing = p.json("/media/a.png?w=100&wm=/media/missing.png")
        assert (missing.status, missing.data["parameter"]) == (404, "wm")
        assert p.get("/media/a.png?w=100").status == 200


def test_the_shared_scaled_overlays_are_bounded_in_bytes():
    from mediaproxy_watermark.draw import DrawnCache

    cache = DrawnCache(max_bytes=3 * 10 * 10 * 4)          # three 10x10 RGBA overlays
    origin, other = Image.new("RGBA", (5, 5)), Image.new("RGBA", (5, 5))
    tiles = [Image.new("RGBA", (10, 10)) for _ in range(4)]
    for index, tile in enumerate(tiles[:3]):
        cache.put(index, tile, origin)
    assert [cache.get(i, origin) for i in range(3)] == tiles[:3]
    assert cache.get(0, other) is None                      # another decode never matches
    cache.get(0, origin)                                    # 0 used last: 1 is the oldest
    cache.put(3, tiles[3], origin)
    assert cache.get(1, origin) is None
    assert [cache.get(i, origin) for i in (0, 2, 3)] == [tiles[0], tiles[2], tiles[3]]
    cache.put(9, Image.new("RGBA", (10, 31)), origin)       # over the whole bound: not kept
    assert cache.get(9, origin) is None
    assert [cache.get(i, origin) for i in (0, 2, 3)] == [tiles[0], tiles[2], tiles[3]]
    cache.put(2, tiles[1], origin)                          # replaced in place, same bytes
    assert [cache.get(i, origin) for i in (0, 2, 3)] == [tiles[0], tiles[1], tiles[3]]


def test_an_overlay_let_go_by_the_bounded_store_is_still_drawn(monkeypatch):
    """The overlay of a request whose image arrives late is decoded, then pushed out of the
    store of decoded overlays by another request's (a store of 0 bytes keeps only the last):
    the late render still draws its own, handed over with the image, never a render without
    the watermark cached under its key."""
    import mediaproxy_watermark
    from concurrent.futures import ThreadPoolExecutor
    from mediaproxy.testing import wait_for

    monkeypatch.setattr(mediaproxy_watermark, "DECODED_BYTES", 0)
    origin = ImageOrigin({**files(), "/media/late.png": png((200, 100), BLUE)})
    origin.hold("/media/late.png")
    with start_proxy(origin=origin, load_entrypoints=True) as p, \
            ThreadPoolExecutor(1) as pool:
        late = pool.submit(p.get, "/media/late.png?wm=/media/logo0.png&wm_pos=nw&wm_margin=0")
        watermarker = the_watermarker(p)
        wait_for(lambda: "/media/logo0.png" in watermarker._decoded, 10, "logo0 decoded")
        other = p.get("/media/a.png?w=50&wm=/media/magenta.png")
        assert other.status == 200
        assert list(watermarker._decoded) == ["/media/magenta.png"]      # logo0 let go
        origin.release()
        response = late.result(timeout=30)
        assert red_box(rgb(response.body), tolerance=0) == (0, 0, 100, 50)


# -- the step's memory, declared and real --------------------------------------------------------

def test_the_declared_memory_covers_the_real_peak_of_the_stamp():
    """The step declares STAMP_MEMORY bytes per output pixel for the render's memory
    estimate. Measured as tests/test_imaging_memory.py measures renders (the kernel's
    high-water mark in a fork), with the worst overlay: one as large as the output, half
    transparent, on each kind of frame (RGB pasted, L converted first, RGBA composited)."""
    from mediaproxy.imaging import estimate_bytes
    from mediaproxy.models import TransformSpec, TransformStep
    from mediaproxy.testing.images import encode, noise
    from mediaproxy_watermark import ORDER, STAMP_MEMORY
    from mediaproxy_watermark.draw import Layout, Stamp

    from .test_imaging_memory import probe

    overlay = noise(2000, 2000, seed=3).convert("RGBA")
    overlay.putalpha(128)
    step = TransformStep("watermark", Stamp(Layout(pos="c", width_pct=100), overlay=overlay),
                         order=ORDER, memory=STAMP_MEMORY)
    frame = noise(2000, 1500)
    sources = {"rgb": encode(frame, "JPEG", quality=90),
               "grey": encode(frame.convert("L"), "PNG", compress_level=0),
               "rgba": encode(frame.convert("RGBA"), "PNG", compress_level=0)}
    out = TransformSpec(width=2000, format="png", png_compress_level=0)
    measured = probe([case for name, data in sources.items()
                      for case in ((name, data, out), (f"{name} stamped", data, out, [step]))])
    for name, data in sources.items():
        (plain, done), (stamped, stamped_done) = measured[name], measured[f"{name} stamped"]
        assert done == stamped_done == [2000, 1500, 1], (name, done, stamped_done)
        assert stamped - plain <= STAMP_MEMORY * 2000 * 1500, (name, plain, stamped)
        assert stamped <= estimate_bytes(data, out, steps=[step]), (name, stamped)
