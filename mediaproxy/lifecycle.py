"""
How the daemon starts and stops: :class:`ProxyService`, the top of the service tree that
``twistd mediaproxy``, ``mediaproxy run``/``demo`` and every worker run, and
:class:`StopOnTerm`, its SIGTERM handler.

Starting: every listener (the main ports, the side listeners, the demo origin) binds in
``privilegedStartService``, before anything else starts; one that cannot bind ends the process
with status 1 and one line naming the endpoint and the reason (:class:`CannotListen
<mediaproxy.http.listening.CannotListen>`), never a proxy that runs without its port
(``mediaproxy run`` returns 1; under ``twistd`` the exception ends the process, without its
traceback: :func:`quiet_listen_failures`).

Stopping (SIGTERM, or anything that stops the reactor), in this order, because Twisted's own
MultiService would stop every child at once:

1. the main ports stop accepting, ``runtime.draining`` turns True (``/health/ready`` answers
   503; the monitoring listener keeps serving), the supervisor tells its workers to stop;
2. the drain (:meth:`ProxyService.drain`): idle keep-alive connections are closed at once,
   responses finished from now on say ``Connection: close``, and the requests in flight
   (``runtime.inflight``) get up to ``server.drain_timeout`` seconds to finish and be written;
3. the workers are waited for (their own drain, plus a margin: :mod:`mediaproxy.workers`);
4. the rest stops one service at a time, last started first: the plugins' services (side
   listeners, purge feed), the runtime (backend pool), Redis, and the thread pool last.

Once running, :func:`freeze_startup_objects` takes what the start built out of the garbage
collector's reach.

SIGTERM is handled here rather than by Twisted's handler so that a completed graceful stop
exits 0 (twistd re-raises a signal Twisted handled, so the process would end "killed by
SIGTERM").
"""

from __future__ import annotations

import gc
import signal
import sys

from twisted.application import service
from twisted.internet.defer import DeferredList, inlineCallbacks, maybeDeferred, succeed
from twisted.internet.error import ReactorNotRunning
from twisted.logger import Logger

from .http.listening import CannotListen

log = Logger(namespace="mediaproxy")


class ProxyService(service.MultiService):
    """The whole daemon (see the module docstring). Children are added in start order; the
    main ports with :meth:`add_port`, the worker supervisor with :meth:`add_supervisor`.
    ``announce`` (optional) is called once everything started (the "listening" log line)."""

    def __init__(self, runtime, site):
        super().__init__()
        self.runtime = runtime
        self.site = site
        self.ports: list = []
        self.supervisor = None
        self.announce = None

    @property
    def drain_timeout(self) -> float:
        """``server.drain_timeout`` of the configuration in force (a reload changes it)."""
        return self.runtime.config.server.drain_timeout

    def add_port(self, svc) -> None:
        svc.setServiceParent(self)
        self.ports.append(svc)

    def add_supervisor(self, svc) -> None:
        svc.setServiceParent(self)
        self.supervisor = svc

    # -- start -----------------------------------------------------------------------------

    def privilegedStartService(self):
        """Bind every listener. One that cannot: its one line is logged and
        :class:`CannotListen` raised (an ordinary exception, so that ``twistd`` removes its
        pidfile and a daemonizing twistd's parent learns of it); its traceback would only
        repeat the line, :func:`quiet_listen_failures` leaves it out."""
        try:
            super().privilegedStartService()
        except CannotListen as e:
            log.critical("{line}", line=str(e))
            sys.excepthook = quiet_listen_failures(sys.excepthook)
            raise

    def startService(self):
        super().startService()
        if self.announce is not None:
            self.announce()

    # -- stop ------------------------------------------------------------------------------

    def stopService(self):
        service.Service.stopService(self)
        return self._stop()

    @inlineCallbacks
    def _stop(self):
        closing = [maybeDeferred(port.stopService) for port in self.ports]
        self.runtime.draining = True
        workers = succeed(None)
        if self.supervisor is not None:
            self.supervisor.drain_timeout = self.drain_timeout
            workers = maybeDeferred(self.supervisor.stopService)
        yield DeferredList(closing, consumeErrors=True)
        yield self.drain()
        yield DeferredList([workers], consumeErrors=True)
        special = {id(s) for s in self.ports} | {id(self.supervisor)}
        for svc in reversed(list(self)):
            if id(svc) in special or not svc.running:
                continue
            try:
                yield maybeDeferred(svc.stopService)
            except Exception:
                log.failure("stopping {service} failed", service=type(svc).__name__)

    @inlineCallbacks
    def drain(self):
        """Let the requests in flight finish, within ``drain_timeout``; logs a line when it
        starts and one when it ends. Fires (never fails) when done or timed out."""
        rt, site = self.runtime, self.site
        reactor = rt.reactor
        started = reactor.seconds()
        closed = site.start_drain()
        log.info("graceful stop: ports closed, draining {inflight} request(s) in flight "
                 "(up to {timeout} s; {closed} idle connection(s) closed)",
                 inflight=rt.inflight.total, timeout=self.drain_timeout, closed=closed)

        def written(_):
            site.close_all()
            return site.when_closed()

        done = rt.inflight.when_idle()
        done.addCallback(written)
        done.addTimeout(self.drain_timeout, reactor)
        try:
            yield done
        except Exception:   # the timeout (CancelledError / TimeoutError)
            log.warn("graceful stop: drain timed out after {timeout} s with {inflight} "
                     "request(s) still in flight ({open} connection(s) open); cutting them",
                     timeout=self.drain_timeout, inflight=rt.inflight.total,
                     open=len(site.channels))
            return
        log.info("graceful stop: drained in {seconds:.2f} s",
                 seconds=reactor.seconds() - started)


