"""Frame sizes read from a file's structure, without decoding: what an animation's frames
really take, which its header alone does not say.

A GIF's logical screen (its header) may say 100x100 while a later image descriptor places an
8000x6000 frame: Pillow then grows the canvas to hold it, when it reaches that frame. So the
pixel and memory budgets use :func:`canvas_size`, the screen grown to every frame's extent,
and the render re-checks each frame's real size at ``seek()``, before it is loaded. WebP
(``VP8X``/``ANMF``) and APNG (``IHDR``/``fcTL``) frames must lie within the canvas their
header declares (libwebp and Pillow refuse others), so their header size is the canvas.
"""

from __future__ import annotations


def canvas_size(data: bytes, fmt: str, width: int, height: int) -> tuple[int, int]:
    """The canvas the decoder will allocate for ``data`` (``fmt`` as :class:`ImageInfo`
    names it), at least the header's ``width`` x ``height``."""
    if fmt == "gif":
        gif_width, gif_height = _gif_extent(data)
        return max(width, gif_width), max(height, gif_height)
    return width, height


def _gif_extent(data: bytes) -> tuple[int, int]:
    """The right and bottom edge of the furthest GIF image descriptor (0 when unreadable:
    the decoder reports damage). Walks the blocks as Pillow does (a stray byte between
    blocks is skipped), skipping data sub-blocks by their length (one step per sub-block of
    up to 255 bytes, or per stray byte: bounded by the file's size)."""
    size = len(data)
    if size < 13:
        return 0, 0
    flags = data[10]
    at = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    right = bottom = 0
    while at < size:
        block = data[at]
        if block == 0x3B:                                   # trailer
            break
        if block == 0x21:                                   # extension: label, sub-blocks
            at = _skip_sub_blocks(data, at + 2)
        elif block == 0x2C:                                 # image descriptor
            if at + 10 > size:
                break
            left = int.from_bytes(data[at + 1:at + 3], "little")
            top = int.from_bytes(data[at + 3:at + 5], "little")
            w = int.from_bytes(data[at + 5:at + 7], "little")
            h = int.from_bytes(data[at + 7:at + 9], "little")
            right, bottom = max(right, left + w), max(bottom, top + h)
            local = data[at + 9]
            at += 10 + (3 << ((local & 7) + 1) if local & 0x80 else 0)
            at = _skip_sub_blocks(data, at + 1)             # after the LZW code size
        else:                                               # Pillow skips a stray byte
            at += 1
    return right, bottom


def _skip_sub_blocks(data: bytes, at: int) -> int:
    size = len(data)
    while at < size:
        length = data[at]
        at += 1 + length
        if length == 0:
            break
    return at
