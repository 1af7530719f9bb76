"""
Images for tests, built in memory (small, deterministic, nothing downloaded), and a way to check
what came back.

:func:`make_image` makes a plain picture in any format Pillow writes; the ``make_*`` functions
make the awkward ones a plugin meets in the wild: JPEGs with an EXIF orientation, CMYK or an
ICC profile, PNGs with alpha, a palette, 16 bits or a lying header, animated GIF/WebP.
:func:`decode` opens bytes again; :func:`assert_image` decodes and checks size, format and mode
with a message that says what arrived instead. ICC profiles are written by hand
(:func:`adobe_rgb_profile`, :func:`cmyk_profile`) so no profile files are needed.
"""

from __future__ import annotations

import functools
import io
import random
import struct
import zlib

from PIL import Image, ImageCms, ImageDraw

__all__ = [
    "BLUE", "GREY", "RED", "SKIN", "STORE_AS", "adobe_rgb_profile", "animation_frames",
    "assert_image", "big_jpeg", "cmyk_profile", "decode", "encode", "make_animated",
    "make_bilevel_png", "make_detailed", "make_grey_png", "make_image", "make_jpeg",
    "make_palette_png", "make_png", "make_png16", "make_png48", "make_png_bomb", "make_skin",
    "make_transparent_png", "noise", "ramp16", "upright",
]

GREY = (128, 128, 128)
RED = (255, 0, 0)
BLUE = (0, 0, 255)
SKIN = (224, 172, 140)

#: EXIF orientation -> the transpose that undoes it, i.e. turns an upright picture into what
#: a camera stores with that tag (the inverse of ImageOps.exif_transpose's table).
STORE_AS = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def decode(data: bytes) -> Image.Image:
    """Open and load encoded image bytes (a response body, say) with Pillow."""
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def make_image(size=(400, 300), fmt: str = "JPEG", colour=(200, 30, 30), mode: str = "RGB",
               *, color=None, **save_options) -> bytes:
    """A ``size`` picture of one ``colour`` in ``mode``, encoded as ``fmt`` with Pillow's
    ``save_options`` (``quality=50``, ``exif=...``, ``optimize=True``)::

        make_image((800, 600))                                   # a red 800x600 JPEG
        make_image((400, 400), "PNG", (0, 128, 255, 100), mode="RGBA")   # translucent PNG

    ``color`` is accepted as Pillow's spelling of ``colour``.
    """
    return encode(Image.new(mode, size, colour if color is None else color), fmt,
                  **save_options)


_FORMAT_ALIASES = {"JPG": "JPEG", "TIF": "TIFF"}


def assert_image(body, size=None, format: str | None = None, mode: str | None = None
                 ) -> Image.Image:
    """Decode ``body`` (bytes, or a response with a ``.body``) and assert it is an image of
    ``size`` (``(width, height)``), ``format`` (``"WEBP"``, ``"png"``, ``"jpg"``) and ``mode``
    (``"RGBA"``), checking only what is given; return the decoded image for further checks.

    The failure says what arrived: ``expected 200x100 WEBP, got 400x300 JPEG RGB``, or, when the
    body is no image at all, its length and first bytes (an error page, say).
    """
    data = getattr(body, "body", body)
    try:
        image = decode(data)
    except Exception as exc:
        raise AssertionError(f"not an image ({type(exc).__name__}): {len(data)} bytes "
                             f"starting {data[:60]!r}") from None
    want_format = format and _FORMAT_ALIASES.get(format.upper(), format.upper())
    wrong = ((size is not None and tuple(image.size) != tuple(size))
             or (want_format and image.format != want_format)
             or (mode is not None and image.mode != mode))
    if wrong:
        expected = " ".join(part for part in (
            size is not None and f"{size[0]}x{size[1]}", want_format, mode) if part)
        got = f"{image.size[0]}x{image.size[1]} {image.format} {image.mode}"
        raise AssertionError(f"expected {expected}, got {got}")
    return image


