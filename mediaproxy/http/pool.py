"""
A :class:`~twisted.web.client.HTTPConnectionPool` whose connections open and close without a
log line.

Twisted's client factory is ``noisy``: every backend connection logs "Starting factory
_HTTP11ClientFactory" and "Stopping factory ..." at info, which was about a quarter of all
lines of a busy proxy and says nothing an operator can act on (the backend metrics count
connections' outcomes).
"""

from __future__ import annotations

from twisted.web.client import HTTPConnectionPool, _HTTP11ClientFactory


class _QuietClientFactory(_HTTP11ClientFactory):
    noisy = False


class QuietConnectionPool(HTTPConnectionPool):
    """An HTTPConnectionPool whose connections' factories log nothing when they start/stop."""

    _factory = _QuietClientFactory
