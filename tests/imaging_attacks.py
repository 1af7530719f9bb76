"""Hostile image files built by hand for the imaging budget tests and bench/attacks.py:
what Pillow cannot write (a JPEG repeating a scan thousands of times, a GIF whose frame is
larger than its header says). Only Pillow and the test kit's encoders are used, so the bench
can build them for any checkout."""

from __future__ import annotations

from PIL import Image

from mediaproxy.testing.images import encode, noise


def _segments(data: bytes) -> list[tuple[int, int, int]]:
    """(marker, start, end) of each segment after SOI, a scan with its entropy-coded data;
    a plain byte walk, independent of mediaproxy.imaging.scans."""
    out, at = [], 2
    while at < len(data):
        marker = data[at + 1]
        if marker == 0xD9:
            out.append((marker, at, at + 2))
            break
        end = at + 2 + int.from_bytes(data[at + 2:at + 4], "big")
        if marker == 0xDA:
            while not (data[end] == 0xFF and data[end + 1] not in (0x00, *range(0xD0, 0xD8))):
                end += 1
        out.append((marker, at, end))
        at = end
    return out


def progressive_jpeg(size=(64, 48), flat: bool = False) -> bytes:
    """A progressive JPEG of noise, or of one colour (``flat``: its scans are a few bytes
    each)."""
    image = Image.new("RGB", size, (120, 130, 140)) if flat else noise(*size)
    return encode(image, "JPEG", progressive=True, quality=80)


def with_repeated_scan(data: bytes, copies: int) -> bytes:
    """``data`` with its last (refinement) scan repeated ``copies`` more times: libjpeg
    decodes every copy (each walks every block), Pillow cannot write such a file."""
    scans = [s for s in _segments(data) if s[0] == 0xDA]
    _, start, end = scans[-1]
    return data[:end] + data[start:end] * copies + data[end:]


def with_comments(data: bytes, count: int) -> bytes:
    """``data`` with ``count`` empty COM segments after SOI."""
    return data[:2] + b"\xff\xfe\x00\x02" * count + data[2:]


def scans_in(data: bytes) -> int:
    return sum(1 for s in _segments(data) if s[0] == 0xDA)


def flat_animation(fmt: str, count: int, size) -> bytes:
    """``count`` flat frames: a few KB whatever the size."""
    frames = [Image.new("RGB", size, ((i * 40) % 256, 100, 200)) for i in range(count)]
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)


def _gif_image_blocks(data: bytes) -> tuple[list[tuple[int, int]], int]:
    """(start, end) of each image descriptor with its data, and where the trailer is."""
    flags = data[10]
    at = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    images = []

    def skip(at):
        while data[at]:
            at += 1 + data[at]
        return at + 1

    while data[at] != 0x3B:
        start = at
        if data[at] == 0x21:
            at = skip(at + 2)
        else:
            local = data[at + 9]
            at = skip(at + 10 + (3 << ((local & 7) + 1) if local & 0x80 else 0) + 1)
            images.append((start, at))
    return images, at


def lying_gif(screen=(100, 100), big=(8000, 6000)) -> bytes:
    """A GIF whose header (logical screen) says ``screen`` and whose second frame is
    ``big``, at (0, 0): Pillow grows the canvas to the frame when it gets there."""
    first = flat_animation("GIF", 1, screen)
    _, trailer = _gif_image_blocks(first)
    large = Image.new("P", big, 1)
    large.putpalette([0, 0, 0, 255, 0, 0] * 128)
    large = encode(large, "GIF")
    (start, end), = _gif_image_blocks(large)[0]
    piece = large[start:end]
    table = large[13:13 + (3 << ((large[10] & 7) + 1))]      # its global table, made local
    piece = piece[:9] + bytes([0x80 | (large[10] & 7)]) + table + piece[10:]
    control = b"\x21\xf9\x04\x00\x0a\x00\x00\x00"
    return first[:trailer] + control + piece + b"\x3b"
