"""
Hypothesis strategies for image files built from their header structures: GIF (logical
screen, colour table, frames with their own descriptors), PNG (IHDR with any numbers, APNG
acTL/fcTL, IDAT), JPEG (SOF of any kind, EXIF orientation, tables, scans) and WebP (VP8X
canvas, ANIM/ANMF frames, VP8L). Every field is drawn from its whole range, legal or not, so
the decode guard meets headers that lie about sizes and frame counts, truncated files and
impossible combinations.

Used by tests/test_decode_guard_properties.py (fast, in the normal suite) and by the
reliability suite's fuzz fallback (tests/reliability/fuzz.py) when atheris is not installed.
"""

from __future__ import annotations

import struct
import zlib

from hypothesis import strategies as st

#: Sides drawn for headers: small ones (decoded cheaply) and large ones (must be refused).
sides = st.one_of(st.integers(0, 64), st.integers(65, 70_000))
#: The same within 16 bits (GIF and JPEG store sides in two bytes).
sides16 = st.one_of(st.integers(0, 64), st.integers(65, 65_535))


#: Colour type -> the bit depths the PNG specification allows with it.
_PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}


def _png_chunk(kind: bytes, body: bytes, crc_ok: bool = True) -> bytes:
    crc = zlib.crc32(kind + body) & 0xFFFFFFFF
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc if crc_ok else
                                                                    crc ^ 1)