def upright(width: int, height: int, colour=GREY, marker=RED) -> Image.Image:
    """A ``colour`` picture with a ``marker`` block in its top-left corner."""
    image = Image.new("RGB", (width, height), colour)
    ImageDraw.Draw(image).rectangle((0, 0, width // 4 - 1, height // 4 - 1), fill=marker)
    return image


def make_jpeg(width: int, height: int, orientation: int | None = None,
              icc: bytes | None = None, cmyk: bool = False, image: Image.Image | None = None,
              quality: int = 90, **options) -> bytes:
    """A JPEG that *displays* as ``image`` (default :func:`upright`) once EXIF
    ``orientation`` is applied, stored transposed accordingly; optionally CMYK and with an
    embedded ``icc`` profile."""
    image = image if image is not None else upright(width, height)
    if orientation:
        stored_as = STORE_AS[orientation]
        if stored_as is not None:
            image = image.transpose(stored_as)
        exif = Image.Exif()
        exif[0x0112] = orientation
        options["exif"] = exif.tobytes()
    if cmyk:
        image = image.convert("CMYK")
    if icc:
        options["icc_profile"] = icc
    return encode(image, "JPEG", quality=quality, **options)


def make_png(width: int, height: int, mode: str = "RGB", colour=GREY, **options) -> bytes:
    return encode(Image.new(mode, (width, height), colour), "PNG", **options)


def make_transparent_png(width: int = 40, height: int = 20) -> bytes:
    """Opaque red on the left half, fully transparent on the right half."""
    image = Image.new("RGBA", (width, height), RED + (255,))
    ImageDraw.Draw(image).rectangle((width // 2, 0, width - 1, height - 1), fill=(0, 0, 0, 0))
    return encode(image, "PNG")


def make_palette_png(width: int = 40, height: int = 20) -> bytes:
    """A palette PNG: index 0 (blue) transparent on the right half, index 1 red on the left."""
    image = Image.new("P", (width, height), 1)
    image.putpalette([0, 0, 255, 255, 0, 0] + [0] * 762)
    ImageDraw.Draw(image).rectangle((width // 2, 0, width - 1, height - 1), fill=0)
    return encode(image, "PNG", transparency=0)


def make_grey_png(width: int = 64, height: int = 32) -> bytes:
    """A horizontal greyscale ramp, mode L."""
    image = Image.linear_gradient("L").rotate(90).resize((width, height))
    return encode(image, "PNG")


def make_bilevel_png(width: int = 32, height: int = 16) -> bytes:
    """Mode 1: white, black right half."""
    image = Image.new("1", (width, height), 1)
    ImageDraw.Draw(image).rectangle((width // 2, 0, width - 1, height - 1), fill=0)
    return encode(image, "PNG")


def ramp16(width: int = 64, height: int = 8, mode: str = "I;16") -> Image.Image:
    """A 16-bit greyscale ramp 0..65535 in ``mode`` (I;16, I;16B or I)."""
    values = [x * 65535 // (width - 1) for _ in range(height) for x in range(width)]
    if mode == "I":
        image = Image.new("I", (width, height))
        image.putdata(values)
        return image
    order = ">" if mode == "I;16B" else "<"
    return Image.frombytes(mode, (width, height), struct.pack(f"{order}{len(values)}H", *values))


def make_png16(width: int = 64, height: int = 8) -> bytes:
    """A 16-bit greyscale PNG of :func:`ramp16`."""
    return encode(ramp16(width, height), "PNG")


def make_png48(pixels: list[tuple[int, int, int]], width: int) -> bytes:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write one), one row per ``width`` pixels."""
    height = len(pixels) // width
    rows = b"".join(
        b"\0" + b"".join(struct.pack(">HHH", *pixels[y * width + x]) for x in range(width))
        for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", zlib.compress(rows)) + _chunk(b"IEND", b""))


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(
        ">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def make_png_bomb(width: int, height: int) -> bytes:
    """A real 1x1 PNG whose IHDR claims ``width`` x ``height`` (CRC fixed up): any attempt
    to decode it fails as truncated, so an 'image too large' error proves the header check."""
    data = bytearray(make_png(1, 1))
    ihdr = 8 + 8                                    # signature, then length + "IHDR"
    data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4:ihdr + 13])))
    return bytes(data)


def animation_frames(count: int = 3, size=(60, 40), alpha: bool = False):
    """Distinct frames: a different solid colour each, with a transparent band on the right
    when ``alpha``."""
    colours = [(255, 0, 0), (0, 160, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]
    frames = []
    for index in range(count):
        colour = colours[index % len(colours)]
        frame = Image.new("RGBA", size, colour + (255,))
        if alpha:
            ImageDraw.Draw(frame).rectangle((size[0] * 3 // 4, 0, size[0], size[1]),
                                            fill=(0, 0, 0, 0))
        frames.append(frame if alpha else frame.convert("RGB"))
    return frames


def make_animated(fmt: str = "GIF", count: int = 3, durations=None, size=(60, 40),
                  alpha: bool = False, loop: int | None = 0) -> bytes:
    durations = list(durations or [100 * (i + 1) for i in range(count)])
    frames = animation_frames(count, size, alpha)
    options = {"save_all": True, "append_images": frames[1:], "duration": durations}
    if loop is not None:
        options["loop"] = loop
    if fmt == "GIF" and alpha:
        options["disposal"] = 2
    return encode(frames[0], fmt, **options)


def noise(width: int, height: int, seed: int = 1) -> Image.Image:
    """Deterministic RGB noise."""
    rng = random.Random(seed)
    return Image.frombytes("RGB", (width, height), rng.randbytes(width * height * 3))


def make_detailed(width: int = 400, height: int = 200, box=(320, 0, 400, 200)) -> bytes:
    """A flat grey picture with a noisy (detailed) region in ``box``."""
    image = Image.new("RGB", (width, height), GREY)
    image.paste(noise(box[2] - box[0], box[3] - box[1]), box[:2])
    return encode(image, "PNG")


def make_skin(width: int = 400, height: int = 200, box=(330, 60, 390, 140)) -> bytes:
    """A flat light grey picture with a smooth skin-tone ellipse in ``box``."""
    image = Image.new("RGB", (width, height), (200, 200, 200))
    ImageDraw.Draw(image).ellipse(box, fill=SKIN)
    return encode(image, "PNG")


@functools.cache
def big_jpeg(orientation: int | None = None) -> bytes:
    """A 4000x3000 (as stored) JPEG with a red marker in the displayed top-left corner."""
    if orientation in (5, 6, 7, 8):
        return make_jpeg(3000, 4000, orientation=orientation, quality=75)
    return make_jpeg(4000, 3000, orientation=orientation, quality=75)


# -- ICC profiles ------------------------------------------------------------------------------

_D50 = (0.9642, 1.0, 0.8249)


def _s15(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def _xyz(x: float, y: float, z: float) -> bytes:
    return b"XYZ \0\0\0\0" + _s15(x) + _s15(y) + _s15(z)


def _desc(text: str) -> bytes:
    ascii_ = text.encode("ascii") + b"\0"
    return (b"desc\0\0\0\0" + struct.pack(">I", len(ascii_)) + ascii_
            + struct.pack(">II", 0, 0) + struct.pack(">HB", 0, 0) + b"\0" * 67)


def _profile(device_class: bytes, space: bytes, pcs: bytes, tags: dict[bytes, bytes]) -> bytes:
    """An ICC v2.1 profile: header, tag table, tag data (each 4-byte aligned)."""
    table_size = 4 + 12 * len(tags)
    offset = 128 + table_size
    entries, body = [], b""
    for signature, data in tags.items():
        data += b"\0" * (-len(data) % 4)
        entries.append(struct.pack(">4sII", signature, offset + len(body), len(data)))
        body += data
    size = offset + len(body)
    header = (struct.pack(">I4sI4s4s4s", size, b"lcms", 0x02100000, device_class, space, pcs)
              + b"\0" * 12 + b"acsp" + b"\0" * 24 + struct.pack(">I", 0)
              + _s15(_D50[0]) + _s15(_D50[1]) + _s15(_D50[2]) + b"\0" * 4 + b"\0" * 44)
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + b"".join(entries) + body


@functools.cache
def adobe_rgb_profile() -> bytes:
    """A matrix/TRC RGB profile with Adobe RGB (1998) primaries (D50-adapted) and gamma 2.2:
    wider than sRGB, so saturated colours change when converted."""
    curve = b"curv\0\0\0\0" + struct.pack(">IH", 1, 563)      # gamma 563/256 = 2.199
    return _profile(b"mntr", b"RGB ", b"XYZ ", {
        b"desc": _desc("Test Adobe RGB"),
        b"wtpt": _xyz(*_D50),
        b"rXYZ": _xyz(0.60974, 0.31111, 0.01947),
        b"gXYZ": _xyz(0.20528, 0.62567, 0.06087),
        b"bXYZ": _xyz(0.14919, 0.06322, 0.74457),
        b"rTRC": curve, b"gTRC": curve, b"bTRC": curve,
    })


@functools.cache
def cmyk_profile() -> bytes:
    """A CMYK input profile: an 8-bit A2B0 lookup table (2 grid points per ink) whose
    corners hold the Lab of the naive conversion ``rgb = 255 (1 - ink)(1 - k)``."""
    corners = []
    for c in (0, 1):
        for m in (0, 1):
            for y in (0, 1):
                for k in (0, 1):
                    corners.append(tuple(round(255 * (1 - ink) * (1 - k)) for ink in (c, m, y)))
    rgb = Image.new("RGB", (len(corners), 1))
    rgb.putdata(corners)
    lab = ImageCms.profileToProfile(rgb, ImageCms.createProfile("sRGB"),
                                    ImageCms.createProfile("LAB"), outputMode="LAB")
    # Pillow stores a* and b* as signed bytes; lut8 Lab holds them offset by 128.
    clut = bytes(v if i % 3 == 0 else v ^ 0x80 for i, v in enumerate(lab.tobytes()))  # type: ignore[union-attr]  # None only in place
    identity = bytes(range(256))
    a2b0 = (b"mft1\0\0\0\0" + bytes([4, 3, 2, 0])
            + b"".join(_s15(v) for v in (1, 0, 0, 0, 1, 0, 0, 0, 1))
            + identity * 4 + clut + identity * 3)
    return _profile(b"prtr", b"CMYK", b"Lab ", {
        b"desc": _desc("Test CMYK"),
        b"wtpt": _xyz(*_D50),
        b"A2B0": a2b0,
    })
