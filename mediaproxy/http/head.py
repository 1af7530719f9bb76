"""
Response header bytes made once rather than per response: the ``Date`` header (once a second),
this proxy's ``Server`` value, and the ready header lines of
:meth:`StreamingRequest.add_head <mediaproxy.http.streaming.StreamingRequest.add_head>`
(names as Twisted writes them, values cleaned of CR and LF as ``addRawHeader`` cleans them),
which an image response's headers are made into once per distinct set.
"""

from __future__ import annotations

import time
from functools import lru_cache

from twisted.web.http import datetimeToString
from twisted.web.http_headers import Headers

_date: list = [-1, b""]   # [the second, its Date header]


def http_date(now: float | None = None) -> bytes:
    """The ``Date`` header of ``now`` (default: the wall clock's now), as Twisted's
    ``datetimeToString`` gives it, formatted once a second."""
    second = int(time.time() if now is None else now)
    if second != _date[0]:
        _date[1] = datetimeToString(second)
        _date[0] = second
    return _date[1]


@lru_cache(maxsize=16)
def server_value(value: str) -> bytes:
    return value.encode("ascii")


@lru_cache(maxsize=256)
def _canonical(name: str) -> bytes:
    """The name as Twisted writes it (``X-Correlation-Id``, ``ETag``); a name Twisted refuses
    (CR, LF, a space...) raises its ``InvalidHeaderName`` as ``addRawHeader`` would."""
    headers = Headers()
    headers.addRawHeader(name.encode("latin-1"), b"")
    return next(iter(headers.getAllRawHeaders()))[0]


def head_lines(pairs) -> bytes:
    """``(name, value)`` string pairs as the ready header lines of
    :meth:`StreamingRequest.add_head <mediaproxy.http.streaming.StreamingRequest.add_head>`:
    the bytes Twisted's ``writeHeaders`` would write for them (names as it writes them,
    latin-1, a CR or LF inside a value replaced by a space as ``addRawHeader`` does: a value is
    never a way to add a header). A repeated name's lines stay in the order given, where
    Twisted would group them: the same headers either way."""
    out: list[bytes] = []
    for name, value in pairs:
        value = value.encode("latin-1")
        if b"\r" in value or b"\n" in value:
            value = b" ".join(value.splitlines())
        out += (_canonical(name), b": ", value, b"\r\n")
    return b"".join(out)