@st.composite
def pngs(draw) -> tuple[bytes, dict]:
    """A PNG (maybe APNG) and what its IHDR declares: ``{"size", "colour", "depth",
    "animated", "crc_ok"}``."""
    width, height = draw(sides), draw(sides)
    if draw(st.integers(0, 4)):                   # mostly a legal colour type and depth
        colour, depth = draw(st.sampled_from(sorted(_PNG_DEPTHS.items())))
        depth = draw(st.sampled_from(depth))
    else:
        depth = draw(st.sampled_from([1, 2, 4, 8, 16, 3, 0]))
        colour = draw(st.sampled_from([0, 2, 3, 4, 6, 1, 7]))
    interlace = draw(st.sampled_from([0, 0, 0, 1, 2]))
    crc_ok = draw(st.integers(0, 9)) > 0          # mostly right, sometimes broken
    out = b"\x89PNG\r\n\x1a\n" + _png_chunk(
        b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, interlace), crc_ok)
    if colour == 3:
        out += _png_chunk(b"PLTE", bytes(draw(st.integers(0, 8)) * 3))
    animated = draw(st.booleans())
    if animated:
        frames = draw(st.integers(0, 300))
        out += _png_chunk(b"acTL", struct.pack(">II", frames, 0))
        out += _png_chunk(b"fcTL", struct.pack(">IIIIIHHBB", 0, draw(sides), draw(sides),
                                               draw(st.integers(0, 9)), draw(st.integers(0, 9)),
                                               1, 10, 0, 0))
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(colour, 1)
    row = 1 + -(-width * channels * max(depth, 1) // 8)
    if width * height <= 4096 and draw(st.booleans()):  # whole rows of the declared size
        rows = (b"\0" + bytes(row - 1)) * height
    else:
        rows = draw(st.binary(max_size=200))
    out += _png_chunk(b"IDAT", zlib.compress(rows))
    if draw(st.booleans()):
        out += _png_chunk(b"IEND", b"")
    return out, {"size": (width, height), "colour": colour, "depth": depth,
                 "animated": animated, "crc_ok": crc_ok}


def _gif_subblocks(data: bytes) -> bytes:
    out = b""
    for at in range(0, len(data), 255):
        piece = data[at:at + 255]
        out += bytes([len(piece)]) + piece
    return out + b"\0"


@st.composite
def gifs(draw) -> tuple[bytes, dict]:
    """A GIF with a logical screen, an optional colour table and up to 6 frames whose
    descriptors may lie outside the screen; what its screen declares."""
    screen = (draw(sides16), draw(sides16))
    table_bits = draw(st.integers(0, 7))
    has_table = draw(st.booleans())
    out = (draw(st.sampled_from([b"GIF89a", b"GIF87a"]))
           + struct.pack("<HHBBB", *screen, (0x80 if has_table else 0) | table_bits, 0, 0))
    if has_table:
        out += bytes(3 * 2 ** (table_bits + 1))
    if draw(st.booleans()):
        out += b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"
    for _ in range(draw(st.integers(0, 6))):
        if draw(st.booleans()):
            out += b"\x21\xf9\x04" + bytes([draw(st.integers(0, 31))]) + b"\x0a\x00\x00\x00"
        x, y, w, h = draw(sides16), draw(sides16), draw(sides16), draw(sides16)
        local = draw(st.integers(0, 255))
        out += b"\x2c" + struct.pack("<HHHHB", x, y, w, h, local)
        if local & 0x80:
            out += bytes(3 * 2 ** ((local & 7) + 1))
        out += bytes([draw(st.integers(1, 12))]) + _gif_subblocks(draw(st.binary(max_size=120)))
    if draw(st.booleans()):
        out += b"\x3b"
    return out, {"size": screen}


def _segment(marker: int, body: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body


def _exif(orientation: int) -> bytes:
    ifd = struct.pack(">HHHIHH", 1, 0x0112, 3, 1, orientation, 0) + b"\0\0\0\0"
    return b"Exif\0\0MM\0\x2a\0\0\0\x08" + ifd


@st.composite
def jpegs(draw) -> tuple[bytes, dict]:
    """A JPEG: optional EXIF orientation, a quantisation and Huffman table, a frame header
    (baseline, extended, progressive, lossless or arithmetic) with any size and component
    count, a scan header and some entropy-coded bytes."""
    width, height = draw(sides16), draw(sides16)
    sof = draw(st.sampled_from([0xC0, 0xC1, 0xC2, 0xC3, 0xC9, 0xCA]))
    components = draw(st.sampled_from([1, 3, 4, 0, 2]))
    out = b"\xff\xd8"
    orientation = draw(st.one_of(st.none(), st.integers(0, 10)))
    if orientation is not None:
        out += _segment(0xE1, _exif(orientation))
    out += _segment(0xDB, b"\x00" + bytes(range(1, 65)))
    out += _segment(0xC4, b"\x00" + bytes([0, 1] + [0] * 14) + b"\x00")
    comps = b"".join(bytes([i + 1, draw(st.sampled_from([0x11, 0x22, 0x21, 0x44])), 0])
                     for i in range(components))
    out += _segment(sof, bytes([draw(st.sampled_from([8, 12, 16]))])
                    + struct.pack(">HH", height, width) + bytes([components]) + comps)
    scans = draw(st.integers(0, 3))
    for _ in range(scans):
        out += _segment(0xDA, bytes([1, 1, 0, draw(st.integers(0, 63)),
                                     draw(st.integers(0, 63)), draw(st.integers(0, 255))]))
        out += draw(st.binary(max_size=100)).replace(b"\xff", b"\xff\x00")
    if draw(st.booleans()):
        out += b"\xff\xd9"
    return out, {"size": (width, height), "orientation": orientation}


def _riff_chunk(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("<I", len(body)) + body + (b"\0" if len(body) % 2 else b"")


@st.composite
def webps(draw) -> tuple[bytes, dict]:
    """A WebP: either a VP8L (lossless) header of any size, or a VP8X canvas with the
    animation flag and up to 6 ANMF frames of any size and offset."""
    if draw(st.booleans()):
        w, h = draw(st.integers(1, 16384)), draw(st.integers(1, 16384))
        bits = (w - 1) | ((h - 1) << 14) | (draw(st.integers(0, 1)) << 28)
        body = b"\x2f" + struct.pack("<I", bits) + draw(st.binary(max_size=60))
        chunks = _riff_chunk(b"VP8L", body)
        size = (w, h)
    else:
        cw, ch = draw(st.integers(1, 1 << 24)), draw(st.integers(1, 1 << 24))
        flags = draw(st.integers(0, 255))
        chunks = _riff_chunk(b"VP8X", bytes([flags, 0, 0, 0])
                             + (cw - 1).to_bytes(3, "little") + (ch - 1).to_bytes(3, "little"))
        chunks += _riff_chunk(b"ANIM", bytes(4) + struct.pack("<H", draw(st.integers(0, 3))))
        for _ in range(draw(st.integers(0, 6))):
            fw, fh = draw(st.integers(1, 1 << 24)), draw(st.integers(1, 1 << 24))
            header = (draw(st.integers(0, 1 << 23)).to_bytes(3, "little")
                      + draw(st.integers(0, 1 << 23)).to_bytes(3, "little")
                      + (fw - 1).to_bytes(3, "little") + (fh - 1).to_bytes(3, "little")
                      + (100).to_bytes(3, "little") + b"\0")
            chunks += _riff_chunk(b"ANMF", header + draw(st.binary(max_size=40)))
        size = (cw, ch)
    return b"RIFF" + struct.pack("<I", len(chunks) + 4) + b"WEBP" + chunks, {"size": size}


#: Any of the four, as ``(kind, data, declared)``.
image_headers = st.one_of(
    pngs().map(lambda d: ("png", *d)), gifs().map(lambda d: ("gif", *d)),
    jpegs().map(lambda d: ("jpeg", *d)), webps().map(lambda d: ("webp", *d)))
