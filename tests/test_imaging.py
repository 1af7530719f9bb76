"""Tests of mediaproxy.imaging: every output is decoded again and checked."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageChops, ImageCms, ImageStat, PngImagePlugin

from mediaproxy.imaging import (
    FITS, POSITIONS, ImageError, ImageInfo, TooManyFrames, fit_geometry, output_format,
    placeholder, probe, render,
)
from mediaproxy.models import TransformSpec, TransformStep
from mediaproxy.testing import images
from mediaproxy.testing.images import BLUE, GREY, RED, decode, encode

FORMATS = ("jpeg", "png", "webp", "avif", "gif", "tiff")
ALPHA_FORMATS = ("png", "webp", "avif", "tiff")


def spec(**fields) -> TransformSpec:
    return TransformSpec(**fields)


def rendered_image(data: bytes, **fields) -> Image.Image:
    return decode(render(data, spec(**fields)).body)


def near(actual, expected, tolerance: int = 12) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected))


def mean_abs_diff(a: Image.Image, b: Image.Image) -> float:
    """The largest per-channel mean absolute difference."""
    return max(ImageStat.Stat(ImageChops.difference(a, b)).mean)


def stddev(image: Image.Image) -> float:
    return ImageStat.Stat(image.convert("L")).stddev[0]


def recorder(order: int, seen: list) -> TransformStep:
    """A step that records the size of the image it is given and passes it on."""
    def apply(image, spec, request):
        seen.append((order, image.size, image.mode))
        return image
    return TransformStep(name=f"record-{order}", apply=apply, order=order)


SOURCE = images.make_png(120, 80, colour=(200, 40, 40))


# -- geometry ----------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("fit, expected", [
    ("inside", (50, 33)), ("outside", (75, 50)), ("cover", (50, 50)),
    ("contain", (50, 50)), ("fill", (50, 50)),
])
def test_fit_modes_give_exact_dimensions_in_every_format(fit, expected, fmt):
    result = render(SOURCE, spec(width=50, height=50, fit=fit, format=fmt))
    image = decode(result.body)
    assert (result.width, result.height) == expected == image.size
    assert image.format == fmt.upper()
    assert result.format == fmt
    assert result.content_type == f"image/{fmt}"


@pytest.mark.parametrize("fit, source, box, enlarge, expected", [
    ("inside", (40, 30), (100, 100), False, (40, 30)),
    ("inside", (40, 30), (100, 100), True, (100, 75)),
    ("outside", (40, 30), (100, 100), False, (40, 30)),
    ("outside", (40, 30), (100, 100), True, (133, 100)),
    ("cover", (40, 30), (100, 100), False, (30, 30)),
    ("cover", (40, 30), (100, 100), True, (100, 100)),
    ("cover", (100, 100), (300, 200), False, (100, 67)),
    ("cover", (200, 50), (100, 100), False, (50, 50)),
    ("contain", (40, 30), (100, 100), False, (30, 30)),
    ("contain", (40, 30), (100, 100), True, (100, 100)),
    ("fill", (40, 30), (100, 100), False, (30, 30)),
    ("fill", (40, 30), (100, 60), True, (100, 60)),
])
def test_enlarge(fit, source, box, enlarge, expected):
    data = images.make_png(*source)
    image = rendered_image(data, width=box[0], height=box[1], fit=fit, enlarge=enlarge,
                           format="png")
    assert image.size == expected


@pytest.mark.parametrize("fit", FITS)
@pytest.mark.parametrize("width, height, enlarge, expected", [
    (60, 0, False, (60, 40)),
    (0, 40, False, (60, 40)),
    (240, 0, False, (120, 80)),
    (0, 160, True, (240, 160)),
])
def test_one_free_axis_keeps_the_aspect_ratio(fit, width, height, enlarge, expected):
    image = rendered_image(SOURCE, width=width, height=height, fit=fit, enlarge=enlarge)
    assert image.size == expected


@pytest.mark.parametrize("fit", FITS)
def test_no_size_only_reencodes(fit):
    result = render(SOURCE, spec(fit=fit, format="webp", trim=50))
    assert decode(result.body).size == (120, 80)
    assert result.format == "webp"


def test_contain_pads_with_the_background_at_the_position():
    data = images.make_png(100, 50, colour=RED)
    for position, red_row, blue_row in (("north", 5, 45), ("south", 45, 5),
                                         ("centre", 25, 2)):
        image = rendered_image(data, width=50, height=50, fit="contain", position=position,
                               background=(0, 0, 255, 255), format="png")
        assert image.size == (50, 50)
        assert near(image.getpixel((25, red_row)), RED, 2), position
        assert near(image.getpixel((25, blue_row)), BLUE, 2), position


def test_contain_with_transparent_background_pads_with_alpha():
    image = rendered_image(SOURCE, width=50, height=50, fit="contain",
                           background=(0, 0, 0, 0), format="png")
    assert image.mode == "RGBA"
    assert image.getpixel((25, 1))[3] == 0
    assert image.getpixel((25, 25))[3] == 255


@pytest.mark.parametrize("position, colour", [
    ("west", RED), ("east", BLUE), ("northwest", RED), ("southeast", BLUE)])
def test_cover_crops_at_the_gravity(position, colour):
    source = Image.new("RGB", (100, 50), RED)
    source.paste(BLUE, (50, 0, 100, 50))
    image = rendered_image(encode(source, "PNG"), width=50, height=50, fit="cover",
                           position=position, format="png")
    assert image.size == (50, 50)
    assert near(ImageStat.Stat(image).mean, colour, 2)


def test_fit_geometry_is_public_and_pure():
    assert fit_geometry(100, 100, spec(width=300, height=200, fit="cover")).width == 100
    geometry = fit_geometry(400, 200, spec(width=100, height=100, fit="cover"))
    assert (geometry.width, geometry.height) == (100, 100)
    assert (geometry.scaled_width, geometry.scaled_height) == (200, 100)


# -- orientation and the JPEG fast path --------------------------------------------------------

@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_comes_out_upright(orientation):
    data = images.make_jpeg(60, 40, orientation=orientation)
    image = rendered_image(data, format="png")
    assert image.size == (60, 40)
    assert near(image.getpixel((3, 3)), RED, 30)
    assert near(image.getpixel((56, 36)), GREY, 30)
    resized = rendered_image(data, width=30, height=30, format="jpeg")
    assert resized.size == (30, 20)
    assert near(resized.getpixel((1, 1)), RED, 40)
    assert 0x0112 not in resized.getexif()


@pytest.mark.parametrize("orientation, decoded_limit, output", [
    (None, (1000, 750), (267, 200)),
    (6, (750, 1000), (150, 200)),
])
def test_large_jpeg_is_decoded_at_reduced_scale(orientation, decoded_limit, output):
    # Steps run on the decoded, oriented image before the resize, so a step of order < 500
    # sees exactly the size the decoder produced: a full decode would be 4000x3000.
    seen: list = []
    data = images.big_jpeg(orientation)
    result = render(data, spec(width=300, height=200, format="png"), steps=(recorder(1, seen),))
    (_, decoded, _), = seen
    assert decoded[0] <= decoded_limit[0] and decoded[1] <= decoded_limit[1]
    assert decoded[0] >= output[0] and decoded[1] >= output[1]   # never below the output
    assert decoded[0] * decoded[1] <= 4000 * 3000 // 16              # at least 1/4 per axis
    image = decode(result.body)
    assert image.size == output
    assert near(image.getpixel((2, 2)), RED, 30)


def test_draft_never_enlarges_and_is_skipped_when_trimming():
    seen: list = []
    data = images.make_jpeg(400, 300)
    render(data, spec(width=390, height=290, format="png"), steps=(recorder(1, seen),))
    render(data, spec(width=20, height=20, trim=5, format="png"), steps=(recorder(1, seen),))
    assert [size for _, size, _ in seen] == [(400, 300), (400, 300)]


# -- steps -------------------------------------------------------------------------------------

def test_steps_run_in_order_around_the_resize():
    seen: list = []
    steps = (recorder(900, seen), recorder(100, seen), recorder(500, seen),
             recorder(499, seen))
    result = render(SOURCE, spec(width=60, format="png"), steps=steps, request="req")
    assert [(order, size) for order, size, _ in seen] == [
        (100, (120, 80)), (499, (120, 80)), (500, (60, 40)), (900, (60, 40))]
    assert (result.width, result.height) == (60, 40)


def test_steps_may_change_the_image_and_get_the_request():
    def grey(image, spec, request):
        assert request == "req" and spec.width == 60
        return image.convert("L")

    result = render(SOURCE, spec(width=60, format="jpeg"),
                    steps=(TransformStep("grey", grey, order=100),), request="req")
    assert decode(result.body).mode == "L"


def test_a_step_returning_no_image_is_a_programming_error():
    with pytest.raises(TypeError, match="broken"):
        render(SOURCE, spec(width=60), steps=(TransformStep("broken", lambda *a: None, 10),))


# -- colour ------------------------------------------------------------------------------------

def srgb_reference(image: Image.Image, profile: bytes) -> Image.Image:
    return ImageCms.profileToProfile(
        image, ImageCms.ImageCmsProfile(io.BytesIO(profile)), ImageCms.createProfile("sRGB"),
        outputMode="RGB")


def test_icc_profile_is_converted_to_srgb_and_dropped():
    source = Image.new("RGB", (64, 64), (200, 60, 40))
    source.paste((40, 180, 90), (32, 0, 64, 64))
    data = encode(source, "PNG", icc_profile=images.adobe_rgb_profile())
    reference = srgb_reference(source, images.adobe_rgb_profile())
    assert mean_abs_diff(reference, source) > 10          # the profile matters
    for fields in ({}, {"width": 32, "height": 32}):      # converted before / after resize
        result = render(data, spec(format="png", **fields))
        image = decode(result.body)
        assert "icc_profile" not in image.info
        expected = reference.resize(image.size, Image.Resampling.LANCZOS)
        assert near(image.getpixel((4, 4)), expected.getpixel((4, 4)), 2)
        assert near(image.getpixel((image.width - 4, 4)),
                    expected.getpixel((image.width - 4, 4)), 2)


def test_steps_before_resize_see_srgb():
    seen = []
    data = encode(Image.new("RGB", (16, 16), (200, 60, 40)), "PNG",
                  icc_profile=images.adobe_rgb_profile())
    step = TransformStep("peek", lambda image, *_: seen.append(image.getpixel((0, 0)))
                         or image, order=10)
    render(data, spec(width=8, format="png"), steps=(step,))
    expected = srgb_reference(Image.new("RGB", (1, 1), (200, 60, 40)),
                              images.adobe_rgb_profile()).getpixel((0, 0))
    assert near(seen[0], expected, 2)


def test_cmyk_without_profile_converts_plainly():
    data = images.make_jpeg(64, 48, cmyk=True)
    reference = decode(data).convert("RGB")
    image = rendered_image(data, format="png")
    assert image.mode == "RGB"
    assert mean_abs_diff(image, reference) < 3
    assert near(image.getpixel((3, 3)), RED, 30)


def test_cmyk_with_profile_converts_through_it():
    data = images.make_jpeg(64, 48, cmyk=True, icc=images.cmyk_profile())
    source = decode(data)
    assert source.mode == "CMYK" and "icc_profile" in source.info
    reference = srgb_reference(source, images.cmyk_profile())
    for fields in ({}, {"width": 32}):
        image = rendered_image(data, format="png", **fields)
        assert image.mode == "RGB" and "icc_profile" not in image.info
        assert mean_abs_diff(image, reference.resize(image.size, Image.Resampling.LANCZOS)) < 3
        assert near(image.getpixel((1, 1)), RED, 40)


def ramp_reference(width: int = 64, height: int = 8) -> Image.Image:
    image = Image.new("L", (width, height))
    image.putdata([(x * 65535 // (width - 1)) >> 8 for _ in range(height) for x in range(width)])
    return image


@pytest.mark.parametrize("source", [
    pytest.param(images.make_png16(), id="png-I;16"),
    pytest.param(encode(images.ramp16(mode="I;16B"), "TIFF"), id="tiff-I;16B"),
    pytest.param(encode(images.ramp16(mode="I"), "TIFF"), id="tiff-I"),
])
def test_16_bit_greyscale_is_scaled_not_clipped(source):
    assert decode(source).mode.startswith("I")
    image = rendered_image(source, format="png")
    assert image.mode == "L"
    assert mean_abs_diff(image, ramp_reference()) < 1
    assert image.getpixel((0, 0)) == 0 and image.getpixel((63, 0)) == 255
    assert 120 <= image.getpixel((32, 0)) <= 135


def test_16_bit_rgb_png_keeps_the_high_byte():
    data = images.make_png48([(65535, 32768, 256), (0, 4096, 65535)] * 4, 2)
    image = rendered_image(data, format="png")
    assert image.getpixel((0, 0)) == (255, 128, 1)
    assert image.getpixel((1, 0)) == (0, 16, 255)


def test_palette_with_transparency_becomes_alpha():
    data = images.make_palette_png()
    for fmt in ("png", "webp"):
        image = rendered_image(data, format=fmt).convert("RGBA")
        assert near(image.getpixel((5, 10)), RED + (255,), 4)
        assert image.getpixel((35, 10))[3] == 0
    flat = rendered_image(data, format="jpeg", background=(0, 255, 0, 255))
    assert near(flat.getpixel((35, 10)), (0, 255, 0), 20)
    assert near(flat.getpixel((5, 10)), RED, 20)


def test_greyscale_stays_greyscale():
    data = images.make_grey_png()
    for fmt in ("jpeg", "png"):
        image = rendered_image(data, format=fmt)
        assert image.mode == "L"
        assert mean_abs_diff(image, decode(data)) < 2
    assert rendered_image(data, width=32, format="png").size == (32, 16)


def test_bilevel_images_work():
    image = rendered_image(images.make_bilevel_png(), format="png")
    assert image.mode == "L"
    assert image.getpixel((2, 2)) == 255 and image.getpixel((30, 2)) == 0
    assert rendered_image(images.make_bilevel_png(), width=16, format="webp").size == (16, 8)


@pytest.mark.parametrize("fmt", ALPHA_FORMATS)
def test_alpha_is_kept_where_the_format_has_it(fmt):
    image = rendered_image(images.make_transparent_png(), width=20, format=fmt)
    assert image.mode == "RGBA"
    assert image.getpixel((3, 5))[3] >= 250
    assert image.getpixel((17, 5))[3] <= 5


def test_gif_keeps_binary_transparency():
    image = rendered_image(images.make_transparent_png(), format="gif").convert("RGBA")
    assert image.getpixel((30, 5))[3] == 0
    assert near(image.getpixel((5, 5)), RED + (255,), 8)


def test_jpeg_flattens_alpha_onto_the_background():
    image = rendered_image(images.make_transparent_png(), format="jpeg",
                           background=(0, 0, 255, 255))
    assert image.mode == "RGB"
    assert near(image.getpixel((35, 10)), BLUE, 12)
    assert near(image.getpixel((5, 10)), RED, 12)


def test_format_defaults_to_the_source_or_png_or_jpeg():
    assert render(SOURCE, spec()).format == "png"
    assert render(images.make_jpeg(20, 10), spec()).format == "jpeg"
    assert render(encode(Image.new("RGB", (8, 8)), "TIFF"), spec()).format == "jpeg"
    assert render(encode(Image.new("RGBA", (8, 8)), "TIFF"), spec()).format == "png"
    assert render(encode(Image.new("RGB", (8, 8)), "BMP"), spec()).format == "jpeg"
    assert render(images.make_animated("GIF"), spec()).format == "gif"


def test_output_format():
    assert output_format("JPEG", False, None) == "jpeg"
    assert output_format("MPO", False, None) == "jpeg"
    assert output_format("webp", True, None) == "webp"
    assert output_format("tiff", True, None) == "png"
    assert output_format("bmp", False, None) == "jpeg"
    assert output_format("png", False, "JPG") == "jpeg"
    with pytest.raises(ImageError) as caught:
        output_format("png", False, "bmp")
    assert (caught.value.status, caught.value.error) == (400, "unsupported_format")


# -- trim --------------------------------------------------------------------------------------

def framed(size=(100, 80), box=(30, 20, 70, 60), border=(255, 255, 255), inside=RED):
    image = Image.new("RGB", size, border)
    image.paste(inside, box)
    return encode(image, "PNG")


def test_trim_removes_the_uniform_border_before_resizing():
    image = rendered_image(framed(), width=40, height=40, trim=10, format="png")
    assert image.size == (40, 40)
    assert near(ImageStat.Stat(image).mean, RED, 2)
    assert rendered_image(framed(), width=40, height=40, format="png").size == (40, 32)


def test_trim_threshold_tolerates_near_colours():
    data = framed(border=(250, 250, 250), inside=(255, 255, 255))   # 5 apart
    assert rendered_image(data, width=100, trim=1, format="png").size == (40, 40)
    assert rendered_image(data, width=100, trim=5, format="png").size == (100, 80)


def test_trim_of_a_transparent_border_and_of_a_uniform_image():
    image = Image.new("RGBA", (50, 50), (255, 255, 255, 0))
    image.paste((0, 128, 0, 255), (10, 10, 30, 40))
    assert rendered_image(encode(image, "PNG"), height=30, trim=1, format="png").size == \
        (20, 30)
    assert rendered_image(images.make_png(50, 40), width=25, trim=10).size == (25, 20)


# -- smart crops -------------------------------------------------------------------------------

def right_part(image: Image.Image) -> Image.Image:
    return image.crop((image.width * 2 // 3, 0, image.width, image.height))


@pytest.mark.parametrize("position", ["entropy", "attention"])
def test_smart_crops_keep_the_detailed_region_that_centre_cuts_off(position):
    data = images.make_detailed()                  # noise in x 320..400 of 400x200
    centre = rendered_image(data, width=100, height=100, fit="cover", format="png")
    assert stddev(centre) < 1
    smart = rendered_image(data, width=100, height=100, fit="cover", position=position,
                           format="png")
    assert smart.size == (100, 100)
    assert stddev(right_part(smart)) > 15


@pytest.mark.parametrize("position", ["entropy", "attention"])
def test_smart_crops_work_vertically(position):
    data = images.make_detailed(200, 400, box=(0, 340, 200, 400))
    smart = rendered_image(data, width=100, height=100, fit="cover", position=position,
                           format="png")
    assert stddev(smart.crop((0, 75, 100, 100))) > 15
    assert stddev(rendered_image(data, width=100, height=100, fit="cover")) < 1


def count_near(image: Image.Image, colour, tolerance: int) -> int:
    """How many pixels are within ``tolerance`` of ``colour`` in every channel."""
    masks = [band.point([255 if abs(v - c) <= tolerance else 0 for v in range(256)])
             for band, c in zip(image.convert("RGB").split(), colour)]
    both = ImageChops.multiply(ImageChops.multiply(masks[0], masks[1]), masks[2])
    return both.histogram()[255]


def test_attention_keeps_skin_tones_that_centre_cuts_off():
    data = images.make_skin()                      # skin ellipse at x 330..390 of 400x200
    centre = rendered_image(data, width=100, height=100, fit="cover", format="png")
    attention = rendered_image(data, width=100, height=100, fit="cover",
                               position="attention", format="png")
    assert count_near(centre, images.SKIN, 12) == 0
    assert count_near(attention, images.SKIN, 12) > 300


@pytest.mark.parametrize("position", ["entropy", "attention"])
def test_smart_positions_centre_a_contained_image(position):
    image = rendered_image(images.make_detailed(), width=100, height=100, fit="contain",
                           position=position, background=(0, 0, 255, 255), format="png")
    assert near(image.getpixel((50, 5)), BLUE, 2) and near(image.getpixel((50, 95)), BLUE, 2)


# -- animation ---------------------------------------------------------------------------------

def frames_of(data: bytes):
    image = Image.open(io.BytesIO(data))
    durations, firsts = [], []
    for index in range(getattr(image, "n_frames", 1)):
        image.seek(index)
        image.load()
        durations.append(round(image.info.get("duration", 0)))
        firsts.append(image.convert("RGBA").getpixel((1, 1)))
    return image, durations, firsts


@pytest.mark.parametrize("source_format", ["GIF", "WEBP"])
@pytest.mark.parametrize("fmt", ["gif", "webp", "png"])
def test_animations_keep_frames_durations_and_loop(source_format, fmt):
    data = images.make_animated(source_format, durations=[100, 200, 300], loop=0)
    result = render(data, spec(width=30, format=fmt))
    image, durations, colours = frames_of(result.body)
    assert result.frames == image.n_frames == 3
    assert durations == [100, 200, 300]
    assert image.size == (30, 20) == (result.width, result.height)
    assert image.info.get("loop") == 0
    assert near(colours[0], (255, 0, 0, 255), 12) and near(colours[2], (0, 0, 255, 255), 12)


@pytest.mark.parametrize("fmt", ["gif", "webp", "png"])
def test_animated_transparency_is_not_smeared_across_frames(fmt):
    data = images.make_animated("GIF", alpha=True)
    result = render(data, spec(format=fmt))
    image = Image.open(io.BytesIO(result.body))
    for index in range(image.n_frames):
        image.seek(index)
        frame = image.convert("RGBA")
        assert frame.getpixel((58, 20))[3] == 0, index
        assert frame.getpixel((5, 20))[3] == 255, index


def test_a_gif_without_loop_plays_once_in_webp():
    data = images.make_animated("GIF", loop=None)
    assert Image.open(io.BytesIO(render(data, spec(format="webp")).body)).info["loop"] == 1
    assert "loop" not in Image.open(io.BytesIO(render(data, spec()).body)).info


@pytest.mark.parametrize("fmt", ["jpeg", "tiff"])
def test_single_frame_formats_take_the_first_frame(fmt):
    result = render(images.make_animated("GIF"), spec(width=30, format=fmt))
    image = decode(result.body)
    assert result.frames == 1 and image.size == (30, 20)
    assert near(image.convert("RGB").getpixel((15, 10)), RED, 30)


@pytest.mark.parametrize("fmt", ["gif", "jpeg"])
def test_too_many_frames_is_refused_never_cut_to_one(fmt):
    with pytest.raises(TooManyFrames) as caught:
        render(images.make_animated("GIF", count=3), spec(format=fmt, max_frames=2))
    assert (caught.value.status, caught.value.error) == (422, "too_many_frames")


def test_the_pixel_budget_counts_frames():
    data = images.make_animated("GIF", count=3, size=(60, 40))       # 3 x 2400 pixels
    render(data, spec(max_source_pixels=7200))
    with pytest.raises(ImageError) as caught:
        render(data, spec(max_source_pixels=7199))
    assert (caught.value.status, caught.value.error) == (422, "image_too_large")


# -- limits and bad input ----------------------------------------------------------------------

def test_a_pixel_bomb_is_refused_from_the_header():
    with pytest.raises(ImageError) as caught:
        probe(images.make_png_bomb(30000, 30000))
    assert (caught.value.status, caught.value.error) == (422, "image_too_large")
    # The data is a 1x1 PNG's: decoding it fails as corrupt, so "too large" is the header.
    with pytest.raises(ImageError) as caught:
        render(images.make_png_bomb(5000, 5000), spec(width=10, max_source_pixels=1_000_000))
    assert caught.value.error == "image_too_large"
    with pytest.raises(ImageError) as caught:
        render(images.make_png_bomb(500, 500), spec(width=10, max_source_pixels=1_000_000))
    assert caught.value.error == "corrupt_image"


JPEG = images.make_jpeg(64, 64)


@pytest.mark.parametrize("data, error", [
    pytest.param(JPEG[: len(JPEG) // 2], "corrupt_image", id="truncated-jpeg"),
    pytest.param(images.make_png(64, 64)[:-40], "corrupt_image", id="truncated-png"),
    pytest.param(images.make_animated("GIF")[:-30], "corrupt_image", id="truncated-gif"),
    pytest.param(bytes(range(256)) * 4, "unsupported_image", id="random"),
    pytest.param(b"", "unsupported_image", id="empty"),
    pytest.param(b"hello, I am text", "unsupported_image", id="text"),
    pytest.param(b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>',
                 "unsupported_format", id="svg"),
    pytest.param(encode(Image.new("RGB", (8, 8)), "PPM"), "unsupported_format", id="ppm"),
])
def test_bad_sources_are_image_errors(data, error):
    with pytest.raises(ImageError) as caught:
        render(data, spec(width=32, format="png"))
    assert 400 <= caught.value.status < 500
    assert caught.value.error == error
    assert caught.value.message and "/" not in caught.value.message


def test_unknown_parameters_are_refused():
    for fields in ({"fit": "squash"}, {"position": "middle"}, {"format": "bmp"}):
        with pytest.raises(ImageError) as caught:
            render(SOURCE, spec(width=10, **fields))
        assert caught.value.status == 400


def test_output_larger_than_the_format_allows():
    with pytest.raises(ImageError) as caught:
        render(images.make_png(100, 1), spec(width=17000, enlarge=True, format="webp"))
    assert caught.value.error == "output_too_large"


# -- metadata ----------------------------------------------------------------------------------

def rich_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 1
    exif[0x010F] = "Camera maker"
    exif[0x013B] = "Secret Artist"
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    return images.make_jpeg(48, 32, exif=exif.tobytes(), icc=srgb, comment=b"secret comment",
                            xmp=b"<x:xmpmeta xmlns:x='adobe:ns:meta/'>secret</x:xmpmeta>")


def rich_png() -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "secret")
    return images.make_png(48, 32, pnginfo=info, icc_profile=images.adobe_rgb_profile(),
                           exif=Image.Exif().tobytes())


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("source", [rich_jpeg(), rich_png()], ids=["jpeg", "png"])
def test_metadata_is_stripped(source, fmt):
    assert {"exif", "icc_profile"} & decode(source).info.keys()
    for fields in ({}, {"width": 24}):
        image = decode(render(source, spec(format=fmt, **fields)).body)
        leaked = {"exif", "icc_profile", "xmp", "XML:com.adobe.xmp", "comment", "Comment"}
        assert not leaked & image.info.keys()
        exif = image.getexif()
        for tag in (0x0112, 0x010F, 0x013B, 0x8769, 0x8773, 700):   # orientation, make,
            assert tag not in exif                                   # artist, EXIF, ICC, XMP
        assert b"secret" not in render(source, spec(format=fmt, **fields)).body


# -- probe and placeholder ---------------------------------------------------------------------

def test_probe_reads_the_header():
    assert probe(images.make_jpeg(60, 40, orientation=6)) == ImageInfo(
        format="jpeg", width=60, height=40, frames=1, mode="RGB", has_alpha=False,
        orientation=6)
    gif = probe(images.make_animated("GIF", count=4))
    assert (gif.format, gif.frames, gif.width, gif.height) == ("gif", 4, 60, 40)
    assert probe(images.make_transparent_png()).has_alpha
    assert probe(images.make_palette_png()).has_alpha
    assert probe(images.make_animated("WEBP", count=2)).frames == 2


@pytest.mark.parametrize("size, expected", [
    ((0, 0), (300, 200)), ((400, 0), (400, 300)), ((0, 300), (400, 300)),
    ((50, 60), (50, 60)), ((10000, 10), (4096, 10)),
])
def test_placeholder_sizes(size, expected):
    result = placeholder(*size, None)
    image = decode(result.body)
    assert image.size == expected == (result.width, result.height)
    assert result.format == "jpeg" and image.format == "JPEG"


@pytest.mark.parametrize("fmt", FORMATS)
def test_placeholder_formats(fmt):
    result = placeholder(120, 90, fmt)
    image = decode(result.body).convert("RGB")
    assert image.size == (120, 90) and result.content_type == f"image/{fmt}"
    assert near(ImageStat.Stat(image).mean, (220, 220, 220), 12)
    assert ImageStat.Stat(image).extrema[0][0] < 210        # the frame / diagonals show


def test_concurrent_renders_match_sequential_ones():
    icc = encode(Image.new("RGB", (40, 30), (200, 60, 40)), "PNG",
                 icc_profile=images.adobe_rgb_profile())
    jobs = [
        (images.make_jpeg(60, 40, orientation=6), spec(width=30, height=30, fit="cover",
                                                       position="attention", format="webp")),
        (images.make_animated("GIF"), spec(width=20, format="gif")),
        (icc, spec(width=16, format="png")),
        (images.make_transparent_png(), spec(width=30, height=30, fit="contain",
                                             format="jpeg")),
    ] * 3
    expected = [render(data, job_spec).body for data, job_spec in jobs]
    with ThreadPoolExecutor(4) as pool:
        bodies = list(pool.map(lambda job: render(*job).body, jobs))
    assert bodies == expected


# -- properties --------------------------------------------------------------------------------

SMALL_SIZE = (48, 32)
SMALL = images.make_detailed(*SMALL_SIZE, box=(36, 0, 48, 32))


def check_dimensions(w: int, h: int, fit: str, enlarge: bool, out: tuple[int, int]) -> None:
    """The rules of the module docstring, restated independently of the implementation."""
    sw, sh = SMALL_SIZE
    ow, oh = out
    if not w and not h:
        assert out == (sw, sh)
        return
    if not w or not h or fit in ("inside", "outside"):
        if not w or not h:
            scale = w / sw if w else h / sh
        else:
            scale = (min if fit == "inside" else max)(w / sw, h / sh)
        if not enlarge and scale > 1:
            assert out == (sw, sh)
            return
        assert abs(ow - sw * scale) <= 1 and abs(oh - sh * scale) <= 1
        if w and h:
            assert (ow <= w and oh <= h) if fit == "inside" else (ow >= w and oh >= h)
            assert ow == w or oh == h
        return
    if enlarge or (w <= sw and h <= sh):
        assert out == (w, h)
        return
    assert ow <= sw and oh <= sh and (ow == sw or oh == sh)
    assert abs(ow * h - oh * w) <= max(w, h)


@settings(max_examples=60)     # deadline and determinism come from the profile (tests/__init__)
@given(w=st.integers(0, 600), h=st.integers(0, 600), fit=st.sampled_from(FITS),
       position=st.sampled_from(POSITIONS), fmt=st.sampled_from(["jpeg", "png", "webp"]),
       enlarge=st.booleans())
def test_render_obeys_the_geometry_rules(w, h, fit, position, fmt, enlarge):
    try:
        result = render(SMALL, spec(width=w, height=h, fit=fit, position=position, format=fmt,
                                    enlarge=enlarge))
    except ImageError as exc:
        assert 400 <= exc.status < 500
        return
    image = decode(result.body)
    assert image.size == (result.width, result.height)
    check_dimensions(w, h, fit, enlarge, image.size)


def test_a_jpeg_too_small_for_the_size_its_header_claims_is_corrupt():
    from tests.hostile import lying_sof_jpeg

    with pytest.raises(ImageError) as info:
        render(lying_sof_jpeg(5000, 5000), spec(width=300, height=200))
    assert (info.value.status, info.value.error) == (422, "corrupt_image")
    # while the smallest honest JPEGs of that size, baseline and progressive, are served
    for progressive in (False, True):
        buf = io.BytesIO()
        Image.new("RGB", (5000, 5000), (200, 10, 10)).save(buf, "JPEG", quality=1,
                                                           progressive=progressive)
        assert render(buf.getvalue(), spec(width=300, height=200)).width == 200


def gif_local_colour_tables(body: bytes) -> list[bool]:
    """For each image of a GIF, whether it carries a colour table of its own (its image
    descriptor's packed byte, bit 7), read from the bytes as the format lays them out."""
    assert body[:6] in (b"GIF87a", b"GIF89a")
    pos = 13 + (3 * 2 ** ((body[10] & 7) + 1) if body[10] & 0x80 else 0)
    tables = []
    while body[pos] != 0x3B:                       # trailer
        if body[pos] == 0x21:                      # extension: label, then sub-blocks
            pos += 2
        else:                                      # image descriptor, then LZW data
            assert body[pos] == 0x2C
            packed = body[pos + 9]
            tables.append(bool(packed & 0x80))
            pos += 10 + (3 * 2 ** ((packed & 7) + 1) if packed & 0x80 else 0) + 1
        while body[pos]:
            pos += body[pos] + 1
        pos += 1
    return tables


def test_an_animated_gif_is_written_with_one_palette_for_every_frame():
    # frames that differ in colour, resized (new colours at every edge): one palette chosen
    # for the whole animation, so no frame carries a table of its own and a still background
    # keeps its index from frame to frame
    result = render(images.make_animated("GIF", count=4, size=(120, 80)),
                    spec(width=90, format="gif"))
    assert result.frames == 4
    assert gif_local_colour_tables(result.body) == [False, False, False, False]
    image = Image.open(io.BytesIO(result.body))
    for index in range(4):
        image.seek(index)
        frame = image.convert("RGB")
        assert frame.size == (90, 60)
        assert near(frame.getpixel((45, 30)), images.animation_frames(4, (120, 80), False)[
            index].convert("RGB").getpixel((60, 40)), 24), index


def test_a_shared_palette_keeps_black_opaque_beside_transparent_pixels():
    # index 255 is the transparent one: pure black, which a palette may hold at its end,
    # must map to an opaque entry in every frame
    frames = []
    for shade in (0, 40, 80):
        frame = Image.new("RGBA", (40, 20), (0, 0, 0, 0))
        frame.paste((0, 0, 0, 255), (0, 0, 20, 20))                # black, opaque
        frame.paste((200, shade, 90, 255), (20, 0, 30, 20))       # a colour per frame
        frames.append(frame)
    data = encode(frames[0], "PNG", save_all=True, append_images=frames[1:],
                  duration=[100, 100, 100], loop=0)
    result = render(data, spec(format="gif"))
    assert result.frames == 3
    assert gif_local_colour_tables(result.body) == [False, False, False]
    image = Image.open(io.BytesIO(result.body))
    for index in range(3):
        image.seek(index)
        frame = image.convert("RGBA")
        assert frame.getpixel((5, 10)) == (0, 0, 0, 255), index
        assert frame.getpixel((35, 10))[3] == 0, index
        assert near(frame.getpixel((25, 10)), (200, 40 * index, 90, 255), 12), index
