"""
The attack inputs of the reliability suite, built here from scratch (nothing is downloaded),
each the smallest honest version of an input that hurt the proxy (issue 12):

* :func:`flat_gif` - many full-size frames of one flat colour each: a few KB on the wire,
  hundreds of megapixels once enlarged (``w=6000&enlarge=1``).
* :func:`lying_screen_gif` - a GIF whose logical screen says 100x100 while its 2nd frame is
  8000x6000 (the header probe sees only the screen).
* :func:`flat_webp` - the same trick in an animated WebP.
* :func:`rescan_jpeg` - a real progressive JPEG with one small refinement scan repeated
  thousands of times: every repeat makes libjpeg walk every block again (CPU, not memory).
* :func:`big_noise_jpeg` - a noise source whose PNG rendering is ~12 MB (a big cached result).

Each is deterministic (fixed seeds), so a figure measured on one commit compares with another.
"""

from __future__ import annotations

import io
import random
import struct

from PIL import Image

from mediaproxy.testing.images import encode, make_image, noise


def _palette(colours: int = 256) -> list[int]:
    rnd = random.Random(5)
    return [rnd.randrange(256) for _ in range(colours * 3)]


def flat_gif(frames: int = 24, size=(400, 300)) -> bytes:
    """An animated GIF of ``frames`` full frames, each one flat colour (no two alike, so Pillow
    keeps them all): ~15 KB for 24 frames of 400x300."""
    palette = _palette()
    images = []
    for i in range(frames):
        image = Image.new("P", size, i % 256)
        image.putpalette(palette)
        images.append(image)
    return encode(images[0], "GIF", save_all=True, append_images=images[1:], duration=40,
                  loop=0, optimize=False, disposal=1)


def _gif_blocks(data: bytes) -> tuple[bytes, list[bytes]]:
    """Split a GIF written by Pillow into (header + screen + global table, [blocks]) where a
    block is one extension or one image (descriptor, table, LZW data) up to the trailer."""
    flags = data[10]
    at = 13 + (3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0)
    head, blocks = data[:at], []
    while data[at] != 0x3B:
        start = at
        if data[at] == 0x21:                       # extension: 21 label sub-blocks
            at += 2
        else:                                      # image: 2C x y w h flags [table] lzw-min
            image_flags = data[at + 9]
            at += 10 + (3 * 2 ** ((image_flags & 7) + 1) if image_flags & 0x80 else 0) + 1
        while data[at]:
            at += data[at] + 1
        at += 1
        blocks.append(data[start:at])
    return head, blocks


def lying_screen_gif(width: int = 8000, height: int = 6000) -> bytes:
    """A 2-frame GIF whose logical screen (the header every probe reads) says 100x100 and
    whose 2nd frame is ``width`` x ``height`` of one colour (~37 KB of LZW for 8000x6000)."""
    palette = [0, 0, 0, 255, 255, 255] + [0] * 762
    small = Image.new("P", (100, 100), 0)
    small.putpalette(palette)
    big = Image.new("P", (width, height), 1)
    big.putpalette(palette)
    head, first = _gif_blocks(encode(small, "GIF"))
    _, second = _gif_blocks(encode(big, "GIF"))
    head = bytearray(head)
    head[0:6] = b"GIF89a"
    struct.pack_into("<HH", head, 6, 100, 100)
    loop = b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"
    delay = b"\x21\xf9\x04\x04\x0a\x00\x00\x00"   # disposal 1, 100 ms
    images = [b for b in first if b[0] == 0x2C] + [b for b in second if b[0] == 0x2C]
    return bytes(head) + loop + delay + images[0] + delay + images[1] + b"\x3b"


def flat_webp(frames: int = 24, size=(400, 300)) -> bytes:
    """An animated lossless WebP of ``frames`` flat full frames (~6 KB for 24 of 400x300)."""
    rnd = random.Random(9)
    images = [Image.new("RGB", size, tuple(rnd.randrange(256) for _ in range(3)))
              for _ in range(frames)]
    return encode(images[0], "WEBP", save_all=True, append_images=images[1:], duration=40,
                  loop=0, lossless=True, quality=0, method=0, minimize_size=False,
                  allow_mixed=False)


def _segments(data: bytes):
    """(marker, start, end) of each JPEG segment up to and including every scan's entropy
    data (a scan runs to the next marker that is not RSTn or a stuffed 0xFF00)."""
    at = 2
    while at < len(data):
        if data[at] != 0xFF:
            raise ValueError(f"not a marker at {at}")
        marker = data[at + 1]
        if marker == 0xD9:
            yield marker, at, at + 2
            return
        length = struct.unpack(">H", data[at + 2:at + 4])[0]
        end = at + 2 + length
        if marker == 0xDA:
            while not (data[end] == 0xFF and data[end + 1] not in (0x00, *range(0xD0, 0xD8))):
                end += 1
        yield marker, at, end
        at = end


def rescan_jpeg(repeats: int = 5000, size=(3000, 3000)) -> bytes:
    """A valid progressive JPEG with its smallest successive-approximation refinement scan
    (Ah > 0) repeated ``repeats`` more times before EOI. libjpeg decodes each repeat over
    every block of the image, so the decode costs ``repeats`` full passes."""
    image = Image.new("L", size, 128)
    data = encode(image, "JPEG", quality=75, progressive=True)
    scans = []
    for marker, start, end in _segments(data):
        if marker == 0xDA:
            header_len = struct.unpack(">H", data[start + 2:start + 4])[0]
            header = data[start + 4:start + 2 + header_len]
            ah_al = header[-1]
            if ah_al >> 4:                         # a refinement scan
                scans.append((end - start, start, end))
    _, start, end = min(scans)
    eoi = data.rindex(b"\xff\xd9")
    return data[:eoi] + data[start:end] * repeats + data[eoi:]


def big_noise_jpeg(size=(2000, 2000)) -> bytes:
    """A noise JPEG whose PNG rendering at full size is ~12 MB (noise does not compress)."""
    return encode(noise(*size, seed=11), "JPEG", quality=95)


def normal_jpeg(size=(800, 600), colour=(30, 120, 200)) -> bytes:
    """An ordinary photo-sized source for the normal traffic."""
    return make_image(size, "JPEG", colour)


def normal_png(size=(640, 480)) -> bytes:
    return make_image(size, "PNG", (200, 90, 40))


def describe(data: bytes) -> str:
    """What Pillow's header says (for the docs table): format, size, frames."""
    with Image.open(io.BytesIO(data)) as image:
        return (f"{image.format} {image.size[0]}x{image.size[1]}, "
                f"{getattr(image, 'n_frames', 1)} frame(s), {len(data)} bytes")
