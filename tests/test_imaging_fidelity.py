"""
Imaging fidelity over HTTP: the output is what the rules say, whatever the source's format,
orientation or the decoder's shortcuts.

* **Geometry from the source's own size.** A JPEG is decoded at 1/2, 1/4 or 1/8 scale when
  the output is small (shrink-on-load). The layout used to be decided on those reduced pixels:
  ``fit=contain`` of a 4000x3000 JPEG into 400x400 gave 375x375. Every size here is checked
  against :func:`expected_size`, an oracle written from the documented rules with exact
  fractions (not the code under test), and a JPEG must give the size a PNG of the same
  picture gives.
* **Trim alone** (no width or height) trims.
* **Animations stay animated under ``fmt=auto``** whatever the browser's ``Accept`` prefers:
  AVIF cannot hold the frames here, so an animation becomes an animated WebP when the client
  accepts WebP, else a GIF.
"""

from __future__ import annotations

from fractions import Fraction
from math import floor

import pytest
from PIL import Image, ImageDraw

from mediaproxy.imaging import OutputTooLarge, render
from mediaproxy.models import TransformSpec
from mediaproxy.testing import ImageOrigin, start_proxy
from mediaproxy.testing.images import decode, encode, make_animated, make_jpeg, upright


# -- the oracle ------------------------------------------------------------------------------

def _round(value: Fraction) -> int:
    """Half up, at least 1."""
    return max(1, floor(value + Fraction(1, 2)))


def expected_size(sw: int, sh: int, w: int, h: int, fit: str, enlarge: bool) -> tuple[int, int]:
    """The output size of an ``sw`` x ``sh`` source (as displayed) for ``w``/``h``/``fit``
    (sharp's semantics as docs/user-guide.md and mediaproxy.imaging describe them)."""
    if not w and not h:
        return sw, sh
    if not w or not h:                                 # one axis: keep the aspect ratio
        scale = Fraction(w, sw) if w else Fraction(h, sh)
        if scale > 1 and not enlarge:
            return sw, sh
        return (w, _round(sh * scale)) if w else (_round(sw * scale), h)
    if fit in ("inside", "outside"):
        pick = min if fit == "inside" else max
        scale = pick(Fraction(w, sw), Fraction(h, sh))
        if scale > 1 and not enlarge:
            return sw, sh
        if scale == Fraction(w, sw):
            return w, _round(sh * scale)
        return _round(sw * scale), h
    # cover, contain, fill: the box, shrunk keeping its shape until it fits (unless enlarge)
    if enlarge or (w <= sw and h <= sh):
        return w, h
    shrink = min(Fraction(sw, w), Fraction(sh, h))
    return min(sw, _round(w * shrink)), min(sh, _round(h * shrink))


def test_the_oracle_on_the_cases_of_the_bug_report():
    assert expected_size(4000, 3000, 400, 400, "contain", False) == (400, 400)
    assert expected_size(1600, 1200, 200, 400, "contain", False) == (200, 400)
    assert expected_size(100, 100, 300, 200, "cover", False) == (100, 67)
    assert expected_size(400, 300, 500, 0, "inside", False) == (400, 300)


# -- sources ---------------------------------------------------------------------------------

#: (name, displayed width, height, EXIF orientation)
SOURCES = [
    ("wide", 1600, 1200, None),
    ("odd", 1203, 905, None),          # a draft-reduced size rounds up: 151x114 at 1/8
    ("tall", 900, 1600, None),
    ("rotated", 1600, 1000, 6),        # stored 1000x1600, displayed 1600x1000
    ("mirrored", 1000, 1500, 5),
]
BOXES = [(400, 400), (200, 400), (300, 0), (0, 300), (120, 90), (150, 1000)]
FITS = ["contain", "cover", "inside", "outside", "fill"]


def _png_of(width: int, height: int) -> bytes:
    return encode(upright(width, height), "PNG", compress_level=1)


def _files():
    files = {}
    for name, width, height, orientation in SOURCES:
        files[f"/media/{name}.jpg"] = make_jpeg(width, height, orientation, quality=70)
        files[f"/media/{name}.png"] = _png_of(width, height)
    files["/media/big.jpg"] = make_jpeg(4000, 3000, quality=50)
    files["/media/framed.png"] = _framed(300, 200, (60, 40, 240, 140))
    files["/media/framed.jpg"] = encode(Image.open(_io(files["/media/framed.png"])).convert(
        "RGB"), "JPEG", quality=95)
    files["/media/anim.gif"] = make_animated("GIF", 3, size=(60, 40))
    files["/media/anim.webp"] = make_animated("WEBP", 3, size=(60, 40))
    files["/media/anim.avif"] = make_animated("AVIF", 3, size=(60, 40))
    files["/media/still.png"] = _png_of(60, 40)
    files["/media/still.jpg"] = make_jpeg(60, 40)
    return {path: (200, body, "application/octet-stream", []) for path, body in files.items()}


def _io(data: bytes):
    import io
    return io.BytesIO(data)


