"""
A service that listens on an endpoint string and remembers the port it got (``tcp:0`` in
tests), for the side listeners: monitoring and admin.
"""

from __future__ import annotations

from twisted.application import service
from twisted.internet.defer import maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger

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
