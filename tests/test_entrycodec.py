"""The stored-entry format: lossless for any entry, and any damage is refused."""

import struct

import pytest
from hypothesis import given, strategies as st

from mediaproxy.cache import entrycodec
from mediaproxy.cache.entrycodec import CorruptEntry, decode, decode_header, encode, encode_header
from mediaproxy.models import CacheEntry

_text = st.text(max_size=40)
entries = st.builds(
    CacheEntry, body=st.binary(max_size=4096), content_type=_text,
    created_at=st.floats(allow_nan=False, allow_infinity=False), etag=_text,
    last_modified=_text, source_etag=st.none() | _text,
    source_last_modified=st.none() | _text)


def entry(body: bytes = b"\x00\xffbody") -> CacheEntry:
    return CacheEntry(body=body, content_type="image/webp", created_at=1700000000.25,
                      etag='"abc"', last_modified="Tue, 14 Nov 2023 22:13:20 GMT",
                      source_etag='W/"src"', source_last_modified=None)


@given(entries)
def test_any_entry_round_trips(e):
    assert decode(encode(e)) == e


@given(entries)
def test_a_detached_header_round_trips_and_checks_its_body(e):
    header = decode_header(encode_header(e))
    assert header.entry(e.body) == e
    assert header.body_digest == entrycodec.body_digest(e.body)
    with pytest.raises(CorruptEntry):
        header.entry(e.body + b"x")


def test_every_byte_value_survives():
    body = bytes(range(256)) * 4
    assert decode(encode(entry(body))).body == body


def test_the_record_starts_with_a_byte_that_is_never_utf8():
    data = encode(entry())
    assert data.startswith(entrycodec.MAGIC)
    with pytest.raises(UnicodeDecodeError):
        data.decode("utf-8")


@given(entries, st.data())
def test_every_truncation_is_refused(e, data):
    record = encode(e)
    cut = data.draw(st.integers(0, len(record) - 1))
    with pytest.raises(CorruptEntry):
        decode(record[:cut])


@given(entries, st.data())
def test_every_single_bit_flip_is_refused(e, data):
    record = bytearray(encode(e))
    position = data.draw(st.integers(0, len(record) - 1))
    record[position] ^= 1 << data.draw(st.integers(0, 7))
    with pytest.raises(CorruptEntry):
        decode(bytes(record))


def test_extra_bytes_are_refused():
    with pytest.raises(CorruptEntry, match="body is"):
        decode(encode(entry()) + b"\x00")
    with pytest.raises(CorruptEntry, match="after the header"):
        decode_header(encode_header(entry()) + b"\x00")


def test_bad_magic_and_unknown_version_are_named():
    record = encode(entry())
    with pytest.raises(CorruptEntry, match="magic"):
        decode(b"GIF89a" + record[6:])
    with pytest.raises(CorruptEntry, match="version 2"):
        decode(record[:4] + b"\x02" + record[5:])


def test_a_whole_record_and_a_detached_header_are_not_confused():
    with pytest.raises(CorruptEntry, match="detached"):
        decode(encode_header(entry()))
    with pytest.raises(CorruptEntry, match="whole entry"):
        decode_header(encode(entry()))


def test_a_well_formed_header_with_wrong_types_is_refused():
    raw = b'{"ct":1,"at":0,"etag":"","lm":"","setag":null,"slm":null,"len":0,"sum":""}'
    head = struct.pack(">4sBBI", entrycodec.MAGIC, entrycodec.VERSION, 0, len(raw)) + raw
    record = head + entrycodec._header_digest(head)
    with pytest.raises(CorruptEntry, match="wrong types"):
        decode(record)


def test_an_implausible_header_length_is_refused_before_reading_it():
    record = bytearray(encode(entry()))
    record[6:10] = (10**9).to_bytes(4, "big")
    with pytest.raises(CorruptEntry, match="implausible"):
        decode(bytes(record))
