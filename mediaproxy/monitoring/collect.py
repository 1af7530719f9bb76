"""
The supervisor's side of several workers' metrics (``server.workers=N``): where each worker
serves its own registry, fetching them all at scrape time, and what is remembered of a worker
that stopped answering or died.

Each worker (``python -m mediaproxy.worker``) runs its monitoring listener on a UNIX socket,
``<dir>/worker-<index>.sock``, in a directory this object creates with ``mkdtemp`` (mode 0700,
owned by the proxy's user) and the supervisor passes on the worker's command line. A UNIX socket
in a private directory rather than a loopback TCP port: nothing else on the host can connect to
it (no port to find, no other user can enter the directory), the supervisor knows the address
before the worker starts (no port to report back over an extra pipe), and a restarted worker
listens at the same address.

At scrape time :meth:`WorkerMetrics.scrape` asks every running worker for ``/metrics`` at once,
each with :data:`SCRAPE_TIMEOUT` seconds and at most :data:`SCRAPE_LIMIT` bytes, so a wedged
worker never holds the scrape: its gauges are then missing, its counters and histograms are the
ones it last reported (the merged totals never go back, which Prometheus' ``rate()`` would read
as a reset), ``mediaproxy_workers_scrape_errors_total`` counts the failure and
``mediaproxy_workers{state="unreachable"}`` shows it. When a worker dies, the counters and
histograms it last reported are kept ("retired") and added to every later scrape, so a restart
does not make the totals drop either; what it counted between its last scrape and its death is
lost.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from typing import Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from twisted.internet import protocol
from twisted.internet.defer import Deferred, DeferredList, fail
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from ..logs import Throttle
from .merge import merge, monotonic_part, parse

log = Logger(namespace="mediaproxy.workers")

#: Seconds the supervisor waits for one worker's metrics before leaving it out of a scrape.
SCRAPE_TIMEOUT = 2.0
#: Bytes at most of one worker's exposition (a few hundred series take tens of KiB).
SCRAPE_LIMIT = 8 * 1024 * 1024


class ScrapeError(Exception):
    """A worker's metrics could not be had (refused, timed out, too big, not a 200)."""


class _Fetch(protocol.Protocol):
    """``GET /metrics`` over HTTP/1.0 (the server closes the connection after the answer),
    the body bounded to ``limit`` bytes."""

    def __init__(self, limit: int):
        self.limit = limit
        self.received: list[bytes] = []
        self.size = 0
        self.done: Deferred = Deferred()
        self.too_big = False

    def connectionMade(self):
        self.transport.write(b"GET /metrics HTTP/1.0\r\nHost: worker\r\n\r\n")

    def dataReceived(self, data):
        self.size += len(data)
        if self.size > self.limit:
            self.too_big = True
            self.transport.abortConnection()
            return
        self.received.append(data)

    def connectionLost(self, reason=None):
        if self.done.called:
            return
        if self.too_big:
            self.done.errback(ScrapeError(f"more than {self.limit} bytes"))
            return
        head, sep, body = b"".join(self.received).partition(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0].split(b" ")
        if not sep or len(status) < 2 or status[1] != b"200":
            self.done.errback(ScrapeError(f"answer {head[:80]!r}"))
            return
        self.done.callback(body.decode("utf-8", errors="replace"))


def fetch_metrics(reactor, path: str, timeout: float = SCRAPE_TIMEOUT,
                  limit: int = SCRAPE_LIMIT) -> Deferred:
    """The text of ``/metrics`` from the worker listening on the UNIX socket ``path``; fails
    with :class:`ScrapeError` (or the connection's error) after ``timeout`` seconds at most."""
    fetch = _Fetch(limit)
    endpoint = UNIXClientEndpoint(reactor, path, timeout=timeout)
    factory = protocol.Factory.forProtocol(lambda: fetch)
    factory.noisy = False   # no "Starting factory" line per scrape
    connecting = endpoint.connect(factory)

    def connected(proto):
        return fetch.done

    def timed_out(result, seconds):
        # the timeout fired: drop the connection too, so the worker's socket is not kept open
        if fetch.transport is not None:
            fetch.transport.abortConnection()
        raise ScrapeError(f"no answer in {seconds} s")

    d = connecting.addCallback(connected)
    d.addTimeout(timeout, reactor, onTimeoutCancel=timed_out)
    return d


