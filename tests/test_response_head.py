"""The ready header lines of an image response (mediaproxy.http.head) against Twisted's own
writing of the same headers (the oracle: twisted.web's Headers and HTTPChannel.writeHeaders)."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st
from twisted.internet.testing import StringTransport
from twisted.web.http import HTTPChannel
from twisted.web.http_headers import Headers, InvalidHeaderName

from mediaproxy.http.head import head_lines

NAMES = ["content-type", "ETag", "etag", "X-Cache", "x-correlation-id", "Cache-Status",
         "Access-Control-Allow-Origin", "content-md5", "WWW-Authenticate", "X-XSS-Protection",
         "dnt", "x-a", "Vary"]


def twisted_writes(pairs) -> bytes:
    headers = Headers()
    for name, value in pairs:
        headers.addRawHeader(name.encode("latin-1"), value.encode("latin-1"))
    channel = HTTPChannel()
    channel.makeConnection(StringTransport())
    channel.writeHeaders(b"HTTP/1.1", b"200", b"OK", headers)
    head = channel.transport.value()
    return head[len(b"HTTP/1.1 200 OK\r\n"):-2]


values = st.text(alphabet=st.characters(min_codepoint=1, max_codepoint=255), max_size=30)


@given(st.lists(st.tuples(st.sampled_from(NAMES), values), max_size=8,
                unique_by=lambda pair: pair[0].lower()))
def test_the_lines_are_what_twisted_writes(pairs):
    # one value per name (any case): Twisted groups a repeated name's values
    assert head_lines(pairs) == twisted_writes(pairs)


def test_a_value_cannot_add_a_header():
    assert head_lines([("X-A", "1\r\nSet-Cookie: x=1"), ("X-B", "2\n3\r4")]) == \
        b"X-A: 1 Set-Cookie: x=1\r\nX-B: 2 3 4\r\n"


def test_a_name_twisted_refuses_is_refused():
    with pytest.raises(InvalidHeaderName):
        head_lines([("X-A\r\nSet-Cookie", "1")])
