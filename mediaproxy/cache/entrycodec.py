"""
The byte format of a stored :class:`~mediaproxy.models.CacheEntry`, shared by the Redis and file
layers: binary-safe, versioned and self-checking, so a truncated, torn or bit-flipped record is
refused instead of served.

A record is::

    magic  b"\\x89MPE"              4 bytes; 0x89 is never valid UTF-8, so Redis clients that
                                    try to decode replies give up at once and keep the bytes
    version                         1 byte  (:data:`VERSION`)
    flags                           1 byte  (:data:`DETACHED`: the body is stored elsewhere)
    header length                   4 bytes, big-endian
    header                          compact JSON: content type, created_at, ETag, Last-Modified,
                                    the source's validators, the body's length and BLAKE2b-256
    header digest                   16 bytes: BLAKE2b-128 of everything before it
    body                            the body's bytes (absent when DETACHED)

The header digest covers magic, version, flags and header; the body is covered by the length
and digest the header carries. :func:`decode` refuses any mismatch with :class:`CorruptEntry`.
A *detached* record (:func:`encode_header`) is the header alone: the file layer keeps bodies
in content-addressed blobs named by :func:`body_digest` and checks them with
:meth:`EntryHeader.entry`.

Everything here is pure: no I/O, safe in any thread.
"""

from __future__ import annotations

import hashlib
import json
import struct

import attrs
from attrs import frozen

from ..models import CacheEntry

MAGIC = b"\x89MPE"
VERSION = 1
DETACHED = 0x01

_PREFIX = struct.Struct(">4sBBI")  # magic, version, flags, header length
_DIGEST_SIZE = 16
#: Headers are a few hundred bytes; anything far larger is garbage, not a header.
MAX_HEADER_BYTES = 64 * 1024


class CorruptEntry(ValueError):
    """The bytes are not a whole, intact record: bad magic, unknown version, truncated,
    extended, or a checksum mismatch. The message says which."""


def body_digest(body: bytes | memoryview) -> str:
    """The BLAKE2b-256 of ``body`` in hex: the checksum in the header and the name under which
    the file layer stores (and de-duplicates) bodies."""
    return hashlib.blake2b(body, digest_size=32).hexdigest()


def _header_digest(data: bytes | memoryview) -> bytes:
    return hashlib.blake2b(data, digest_size=_DIGEST_SIZE).digest()


@frozen
class EntryHeader:
    """Everything of an entry but its body, with the body's length and digest."""

    content_type: str
    created_at: float
    etag: str
    last_modified: str
    source_etag: str | None
    source_last_modified: str | None
    body_length: int
    body_digest: str

    @classmethod
    def of(cls, entry: CacheEntry, digest: str | None = None) -> "EntryHeader":
        """The header of ``entry`` (``digest``: its body digest when already known)."""
        return cls(content_type=entry.content_type, created_at=float(entry.created_at),
                   etag=entry.etag, last_modified=entry.last_modified,
                   source_etag=entry.source_etag,
                   source_last_modified=entry.source_last_modified,
                   body_length=len(entry.body),
                   body_digest=digest if digest is not None else body_digest(entry.body))

    def entry(self, body: bytes | memoryview) -> CacheEntry:
        """The entry with ``body``, after checking its length and digest against this header;
        raises :class:`CorruptEntry` when they differ."""
        if len(body) != self.body_length:
            raise CorruptEntry(f"body is {len(body)} bytes, header says {self.body_length}")
        if body_digest(body) != self.body_digest:
            raise CorruptEntry("body checksum mismatch")
        return CacheEntry(body=bytes(body), content_type=self.content_type,
                          created_at=self.created_at, etag=self.etag,
                          last_modified=self.last_modified, source_etag=self.source_etag,
                          source_last_modified=self.source_last_modified)

    def _to_json(self) -> bytes:
        fields = {"ct": self.content_type, "at": self.created_at, "etag": self.etag,
                  "lm": self.last_modified, "setag": self.source_etag,
                  "slm": self.source_last_modified, "len": self.body_length,
                  "sum": self.body_digest}
        return json.dumps(fields, separators=(",", ":"), allow_nan=False).encode("ascii")

    @classmethod
    def _from_json(cls, raw: bytes) -> "EntryHeader":
        try:
            fields = json.loads(raw.decode("ascii"))
            header = cls(content_type=fields["ct"], created_at=fields["at"],
                         etag=fields["etag"], last_modified=fields["lm"],
                         source_etag=fields["setag"], source_last_modified=fields["slm"],
                         body_length=fields["len"], body_digest=fields["sum"])
        except (UnicodeDecodeError, ValueError, TypeError, KeyError) as e:
            raise CorruptEntry(f"unreadable header: {e}") from None
        strings = (header.content_type, header.etag, header.last_modified, header.body_digest)
        optional = (header.source_etag, header.source_last_modified)
        if (not all(isinstance(s, str) for s in strings)
                or not all(s is None or isinstance(s, str) for s in optional)
                or not isinstance(header.created_at, (int, float))
                or isinstance(header.body_length, bool)
                or not isinstance(header.body_length, int) or header.body_length < 0):
            raise CorruptEntry("header fields have the wrong types")
        return attrs.evolve(header, created_at=float(header.created_at))


