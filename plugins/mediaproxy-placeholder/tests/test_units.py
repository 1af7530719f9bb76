"""The placeholder's pure parts: the hashes' output form and their round trip against the
colour they were made from (hypothesis; the oracle is the solid colour drawn, never this
plugin's code), the dominant colour, text or JSON by Accept, the tiny spec, the LQIP's format."""

import base64
import re

import blurhash
import pytest
import thash
from hypothesis import given, settings
from hypothesis import strategies as st
from mediaproxy import TransformSpec
from mediaproxy_placeholder import tiny_spec, wants_json
from mediaproxy_placeholder.encoders import (
    HASH_SIDE, blurhash_of, colour_of, lqip, lqip_format, shrink, thumbhash_of,
)
from PIL import Image

BASE83 = re.compile(r"^[0-9A-Za-z#$%*+,\-.:;=?@\[\]^_{|}~]+$")
colours = st.tuples(*[st.integers(0, 255)] * 3)
sizes = st.tuples(st.integers(1, 80), st.integers(1, 80))
SPEC = TransformSpec()


@settings(max_examples=25, deadline=None)
@given(colours, sizes)
def test_blurhash_is_base83_of_the_length_its_components_give(colour, size):
    digest = blurhash_of(Image.new("RGB", size, colour), SPEC)
    small = shrink(Image.new("RGB", size), HASH_SIDE)
    x, y = (4, 3) if small.width >= small.height else (3, 4)
    assert BASE83.match(digest)
    assert len(digest) == 4 + 2 * x * y          # size flag, max AC, DC (4), 2 per AC


def base83(text: str) -> int:
    """The BlurHash spec's base 83 (written here from the spec, not taken from the library)."""
    alphabet = ("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                "#$%*+,-.:;=?@[]^_{|}~")
    value = 0
    for char in text:
        value = value * 83 + alphabet.index(char)
    return value


@settings(max_examples=25, deadline=None)
@given(colours, sizes)
def test_the_blurhash_of_a_solid_image_carries_that_colour(colour, size):
    digest = blurhash_of(Image.new("RGB", size, colour), SPEC)
    small = shrink(Image.new("RGB", size), HASH_SIDE)
    x, y = (4, 3) if small.width >= small.height else (3, 4)
    assert base83(digest[0]) == (x - 1) + (y - 1) * 9           # the component counts
    dc = base83(digest[2:6])                                      # the average colour, sRGB
    assert all(abs(a - b) <= 1 for a, b in zip((dc >> 16, dc >> 8 & 255, dc & 255), colour))
    decoded = blurhash.decode(digest, 8, 6)
    assert len(decoded) == 6 and len(decoded[0]) == 8


@settings(max_examples=25, deadline=None)
@given(colours, sizes)
def test_thumbhash_of_a_solid_image_decodes_to_that_colour(colour, size):
    text = thumbhash_of(Image.new("RGB", size, colour), SPEC)
    digest = base64.b64decode(text, validate=True)
    assert 5 <= len(digest) <= 25                # the format's size: a header and its ACs
    average = thash.thumb_hash_to_average_rgba(list(digest))
    # ThumbHash keeps the average L, P, Q in 6 bits each: a step of 1/63 in L and 2/63 in
    # P and Q, so a channel (L + P-or-Q combinations) can be off by ~1/20 of its range
    assert all(abs(a * 255 - b) <= 13 for a, b in zip(average[:3], colour))
    assert average[3] == 1.0


@settings(max_examples=25, deadline=None)
@given(colours, colours, st.integers(17, 31))
def test_the_dominant_colour_is_the_larger_area_not_the_mean(major, minor, split):
    image = Image.new("RGB", (32, 8), minor)
    image.paste(Image.new("RGB", (split, 8), major), (0, 0))   # split > 16: the larger part
    assert colour_of(image, SPEC) == "#%02x%02x%02x" % major


def test_transparency_is_flattened_on_the_background_for_a_colour():
    image = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    assert colour_of(image, TransformSpec(background=(10, 20, 30, 255))) == "#0a141e"


@pytest.mark.parametrize("accept, expected", [
    (None, False), ("", False), ("*/*", False), ("text/plain", False),
    ("application/json", True), ("application/json, text/plain", False),   # a tie: text
    ("application/json, text/plain;q=0.9", True), ("text/plain;q=0.9, application/json", True),
    ("application/json;q=0.5, text/*;q=0.5", False), ("application/json;q=0.6, text/*;q=0.5", True),
    ("application/json;q=0", False), ("application/json;q=bad", False),
    ("text/*;q=0.2, application/json;q=0.3", True), ("Application/JSON", True),
])
def test_json_only_when_the_client_prefers_it(accept, expected):
    assert wants_json(accept) is expected


@pytest.mark.parametrize("box, fit, expected", [
    ((0, 0), "cover", (32, 32, "inside")),
    ((300, 0), "inside", (32, 0, "inside")), ((0, 300), "inside", (0, 32, "inside")),
    ((20, 0), "inside", (20, 0, "inside")),
    ((300, 200), "cover", (32, 21, "cover")), ((200, 300), "contain", (21, 32, "contain")),
    ((32, 32), "cover", (32, 32, "cover")), ((33, 1), "fill", (32, 1, "fill")),
    ((10, 5), "cover", (10, 5, "cover")),
])
def test_the_tiny_spec_keeps_the_layout(box, fit, expected):
    spec = tiny_spec(TransformSpec(width=box[0], height=box[1], fit=fit, enlarge=True,
                                   format="webp"), 32)
    assert (spec.width, spec.height, spec.fit, spec.enlarge, spec.format) == (*expected, False,
                                                                              "webp")


@pytest.mark.parametrize("fmt, animated, alpha, expected", [
    ("webp", None, False, "webp"), ("avif", "webp", False, "webp"), ("avif", "gif", False, "jpeg"),
    ("png", None, False, "png"), (None, None, True, "png"), (None, None, False, "jpeg"),
    ("jpeg", None, True, "jpeg"), ("gif", None, False, "jpeg"),
])
def test_the_lqip_format(fmt, animated, alpha, expected):
    assert lqip_format(TransformSpec(format=fmt, animated_format=animated), alpha) == expected


def test_an_lqip_is_small_blurred_and_low_quality():
    image = Image.new("RGB", (48, 36), (255, 255, 255))
    image.paste(Image.new("RGB", (24, 36), (0, 0, 0)), (0, 0))     # a hard edge at x=24
    rendered = lqip(image, TransformSpec(quality=90))
    assert (rendered.width, rendered.height, rendered.format) == (24, 18, "jpeg")
    out = Image.open(__import__("io").BytesIO(rendered.body))
    assert out.size == (24, 18) and out.format == "JPEG"
    row = [out.convert("L").getpixel((x, 9)) for x in range(24)]
    assert 30 < row[12] < 225           # the edge is a ramp now, not a step