def _framed(width: int, height: int, box: tuple[int, int, int, int]) -> bytes:
    """White with a black block at ``box``: trim finds the block."""
    image = Image.new("RGB", (width, height), (255, 255, 255))
    ImageDraw.Draw(image).rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=(0, 0, 0))
    return encode(image, "PNG")


@pytest.fixture(scope="module")
def proxy(live_reactor):
    running = start_proxy(origin=ImageOrigin(_files()),
                          overrides={"ratelimit": {"enabled": False}})
    yield running
    running.stop()


def _get(proxy, path, accept=None):
    headers = {} if accept is None else {"Accept": accept}
    status, response, body, _ = proxy.get(path, headers=headers)
    assert status == 200, body
    return response, decode(body)


def _query(w, h, fit, enlarge=False):
    parts = [f"w={w}"] if w else []
    parts += [f"h={h}"] if h else []
    parts += [f"fit={fit}", "fmt=png"]
    if enlarge:
        parts.append("enlarge=1")
    return "&".join(parts)


# -- geometry --------------------------------------------------------------------------------

@pytest.mark.parametrize("name, width, height, orientation", SOURCES)
def test_every_fit_of_every_box_has_the_oracle_size_for_jpeg_and_png(
        proxy, name, width, height, orientation):
    wrong = []
    for w, h in BOXES:
        for fit in FITS:
            want = expected_size(width, height, w, h, fit, False)
            query = _query(w, h, fit)
            _, from_jpeg = _get(proxy, f"/media/{name}.jpg?{query}")
            _, from_png = _get(proxy, f"/media/{name}.png?{query}")
            if from_jpeg.size != want or from_png.size != want:
                wrong.append((w, h, fit, want, from_jpeg.size, from_png.size))
    assert wrong == []


@pytest.mark.parametrize("box, fit, enlarge", [
    ((400, 400), "contain", False), ((200, 400), "contain", False),
    ((400, 400), "cover", False), ((333, 100), "fill", False), ((401, 0), "inside", False),
    ((0, 77), "inside", False), ((500, 500), "outside", False),
    ((600, 400), "contain", True), ((90, 200), "cover", True),
])
def test_a_large_jpeg_decoded_at_reduced_scale_keeps_the_geometry(proxy, box, fit, enlarge):
    _, image = _get(proxy, f"/media/big.jpg?{_query(*box, fit, enlarge)}")
    assert image.size == expected_size(4000, 3000, *box, fit, enlarge)


def test_contain_pads_a_reduced_jpeg_like_a_full_decode(proxy):
    """The picture inside the padding has the size a full decode gives: 400x300 in the middle
    of 400x400, 50 rows of green padding above and below."""
    _, image = _get(proxy, "/media/big.jpg?w=400&h=400&fit=contain&bg=00ff00&fmt=png")
    rgb = image.convert("RGB")
    column = [rgb.getpixel((300, y)) for y in range(400)]
    green = [y for y, pixel in enumerate(column) if pixel == (0, 255, 0)]
    assert green == list(range(50)) + list(range(350, 400))


# -- trim ------------------------------------------------------------------------------------

@pytest.mark.parametrize("source", ["framed.png", "framed.jpg"])
def test_trim_alone_trims(proxy, source):
    _, image = _get(proxy, f"/media/{source}?trim=10&fmt=png")
    assert image.size == (180, 100)


@pytest.mark.parametrize("query, size", [
    ("trim=10&w=90", (90, 50)), ("trim=10&h=50&w=50&fit=contain", (50, 50)),
    ("trim=10&w=60&h=60&fit=cover", (60, 60)), ("trim=10&w=360&enlarge=1", (360, 200)),
])
def test_trim_with_a_size_fits_the_trimmed_box(proxy, query, size):
    for source in ("framed.png", "framed.jpg"):
        _, image = _get(proxy, f"/media/{source}?{query}&fmt=png")
        assert image.size == size, source


def test_trim_alone_and_no_trim_are_different_cache_entries(proxy):
    _, trimmed = _get(proxy, "/media/framed.png?trim=10&fmt=png")
    _, whole = _get(proxy, "/media/framed.png?fmt=png")
    assert (trimmed.size, whole.size) == ((180, 100), (300, 200))


# -- animations under fmt=auto ---------------------------------------------------------------

ACCEPTS = {
    "chrome": "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8",
    "firefox": "image/avif,image/webp,image/png,image/svg+xml,image/*;q=0.8,*/*;q=0.5",
    "safari": "image/webp,image/avif,image/jxl,image/heic,image/heic-sequence,video/*;"
              "q=0.8,image/png,image/svg+xml,image/*;q=0.8,*/*;q=0.5",
    "curl": "*/*",
    "avif-only": "image/avif",
    "png-only": "image/png",
}