def _pack(header: EntryHeader, flags: int) -> bytes:
    raw = header._to_json()
    head = _PREFIX.pack(MAGIC, VERSION, flags, len(raw)) + raw
    return head + _header_digest(head)


def encode(entry: CacheEntry) -> bytes:
    """The whole record of ``entry``, body included."""
    return _pack(EntryHeader.of(entry), 0) + entry.body


def encode_header(entry: CacheEntry, digest: str | None = None) -> bytes:
    """A detached record: the header of ``entry`` without its body (see module docs)."""
    return _pack(EntryHeader.of(entry, digest), DETACHED)


def _unpack(data: bytes) -> tuple[EntryHeader, int, int]:
    """(header, flags, offset of the body) after checking magic, version and header digest."""
    view = memoryview(data)
    if len(view) < _PREFIX.size:
        raise CorruptEntry(f"truncated: {len(view)} bytes")
    magic, version, flags, length = _PREFIX.unpack_from(view)
    if magic != MAGIC:
        raise CorruptEntry("bad magic: not a mediaproxy cache entry")
    if version != VERSION:
        raise CorruptEntry(f"unsupported format version {version}")
    if flags & ~DETACHED:
        raise CorruptEntry(f"unknown flags {flags:#x}")
    if length > MAX_HEADER_BYTES:
        raise CorruptEntry(f"header length {length} is implausible")
    end = _PREFIX.size + length
    if len(view) < end + _DIGEST_SIZE:
        raise CorruptEntry("truncated header")
    if _header_digest(view[:end]) != bytes(view[end:end + _DIGEST_SIZE]):
        raise CorruptEntry("header checksum mismatch")
    header = EntryHeader._from_json(bytes(view[_PREFIX.size:end]))
    return header, flags, end + _DIGEST_SIZE


def decode(data: bytes) -> CacheEntry:
    """The entry in a whole record; raises :class:`CorruptEntry` unless every byte checks."""
    header, flags, offset = _unpack(data)
    if flags & DETACHED:
        raise CorruptEntry("detached header where a whole entry was expected")
    return header.entry(memoryview(data)[offset:])


def decode_header(data: bytes) -> EntryHeader:
    """The header of a detached record (:func:`encode_header`); raises :class:`CorruptEntry`
    unless it is whole and intact, with nothing after it."""
    header, flags, offset = _unpack(data)
    if not flags & DETACHED:
        raise CorruptEntry("whole entry where a detached header was expected")
    if len(data) != offset:
        raise CorruptEntry(f"{len(data) - offset} bytes after the header")
    return header
