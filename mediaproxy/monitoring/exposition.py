"""
``/metrics`` on the monitoring listener: this process's registry in the Prometheus text format
and, in the supervisor of several workers (``runtime.workers``, a
:class:`~mediaproxy.monitoring.collect.WorkerMetrics`), every worker's series merged in
(:mod:`mediaproxy.monitoring.merge`), so one scrape counts every worker's requests once.

Why the supervisor collects at scrape time rather than prometheus-client's multiprocess mode:
the registries are per runtime (tests run several proxies in one process), the collectors that
read live state at scrape time (queue depth, cache sizes, breaker states) cannot be written to
multiprocess mode's files, and that mode needs an environment variable set before
prometheus_client is first imported plus a directory that must be cleaned between runs.

The answer is asynchronous (``NOT_DONE_YET``): the workers are asked in parallel, each bounded
in time, so a wedged worker makes a scrape at most
:data:`~mediaproxy.monitoring.collect.SCRAPE_TIMEOUT` seconds slower, never hang. Parsing the
workers' text and merging it (pure functions, :mod:`~mediaproxy.monitoring.merge`: about 15 ms
of CPU for two workers) run in the reactor's thread pool, not in the reactor: there they held
the supervisor's reactor, which is also worker 0 and serves requests, for the whole merge (the
hits it had in hand waited; under load that was 100 ms and more); in a thread they share the
GIL in slices of the switch interval (``bench/overload.py``, docs/performance.md "Overload").
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from .merge import merge, parse, render

log = Logger(namespace="mediaproxy.monitoring")


class MetricsResource(Resource):
    """``GET /metrics``: ``registry`` alone, or merged with the workers of ``runtime``."""

    isLeaf = True

    def __init__(self, runtime, registry):
        super().__init__()
        self.runtime = runtime
        self.registry = registry

    def render_GET(self, request):
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii"))
        request.setHeader(b"Cache-Control", b"no-store")
        workers = self.runtime.workers
        own = generate_latest(self.registry)
        if workers is None or not workers.running and not workers.retired:
            return own
        finished = request.notifyFinish()
        gone = []
        finished.addErrback(lambda _: gone.append(True))

        def answer(others):
            if gone:
                return None
            reactor = self.runtime.reactor
            return deferToThreadPool(reactor, reactor.getThreadPool(), merged_text, own,
                                     others).addCallback(write)

        def write(text):
            if not gone:
                request.write(text)
                request.finish()

        def failed(failure):
            log.failure("merging the workers' metrics failed", failure)
            if not gone:
                request.write(own)
                request.finish()

        workers.scrape().addCallback(answer).addErrback(failed)
        return NOT_DONE_YET


def merged_text(own: bytes, others: list) -> bytes:
    """This process's exposition ``own`` merged with the workers' families ``others``, as
    text (pure: run in a pool thread)."""
    return render(merge([parse(own.decode("utf-8")), *others]))
