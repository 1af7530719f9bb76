"""The decode guard of mediaproxy.imaging at its boundaries: the pixel and frame budgets read
from the header before any pixel is decoded, the JPEG whose header claims more pixels than its
bytes can hold, arithmetic-coded JPEGs (which the size check must not judge), unrecognised and
foreign formats, corrupt data and bad transform parameters: each with its exact error class,
status, code and message; then the same refusals over HTTP, and the placeholder's size budget."""

from __future__ import annotations

import io
import struct

import pytest
from PIL import Image

from mediaproxy.imaging import (
    CorruptImage, ImageError, ImageInfo, ImageTooLarge, InvalidTransform, TooManyFrames,
    UnsupportedFormat, UnsupportedImage, placeholder, probe, render,
)
from mediaproxy.models import TransformSpec
from mediaproxy.testing import images
from tests.hostile import lying_sof_jpeg, small_jpeg

CORRUPT = "The image data is corrupt or truncated."
NOT_AN_IMAGE = "The source is not an image in a supported format."


def spec(**fields) -> TransformSpec:
    return TransformSpec(**fields)


def refusal(data: bytes, **fields) -> ImageError:
    with pytest.raises(ImageError) as caught:
        render(data, spec(**fields))
    return caught.value


def exactly(error: ImageError, cls, status: int, code: str, message: str) -> None:
    assert type(error) is cls
    assert (error.status, error.error, error.message) == (status, code, message)


def size_of(data: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(data)).size


# -- pixel and frame budgets ---------------------------------------------------------------------

def test_exactly_max_source_pixels_is_decoded_one_more_is_refused():
    data = images.make_png(60, 40)                                   # 2400 pixels
    assert size_of(render(data, spec(width=30, max_source_pixels=2400)).body) == (30, 20)
    exactly(refusal(data, width=30, max_source_pixels=2399), ImageTooLarge, 422,
            "image_too_large", "The image is too large (60x40 pixels).")


def test_the_pixel_budget_counts_every_frame():
    data = images.make_animated("GIF", count=3, size=(60, 40))       # 3 x 2400 pixels
    result = render(data, spec(width=30, max_source_pixels=7200))
    assert (result.width, result.height, result.frames) == (30, 20, 3)
    exactly(refusal(data, width=30, max_source_pixels=7199), ImageTooLarge, 422,
            "image_too_large", "The image is too large (60x40 pixels x 3 frames).")


def test_two_frames_are_named_in_the_refusal():
    data = images.make_animated("GIF", count=2, size=(60, 40))
    exactly(refusal(data, width=30, max_source_pixels=4799), ImageTooLarge, 422,
            "image_too_large", "The image is too large (60x40 pixels x 2 frames).")


def test_exactly_max_frames_is_decoded_one_more_is_refused():
    data = images.make_animated("GIF", count=3)
    assert render(data, spec(width=30, max_frames=3)).frames == 3
    exactly(refusal(data, width=30, max_frames=2), TooManyFrames, 422, "too_many_frames",
            "The animation has 3 frames; at most 2 are allowed.")
    # frames are counted before pixels: the frame limit is the one reported
    exactly(refusal(data, width=30, max_frames=2, max_source_pixels=1), TooManyFrames, 422,
            "too_many_frames", "The animation has 3 frames; at most 2 are allowed.")


def test_a_still_image_is_one_frame_whatever_the_frame_limit():
    assert render(images.make_png(20, 10), spec(max_frames=1)).frames == 1


def test_the_pages_of_a_tiff_are_not_animation_frames():
    pages = [Image.new("RGB", (40, 30), colour) for colour in ((255, 0, 0), (0, 255, 0),
                                                               (0, 0, 255))]
    tiff = images.encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])
    assert probe(tiff) == ImageInfo(format="tiff", width=40, height=30, frames=1, mode="RGB")
    result = render(tiff, spec(format="png", max_frames=1, max_source_pixels=1200))
    assert (result.width, result.height, result.frames) == (40, 30, 1)
    assert images.decode(result.body).getpixel((20, 15)) == (255, 0, 0)   # page 1


