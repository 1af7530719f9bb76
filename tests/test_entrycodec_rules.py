"""The stored-entry format, byte for byte, against a reference written here from the format's
documentation (not from the codec): cache entries outlive a deploy, so a record written by this
release must be read by the next one, and every damaged, truncated or foreign record is refused
with the reason named (never served as part of an image)."""

from __future__ import annotations

import hashlib
import json
import math

import pytest
from hypothesis import given, strategies as st

from mediaproxy.cache.entrycodec import (
    CorruptEntry, EntryHeader, body_digest, decode, decode_header, encode, encode_header,
)
from mediaproxy.models import CacheEntry

# -- the reference: the record layout of the module docs, written out independently -----------

MAGIC = b"\x89MPE"
PREFIX_SIZE = 4 + 1 + 1 + 4
DIGEST_SIZE = 16
LIMIT = 64 * 1024


def reference_header_json(e: CacheEntry, length: int | None = None) -> bytes:
    body = e.body
    fields = {"ct": e.content_type, "at": float(e.created_at), "etag": e.etag,
              "lm": e.last_modified, "setag": e.source_etag, "slm": e.source_last_modified,
              "len": len(body) if length is None else length,
              "sum": hashlib.blake2b(body, digest_size=32).hexdigest()}
    return json.dumps(fields, separators=(",", ":")).encode("ascii")


def frame(raw_header: bytes, flags: int = 0, version: int = 1, magic: bytes = MAGIC,
          length: int | None = None) -> bytes:
    """magic, version, flags, header length, header, BLAKE2b-128 of all that."""
    head = (magic + bytes([version, flags])
            + (len(raw_header) if length is None else length).to_bytes(4, "big") + raw_header)
    return head + hashlib.blake2b(head, digest_size=DIGEST_SIZE).digest()


def reference_record(e: CacheEntry) -> bytes:
    return frame(reference_header_json(e)) + e.body


def reference_detached(e: CacheEntry) -> bytes:
    return frame(reference_header_json(e), flags=1)


def entry(body: bytes = b"\xff\xd8\xff\xe0 jpeg bytes \x00\x01", **fields) -> CacheEntry:
    values = {"content_type": "image/jpeg", "created_at": 1700000000.5, "etag": '"e1"',
              "last_modified": "Tue, 14 Nov 2023 22:13:20 GMT", "source_etag": 'W/"s"',
              "source_last_modified": "Mon, 13 Nov 2023 10:00:00 GMT", **fields}
    return CacheEntry(body=body, **values)


def refused(data: bytes, reader=decode) -> str:
    with pytest.raises(CorruptEntry) as caught:
        reader(data)
    return str(caught.value)


# A record as this release writes it, kept verbatim: the next release must read it.
GOLDEN_ENTRY = CacheEntry(body=b"\x89PNG\r\n\x1a\nbody", content_type="image/png",
                          created_at=1700000000.25, etag='"abc"',
                          last_modified="Tue, 14 Nov 2023 22:13:20 GMT",
                          source_etag=None, source_last_modified=None)
GOLDEN_RECORD = bytes.fromhex(
    "894d50450100000000c57b226374223a22696d6167652f706e67222c226174223a313730303030303030"
    "302e32352c2265746167223a225c226162635c22222c226c6d223a225475652c203134204e6f76203230"
    "32332032323a31333a323020474d54222c227365746167223a6e756c6c2c22736c6d223a6e756c6c2c22"
    "6c656e223a31322c2273756d223a22393462303632363532356433383038623862313830316439656633"
    "61363431383832363937636565313137326365666339663938306132326230366334623037227d06657b"
    "7bd447c5fefea1c708abc610df89504e470d0a1a0a626f6479")


# -- the format, byte for byte -------------------------------------------------------------------

def test_a_record_written_by_this_release_is_read_back():
    assert decode(GOLDEN_RECORD) == GOLDEN_ENTRY
    assert encode(GOLDEN_ENTRY) == GOLDEN_RECORD


def test_the_whole_record_is_the_documented_layout():
    e = entry()
    assert encode(e) == reference_record(e)
    assert encode_header(e) == reference_detached(e)
    assert reference_record(GOLDEN_ENTRY) == GOLDEN_RECORD


def test_a_detached_header_may_carry_a_digest_already_known():
    e = entry()
    known = hashlib.blake2b(e.body, digest_size=32).hexdigest()
    assert encode_header(e, known) == reference_detached(e)
    assert body_digest(e.body) == known and len(known) == 64


_text = st.text(max_size=30)
entries = st.builds(
    CacheEntry, body=st.binary(max_size=2048), content_type=_text,
    created_at=st.floats(allow_nan=False, allow_infinity=False) | st.integers(-2**40, 2**40),
    etag=_text, last_modified=_text, source_etag=st.none() | _text,
    source_last_modified=st.none() | _text)


