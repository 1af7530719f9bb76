"""A JPEG's structure read without decoding: how many scans it has.

A progressive JPEG is decoded scan by scan, and every scan walks every block of the image:
the CPU a decode costs is about blocks x scans, and the scans are not bounded by the file's
size (a 169 KB file repeating one tiny refinement scan 5,000 times costs 36 s of CPU, and
decoding at reduced scale does not help). :func:`count_jpeg_scans` counts them cheaply before
any pixel is decoded, so the decode guard can refuse what no encoder writes (libjpeg-turbo's
``djpeg -maxscans`` does the same).

The walk follows the marker segments by their lengths (a marker's bytes inside an APPn
payload are never mistaken for one) and skips each scan's entropy-coded data with one
regular-expression search for the next marker (C speed, no per-byte Python loop): stuffed
``FF 00`` bytes, restart markers ``FF D0``-``FF D7`` and fill bytes are part of the data.
"""

from __future__ import annotations

import re

#: The next marker after entropy-coded data: 0xFF (any fill bytes) and a byte that is not
#: 0x00 (a stuffed 0xFF), a restart marker (0xD0-0xD7) or another fill byte. Written
#: ``\xff\xff*`` rather than ``\xff+`` (the same language): a pattern that starts with a
#: literal lets the regex engine skip to each 0xFF at C speed; ``\xff+`` tried a match at
#: every byte (27 ms against 1.4 ms for a 2.2 MB JPEG).
_NEXT_MARKER = re.compile(rb"\xff\xff*([^\x00\xd0-\xd7\xff])")

_SOS, _EOI = 0xDA, 0xD9
#: Markers without a length field (besides SOI and EOI): TEM and the restart markers.
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})


def count_jpeg_scans(data: bytes, max_scans: int, max_segments: int) -> tuple[int, int]:
    """(scans, marker segments) of the JPEG ``data``; the count stops once the scans pass
    ``max_scans`` or the segments ``max_segments`` (the answer is then only known to be
    larger: the walk is a Python step per segment, so it is bounded too). Damaged structure
    ends the count where it is (the decoder reports it)."""
    scans = segments = 0
    at = 2                                       # after SOI
    size = len(data)
    while at + 1 < size and scans <= max_scans and segments <= max_segments:
        if data[at] != 0xFF:
            match = _NEXT_MARKER.search(data, at)  # garbage between segments: resync
            if match is None:
                break
            at = match.start(1) - 1
        marker = data[at + 1]
        if marker == 0xFF:                       # a fill byte before the marker
            at += 1
            continue
        if marker == _EOI:
            break
        segments += 1
        if marker in _STANDALONE:
            at += 2
            continue
        if at + 4 > size:
            break
        end = at + 2 + int.from_bytes(data[at + 2:at + 4], "big")
        if marker == _SOS:
            scans += 1
            match = _NEXT_MARKER.search(data, end)
            if match is None:
                break
            end = match.start(1) - 1
        at = end
    return scans, segments