def test_the_budget_holds_for_a_rotated_jpeg():
    data = images.make_jpeg(60, 40, orientation=6)                  # stored 40x60
    assert probe(data).width == 60 and probe(data).height == 40
    assert render(data, spec(max_source_pixels=2400)).width == 60
    exactly(refusal(data, max_source_pixels=2399), ImageTooLarge, 422, "image_too_large",
            "The image is too large (60x40 pixels).")


def test_pillows_own_bomb_guard_is_reported_as_too_large():
    with pytest.raises(ImageError) as caught:
        probe(images.make_png_bomb(30000, 30000))        # over twice Image.MAX_IMAGE_PIXELS
    exactly(caught.value, ImageTooLarge, 422, "image_too_large",
            "The image has too many pixels.")


def test_the_header_is_read_without_decoding_a_single_pixel():
    # A 1x1 PNG whose header claims 5000x5000: decoding it would fail as corrupt, so these
    # answers prove nothing was decoded before the budget was checked.
    bomb = images.make_png_bomb(5000, 5000)
    assert probe(bomb) == ImageInfo(format="png", width=5000, height=5000, frames=1, mode="RGB")
    exactly(refusal(bomb, width=10, max_source_pixels=25_000_000 - 1), ImageTooLarge, 422,
            "image_too_large", "The image is too large (5000x5000 pixels).")
    exactly(refusal(bomb, width=10, max_source_pixels=25_000_000), CorruptImage, 422,
            "corrupt_image", CORRUPT)


# -- the JPEG whose header lies about its size ---------------------------------------------------

def too_few(data: bytes, width: int, height: int) -> str:
    return (f"The JPEG holds {len(data)} bytes, too few for the {width}x{height} pixels its "
            "header claims.")


def test_a_lying_sof_header_is_refused_before_decoding():
    data = lying_sof_jpeg(5000, 5000)
    exactly(refusal(data, width=300), CorruptImage, 422, "corrupt_image",
            too_few(data, 5000, 5000))


def test_one_bit_per_8x8_block_is_the_exact_boundary():
    bits = 8 * len(small_jpeg())
    # one row of blocks: `bits` blocks are allowed, one more is not
    honest_enough = lying_sof_jpeg(8 * bits, 8)
    result = render(honest_enough, spec(width=100, format="png"))
    assert (result.width, result.height) == (100, 1)
    liar = lying_sof_jpeg(8 * bits + 1, 8)            # a partial block counts as a block
    exactly(refusal(liar, width=100), CorruptImage, 422, "corrupt_image",
            too_few(liar, 8 * bits + 1, 8))
    # the same along the other axis
    assert render(lying_sof_jpeg(8, 8 * bits), spec(height=100)).height == 100
    liar = lying_sof_jpeg(8, 8 * bits + 1)
    exactly(refusal(liar, height=100), CorruptImage, 422, "corrupt_image",
            too_few(liar, 8, 8 * bits + 1))
    # 9 rows of pixels are two rows of blocks
    liar = lying_sof_jpeg(4 * bits + 8, 9)
    exactly(refusal(liar, width=100), CorruptImage, 422, "corrupt_image",
            too_few(liar, 4 * bits + 8, 9))


def test_only_jpegs_are_judged_by_their_size():
    # a 1000x1000 bilevel PNG is a few hundred bytes: far below a bit per 8x8 block, and honest
    data = images.encode(Image.new("1", (1000, 1000), 1), "PNG")
    assert len(data) * 8 < 125 * 125
    assert size_of(render(data, spec(width=40, format="png")).body) == (40, 40)


# A real arithmetic-coded JPEG (SOF9, with a DAC segment): 2048x2048 of RGB (90, 140, 200),
# written by libjpeg-turbo 2.1.5 with arith_code = TRUE. 214 bytes for 65536 blocks: well
# under a bit per block, which arithmetic coding can do and Huffman coding cannot.
ARITHMETIC = bytes.fromhex(
    "ffd8ffe000104a46494600010100000100010000ffdb004300080606070605080707070909080a0c140d0c"
    "0b0b0c1912130f141d1a1f1e1d1a1c1c20242e2720222c231c1c2837292c30313434341f27393d38323c2e"
    "333432ffdb0043010909090c0b0c180d0d1832211c21323232323232323232323232323232323232323232"
    "3232323232323232323232323232323232323232323232323232323232ffc9001108080008000301220002"
    "1101031101ffcc000a0010100501101105ffda000c03010002110311003f00cc65d194191a1033a0ffd9")


