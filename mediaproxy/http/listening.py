"""
A service that listens on an endpoint string and remembers the port it got (``tcp:0`` in
tests), for the side listeners: monitoring and admin; and :func:`side_site`, their site, whose
responses name the server as ``server.server_header`` says (never Twisted's version) and whose
requests are logged at debug only.
"""

from __future__ import annotations

from twisted.application import service
from twisted.internet.defer import maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.web import server

from ..logs import logger
from .errors import reason_phrase

log = Logger(namespace="mediaproxy")


class ListeningService(service.Service):
    def __init__(self, reactor, description: str, factory, what: str):
        self.reactor = reactor
        self.description = description
        self.factory = factory
        self.what = what
        self.port = None
        self.listening = None

    def startService(self):
        super().startService()
        self.factory.noisy = False
        self.listening = serverFromString(self.reactor, self.description).listen(self.factory)

        def listening(port):
            self.port = port
            log.info("{what} listening on {address}", what=self.what, address=port.getHost())
            return port

        def failed(failure):
            log.failure("{what} could not listen on {endpoint}", failure, what=self.what,
                        endpoint=self.description)

        self.listening.addCallbacks(listening, failed)

    def stopService(self):
        super().stopService()
        if self.port is not None:
            return maybeDeferred(self.port.stopListening)
        return None


def side_site(resource, server_header: str) -> server.Site:
    """A plain :class:`~twisted.web.server.Site` for a side listener whose responses say
    ``Server: <server_header>`` (no header when empty), like the main port's own answers."""

    class SideRequest(server.Request):
        def setResponseCode(self, code: int, message: bytes | None = None) -> None:
            super().setResponseCode(code, message if message is not None
                                    else reason_phrase(code))

        def write(self, data: bytes) -> None:
            if not self.startedWriting:
                if server_header:
                    self.responseHeaders.setRawHeaders(b"Server", [server_header.encode("ascii")])
                else:
                    self.responseHeaders.removeHeader(b"Server")
            super().write(data)

    site = server.Site(resource)
    site.requestFactory = SideRequest
    site.log = _debug_line
    return site


_side_log = logger("mediaproxy.side")


def _debug_line(request) -> None:
    """A side listener's request goes to debug, not to Twisted's access log at info: a
    Prometheus scrape every few seconds would otherwise be a good part of the log."""
    _side_log.debug("{method} {uri} {status} {bytes} B from {client}",
                    method=request.method.decode("latin-1"),
                    uri=request.uri.decode("latin-1"), status=request.code,
                    bytes=request.sentLength,
                    client=getattr(request.getClientAddress(), "host", "-"))
