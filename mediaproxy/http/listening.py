"""
Listening, and failing to: :class:`ListeningService` listens on an endpoint string and
remembers the port it got (``tcp:0`` in tests), for the main ports and the side listeners
(monitoring, admin, the demo origin); :func:`side_site` is the side listeners' site, whose
responses name the server as ``server.server_header`` says (never Twisted's version) and
whose requests are logged at debug only.

A listener binds in ``privilegedStartService`` (before ``twistd --uid`` drops privileges; or
in ``startService`` when nothing called that), synchronously, and a failure raises
:class:`CannotListen`, whose text is the one line an operator needs: ``proxy: cannot listen
on tcp:8080:interface=127.0.0.1: address already in use``. The composition
(:mod:`mediaproxy.lifecycle`) turns it into that log line and a non-zero exit instead of a
process that runs without its port. :func:`endpoint_problem` checks an endpoint string with
Twisted's own parser without binding anything (``mediaproxy check-config``).
"""

from __future__ import annotations

import errno as _errno
import os

from twisted.application import service
from twisted.internet.defer import maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server

from ..logs import logger
from .errors import reason_phrase

log = Logger(namespace="mediaproxy")


class CannotListen(Exception):
    """A listener could not bind: ``str()`` names the endpoint, what it is for and why."""

    def __init__(self, endpoint: str, what: str, reason: str):
        self.endpoint, self.what, self.reason = endpoint, what, reason
        super().__init__(f"{what}: cannot listen on {endpoint}: {reason}")


def bind_reason(error: BaseException) -> str:
    """The short, lower-case reason of a bind failure (``address already in use``,
    ``permission denied``...) rather than Twisted's ``Couldn't listen on ...: [Errno 98]``."""
    if isinstance(error, CannotListenError) and error.socketError is not None:
        error = error.socketError
    code = getattr(error, "errno", None)
    if code is None and isinstance(error, OSError) and error.args \
            and isinstance(error.args[0], int):
        code = error.args[0]
    if isinstance(code, int) and code in _errno.errorcode:
        return os.strerror(code).lower()
    return str(error) or type(error).__name__


def endpoint_problem(description: str) -> str | None:
    """Why Twisted cannot make a server endpoint of ``description`` (None: it can). Parses
    only: nothing is bound, no reactor is used. ``systemd:`` endpoints are looked at only for
    their syntax, the descriptors they name exist under systemd alone."""
    kind = description.partition(":")[0]
    if kind == "systemd":
        opts = dict(part.partition("=")[::2] for part in description.split(":")[1:])
        if opts.get("domain") not in ("INET", "INET6", "UNIX"):
            return "systemd: endpoints need domain=INET, INET6 or UNIX"
        if not (opts.get("index", "").isdigit() or opts.get("name")):
            return "systemd: endpoints need index=N or name=NAME"
        return None
    try:
        serverFromString(object(), description)
    except Exception as e:   # the parsers raise ValueError, TypeError, KeyError...
        return str(e) or type(e).__name__
    return None


class ListeningService(service.Service):
    """Listens on ``description`` (``listen_as``, when given, is what is bound: the same
    endpoint with a backlog added) with ``factory``; ``what`` names it in log lines."""

    def __init__(self, reactor, description: str, factory, what: str,
                 listen_as: str | None = None):
        self.reactor = reactor
        self.description = description
        self.listen_as = listen_as or description
        self.factory = factory
        self.what = what
        self.port = None
        self.listening = None

    def privilegedStartService(self):
        super().privilegedStartService()
        self.bind()

    def startService(self):
        super().startService()
        if self.listening is None:
            self.bind()

    def bind(self) -> None:
        """Listen now; :class:`CannotListen` when that fails. (TCP, UNIX and systemd
        endpoints answer at once; a failure of an endpoint that answers later is logged.)"""
        self.factory.noisy = False
        try:
            self.listening = serverFromString(self.reactor, self.listen_as).listen(self.factory)
        except Exception as e:
            raise CannotListen(self.description, self.what, bind_reason(e)) from None
        at_once: list = []
        later = False

        def settled(outcome):
            if not later:
                at_once.append(outcome)
            elif isinstance(outcome, Failure):
                self._failed(outcome)
            else:
                self._listening(outcome)

        self.listening.addBoth(settled)  # type: ignore[attr-defined]  # set just above
        later = True
        if at_once and isinstance(at_once[0], Failure):
            self.listening = None
            raise CannotListen(self.description, self.what, bind_reason(at_once[0].value))
        if at_once:
            self._listening(at_once[0])

    def _listening(self, port):
        self.port = port
        log.info("{what} listening on {address}", what=self.what, address=port.getHost())
        return port

    def _failed(self, failure):
        log.critical("{line}", line=str(CannotListen(self.description, self.what,
                                                     bind_reason(failure.value))))

    def stopService(self):
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            self.listening = None
            return maybeDeferred(port.stopListening)
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
    site.log = _debug_line  # type: ignore[method-assign]  # Twisted's documented hook
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
