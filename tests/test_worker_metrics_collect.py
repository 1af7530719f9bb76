"""The supervisor's collection of its workers' metrics (mediaproxy.monitoring.collect), in
process, over real UNIX sockets in its private directory. The "workers" here are twisted.web
sites serving a real registry's exposition: an oversized or failing answer is a fault a real
worker cannot be made to produce on demand (a wedged one is tested with real processes in
test_workers_observability)."""

from __future__ import annotations

import os
import stat
import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from twisted.web.resource import Resource
from twisted.web.server import Site

from mediaproxy.monitoring import collect
from mediaproxy.monitoring.collect import WorkerMetrics
from mediaproxy.monitoring.merge import merge
from mediaproxy.testing import call_in_reactor


class Exposition(Resource):
    isLeaf = True

    def __init__(self, registry, status=200):
        super().__init__()
        self.registry, self.status = registry, status

    def render_GET(self, request):
        request.setResponseCode(self.status)
        return generate_latest(self.registry)


def worker_registry(requests: int, padding: int = 0):
    registry = CollectorRegistry()
    Counter("mediaproxy_requests", "Requests.", ["kind"], registry=registry).labels(
        "image").inc(requests)
    Gauge("mediaproxy_transform_queue", "Queue.", registry=registry).set(3)
    if padding:
        gauge = Gauge("padding", "x" * padding, registry=registry)
        gauge.set(1)
    return registry


def serve(live_reactor, metrics, index, resource):
    metrics.started(index)
    return call_in_reactor(live_reactor.listenUNIX, metrics.socket_path(index), Site(resource))


def scrape(metrics) -> dict:
    merged = merge(call_in_reactor(metrics.scrape))
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in merged for s in f.samples}


IMAGE = ("mediaproxy_requests_total", (("kind", "image"),))
QUEUE = ("mediaproxy_transform_queue", ())
ERRORS = ("mediaproxy_workers_scrape_errors_total", ())


def state(found, name):
    return found[("mediaproxy_workers", (("state", name),))]


def test_the_sockets_are_in_a_directory_only_the_proxy_user_can_enter(live_reactor):
    metrics = WorkerMetrics(live_reactor)
    directory = metrics.open()
    try:
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
        assert os.path.dirname(metrics.socket_path(3)) == directory
    finally:
        metrics.close()
    assert not os.path.exists(directory)


def test_a_dead_workers_counters_are_kept_and_a_bad_answer_is_counted(live_reactor):
    metrics = WorkerMetrics(live_reactor, timeout=5, limit=4096)
    ports = []
    try:
        resource = Exposition(worker_registry(5))
        ports.append(serve(live_reactor, metrics, 1, resource))
        found = scrape(metrics)
        assert (found[IMAGE], found[QUEUE], found[ERRORS], state(found, "up")) == (5, 3, 0, 2)

        # an answer over the size limit, then a 500: counted, its counters the last known
        resource.registry = worker_registry(7, padding=8000)
        found = scrape(metrics)
        assert (found[IMAGE], QUEUE in found, found[ERRORS]) == (5, False, 1)
        assert (state(found, "up"), state(found, "unreachable")) == (1, 1)
        resource.registry, resource.status = worker_registry(7), 500
        assert scrape(metrics)[ERRORS] == 2

        # it dies: what it last reported stays; its successor adds to it
        call_in_reactor(ports.pop().stopListening)
        metrics.ended(1)
        assert not os.path.exists(metrics.socket_path(1))
        found = scrape(metrics)
        assert (found[IMAGE], QUEUE in found, found[("mediaproxy_workers_restarts_total", ())]) \
            == (5, False, 1)
        ports.append(serve(live_reactor, metrics, 1, Exposition(worker_registry(2))))
        found = scrape(metrics)
        assert (found[IMAGE], found[QUEUE], found[ERRORS], state(found, "up")) == (7, 3, 2, 2)
    finally:
        for port in ports:
            call_in_reactor(port.stopListening)
        metrics.close()


def test_a_workers_text_is_parsed_beside_the_reactor_not_in_it(live_reactor, monkeypatch):
    """The supervisor is also worker 0: milliseconds of parsing in its reactor would hold the
    requests it serves. The real parser runs; only the thread it runs in is noted."""
    threads = []

    def noted(text, parse=collect.parse):
        threads.append(threading.get_ident())
        return parse(text)

    monkeypatch.setattr(collect, "parse", noted)
    metrics = WorkerMetrics(live_reactor, timeout=5)
    port = serve(live_reactor, metrics, 1, Exposition(worker_registry(4)))
    try:
        found = scrape(metrics)
        assert (found[IMAGE], found[QUEUE], state(found, "up")) == (4, 3, 2)
        assert len(threads) == 1
        assert threads[0] != call_in_reactor(threading.get_ident)
    finally:
        call_in_reactor(port.stopListening)
        metrics.close()
