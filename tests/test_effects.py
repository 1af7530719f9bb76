"""The operations added for the thumbor endpoint, also query parameters (crop, flip, orig,
adaptive, clamp, max_bytes, grey, brightness, contrast, blur, rotate): geometry at its
boundaries against a small oracle, pixels where an operation moves them, and the refusals."""

import io

import pytest
from PIL import Image

from mediaproxy.imaging import fit_geometry, render
from mediaproxy.imaging.effects import apply_effects
from mediaproxy.models import Rejection, RequestInfo, TransformSpec
from mediaproxy.builtin import routing
from mediaproxy.testing import decode, make_image, make_runtime
from mediaproxy.testing.images import encode

RED, BLUE, GREEN, WHITE = (255, 0, 0), (0, 0, 255), (0, 255, 0), (255, 255, 255)


def halves(size=(40, 20), left=RED, right=BLUE, fmt="PNG"):
    """Left half ``left``, right half ``right``."""
    image = Image.new("RGB", size, right)
    image.paste(left, (0, 0, size[0] // 2, size[1]))
    return encode(image, fmt)


def out(data, **spec):
    rendered = render(data, TransformSpec(format="png", **spec))
    return decode(rendered.body)


def size_of(sw, sh, **spec):
    g = fit_geometry(sw, sh, TransformSpec(**spec))
    return (g.width, g.height)


@pytest.mark.parametrize("sw, sh, w, h, expected", [
    (800, 600, 300, 200, (300, 200)),      # same orientation: kept
    (800, 600, 200, 300, (300, 200)),      # landscape source, portrait box: turned
    (600, 800, 300, 200, (200, 300)),      # portrait source, landscape box: turned
    (600, 800, 200, 300, (200, 300)),
    (600, 600, 200, 300, (200, 300)),      # square source: never turned
    (800, 600, 300, 300, (300, 300)),      # square box: never turned
])
def test_adaptive_turns_the_box(sw, sh, w, h, expected):
    assert size_of(sw, sh, width=w, height=h, fit="fill", enlarge=True, adaptive=True) == \
        expected
    assert size_of(sw, sh, width=w, height=h, fit="fill", enlarge=True) == (w, h)


@pytest.mark.parametrize("w, h, fit, expected", [
    (1000, 400, "cover", (800, 400)),      # each side shrunk alone (thumbor's no_upscale)
    (400, 1000, "cover", (400, 600)),
    (1000, 1000, "fill", (800, 600)),
    (800, 600, "cover", (800, 600)),       # exactly the source: unchanged
    (801, 601, "contain", (800, 600)),
    (300, 200, "cover", (300, 200)),       # inside the source: unchanged
])
def test_clamp_shrinks_each_side_alone(w, h, fit, expected):
    assert size_of(800, 600, width=w, height=h, fit=fit, clamp=True) == expected
    # clamp means nothing with enlarge
    assert size_of(800, 600, width=w, height=h, fit=fit, clamp=True, enlarge=True) == (w, h)


def test_clamp_differs_from_keeping_the_box_shape():
    assert size_of(800, 600, width=1000, height=400, fit="cover") == (800, 320)


@pytest.mark.parametrize("orig, w, h, expected", [
    ("w", 0, 200, (800, 200)), ("h", 300, 0, (300, 600)), ("wh", 0, 0, (800, 600)),
    ("w", 0, 0, (800, 600)), ("", 300, 200, (300, 200)),
])
def test_orig_takes_the_sources_side(orig, w, h, expected):
    assert size_of(800, 600, width=w, height=h, fit="cover", enlarge=True, orig=orig) == \
        expected


def test_crop_is_taken_before_the_fit():
    data = halves((40, 20))
    # the left half only: all red, then enlarged to 40 wide keeping its 20x20 shape
    image = out(data, crop=(0, 0, 20, 20), width=40, enlarge=True)
    assert image.size == (40, 40)
    assert image.getpixel((39, 39))[:3] == RED
    # a crop reaching past the edges is clamped to the image
    assert out(data, crop=(30, 10, 400, 400)).size == (10, 10)
    assert out(data, crop=(30, 10, 400, 400)).getpixel((0, 0))[:3] == BLUE
    # a crop wholly outside the image is ignored (thumbor ignores it too)
    assert out(data, crop=(40, 0, 60, 20)).size == (40, 20)
    assert out(data, crop=(0, 20, 40, 30)).size == (40, 20)
    # one pixel wide is a crop
    assert out(data, crop=(39, 0, 40, 1)).size == (1, 1)


def test_crop_of_a_large_jpeg_is_not_decoded_at_reduced_scale():
    image = Image.new("RGB", (1600, 1200), WHITE)
    image.paste(RED, (0, 0, 100, 100))
    data = encode(image, "JPEG", quality=95)
    # a 100x100 crop shown at 100x100: a 1/8 decode would blur it into 12 pixels
    result = out(data, crop=(0, 0, 100, 100), width=100, height=100, fit="cover")
    assert result.size == (100, 100)
    r, g, b = result.getpixel((95, 95))[:3]
    assert r > 200 and g < 40 and b < 40


def test_crop_within_trim():
    image = Image.new("RGB", (40, 40), WHITE)
    image.paste(RED, (10, 10, 30, 30))
    data = encode(image, "PNG")
    assert out(data, trim=10).size == (20, 20)
    # the crop is in source pixels, intersected with the trim box
    assert out(data, trim=10, crop=(0, 0, 20, 40)).size == (10, 20)


@pytest.mark.parametrize("flip, left", [("", RED), ("h", BLUE), ("v", RED), ("hv", BLUE)])
def test_flip(flip, left):
    image = Image.new("RGB", (40, 20), BLUE)
    image.paste(RED, (0, 0, 20, 10))          # red: top left quarter
    result = out(encode(image, "PNG"), flip=flip)
    assert result.getpixel((0, 0))[:3] == (RED if flip in ("", ) else
                                           BLUE if flip in ("h", "v") else BLUE)
    top = "v" not in flip
    corner = (0, 0) if top else (0, 19)
    assert result.getpixel(corner)[:3] == left


def test_rotate_turns_counter_clockwise():
    image = apply_effects(Image.open(io.BytesIO(halves((40, 20)))).convert("RGB"), rotate=90)
    # counter-clockwise: the left half (red) goes to the bottom
    assert image.size == (20, 40)
    assert image.getpixel((0, 39)) == RED and image.getpixel((0, 0)) == BLUE
    turned = apply_effects(Image.open(io.BytesIO(halves((40, 20)))).convert("RGB"), rotate=180)
    assert turned.size == (40, 20)
    assert turned.getpixel((0, 0)) == BLUE and turned.getpixel((39, 0)) == RED
    assert apply_effects(Image.new("RGB", (40, 20)), rotate=270).size == (20, 40)


def test_grey_keeps_alpha():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 128))
    assert apply_effects(rgba, grey=True).mode == "LA"
    assert apply_effects(rgba, grey=True).getpixel((0, 0)) == (76, 128)
    assert apply_effects(Image.new("RGB", (4, 4), RED), grey=True).mode == "L"
    assert apply_effects(Image.new("L", (4, 4), 9), grey=True).getpixel((0, 0)) == 9


