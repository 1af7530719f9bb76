"""
Output geometry over HTTP: a real proxy in front of a real origin, the answer decoded.

Every expected size below is worked out by hand from the documented rules (sharp's semantics,
see mediaproxy.imaging): a free axis (absent or 0) follows the aspect ratio, nothing is
enlarged unless ``enlarge=1``, and the caps of ``[limits]`` refuse what would be too large,
also when the size only becomes known from the source (the output budget).
"""

from __future__ import annotations

import json

import pytest
from PIL import Image, ImageDraw

from mediaproxy.testing.images import decode, encode, noise
from mediaproxy.testing import ImageOrigin, start_proxy


def _bordered(width=400, height=200) -> bytes:
    """White, with a black block in the middle half: trim finds a 200x100 content box."""
    image = Image.new("RGB", (width, height), (255, 255, 255))
    ImageDraw.Draw(image).rectangle((width // 4, height // 4, width * 3 // 4 - 1,
                                     height * 3 // 4 - 1), fill=(0, 0, 0))
    return encode(image, "PNG")


def _png(width, height) -> bytes:
    return encode(Image.new("RGB", (width, height), (90, 140, 200)), "PNG")


FILES = {
    "/media/wide.png": _png(400, 200),
    "/media/tall.png": _png(200, 400),
    "/media/bordered.png": _bordered(),
    "/media/noisy.png": encode(noise(200, 100), "PNG"),
    "/media/strip.png": _png(4000, 50),          # a very wide source
    "/media/strip2000.png": _png(2000, 50),
    "/media/column.png": _png(50, 4000),         # a very tall source
    "/media/column2000.png": _png(50, 2000),
    "/media/src200.png": _png(200, 100),
    "/media/line.png": _png(1000, 10),
}


def _origin():
    return ImageOrigin({path: (200, body, "image/png", []) for path, body in FILES.items()})


@pytest.fixture(scope="module")
def proxy(live_reactor):
    running = start_proxy(origin=_origin())
    yield running
    running.stop()


def size_of(proxy, path):
    status, headers, body, _ = proxy.get(path)
    assert status == 200, body
    return decode(body).size


def over_budget(proxy, path) -> bool:
    """The refusal of an output over the budget: known only once the source is decoded, it is
    answered like any unusable source, with the placeholder, the status 400 and the error in
    X-Placeholder, never stored."""
    status, headers, body, _ = proxy.get(path)
    assert (status, headers.get("x-placeholder")) == (400, "output_too_large"), (status, body)
    assert headers["cache-control"] == "no-store"
    return True


def refusal(proxy, path):
    """A JSON refusal, decided before anything is fetched."""
    before = sum(proxy.origin.hits.values())
    status, headers, body, _ = proxy.get(path)
    assert sum(proxy.origin.hits.values()) == before
    assert headers["content-type"] == "application/json"
    data = json.loads(body)
    return status, data["error"], data["parameter"]


# -- every free-axis combination, for every fit --------------------------------------------------

FITS = ["inside", "outside", "cover", "contain", "fill"]

#: (query, fit) -> size, for the 400x200 source. One axis: the ratio follows from it, whatever
#: the fit. Both: inside fits the box, outside covers it, cover/contain/fill are the box.
BOTH = {"inside": (100, 50), "outside": (200, 100), "cover": (100, 100),
        "contain": (100, 100), "fill": (100, 100)}


@pytest.mark.parametrize("fit", FITS)
@pytest.mark.parametrize("axes, expected", [
    ("w=100", (100, 50)), ("h=50", (100, 50)),
    ("w=100&h=0", (100, 50)), ("w=0&h=50", (100, 50)),
    ("width=100", (100, 50)), ("height=50", (100, 50)),
    ("", (400, 200)), ("w=0", (400, 200)), ("h=0", (400, 200)), ("w=0&h=0", (400, 200)),
    ("w=100&h=100", None),
])
def test_every_free_axis_combination_for_every_fit(proxy, fit, axes, expected):
    query = "&".join(part for part in (axes, f"fit={fit}") if part)
    assert size_of(proxy, f"/media/wide.png?{query}") == (expected or BOTH[fit])


@pytest.mark.parametrize("query, expected", [
    ("h=100", (50, 100)), ("w=50", (50, 100)), ("w=100&h=100&fit=inside", (50, 100)),
    ("w=100&h=100&fit=outside", (100, 200)), ("w=100&h=100&fit=cover", (100, 100)),
])
def test_a_tall_source(proxy, query, expected):
    assert size_of(proxy, f"/media/tall.png?{query}") == expected


@pytest.mark.parametrize("query, expected", [
    # nothing is enlarged by default: the source's own size, or the box shrunk to fit in it
    ("w=800", (400, 200)), ("h=400", (400, 200)), ("w=800&h=800&fit=inside", (400, 200)),
    ("w=800&h=800&fit=outside", (400, 200)), ("w=800&h=800&fit=cover", (200, 200)),
    ("w=800&h=800&fit=contain", (200, 200)), ("w=800&h=800&fit=fill", (200, 200)),
    # enlarge=1 scales up
    ("w=800&enlarge=1", (800, 400)), ("h=400&enlarge=1", (800, 400)),
    ("w=800&h=800&fit=inside&enlarge=1", (800, 400)),
    ("w=800&h=800&fit=outside&enlarge=1", (1600, 800)),
    ("w=800&h=800&fit=cover&enlarge=1", (800, 800)),
])
def test_enlarge(proxy, query, expected):
    assert size_of(proxy, f"/media/wide.png?{query}") == expected


# -- boundaries of every numeric parameter ----------------------------------------------------

@pytest.mark.parametrize("query, expected", [
    ("w=1", (1, 1)), ("h=1", (2, 1)), ("w=1&h=1&fit=fill", (1, 1)),
    # the maximum itself is accepted (inclusive); not enlarged, so the source's size
    ("w=8192", (400, 200)), ("h=8192", (400, 200)), ("width=8192", (400, 200)),
    # w x h exactly max_output_pixels (7680 x 4320) is accepted
    ("w=7680&h=4320", (400, 200)),
])
def test_size_boundaries_accepted(proxy, query, expected):
    assert size_of(proxy, f"/media/wide.png?{query}") == expected


@pytest.mark.parametrize("query, parameter", [
    ("w=8193", "w"), ("h=8193", "h"), ("width=8193", "w"), ("height=8193", "h"),
    ("w=-1", "w"), ("h=-1", "h"), ("w=1.5", "w"), ("h=abc", "h"),
    ("w=8192&h=8192", "w"),          # 67 Mpx > max_output_pixels
    ("w=7680&h=4321", "w"),          # one row more than max_output_pixels
    ("q=0", "q"), ("q=101", "q"), ("quality=0", "q"), ("trim=101", "trim"), ("trim=-1", "trim"),
])
def test_out_of_range_is_a_400_naming_the_parameter(proxy, query, parameter):
    assert refusal(proxy, f"/media/wide.png?{query}") == (400, "invalid_parameter", parameter)


@pytest.mark.parametrize("query, message", [
    ("w=abc", "width must be a whole number from 0 to 8192"),
    ("h=8193", "height must be a whole number from 0 to 8192"),
    ("q=0", "quality must be a whole number from 1 to 100"),
    ("trim=x", "trim must be a whole number from 0 to 100"),
])
def test_the_refusal_tells_the_accepted_range(proxy, query, message):
    status, _, body, _ = proxy.get(f"/media/wide.png?{query}")
    assert (status, json.loads(body)["message"]) == (400, message)


@pytest.mark.parametrize("q", [1, 100])
def test_quality_boundaries_are_accepted_and_used(proxy, q):
    status, headers, body, _ = proxy.get(f"/media/noisy.png?w=200&fmt=jpeg&q={q}")
    assert status == 200 and headers["content-type"] == "image/jpeg"
    assert decode(body).size == (200, 100)


def test_quality_is_used(proxy):
    low = proxy.get("/media/noisy.png?w=200&fmt=jpeg&q=1")[2]
    high = proxy.get("/media/noisy.png?w=200&fmt=jpeg&quality=100")[2]
    assert len(low) * 4 < len(high)          # noise at q=1 is a fraction of q=100


@pytest.mark.parametrize("trim, expected", [
    ("0", (400, 200)),        # off
    ("1", (200, 100)),        # the white border goes
    ("99", (200, 100)),       # white vs black (255 apart) still differs by more than 252
    ("100", (400, 200)),      # everything is within 255 of the corner: nothing to trim
])
def test_trim_boundaries(proxy, trim, expected):
    assert size_of(proxy, f"/media/bordered.png?w=400&trim={trim}") == expected


@pytest.mark.parametrize("bg, pixel", [
    ("f008", (255, 0, 0, 136)), ("%23f008", (255, 0, 0, 136)), ("0f0", (0, 255, 0, 255)),
    ("0000ff", (0, 0, 255, 255)), ("ff000080", (255, 0, 0, 128)), ("ABCDEF", (171, 205, 239, 255)),
    ("transparent", (0, 0, 0, 0)), ("Transparent", (0, 0, 0, 0)),
])
def test_the_background_fills_the_padding_of_contain(proxy, bg, pixel):
    # 400x200 into 40x40: the picture is 40x20 in the middle, 10 rows of background above
    status, _, body, _ = proxy.get(f"/media/wide.png?w=40&h=40&fit=contain&fmt=png&bg={bg}")
    assert status == 200, body
    image = decode(body).convert("RGBA")
    assert image.size == (40, 40)
    assert image.getpixel((0, 0)) == pixel
    assert image.getpixel((20, 20)) == (90, 140, 200, 255)


@pytest.mark.parametrize("bg", ["red", "ff", "fffff", "#", "fffffffff", "gggggg"])
def test_a_background_that_is_not_a_colour_is_refused(proxy, bg):
    assert refusal(proxy, f"/media/wide.png?w=40&bg={bg}") == (400, "invalid_parameter", "bg")


@pytest.fixture(scope="module")
def small_limits(live_reactor):
    running = start_proxy(origin=_origin(), overrides={
        "limits": {"max_width": 500, "max_height": 300}})
    yield running
    running.stop()


@pytest.mark.parametrize("query, expected", [
    ("/media/wide.png?w=500&enlarge=1", (500, 250)),
    ("/media/tall.png?h=300&enlarge=1", (150, 300)),
])
def test_configured_maximum_is_inclusive(small_limits, query, expected):
    assert size_of(small_limits, query) == expected


@pytest.mark.parametrize("query, parameter", [
    ("/media/wide.png?w=501&enlarge=1", "w"), ("/media/tall.png?h=301&enlarge=1", "h"),
])
def test_configured_maximum_plus_one_is_refused(small_limits, query, parameter):
    assert refusal(small_limits, query) == (400, "invalid_parameter", parameter)
    high = {"w": "width must be a whole number from 0 to 500",
            "h": "height must be a whole number from 0 to 300"}[parameter]
    assert json.loads(small_limits.get(query)[2])["message"] == high


# -- the output budget: the free side only known once the source is ---------------------------

BUDGET = {"max_width": 1000, "max_height": 1000, "max_output_pixels": 28_800,
          "max_source_pixels": 250_000}


@pytest.fixture(scope="module")
def budget(live_reactor):
    running = start_proxy(origin=_origin(), overrides={"limits": BUDGET})
    yield running
    running.stop()


@pytest.mark.parametrize("query, expected", [
    ("/media/strip.png?h=10", (800, 10)),          # 4000x50 -> 800 wide: fine
    ("/media/strip2000.png?h=25", (1000, 25)),     # exactly max_width
    ("/media/column.png?w=10", (10, 800)),         # 50x4000 -> 800 high
    ("/media/column2000.png?w=25", (25, 1000)),    # exactly max_height
    ("/media/wide.png?w=240", (240, 120)),         # exactly max_output_pixels (28 800)
    ("/media/wide.png?h=120", (240, 120)),
    ("/media/src200.png?w=240&enlarge=1", (240, 120)),
    # cover + enlarge scales the 1000x10 source to 5000x50 before cropping: 250 000 px,
    # exactly max_source_pixels
    ("/media/line.png?w=50&h=50&fit=cover&enlarge=1", (50, 50)),
])
def test_free_side_within_the_budget(budget, query, expected):
    assert size_of(budget, query) == expected


@pytest.mark.parametrize("query", [
    "/media/strip.png?h=50",            # would be 4000 wide > max_width 1000
    "/media/strip2000.png?h=26",        # 1040 wide
    "/media/column.png?w=50",           # would be 4000 high > max_height 1000
    "/media/column2000.png?w=26",       # 1040 high
    "/media/wide.png?w=241",            # 241x121 = 29 161 px > max_output_pixels
    "/media/wide.png?h=121",            # 242x121
    "/media/src200.png?h=130&enlarge=1",             # 260x130 = 33 800 px
    "/media/wide.png?w=150&h=150&fit=outside",       # 300x150 = 45 000 px; the box 22 500
    "/media/line.png?w=51&h=51&fit=cover&enlarge=1",  # scales to 5100x51 = 260 100 px first
])
def test_free_side_over_the_budget_is_refused(budget, query):
    assert over_budget(budget, query)


def test_a_side_over_its_cap_is_refused_before_the_source_is_known(budget):
    assert refusal(budget, "/media/src200.png?w=1001&enlarge=1") == (
        400, "invalid_parameter", "w")
    assert refusal(budget, "/media/src200.png?h=1001") == (400, "invalid_parameter", "h")


def test_the_budget_is_decided_on_the_source_not_by_the_parameters(live_reactor):
    # the parameters alone are fine (h=50 <= max_height, 0 x 50 pixels): only the source's
    # shape makes the output too wide, so the origin is asked for it, and nothing rendered
    origin = _origin()
    running = start_proxy(origin=origin, overrides={"limits": BUDGET})
    try:
        assert over_budget(running, "/media/strip.png?h=50")
        assert origin.hits["/media/strip.png"] == 1
        counters = running.runtime.pm.get_plugin("mediaproxy.builtin.metrics.counters")
        assert counters.count("transform") == 0
    finally:
        running.stop()


@pytest.fixture(scope="module")
def tight_width(live_reactor):
    running = start_proxy(origin=_origin(), overrides={"limits": {"max_width": 300}})
    yield running
    running.stop()


def test_outside_without_enlarge_is_checked_against_the_budget(tight_width):
    # outside of 400x200: the side needing the larger scale decides
    assert size_of(tight_width, "/media/wide.png?w=300&h=100&fit=outside") == (300, 150)
    assert size_of(tight_width, "/media/wide.png?w=200&h=150&fit=outside") == (300, 150)
    # 300x200 -> 400x200 (not enlarged): 400 > max_width 300
    assert over_budget(tight_width, "/media/wide.png?w=300&h=200&fit=outside")


def test_a_box_within_the_caps_is_never_refused(tight_width):
    assert size_of(tight_width, "/media/wide.png?w=300&h=300&fit=cover") == (200, 200)
    assert size_of(tight_width, "/media/wide.png?w=300&h=300&fit=inside&enlarge=1") == (
        300, 150)
    assert size_of(tight_width, "/media/wide.png?w=300&h=300&fit=fill&enlarge=1") == (300, 300)