@given(entries)
def test_encode_writes_the_reference_bytes_and_decode_reads_them_back(e):
    expected = CacheEntry(body=e.body, content_type=e.content_type,
                          created_at=float(e.created_at), etag=e.etag,
                          last_modified=e.last_modified, source_etag=e.source_etag,
                          source_last_modified=e.source_last_modified)
    assert encode(e) == reference_record(e)
    got = decode(reference_record(e))
    assert got == expected and type(got.created_at) is float and type(got.body) is bytes
    header = decode_header(reference_detached(e))
    assert (header.content_type, header.etag, header.last_modified, header.source_etag,
            header.source_last_modified, header.body_length) == (
        e.content_type, e.etag, e.last_modified, e.source_etag, e.source_last_modified,
        len(e.body))
    assert header.entry(e.body) == expected


def test_a_non_finite_time_is_never_written_as_non_json():
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError):
            encode(entry(created_at=bad))


# -- refusals, each named ------------------------------------------------------------------------

def test_truncation_at_every_boundary_is_named():
    record = reference_record(entry())
    header_end = PREFIX_SIZE + len(reference_header_json(entry()))
    assert refused(b"") == "truncated: 0 bytes"
    assert refused(record[:PREFIX_SIZE - 1]) == "truncated: 9 bytes"
    assert refused(record[:PREFIX_SIZE]) == "truncated header"     # the prefix, nothing else
    assert refused(record[:header_end]) == "truncated header"
    assert refused(record[:header_end + DIGEST_SIZE - 1]) == "truncated header"
    # the header whole, the body missing or cut: never a partial image
    body = len(entry().body)
    assert refused(record[:header_end + DIGEST_SIZE]) == f"body is 0 bytes, header says {body}"
    assert refused(record[:-1]) == f"body is {body - 1} bytes, header says {body}"
    assert refused(record + b"\x00") == f"body is {body + 1} bytes, header says {body}"


def test_a_body_with_the_right_length_but_other_bytes_is_refused():
    record = bytearray(reference_record(entry()))
    record[-1] ^= 0x01
    assert refused(bytes(record)) == "body checksum mismatch"
    header = decode_header(reference_detached(entry()))
    with pytest.raises(CorruptEntry, match="^body checksum mismatch$"):
        header.entry(entry().body[:-1] + b"\x00")
    with pytest.raises(CorruptEntry, match=f"^body is 3 bytes, header says {len(entry().body)}$"):
        header.entry(b"abc")


def test_foreign_magic_version_and_flags_are_named():
    raw = reference_header_json(entry())
    body = entry().body
    assert refused(frame(raw, magic=b"GIF8") + body) == "bad magic: not a mediaproxy cache entry"
    assert refused(b"\xff\xd8\xff\xe0" + b"\x00" * 40) == \
        "bad magic: not a mediaproxy cache entry"                 # a bare JPEG in the cache
    assert refused(frame(raw, version=0) + body) == "unsupported format version 0"
    assert refused(frame(raw, version=2) + body) == "unsupported format version 2"
    assert refused(frame(raw, flags=0x02) + body) == "unknown flags 0x2"
    assert refused(frame(raw, flags=0x81) + body) == "unknown flags 0x81"


def test_a_record_and_a_detached_header_are_told_apart():
    assert refused(reference_detached(entry())) == \
        "detached header where a whole entry was expected"
    assert refused(reference_record(entry()), decode_header) == \
        "whole entry where a detached header was expected"
    assert refused(reference_detached(entry()) + b"\x00\x00\x00", decode_header) == \
        "3 bytes after the header"


def padded(length: int) -> bytes:
    """A valid header of exactly ``length`` bytes (a long ETag takes up the room)."""
    short = reference_header_json(entry(etag=""))
    raw = reference_header_json(entry(etag="x" * (length - len(short))))
    assert len(raw) == length
    return raw


def test_the_header_length_limit_is_64_kib_exactly():
    largest = frame(padded(LIMIT)) + entry().body
    assert decode(largest).etag == "x" * (LIMIT - len(reference_header_json(entry(etag=""))))
    assert decode_header(frame(padded(LIMIT), flags=1)).body_length == len(entry().body)
    assert refused(frame(padded(LIMIT + 1)) + entry().body) == \
        f"header length {LIMIT + 1} is implausible"
    # the length field is judged before any of the header is read
    assert refused(frame(b"", length=2**32 - 1)) == f"header length {2**32 - 1} is implausible"


def test_a_header_that_does_not_match_its_digest_is_refused():
    record = bytearray(reference_record(entry()))
    record[PREFIX_SIZE + 2] ^= 0x20                 # inside the JSON
    assert refused(bytes(record)) == "header checksum mismatch"
    record = bytearray(reference_record(entry()))
    record[PREFIX_SIZE + len(reference_header_json(entry()))] ^= 0x01   # the digest itself
    assert refused(bytes(record)) == "header checksum mismatch"


