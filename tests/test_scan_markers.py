"""The JPEG scan walk's marker search (:mod:`mediaproxy.imaging.scans`) against an oracle that
reads the bytes one at a time: after entropy-coded data, the next marker is the first byte that
follows an 0xFF and is neither 0x00 (a stuffed 0xFF), a restart marker (0xD0-0xD7) nor another
0xFF (a fill byte). The search is the cold path's one pure-Python pass over a source's bytes,
so it is written for speed (a single literal 0xFF the regular-expression engine can look for at
C speed); these tests hold it to the plain reading."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mediaproxy.imaging.scans import _NEXT_MARKER, count_jpeg_scans

NOT_MARKERS = {0x00, 0xFF, *range(0xD0, 0xD8)}


def next_marker(data: bytes, start: int) -> int | None:
    """The oracle: the index of the first marker byte after ``start``."""
    for q in range(start + 1, len(data)):
        if data[q - 1] == 0xFF and data[q] not in NOT_MARKERS:
            return q
    return None


#: bytes rich in what matters: 0xFF runs, stuffing, restart markers, real markers
interesting = st.binary(max_size=64) | st.lists(
    st.sampled_from([0x00, 0x12, 0xD0, 0xD7, 0xD8, 0xD9, 0xDA, 0xC4, 0xCF, 0xFE, 0xFF, 0xFF]),
    max_size=64).map(bytes)


@given(interesting, st.integers(min_value=0, max_value=64))
def test_the_marker_search_finds_what_a_byte_by_byte_reading_finds(data, start):
    match = _NEXT_MARKER.search(data, start)
    assert (match.start(1) if match else None) == next_marker(data, start)


def test_fill_bytes_restart_markers_and_stuffing_are_data():
    data = b"\x01\xff\x00\x02\xff\xd3\x03\xff\xff\xff\xd9"
    match = _NEXT_MARKER.search(data, 0)
    assert (match.start(1), match.group(1)) == (10, b"\xd9")
    assert _NEXT_MARKER.search(b"\xff\x00\xff\xd7\xff\xff", 0) is None


def test_a_scan_with_fill_bytes_before_the_next_marker_is_counted_once():
    # SOI, SOS (length 2), entropy data with stuffing and fill bytes, SOS, data, EOI
    jpeg = (b"\xff\xd8" + b"\xff\xda\x00\x02" + b"\x11\xff\x00\x22\xff\xff\xff"
            + b"\xff\xda\x00\x02" + b"\x33\xff\xd0\x44" + b"\xff\xd9")
    assert count_jpeg_scans(jpeg, 10, 10) == (2, 2)