def oracle(v, brightness, contrast):
    """Brightness: add brightness % of 255; contrast: the 259-factor stretch about 128."""
    v = v + 255 * brightness / 100
    c = 255 * contrast / 100
    f = (259 * (c + 255)) / (255 * (259 - c))
    return min(255, max(0, round(f * (v - 128) + 128)))


@pytest.mark.parametrize("v, brightness, contrast", [
    (100, 20, 0), (100, -20, 0), (250, 20, 0), (5, -20, 0), (100, 0, 50), (100, 0, -50),
    (200, 10, 30), (128, 0, 100), (0, 100, 0), (255, -100, 0),
])
def test_brightness_and_contrast(v, brightness, contrast):
    rgba = Image.new("RGBA", (2, 2), (v, v, v, 77))
    result = apply_effects(rgba, brightness=brightness, contrast=contrast)
    expected = oracle(v, brightness, contrast)
    assert result.getpixel((0, 0)) == (expected, expected, expected, 77)


@pytest.mark.parametrize("brightness, contrast", [
    (30, 0), (-30, 0), (0, 37), (0, -63), (-45, 63), (12, -80), (100, 0), (0, 100)])
def test_curves_on_every_value(brightness, contrast):
    ramp = Image.new("L", (256, 1))
    ramp.putdata(range(256))
    for mode in ("L", "RGB"):
        result = apply_effects(ramp.convert(mode), brightness=brightness, contrast=contrast)
        values = [result.getpixel((x, 0)) for x in range(256)]
        values = [p if mode == "L" else p[0] for p in values]
        assert values == [oracle(v, brightness, contrast) for v in range(256)], mode


