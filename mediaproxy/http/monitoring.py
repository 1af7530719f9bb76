"""
The monitoring listener (``monitoring.listen``): ``/metrics`` for Prometheus and ``/health``,
which runs every health indicator and answers 200 when all are ok, else 503, with a JSON body.
"""

from __future__ import annotations

import json
from itertools import chain

from twisted.internet.defer import DeferredList, maybeDeferred
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from ..models import HealthStatus
from ..monitoring.exposition import MetricsResource


class HealthResource(Resource):
    isLeaf = True

    def __init__(self, runtime):
        super().__init__()
        self.indicators = list(chain.from_iterable(
            found or () for found in runtime.pm.hook.mediaproxy_health_indicators(runtime=runtime)))

    def render_GET(self, request):
        def run(indicator):
            d = maybeDeferred(indicator.check)
            d.addErrback(lambda f: HealthStatus(indicator.name, False, f.getErrorMessage()))
            return d

        def answer(results):
            statuses = [value for _, value in results]
            ok = all(s.ok for s in statuses)
            body = json.dumps({"status": "ok" if ok else "failing", "checks": [
                {"name": s.name, "ok": s.ok, "detail": s.detail} for s in statuses]}).encode()
            request.setResponseCode(200 if ok else 503)
            request.setHeader(b"Content-Type", b"application/json")
            request.setHeader(b"Cache-Control", b"no-store")
            request.write(body)
            request.finish()

        DeferredList([run(i) for i in self.indicators]).addCallback(answer)
        return NOT_DONE_YET


class MonitoringResource(Resource):
    def __init__(self, runtime, registry):
        super().__init__()
        self.putChild(b"metrics", MetricsResource(runtime, registry))   # merges the workers'
        self.putChild(b"health", HealthResource(runtime))