class WorkerMetrics:
    """What the supervisor knows of its workers' metrics: their sockets, their last counters,
    the counters of the dead, the scrape failures. Made by the composition root when
    ``server.workers`` > 1 (``runtime.workers``); the supervisor (:mod:`mediaproxy.workers`)
    calls :meth:`open`, :meth:`started`, :meth:`ended` and :meth:`close`; the ``/metrics``
    resource calls :meth:`scrape`."""

    def __init__(self, reactor, timeout: float = SCRAPE_TIMEOUT, limit: int = SCRAPE_LIMIT):
        self.reactor = reactor
        self.timeout = timeout
        self.limit = limit
        self.directory: str | None = None
        self.running: dict[int, str] = {}        # index -> socket path of a live worker
        self.last: dict[int, list[Metric]] = {}   # index -> its last counters and histograms
        self.retired: list[Metric] = []           # the last counters of workers that died
        self.scrape_errors = 0
        self.restarts = 0
        #: workers recycled, by reason (mediaproxy.recycling.REASONS)
        self.recycles = {"requests": 0, "rss": 0}
        self.states: dict[int, str] = {}
        self._generation: dict[int, int] = {}    # index -> how many times it was started
        self._warnings = Throttle(60.0)

    def open(self) -> str:
        """Make the private directory of the workers' sockets (mode 0700). It is removed by
        :meth:`close` (the supervisor calls it after the reactor stopped) or, failing that,
        when the interpreter exits (as ``tempfile.TemporaryDirectory`` does); only a
        ``kill -9`` of the supervisor leaves it behind."""
        if self.directory is None:
            self.directory = tempfile.mkdtemp(prefix="mediaproxy-workers-")
            self._cleanup = weakref.finalize(self, shutil.rmtree, self.directory,
                                             ignore_errors=True)
        return self.directory

    def close(self) -> None:
        if self.directory is not None:
            self._cleanup()
            self.directory = None

    def socket_path(self, index: int) -> str:
        return os.path.join(self.open(), f"worker-{index}.sock")

    def started(self, index: int) -> None:
        self.running[index] = self.socket_path(index)
        self._generation[index] = self._generation.get(index, 0) + 1
        self.states[index] = "starting"

    def ended(self, index: int, restarting: bool = True) -> None:
        """Worker ``index`` died: keep the counters it last reported, and remove its socket
        (until its successor listens, it is "starting", not "unreachable")."""
        path = self.running.pop(index, None)
        if path is not None:
            try:
                os.unlink(path)
            except OSError:
                pass
        self.states.pop(index, None)
        last = self.last.pop(index, None)
        if last:
            self.retired = merge([self.retired, last])
        if restarting:
            self.restarts += 1

    def recycled(self, reason: str) -> None:
        """A worker is being recycled for ``reason`` (``requests`` or ``rss``)."""
        self.recycles[reason] = self.recycles.get(reason, 0) + 1

    def scrape(self) -> Deferred:
        """Every running worker's families (a list of lists), fetched in parallel: for a worker
        that did not answer, the counters it last reported; then the retired counters and this
        object's own families (``mediaproxy_workers``...)."""
        indexes = sorted(self.running)
        fetches = [self._one(index) for index in indexes]

        def gathered(results):
            out = []
            for index, (ok, value) in zip(indexes, results):
                if ok:
                    out.append(value)
                else:
                    out.append(self.last.get(index, []))
            out.append(self.retired)
            out.append(self.own_families())
            return out

        return DeferredList(fetches, consumeErrors=True).addCallback(gathered)

    def _one(self, index: int) -> Deferred:
        path = self.running[index]
        if not os.path.exists(path):
            # not listening yet (just started): not an error, nothing to count
            return fail(ScrapeError(f"worker {index} is not listening yet"))
        d = fetch_metrics(self.reactor, path, self.timeout, self.limit)
        generation = self._generation.get(index)

        def same_process():
            # not a successor started while this scrape was under way
            return index in self.running and self._generation.get(index) == generation

        def answered(text):
            # parsed beside the reactor (a worker's text is tens of KiB: milliseconds of pure
            # Python the reactor, also a serving worker, would otherwise hold its clients for)
            return deferToThreadPool(self.reactor, self.reactor.getThreadPool(), parse,
                                     text).addCallback(parsed)

        def parsed(families):
            if same_process():
                self.last[index] = monotonic_part(families)
                self.states[index] = "up"
            return families

        def failed(failure):
            self.scrape_errors += 1
            if same_process():
                self.states[index] = "unreachable"
            self._warnings.warn(log, ("scrape", index),
                                "worker {index}'s metrics could not be had: {why}", index=index,
                                why=failure.getErrorMessage() or failure.type.__name__)
            return failure

        return d.addCallback(answered).addErrback(failed)

    def own_families(self) -> list[Metric]:
        states = GaugeMetricFamily(
            "mediaproxy_workers", "Worker processes by state at this scrape (the supervisor, "
            "worker 0, is one of the up ones): up, starting (not listening yet), unreachable "
            "(did not answer in time: its gauges are missing, its counters the last known).",
            labels=["state"])
        counts = {"up": 1, "starting": 0, "unreachable": 0}
        for state in self.states.values():
            counts[state] = counts.get(state, 0) + 1
        for state, n in counts.items():
            states.add_metric([state], n)
        errors = CounterMetricFamily(
            "mediaproxy_workers_scrape_errors", "Scrapes of a worker's metrics that failed "
            "(refused, timed out, not a 200).")
        errors.add_metric([], self.scrape_errors)
        restarts = CounterMetricFamily(
            "mediaproxy_workers_restarts", "Workers that died and were started again.")
        restarts.add_metric([], self.restarts)
        recycles = CounterMetricFamily(
            "mediaproxy_worker_recycles", "Workers recycled (replaced by a new one after "
            "finishing their requests), by reason: requests (server.max_worker_requests), rss "
            "(server.max_worker_rss).", labels=["reason"])
        for reason, n in sorted(self.recycles.items()):
            recycles.add_metric([reason], n)
        return [states, errors, restarts, recycles]


def merged(own: Iterable[Metric], others: Iterable[Iterable[Metric]]) -> list[Metric]:
    """This process's families first, then every worker's, merged."""
    return merge([list(own), *others])
