"""
A finished response leaves at once (docs/performance.md, "Overload"): ``StreamingRequest.finish``
sends what the transport holds through the transport's own ``doWrite`` instead of leaving it
for a later turn of the reactor, where a cache hit's bytes waited behind every other connection
ready in that turn (``BudgetedChannel.send_now``).

A real reactor and real loopback sockets: a resource answers at once and records, right after
``finish()``, how many bytes the transport still holds and whether the reactor still watches the
socket for writing. Exact states, no timing.
"""

from __future__ import annotations

import socket

import pytest
from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from mediaproxy.http.connection import ConnectionLimits
from mediaproxy.http.streaming import StreamingSite
from mediaproxy.testing import call_in_reactor

BIG = 8 * 1024 * 1024   # more than a loopback socket takes at once from a client that reads nothing


class Answer(Resource):
    """Answers ``/big`` with BIG bytes, anything else with ``ok``; after ``finish()`` records
    (bytes still buffered in the transport, the socket still watched for writing)."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.after_finish: list[tuple[int, bool]] = []

    def render_GET(self, request):
        transport = request.channel.transport
        body = b"x" * BIG if request.path == b"/big" else b"ok"
        request.setHeader(b"Content-Length", b"%d" % len(body))
        request.write(body)
        request.finish()
        held = transport._tempDataLen + len(transport.dataBuffer) - transport.offset
        self.after_finish.append((held, transport in reactor.getWriters()))
        return NOT_DONE_YET


@pytest.fixture
def site(live_reactor):
    answer = Answer()
    site = StreamingSite(answer, limits=ConnectionLimits())
    port = call_in_reactor(lambda: reactor.listenTCP(0, site, interface="127.0.0.1"))
    yield answer, port.getHost().port
    call_in_reactor(port.stopListening)


def _connect(port: int, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(15)
    sock.connect(("127.0.0.1", port))
    return sock


def _recorded(answer: Answer) -> list[tuple[int, bool]]:
    """What the resource recorded, read in the reactor's thread: after the render that sent
    the response has returned (the client may have read it before that)."""
    return call_in_reactor(lambda: list(answer.after_finish))


def _read_response(sock: socket.socket) -> tuple[int, bytes]:
    raw = b""
    while b"\r\n\r\n" not in raw:
        raw += sock.recv(65536)
    head, _, body = raw.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")))
    while len(body) < length:
        body += sock.recv(65536)
    return int(head.split()[1]), body


def test_a_keep_alive_response_is_sent_within_finish(site):
    answer, port = site
    with _connect(port) as sock:
        for _ in range(2):   # the connection goes on serving after it
            sock.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _read_response(sock) == (200, b"ok")
    # nothing left in the transport, the socket no longer watched for writing
    assert _recorded(answer) == [(0, False), (0, False)]


def test_a_closing_response_is_sent_and_the_close_left_to_the_reactor(site):
    answer, port = site
    with _connect(port) as sock:
        sock.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert _read_response(sock) == (200, b"ok")
        assert sock.recv(1) == b""   # then closed by the reactor
    # sent, and still watched for writing: the reactor's next doWrite closes it
    assert _recorded(answer) == [(0, True)]


def test_what_the_socket_cannot_take_stays_for_the_reactor(site):
    answer, port = site
    with _connect(port, rcvbuf=4096) as sock:
        sock.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        status, body = _read_response(sock)
    assert (status, len(body)) == (200, BIG)
    [(held, watched)] = _recorded(answer)
    assert 0 < held < BIG and watched