def with_sof(marker: int, data: bytes = ARITHMETIC) -> bytes:
    at = data.index(b"\xff\xc9")
    return data[:at + 1] + bytes([marker]) + data[at + 2:]


def test_an_arithmetic_coded_jpeg_under_a_bit_per_block_is_served():
    assert len(ARITHMETIC) * 8 < (2048 // 8) ** 2
    result = render(ARITHMETIC, spec(width=64, format="png"))
    image = images.decode(result.body)
    assert image.size == (64, 64)
    assert all(abs(a - b) <= 2 for a, b in zip(image.getpixel((32, 32)), (90, 140, 200)))


@pytest.mark.parametrize("marker", [0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7])
def test_the_same_bytes_under_a_huffman_frame_header_are_judged(marker):
    data = with_sof(marker)
    exactly(refusal(data, width=64), CorruptImage, 422, "corrupt_image",
            too_few(data, 2048, 2048))


@pytest.mark.parametrize("marker", [0xCA, 0xCB, 0xCD, 0xCE, 0xCF])
def test_every_arithmetic_frame_header_is_left_to_the_decoder(marker):
    # progressive, lossless and hierarchical arithmetic frames: not judged by size, so the
    # decoder has its say (these bytes are a sequential scan, which it refuses as corrupt)
    exactly(refusal(with_sof(marker), width=64), CorruptImage, 422, "corrupt_image", CORRUPT)


def segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def test_the_frame_header_is_found_by_walking_the_segments():
    # marker bytes inside a segment's payload are not segments: a comment holding FF C9 does
    # not make a Huffman JPEG arithmetic, and a comment before the SOF does not hide it
    fake = segment(0xFE, b"\xff\xc9\x00\x11 not a frame header")
    huffman = with_sof(0xC0)
    lying = huffman[:2] + fake + huffman[2:]
    exactly(refusal(lying, width=64), CorruptImage, 422, "corrupt_image",
            too_few(lying, 2048, 2048))
    arithmetic = ARITHMETIC[:2] + fake + ARITHMETIC[2:]
    assert render(arithmetic, spec(width=64)).width == 64
    # several segments before the frame header, of odd lengths
    padded = ARITHMETIC[:2] + segment(0xE1, b"x" * 301) + segment(0xFE, b"") + ARITHMETIC[2:]
    assert render(padded, spec(width=64)).width == 64


def test_the_walk_stops_at_the_start_of_scan():
    # after the SOS header comes entropy-coded data, not segments: FF C9 there is not a frame
    # header, so a lying Huffman JPEG is still judged
    huffman = lying_sof_jpeg(5000, 5000)
    sos = huffman.index(b"\xff\xda")
    scan = sos + 2 + int.from_bytes(huffman[sos + 2:sos + 4], "big")
    data = huffman[:scan] + b"\xff\xc9\x00\x11" + huffman[scan:]
    exactly(refusal(data, width=300), CorruptImage, 422, "corrupt_image",
            too_few(data, 5000, 5000))


@pytest.mark.parametrize("data, arithmetic", [
    (b"\xff\xd8\xff\xc9\x00\x11", True),                  # a whole marker and length: read
    (b"\xff\xd8\xff\xc9\x00", False),                      # a length cut short: not
    (b"\xff\xd8\xff\xe0\x00\x04\x00\x00", False),          # the last segment ends the data
    (b"\xff\xd8\xff\xe0\x00\x04\x00\x00\xff\xc9\x00\x11", True),
    (b"\xff\xd8\xff\xe0\x00\x04\x00\x00\x00\xc9\x00\x11", False),   # not a marker
    (b"\xff\xd8\xff\xe0\x00\x40", False),                  # a length past the end
    (b"\xff\xd8", False),
])
def test_the_segment_walk_reads_only_whole_marker_headers(data, arithmetic):
    from mediaproxy.imaging.decode import _arithmetic_coded

    assert _arithmetic_coded(data) is arithmetic


# -- what is not an image in an allowed format ---------------------------------------------------

@pytest.mark.parametrize("data, cls, code, message", [
    (b"", UnsupportedImage, "unsupported_image", "The source is empty."),
    (b"abc", UnsupportedImage, "unsupported_image", NOT_AN_IMAGE),     # short: DIB's sniff fails
    (b"P6\n", UnsupportedFormat, "unsupported_format",                # ... and PPM's follows it
     "PPM images are not supported."),
    (b"hello, I am text, not an image", UnsupportedImage, "unsupported_image", NOT_AN_IMAGE),
    (bytes(range(256)), UnsupportedImage, "unsupported_image", NOT_AN_IMAGE),
    (images.encode(Image.new("RGB", (8, 8)), "PPM"), UnsupportedFormat, "unsupported_format",
     "PPM images are not supported."),
    (images.encode(Image.new("RGB", (16, 16)), "ICO"), UnsupportedFormat, "unsupported_format",
     "ICO images are not supported."),
    (images.encode(Image.new("RGB", (8, 8)), "PCX"), UnsupportedFormat, "unsupported_format",
     "PCX images are not supported."),
    (b"8BPS" + bytes(40), UnsupportedFormat, "unsupported_format",
     "PSD images are not supported."),
    # FLI's magic is at bytes 4-5 and its flags at 14-15: the sniff reads 16 bytes
    (bytes(4) + b"\x11\xaf" + bytes(8) + b"\x00\x00" + bytes(20), UnsupportedFormat,
     "unsupported_format", "FLI images are not supported."),
], ids=["empty", "short", "short-ppm", "text", "random", "ppm", "ico", "pcx", "psd", "fli"])
def test_unrecognised_sources_are_named_when_their_format_is_known(data, cls, code, message):
    exactly(refusal(data, width=32), cls, 422, code, message)
    with pytest.raises(ImageError) as caught:
        probe(data)
    exactly(caught.value, cls, 422, code, message)


SVG = "SVG images are not supported."


@pytest.mark.parametrize("data, svg", [
    (b'<svg xmlns="http://www.w3.org/2000/svg"/>', True),
    (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>', True),
    (b'<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1//EN"><svg/>', True),
    (b'\xef\xbb\xbf \r\n\t<SVG VIEWBOX="0 0 1 1"/>', True),       # BOM, blanks, upper case
    (b'<?xml version="1.0"?>\n<html><body>no</body></html>', False),
    (b'text first <svg/>', False),
    (b'<?xml version="1.0"?>' + b" " * 999 + b"<svg/>", True),    # <svg ends at byte 1024
    (b'<?xml version="1.0"?>' + b" " * 1000 + b"<svg/>", False),  # one byte later: unseen
], ids=["bare", "xml", "doctype", "bom", "xml-html", "text", "at-1024", "past-1024"])
def test_svg_is_named_from_its_first_kilobyte(data, svg):
    error = refusal(data, width=32)
    if svg:
        exactly(error, UnsupportedFormat, 422, "unsupported_format", SVG)
    else:
        exactly(error, UnsupportedImage, 422, "unsupported_image", NOT_AN_IMAGE)


# -- corrupt data --------------------------------------------------------------------------------

JPEG = images.make_jpeg(64, 64)
PNG = images.make_png(64, 64)


def iccp_bomb() -> bytes:
    """A PNG whose ICC profile inflates past Pillow's MAX_TEXT_CHUNK: refused while opening."""
    import zlib

    body = b"p\x00\x00" + zlib.compress(b"\x00" * (2 * 1024 * 1024))
    chunk = (struct.pack(">I", len(body)) + b"iCCP" + body
             + struct.pack(">I", zlib.crc32(b"iCCP" + body)))
    return PNG[:33] + chunk + PNG[33:]


@pytest.mark.parametrize("data", [
    JPEG[:len(JPEG) // 2],                            # pixels cut: fails while decoding
    PNG[:-40],
    images.make_animated("GIF")[:-30],
    JPEG[:200],                                       # cut inside the header: fails opening
    images.encode(Image.new("RGB", (64, 64)), "WEBP")[:30],
    images.encode(Image.new("RGB", (64, 64)), "BMP")[:40],
    iccp_bomb(),
], ids=["jpeg-pixels", "png-pixels", "gif-pixels", "jpeg-header", "webp-header", "bmp-header",
        "png-iccp-bomb"])
def test_corrupt_data_is_corrupt_image(data):
    exactly(refusal(data, width=32, format="png"), CorruptImage, 422, "corrupt_image",
            CORRUPT)


@pytest.mark.parametrize("data", [
    PNG[:16] + b"\x00" * 40, b"\x89PNG\r\n\x1a\n" + b"\xff" * 30, JPEG[:2], JPEG[:20],
], ids=["png-ihdr", "png-garbage", "jpeg-soi", "jpeg-app0"])
def test_a_header_no_parser_accepts_is_not_an_image(data):
    exactly(refusal(data, width=32), UnsupportedImage, 422, "unsupported_image", NOT_AN_IMAGE)


def test_a_corrupt_header_is_corrupt_for_probe_too():
    with pytest.raises(ImageError) as caught:
        probe(iccp_bomb())
    exactly(caught.value, CorruptImage, 422, "corrupt_image", CORRUPT)


def test_an_animation_cut_anywhere_is_counted_or_refused_as_pillow_reads_it():
    # Oracle: Pillow itself, asked directly for the frame count of each cut.
    gif = images.make_animated("GIF", count=4)
    seen = set()
    for cut in range(1, len(gif)):
        data = gif[:cut]
        try:
            with Image.open(io.BytesIO(data), formats=["GIF"]) as image:
                expected = image.n_frames
        except Image.UnidentifiedImageError:
            expected = "unsupported_image"
        except (IndexError, struct.error, OSError, EOFError, SyntaxError, ValueError) as e:
            seen.add(type(e))
            expected = "corrupt_image"
        try:
            got = probe(data).frames
        except ImageError as e:
            got = e.error
            assert e.message == (CORRUPT if got == "corrupt_image" else NOT_AN_IMAGE)
        assert got == expected, cut
    assert {IndexError, struct.error} <= seen      # both kinds of damage were met


# -- EXIF orientation read from the header -------------------------------------------------------

@pytest.mark.parametrize("value, expected", [(1, 1), (6, 6), (8, 8), (0, 1), (9, 1), (300, 1)])
def test_an_orientation_outside_1_to_8_is_ignored(value, expected):
    exif = Image.Exif()
    exif[0x0112] = value
    data = images.encode(Image.new("RGB", (60, 40)), "JPEG", exif=exif.tobytes())
    info = probe(data)
    assert info.orientation == expected
    swapped = expected in (5, 6, 7, 8)
    assert (info.width, info.height) == ((40, 60) if swapped else (60, 40))


def png_with_exif(orientation: int, after_pixels: bool) -> bytes:
    import zlib

    exif = Image.Exif()
    exif[0x0112] = orientation
    body = exif.tobytes()[6:]                                 # without the "Exif\0\0" header
    chunk = (struct.pack(">I", len(body)) + b"eXIf" + body
             + struct.pack(">I", zlib.crc32(b"eXIf" + body)))
    png = images.make_png(60, 40)
    at = png.rindex(b"IEND") - 4 if after_pixels else 33      # before IEND, or after IHDR
    return png[:at] + chunk + png[at:]


def test_a_png_orientation_is_read_from_the_header_only():
    # before the pixels: read by probe; after them: Pillow would have to decode the pixels to
    # find it, so the header check does not see it (the render, which decodes, does)
    before = probe(png_with_exif(6, after_pixels=False))
    assert (before.orientation, before.width, before.height) == (6, 40, 60)
    after = png_with_exif(6, after_pixels=True)
    assert (probe(after).orientation, probe(after).width, probe(after).height) == (1, 60, 40)
    assert size_of(render(after, spec(format="png")).body) == (40, 60)


@pytest.mark.parametrize("orientation, displayed", [(1, (60, 40)), (3, (60, 40)),
                                                    (6, (40, 60)), (8, (40, 60))])
def test_a_tiff_orientation_is_applied_once(orientation, displayed):
    data = images.encode(Image.new("RGB", (60, 40)), "TIFF", tiffinfo={0x0112: orientation})
    info = probe(data)
    assert (info.orientation, (info.width, info.height)) == (orientation, displayed)
    assert size_of(render(data, spec(format="png")).body) == displayed
    if displayed == (40, 60):
        exactly(refusal(data, max_source_pixels=2399), ImageTooLarge, 422, "image_too_large",
                "The image is too large (40x60 pixels).")


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP", "PNG"])
def test_unreadable_exif_means_upright(fmt):
    # an EXIF block whose TIFF header is broken: Pillow refuses it (WebP, PNG) or skips it
    exif = Image.Exif()
    exif[0x0112] = 6
    broken = exif.tobytes()[:6] + b"XX" + exif.tobytes()[8:]
    data = images.encode(Image.new("RGB", (60, 40)), fmt, exif=broken)
    info = probe(data)
    assert (info.orientation, info.width, info.height) == (1, 60, 40)
    assert size_of(render(data, spec(width=30, format="png")).body) == (30, 20)


# -- transform parameters ------------------------------------------------------------------------

@pytest.mark.parametrize("fields, message", [
    ({"fit": "squash"},
     "Unknown fit 'squash'; use one of inside, outside, cover, contain, fill."),
    ({"position": "middle"},
     "Unknown position 'middle'; use one of centre, north, south, east, west, northeast, "
     "northwest, southeast, southwest, entropy, attention."),
    ({"width": -1}, "Width and height cannot be negative."),
    ({"height": -1}, "Width and height cannot be negative."),
    ({"width": -5, "height": 10}, "Width and height cannot be negative."),
    ({"width": 10, "height": -5}, "Width and height cannot be negative."),
])
def test_bad_parameters_are_refused_before_the_data_is_read(fields, message):
    exactly(refusal(b"", **fields), InvalidTransform, 400, "invalid_transform", message)
    exactly(refusal(PNG, **fields), InvalidTransform, 400, "invalid_transform", message)


@pytest.mark.parametrize("width, height, expected", [(0, 0, (64, 64)), (0, 16, (16, 16)),
                                                     (16, 0, (16, 16))])
def test_a_zero_side_is_free_not_negative(width, height, expected):
    assert size_of(render(PNG, spec(width=width, height=height)).body) == expected


# -- the placeholder's budget --------------------------------------------------------------------

@pytest.mark.parametrize("size, expected", [
    ((4096, 7), (4096, 7)), ((4097, 7), (4096, 7)), ((7, 4097), (7, 4096)),
    ((0, 0), (300, 200)), ((400, 0), (400, 300)), ((0, 300), (400, 300)), ((0, 1), (1, 1)),
])
def test_a_placeholder_is_at_most_4096_a_side(size, expected):
    result = placeholder(*size, "png")
    assert (result.width, result.height) == expected == size_of(result.body)


# -- over HTTP ------------------------------------------------------------------------------------

def test_the_guard_over_http(live_reactor):
    from mediaproxy.testing import ImageOrigin, start_proxy

    budget = 2048 * 2048                                          # the arithmetic JPEG's size
    files = {
        "/media/fits.png": (images.encode(Image.new("1", (2048, 2048), 1), "PNG"), "image/png"),
        "/media/over.png": (images.encode(Image.new("1", (2049, 2048), 1), "PNG"), "image/png"),
        "/media/anim3.gif": (images.make_animated("GIF", count=3, size=(20, 20)), "image/gif"),
        "/media/anim4.gif": (images.make_animated("GIF", count=4, size=(20, 20)), "image/gif"),
        "/media/liar.jpg": (lying_sof_jpeg(2000, 2000), "image/jpeg"),
        "/media/arith.jpg": (ARITHMETIC, "image/jpeg"),
        "/media/cut.png": (PNG[:-40], "image/png"),
    }
    origin = ImageOrigin({path: (200, body, ctype, []) for path, (body, ctype) in files.items()})
    running = start_proxy(origin=origin, overrides={
        "limits": {"max_source_pixels": budget, "max_frames": 3}})

    def get(path):
        status, headers, body, _ = running.get(path)
        return status, headers.get("x-placeholder"), size_of(body)
    try:
        assert get("/media/fits.png?w=30") == (200, None, (30, 30))
        assert get("/media/over.png?w=30&h=20") == (422, "image_too_large", (30, 20))
        assert get("/media/anim3.gif?w=10") == (200, None, (10, 10))
        assert get("/media/anim4.gif?w=10&h=10") == (422, "too_many_frames", (10, 10))
        assert get("/media/liar.jpg?w=30&h=30") == (422, "corrupt_image", (30, 30))
        assert get("/media/cut.png?w=30&h=30") == (422, "corrupt_image", (30, 30))
        assert get("/media/arith.jpg?w=64") == (200, None, (64, 64))
    finally:
        running.stop()
