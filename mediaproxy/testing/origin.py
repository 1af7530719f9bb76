"""
A real origin (the backend the proxy fetches originals from), serving files from a dict on
loopback: :class:`ImageOrigin`, started with :func:`start_origin` (or by
:func:`~mediaproxy.testing.start_proxy` for you).

It plays Django's media server: every GET or HEAD is counted per path (``hits``) and its request
headers kept (``headers_seen``), so a test can assert that a second request was a cache hit or
that a header reached the backend. An ``ETag`` given with a file makes it answer a matching
``If-None-Match`` with 304.
"""

from __future__ import annotations

import io
from collections import Counter
from typing import Any, Union

import attrs
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from .reactor import call_in_reactor, reactor_thread


def _pairs(headers) -> tuple[tuple[str, str], ...]:
    items = headers.items() if isinstance(headers, dict) else headers
    return tuple((str(name), str(value)) for name, value in items)


@attrs.frozen
class File:
    """One file an :class:`ImageOrigin` serves: ``body`` with ``status``, ``content_type``
    (``None``: guessed from the body, ``""``: none sent) and extra ``headers`` (a dict or
    ``(name, value)`` pairs, ``ETag`` included)."""

    body: bytes
    status: int = 200
    content_type: str | None = None
    headers: tuple[tuple[str, str], ...] = attrs.field(default=(), converter=_pairs)


#: What ``ImageOrigin.files`` maps a path to: the body alone (200, type guessed), a
#: :class:`File`, or the tuple ``(status, body, content_type, headers)``.
Served = Union[bytes, File, tuple]


def guess_type(body: bytes) -> str:
    """The MIME type Pillow reads in ``body``'s header, or ``application/octet-stream``."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(body)) as image:
            return image.get_format_mimetype() or "application/octet-stream"
    except Exception:
        return "application/octet-stream"


def as_file(served: Served) -> File:
    """The :class:`File` for one value of ``ImageOrigin.files``."""
    if isinstance(served, File):
        return served
    if isinstance(served, (bytes, bytearray)):
        return File(bytes(served))
    status, body, content_type, headers = served
    return File(body, status, content_type or "", headers)


class ImageOrigin(Resource):
    """A backend serving ``files`` (path -> body, :class:`File` or ``(status, body,
    content_type, headers)``; paths as requested, e.g. ``"/media/uploads/a.jpg"``), 404 for any
    other path. Change ``files`` at any time; read ``hits`` (a Counter of GET/HEAD per path)
    and ``headers_seen`` (path -> the last request's headers, lower-case name -> values).

    Once started, ``port`` is its port and ``url(path)`` its address.

    ``hold(*paths)`` keeps the answers for those paths (every path when none is named) until
    ``release()``: a request still waiting on the backend when the next one arrives, to test
    coalescing or a graceful stop. ``held`` lists the requests held now.
    """

    isLeaf = True

    def __init__(self, files: dict[str, Served] | None = None):
        super().__init__()
        self.files: dict[str, Served] = dict(files or {})
        self.hits: Counter = Counter()
        self.headers_seen: dict[str, dict[str, list[str]]] = {}
        self.port: int | None = None
        self.held: list = []
        self._holding: set[str] | None = set()   # None: every path

    def hold(self, *paths: str) -> None:
        """Hold the answers for ``paths`` (every path when none is named) until
        :meth:`release`."""
        self._holding = set(paths) if paths else None

    def release(self) -> None:
        """Answer every held request (from any thread) and stop holding."""
        def answer():
            self._holding = set()
            held, self.held = self.held, []
            for request in held:
                if not request._disconnected:
                    request.write(self.respond(request))
                    request.finish()
        call_in_reactor(answer)

    def url(self, path: str = "/") -> str:
        if self.port is None:
            raise RuntimeError("the origin is not started (start_origin or start_proxy)")
        return f"http://127.0.0.1:{self.port}{path}"

    def render_GET(self, request):
        self.record(request)
        holding = self._holding
        if holding is None or (holding and request.path.decode("latin-1") in holding):
            self.held.append(request)
            return NOT_DONE_YET
        return self.respond(request)

    def record(self, request) -> None:
        """Count the request and keep its headers (subclasses that delay :meth:`respond` call
        this when the request arrives)."""
        path = request.path.decode("latin-1")
        self.hits[path] += 1
        self.headers_seen[path] = {k.decode().lower(): [v.decode("latin-1") for v in vs]
                                   for k, vs in request.requestHeaders.getAllRawHeaders()}

    def respond(self, request) -> bytes:
        """Write the status and headers of the requested file and return its body."""
        path = request.path.decode("latin-1")
        if path not in self.files:
            request.setResponseCode(404)
            return b"not found"
        file = as_file(self.files[path])
        etag = dict(file.headers).get("ETag")
        if etag and request.getHeader(b"if-none-match") == etag.encode():
            request.setResponseCode(304)
            request.setHeader(b"ETag", etag.encode())
            return b""
        request.setResponseCode(file.status)
        content_type = guess_type(file.body) if file.content_type is None else file.content_type
        if content_type:
            request.setHeader(b"Content-Type", content_type.encode())
        for name, value in file.headers:
            request.setHeader(name.encode(), value.encode())
        return file.body

    render_HEAD = render_GET


class DroppingSite(Site):
    """A :class:`~twisted.web.server.Site` that can drop every connection it accepted
    (:meth:`drop_all`), as a backend process that dies does: ``stopListening`` alone leaves
    the proxy's pooled keep-alive connections answering."""

    def __init__(self, resource, *args, **kwargs):
        super().__init__(resource, *args, **kwargs)
        self.live: list = []

    def buildProtocol(self, addr):
        protocol = super().buildProtocol(addr)
        self.live.append(protocol)
        return protocol

    def drop_all(self) -> None:
        """Abort every connection accepted so far (call it in the reactor thread)."""
        for protocol in self.live:
            transport = getattr(getattr(protocol, "_channel", protocol), "transport", None)
            if transport is not None:
                transport.abortConnection()
        self.live = []


def start_origin(resource: Any):
    """Listen with ``resource`` (an :class:`ImageOrigin` or any twisted.web resource) on
    127.0.0.1 and a free port, from the test thread; return the listening port
    (``.getHost().port``; stop it with ``call_in_reactor(listening.stopListening)``). An
    :class:`ImageOrigin` learns its ``port``."""
    reactor = reactor_thread()
    listening = call_in_reactor(reactor.listenTCP, 0, Site(resource), interface="127.0.0.1")
    if isinstance(resource, ImageOrigin):
        resource.port = listening.getHost().port
    return listening