def test_no_effect_asked_leaves_the_image():
    image = Image.new("RGB", (4, 4), RED)
    assert apply_effects(image) is image
    assert apply_effects(image, rotate=0, blur=0, brightness=0, contrast=0) is image


def test_blur_softens_an_edge_only():
    image = Image.open(io.BytesIO(halves((40, 20), RED, BLUE))).convert("RGB")
    blurred = apply_effects(image, blur=2)
    assert blurred.getpixel((0, 10)) == RED and blurred.getpixel((39, 10)) == BLUE
    r, _, b = blurred.getpixel((19, 10))
    assert 0 < b < 255 and 0 < r < 255
    assert apply_effects(image, blur=0) is image


def test_max_bytes_lowers_the_quality():
    noisy = Image.effect_noise((300, 300), 80).convert("RGB")
    data = encode(noisy, "JPEG", quality=95)
    full = render(data, TransformSpec(format="jpeg", quality=90))
    limit = len(full.body) // 2
    smaller = render(data, TransformSpec(format="jpeg", quality=90, max_bytes=limit))
    assert len(smaller.body) <= limit < len(full.body)
    # out of reach (below quality 10): the first encode stays, as in thumbor
    tiny = render(data, TransformSpec(format="jpeg", quality=90, max_bytes=10))
    assert tiny.body == full.body
    # not a lossy format: nothing to lower
    png = render(data, TransformSpec(format="png", max_bytes=10))
    assert png.body == render(data, TransformSpec(format="png")).body


RUNTIME = make_runtime()


def query(q):
    return routing.match(RequestInfo(method="GET", path="/media/uploads/a.jpg",
                                     query=[tuple(p.split("=")) for p in q.split("&")]),
                         RUNTIME)


@pytest.mark.parametrize("q, parameter", [
    ("crop=1,2,3", "crop"), ("crop=1,2,1,4", "crop"), ("crop=1,4,2,4", "crop"),
    ("crop=a,b,c,d", "crop"), ("crop=0,0,1000001,1", "crop"), ("flip=x", "flip"),
    ("orig=x", "orig"), ("rotate=45", "rotate"), ("rotate=361", "rotate"),
    ("brightness=101", "brightness"), ("brightness=-101", "brightness"),
    ("contrast=1.5", "contrast"), ("blur=151", "blur"), ("blur=-1", "blur"),
    ("max_bytes=-1", "max_bytes"), ("grey=2", "grey"), ("adaptive=x", "adaptive"),
    ("clamp=x", "clamp"),
])
def test_query_refusals(q, parameter):
    result = query(q)
    assert isinstance(result, Rejection), result
    assert (result.status, result.parameter) == (400, parameter)


def test_query_values():
    assert query("crop=0,0,1,1").params["crop"] == (0, 0, 1, 1)
    assert query("crop=0,0,1000000,1000000").params["crop"] == (0, 0, 1000000, 1000000)
    assert query("flip=vh").params["flip"] == "hv"
    assert query("orig=hw").params["orig"] == "wh"
    assert query("rotate=-90").params["rotate"] == 270
    assert query("rotate=360").params["rotate"] == 0
    assert query("brightness=-100").params["brightness"] == -100
    assert query("contrast=100").params["contrast"] == 100
    assert query("blur=150").params["blur"] == 150
    assert query("grey=1").params["grey"] is True
    # grayscale is no alias: the example plugin (plugins/mediaproxy-example) registers it
    assert query("grayscale=1") is None


def test_effects_through_the_proxy(live_reactor):
    from mediaproxy.testing import start_proxy
    data = halves((40, 20), fmt="PNG")
    with start_proxy(files={"/media/uploads/h.png": data}) as proxy:
        image = decode(proxy.get("/media/uploads/h.png?rotate=90&flip=h&grey=1").body)
        assert (image.size, image.mode) == ((20, 40), "L")
        # flipped left-right before the turn: red ends up on top
        assert image.getpixel((0, 0)) == 76 and image.getpixel((0, 39)) == 29
        plain = proxy.get("/media/uploads/h.png?w=40")
        assert decode(plain.body).getpixel((0, 0)) == RED
        assert make_image  # the kit's maker is the one the other tests use