def header_fields(**changes) -> dict:
    fields = {"ct": "image/jpeg", "at": 1.5, "etag": '"e"', "lm": "x", "setag": None,
              "slm": None, "len": 3, "sum": hashlib.blake2b(b"abc", digest_size=32).hexdigest()}
    fields.update(changes)
    return fields


def raw_record(raw: bytes, body: bytes = b"abc") -> bytes:
    return frame(raw) + body


@pytest.mark.parametrize("raw, why", [
    (b"\xff\xfe{}", "non-ascii bytes"),
    (b'{"ct": "image/jpeg"', "not JSON"),
    (b"[1, 2, 3]", "a list"),
    (b"42", "a number"),
    (b"null", "null"),
    (json.dumps({k: v for k, v in header_fields().items() if k != "sum"}).encode(), "no sum"),
    (json.dumps({k: v for k, v in header_fields().items() if k != "ct"}).encode(), "no ct"),
])
def test_an_unreadable_header_is_refused(raw, why):
    assert refused(raw_record(raw)).startswith("unreadable header: "), why


@pytest.mark.parametrize("changes", [
    {"ct": 1}, {"etag": None}, {"lm": ["x"]}, {"sum": 0},
    {"setag": 5}, {"slm": {"a": 1}},
    {"at": "1.5"}, {"at": None}, {"at": [1.5]},
    {"len": True}, {"len": False}, {"len": 3.0}, {"len": "3"}, {"len": None},
    {"len": -1}, {"len": -2},
], ids=repr)
def test_a_header_field_of_the_wrong_type_is_refused(changes):
    raw = json.dumps(header_fields(**changes)).encode()
    assert refused(raw_record(raw)) == "header fields have the wrong types"


def test_every_right_type_is_accepted():
    for changes, created in (({}, 1.5), ({"at": 7}, 7.0), ({"setag": "s", "slm": "t"}, 1.5)):
        raw = json.dumps(header_fields(**changes)).encode()
        got = decode(raw_record(raw))
        assert got.body == b"abc" and got.created_at == created
        assert type(got.created_at) is float
    empty = json.dumps(header_fields(len=0, sum=hashlib.blake2b(
        b"", digest_size=32).hexdigest())).encode()
    assert decode(raw_record(empty, b"")).body == b""


def test_an_entry_header_is_built_from_an_entry():
    e = entry()
    header = EntryHeader.of(e)
    assert header.body_length == len(e.body)
    assert header.body_digest == hashlib.blake2b(e.body, digest_size=32).hexdigest()
    assert EntryHeader.of(e, "given").body_digest == "given"


# -- over HTTP: a damaged record in Redis is a miss, never a partial image -------------------------

def test_a_damaged_record_in_redis_is_rendered_again_not_served(redis_server, live_reactor):
    import io

    from PIL import Image

    from mediaproxy.testing import ImageOrigin, make_image, start_proxy
    from mediaproxy.testing import wait_for

    origin = ImageOrigin({"/media/p.jpg": (200, make_image((400, 300)), "image/jpeg", [])})
    running = start_proxy(origin=origin, overrides={"cache": {
        "redis": {"url": redis_server.url}, "memory": {"enabled": False}}})
    try:
        wait_for(lambda: running.runtime.redis.healthy, 10,
                 what="redis up")
        status, headers, body, _ = running.get("/media/p.jpg?w=200")
        assert (status, headers["x-cache"]) == (200, "MISS")

        def records():
            keys = redis_server.command("KEYS", "*")
            return {k: v for k in keys
                    if (v := redis_server.command("GET", k)) and v.startswith(MAGIC)}
        # the result and the note of what its format resolved to (docs/cache.md)
        wait_for(lambda: len(records()) == 2, 10, what="the result stored in Redis")
        for key, value in records().items():   # cut the last byte of every stored record
            ttl = int(redis_server.command("PTTL", key))
            redis_server.command("SET", key, value[:-1], "PX", str(max(ttl, 60_000)))
        status, headers, again, _ = running.get("/media/p.jpg?w=200")
        assert (status, headers["x-cache"]) == (200, "MISS")
        assert Image.open(io.BytesIO(again)).size == (200, 150)
        assert again == body
        layer = next(l for l in running.runtime.cache.layers if l.name == "redis")
        # both records cut were found so and dropped: the result and the note
        assert layer.stats()["corrupt"] == 2
        # rendered again from the original kept in memory, and stored whole again
        assert origin.hits["/media/p.jpg"] == 1
        wait_for(lambda: [decode(v).body for v in records().values()] == [body], 10,
                 what="the result stored again")
    finally:
        running.stop()
