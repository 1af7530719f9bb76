"""
How the backend client connects: an endpoint factory for the Agent that fails fast.

Twisted's standard factory connects through a :class:`~twisted.internet.endpoints.
HostnameEndpoint` (happy eyeballs), which reports a refused connection only at the next tick of
its ``attemptDelay`` loop, 0.3 s later: with the attempts of one request, a dead backend cost
about a second per request before the breaker opened. A backend given by IP address (the
default, ``http://127.0.0.1:8000``) has nothing to resolve and nothing to race, so it gets a
plain TCP endpoint and a refusal is known in the time the kernel takes to say so. A backend
given by name keeps happy eyeballs, with the shortest attempt delay RFC 8305 allows (0.1 s),
which is also the most a refusal costs it.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.internet.endpoints import (
    HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS,
)
from twisted.web.client import BrowserLikePolicyForHTTPS
from twisted.web.error import SchemeNotSupported
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

#: Seconds between two addresses of a backend given by name (RFC 8305's minimum).
ATTEMPT_DELAY = 0.1


@implementer(IAgentEndpointFactory)
class BackendEndpoints:
    """``Agent.usingEndpointFactory(reactor, BackendEndpoints(reactor, connect_timeout), pool)``:
    TCP (or TLS for https) to the URI's host and port, ``connect_timeout`` seconds to connect."""

    def __init__(self, reactor: Any, connect_timeout: float, tls_policy: Any = None):
        self._reactor = reactor
        self._timeout = connect_timeout
        self._tls = tls_policy

    def endpointForURI(self, uri):
        host = uri.host.decode("ascii")
        try:
            address = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            endpoint = HostnameEndpoint(self._reactor, host, uri.port, timeout=self._timeout,
                                        attemptDelay=ATTEMPT_DELAY)
        else:
            kind = TCP4ClientEndpoint if address.version == 4 else TCP6ClientEndpoint
            endpoint = kind(self._reactor, str(address), uri.port, timeout=self._timeout)
        if uri.scheme == b"http":
            return endpoint
        if uri.scheme == b"https":
            if self._tls is None:
                self._tls = BrowserLikePolicyForHTTPS()
            return wrapClientTLS(self._tls.creatorForNetloc(uri.host, uri.port), endpoint)
        raise SchemeNotSupported(f"Unsupported scheme: {uri.scheme!r}")
