"""
The monitoring listener (``monitoring.listen``): ``/metrics`` for Prometheus and the three
health paths; and the same health paths on the main port under ``monitoring.health_prefix``
(:class:`HealthFirst`, which answers them before routing, the rate limits and the ``request``
event, so a probe is never limited, never counted as traffic and never reaches the backend).

* ``live_path`` (``/health/live``): 200 ``{"status": "alive", "uptime": ...}`` from the reactor,
  whatever the dependencies do. A process that cannot answer it is wedged: that is the signal.
* ``ready_path`` (``/health/ready``): 200 when the process can serve, else 503 with the reasons
  (:func:`~mediaproxy.monitoring.health.readiness`), read from the runtime at each probe.
* ``health_path`` (``/health``): the detailed report from the last health snapshot
  (:class:`~mediaproxy.monitoring.health.HealthMonitor`): 200 healthy or degraded, 503
  unhealthy.

Every answer is JSON with ``Cache-Control: no-store``. The paths are read from the
configuration at each request, so a reload that changes them applies at once.
"""

from __future__ import annotations

import json
import time

from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from .. import __version__
from ..monitoring.exposition import MetricsResource
from ..monitoring.health import readiness


def health_paths(config, prefix: str = "") -> dict[bytes, str]:
    """``{path: kind}`` for the three health paths (kind: ``live``, ``ready``, ``health``)."""
    m = config.monitoring
    return {(prefix + path).encode(): kind for path, kind in (
        (m.live_path, "live"), (m.ready_path, "ready"), (m.health_path, "health"))}


def _json(request, status: int, body: dict) -> bytes:
    data = json.dumps(body).encode()
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-store")
    request.setHeader(b"Content-Length", str(len(data)).encode())
    return b"" if request.method == b"HEAD" else data


class HealthResource(Resource):
    """Answers one of the health paths (``kind``) for ``runtime``."""

    isLeaf = True

    def __init__(self, runtime, kind: str):
        super().__init__()
        self.runtime = runtime
        self.kind = kind

    def render(self, request):
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"Allow", b"GET, HEAD")
            return _json(request, 405, {"error": "method_not_allowed", "status": 405,
                                        "message": "health answers GET and HEAD"})
        rt = self.runtime
        if self.kind == "live":
            return _json(request, 200, {"status": "alive",
                                        "uptime": round(time.time() - rt.started, 3)})
        if self.kind == "ready":
            monitor = rt.health
            found = readiness(started=monitor is not None and monitor.running,
                              pool_running=bool(rt.threadpool.started),
                              breakers=rt.breakers(), draining=rt.draining)
            return _json(request, 200 if found.ready else 503,
                         found.to_json(time.time(), rt.started))
        return self._report(request)

    def _report(self, request):
        rt = self.runtime
        monitor = rt.health
        if monitor is None or (monitor.snapshot is None and not monitor.running):
            return _json(request, 503, {"status": "unhealthy", "version": __version__,
                                        "detail": "the health monitor is not running",
                                        "indicators": []})

        def answer(snapshot):
            body = snapshot.to_json(time.time(), rt.started, __version__)
            return _json(request, snapshot.http_status, body)

        if monitor.snapshot is not None:   # the usual case: the last snapshot, at once
            return answer(monitor.snapshot)

        def late(snapshot):   # the first round is not over yet: at most health_timeout
            if not request._disconnected and not request.finished:
                request.write(answer(snapshot))
                request.finish()

        monitor.current().addCallback(late)
        return NOT_DONE_YET


class HealthFirst(Resource):
    """The main port's root: the health paths under ``monitoring.health_prefix`` (when set)
    are answered here; every other request goes to ``resource`` untouched."""

    isLeaf = True

    def __init__(self, resource, runtime):
        super().__init__()
        self.resource = resource
        self.runtime = runtime
        self._health = {kind: HealthResource(runtime, kind) for kind in ("live", "ready",
                                                                         "health")}

    def render(self, request):
        prefix = self.runtime.config.monitoring.health_prefix
        if prefix and request.path.startswith(prefix.encode()):
            kind = health_paths(self.runtime.config, prefix).get(request.path)
            if kind is not None:
                return self._health[kind].render(request)
        return self.resource.render(request)


class MonitoringResource(Resource):
    def __init__(self, runtime, registry):
        super().__init__()
        self.runtime = runtime
        self.putChild(b"metrics", MetricsResource(runtime, registry))   # merges the workers'
        self._health = {kind: HealthResource(runtime, kind) for kind in ("live", "ready",
                                                                         "health")}

    def getChildWithDefault(self, path, request):
        kind = health_paths(self.runtime.config).get(request.path)
        if kind is not None:
            return self._health[kind]
        return super().getChildWithDefault(path, request)