#: (accept, source) -> (content type, frames)
EXPECTED = {
    ("chrome", "anim.gif"): ("webp", 3), ("chrome", "anim.webp"): ("webp", 3),
    ("chrome", "still.png"): ("avif", 1), ("chrome", "still.jpg"): ("avif", 1),
    ("firefox", "anim.gif"): ("webp", 3), ("firefox", "anim.webp"): ("webp", 3),
    ("firefox", "still.png"): ("avif", 1), ("firefox", "still.jpg"): ("avif", 1),
    ("safari", "anim.gif"): ("webp", 3), ("safari", "anim.webp"): ("webp", 3),
    ("safari", "still.png"): ("avif", 1), ("safari", "still.jpg"): ("avif", 1),
    ("curl", "anim.gif"): ("gif", 3), ("curl", "anim.webp"): ("webp", 3),
    ("curl", "still.png"): ("png", 1), ("curl", "still.jpg"): ("jpeg", 1),
    ("avif-only", "anim.gif"): ("gif", 3), ("avif-only", "anim.webp"): ("gif", 3),
    ("avif-only", "still.png"): ("avif", 1), ("avif-only", "still.jpg"): ("avif", 1),
    ("png-only", "anim.gif"): ("gif", 3), ("png-only", "anim.webp"): ("webp", 3),
    ("png-only", "still.png"): ("png", 1), ("png-only", "still.jpg"): ("jpeg", 1),
}
PIL_FORMATS = {"webp": "WEBP", "gif": "GIF", "avif": "AVIF", "png": "PNG", "jpeg": "JPEG"}


@pytest.mark.parametrize("browser", list(ACCEPTS))
@pytest.mark.parametrize("source", ["anim.gif", "anim.webp", "still.png", "still.jpg"])
def test_fmt_auto_keeps_animations_animated(proxy, browser, source):
    fmt, frames = EXPECTED[browser, source]
    headers, image = _get(proxy, f"/media/{source}?w=30&fmt=auto", ACCEPTS[browser])
    assert headers["content-type"] == f"image/{fmt}"
    assert image.format == PIL_FORMATS[fmt]
    assert getattr(image, "n_frames", 1) == frames
    assert image.size == (30, 20)
    assert "Accept" in headers.get("vary", "")


def test_one_animation_answered_alternately_to_two_browsers_is_not_shared(proxy):
    """Chrome's animated WebP and the avif-only client's GIF are two cache entries."""
    for _ in range(2):
        for browser, fmt in (("chrome", "webp"), ("avif-only", "gif")):
            headers, image = _get(proxy, "/media/anim.gif?w=20&fmt=auto", ACCEPTS[browser])
            assert (headers["content-type"], image.n_frames) == (f"image/{fmt}", 3)


def _frames(image) -> list[tuple[int, tuple]]:
    """Each frame's duration and its centre pixel."""
    seen = []
    for index in range(getattr(image, "n_frames", 1)):
        image.seek(index)
        image.load()
        seen.append((image.info.get("duration"), image.convert("RGB").getpixel((15, 10))))
    return seen


def test_an_explicit_avif_of_an_animation_is_an_animated_avif(proxy):
    headers, image = _get(proxy, "/media/anim.gif?w=30&fmt=avif")
    assert headers["content-type"] == "image/avif"
    assert (image.format, image.n_frames, image.size) == ("AVIF", 3, (30, 20))
    frames = _frames(image)
    assert [duration for duration, _ in frames] == [100, 200, 300]
    _, reference = _get(proxy, "/media/anim.gif?w=30&fmt=png")     # lossless, frame by frame
    for (_, got), (_, want) in zip(frames, _frames(reference)):
        assert max(abs(a - b) for a, b in zip(got, want)) <= 24, (got, want)


def test_an_animated_avif_source_stays_animated(proxy):
    headers, image = _get(proxy, "/media/anim.avif?w=30")
    assert (headers["content-type"], image.n_frames, image.size) == ("image/avif", 3, (30, 20))
    assert [duration for duration, _ in _frames(image)] == [100, 200, 300]


def test_an_animated_avif_has_at_most_the_pixels_of_the_largest_still(live_reactor):
    """libavif encodes an animation's frames in one call the deadline cannot stop: its
    frames together are held to max_output_pixels; WebP, written frame by frame, is not."""
    with start_proxy(origin=ImageOrigin(_files()),
                     overrides={"limits": {"max_output_pixels": 2 * 60 * 40}}) as small:
        status, headers, _, _ = small.get("/media/anim.gif?w=60&fmt=avif")
        assert (status, headers["x-placeholder"]) == (400, "output_too_large")
        assert _get(small, "/media/anim.gif?w=60&fmt=webp")[1].n_frames == 3
        assert _get(small, "/media/anim.gif?w=40&fmt=avif")[1].n_frames == 3   # 3 x 40x27
    with pytest.raises(OutputTooLarge) as refused:
        render(_files()["/media/anim.gif"][1],
               TransformSpec(width=60, format="avif", max_output_pixels=2 * 60 * 40))
    assert refused.value.message == (
        "An animated AVIF of 3 frames of 60x40 would be 7200 pixels; at most 4800 are allowed "
        "in one AVIF animation (ask for fmt=webp or fmt=gif, or a smaller size).")
