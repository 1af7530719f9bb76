"""
Recycling a worker (``server.max_worker_requests``, ``server.max_worker_rss``): a worker that
has served that many requests, or whose resident memory passed the limit, is replaced by a
fresh process without a gap in serving.

Every second :class:`Recycler` compares the process's count of started requests
(``runtime.inflight.started``) and its RSS with the limits. Over one, in a worker started by
the supervisor (:mod:`mediaproxy.workers`), it calls ``recycle(reason)`` once (``reason`` is
``requests`` or ``rss``): the worker tells the supervisor over its private control pipe, so
the replacement starts at once, and stops the way SIGTERM stops it (:mod:`mediaproxy.lifecycle`:
its ports close, its requests in flight finish within ``server.drain_timeout``, it exits).
The other workers keep accepting meanwhile.

Worker 0, the supervisor, and a single process have nobody to take over their port and
state (the monitoring listener, the alerts): they are never recycled; the first time one is
over a limit a warning says so (restart the service to renew it).
"""

from __future__ import annotations

from typing import Callable

from twisted.application import service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger(namespace="mediaproxy.workers")

#: Seconds between two looks at the request count and the RSS.
CHECK_INTERVAL = 1.0

REASONS = ("requests", "rss")


def own_rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def over_limit(server, started: int, rss: Callable[[], int]) -> str | None:
    """Which limit of ``server`` (the ``[server]`` settings) a process that started
    ``started`` requests is over: ``"requests"`` (at least ``max_worker_requests``),
    ``"rss"`` (``rss()`` above ``max_worker_rss``; read only when that limit is set), or
    None."""
    if server.max_worker_requests and started >= server.max_worker_requests:
        return "requests"
    if server.max_worker_rss and rss() > server.max_worker_rss:
        return "rss"
    return None


class Recycler(service.Service):
    """Looks at the limits every :data:`CHECK_INTERVAL` seconds and acts once: ``recycle``
    (a worker) or a warning (``recycle`` None: worker 0 or a single process)."""

    name = "mediaproxy-recycler"  # type: ignore[assignment]  # Service.name is untyped None

    def __init__(self, runtime, recycle: Callable[[str], None] | None = None,
                 rss: Callable[[], int] = own_rss):
        self.runtime = runtime
        self.recycle = recycle
        self.rss = rss
        self.reason: str | None = None
        self.loop: LoopingCall | None = None

    def startService(self):
        super().startService()
        self.loop = LoopingCall(self.check)
        self.loop.clock = self.runtime.reactor
        self.loop.start(CHECK_INTERVAL, now=False)

    def stopService(self):
        super().stopService()
        if self.loop is not None and self.loop.running:
            self.loop.stop()

    def check(self) -> None:
        if self.reason is not None:
            return
        server = self.runtime.config.server
        reason = over_limit(server, self.runtime.inflight.started, self.rss)
        if reason is None:
            return
        self.reason = reason
        if self.loop is not None and self.loop.running:
            self.loop.stop()
        limit = server.max_worker_requests if reason == "requests" else server.max_worker_rss
        if self.recycle is None:
            log.warn("this process is over server.max_worker_{reason} ({limit}) but is not "
                     "recycled: it is worker 0 (the supervisor) or the only process; restart "
                     "the service to renew it", reason=reason, limit=limit)
            return
        log.info("recycling this worker: over server.max_worker_{reason} ({limit}); it "
                 "finishes its requests and exits, a new one takes its place", reason=reason,
                 limit=limit)
        self.recycle(reason)