class StopOnTerm(service.Service):
    """SIGTERM stops the reactor, and so the tree, gracefully (:class:`ProxyService`); a
    second one while the drain runs is only logged. Installed once the reactor runs (after
    Twisted's own handlers) and the previous handler put back when the service stops."""

    name = "mediaproxy-stop-on-term"  # type: ignore[assignment]  # Service.name is untyped None

    def __init__(self, reactor):
        self.reactor = reactor
        self._previous = None
        self._stopping = False

    def startService(self):
        super().startService()
        self.reactor.callWhenRunning(self._install)

    def _install(self):
        if self.running:
            self._previous = signal.signal(
                signal.SIGTERM, lambda *_: self.reactor.callFromThread(self._terminate))

    def _terminate(self):
        if self._stopping:
            log.info("SIGTERM again: the graceful stop is already under way")
            return
        self._stopping = True
        log.info("SIGTERM: stopping gracefully")
        try:
            self.reactor.stop()
        except ReactorNotRunning:
            pass

    def stopService(self):
        super().stopService()
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


def quiet_listen_failures(hook=None):
    """A :data:`sys.excepthook` that prints nothing for :class:`CannotListen` (its one line
    is logged already; the process still exits with status 1) and defers to ``hook`` (the
    current one) for anything else. ``twistd`` lets the exception reach the interpreter;
    installed only once a bind failed, so building or starting a tree changes nothing global."""
    previous = hook or sys.excepthook

    def excepthook(kind, value, tb):
        if issubclass(kind, CannotListen):
            return
        previous(kind, value, tb)
    return excepthook


def freeze_startup_objects() -> None:
    """Collect once, then move every object alive into the collector's permanent generation
    (:func:`gc.freeze`), once the daemon runs. What the start built (modules, plugins, the
    configuration, the runtime: some 80,000 objects) lives as long as the process, yet a
    full collection walked all of it each time: 50 to 120 ms during which the whole process
    stopped, a cache hit included. After the freeze a full collection walks only what
    requests made (docs/performance.md, "Collections"). Run by ``mediaproxy run``, each
    worker and ``twistd mediaproxy``; not by the test kit, whose proxies come and go in one
    process (what the freeze holds is never freed)."""
    gc.collect()
    gc.freeze()
