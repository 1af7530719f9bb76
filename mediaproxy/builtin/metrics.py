"""
Metrics: every ``mediaproxy_event`` worth a series becomes one in this process's own
Prometheus registry, next to the figures read at scrape time
(:class:`~mediaproxy.monitoring.collectors.RuntimeCollector`), the reactor-lag probe
(:mod:`mediaproxy.monitoring.lag`), prometheus-client's standard ``process_*`` and ``python_*``
collectors, and whatever collectors plugins return from ``mediaproxy_metrics_collectors``.
With ``monitoring.listen`` set, a separate listener serves ``/metrics`` (Prometheus text
format) and ``/health``. Also keeps in-process counts of every event (:class:`EventCounters`)
for the tests and the admin views.

Every series, its labels and what it means: the reference table of docs/operations.md,
"Metrics" (a test checks the table against a real scrape, both ways). From events:

* ``request`` (one per main-port request, :mod:`mediaproxy.inflight`):
  ``http_requests_total{kind,method,status}`` (status class ``2xx``.. or ``aborted``),
  ``http_request_duration_seconds{kind}``, ``http_response_bytes_total{kind}``,
  ``http_request_bytes_total{kind}``;
* ``cache.hit`` / ``cache.stale`` / ``cache.miss`` (the pipeline's lookup):
  ``cache_lookups_total{result}``; ``cache.read`` / ``cache.write`` (every layer call,
  :mod:`mediaproxy.cache.layered`): ``cache_operation_seconds{layer,op}``,
  ``cache_hits_total{layer}``, ``cache_misses_total{layer}``; ``cache.error``:
  ``cache_errors_total{layer,op}``; ``coalesced``: ``coalesced_waiters_total``;
* ``backend.response`` / ``backend.retry`` (every backend attempt,
  :mod:`mediaproxy.http.policy`): ``backend_responses_total{purpose,status}``,
  ``backend_request_duration_seconds{purpose}``, ``backend_retries_total{purpose}``;
* ``rejection``, ``source.error``, ``transform``, ``transform.error``, ``admission.*``:
  ``rejections_total{error}``, ``source_errors_total{status}``, ``transform_seconds{format}``,
  ``transform_errors_total{error}``, ``admission_wait_seconds{priority}``,
  ``admission_shed_total{reason,priority}``, ``admission_cancelled_total``;
* ``admission.nearest``, ``job``, ``job.retry`` (the job queue, :mod:`mediaproxy.jobs`):
  ``nearest_offers_total``, ``jobs_total{kind,outcome}``, ``job_retries_total{kind}``; the
  queues' depths (``queue_depth{priority}``, ``jobs_queue{state}``, ``queue_standing``) are
  read at scrape time;
* the garbage collector's pauses (``gc_pause_seconds{generation}``,
  :mod:`mediaproxy.monitoring.gcpauses`): one ``gc.callbacks`` entry per process.

Breaker openings are counted from each breaker's ``on_change`` (chained after the warning it
logs); everything else (in flight, queue, pool threads, cache sizes, per-layer hits, misses and
evictions, disk, breaker state, lag, start time, version) is read at scrape time, so the hot
path pays for none of it. On the hot path (a memory hit) the cost is the ``request`` event
(one dict lookup for its four label children), the ``cache.read`` event and the lookup's
``cache.hit``: label children are made once and kept, nothing is formatted per request, and the
series these update are plain numbers without a lock (:mod:`mediaproxy.monitoring.series`).
"""

from __future__ import annotations

from collections import Counter

import attrs
from prometheus_client import (
    CollectorRegistry, Counter as PCounter, Histogram, disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from twisted.logger import Logger

from .. import __version__, hookimpl
from ..http.breaker import OPEN
from ..inflight import KINDS
from ..jobs import KINDS as JOB_KINDS, OUTCOMES as JOB_OUTCOMES
from ..monitoring.collectors import RuntimeCollector
from ..monitoring.gcpauses import GcPauseCollector
from ..monitoring.lag import ReactorLagProbe
from ..monitoring.series import Series

# No ``*_created`` series beside every counter and histogram: they double the series and
# Prometheus needs none of them (a process-wide switch of prometheus-client).
disable_created_metrics()

_log = Logger(namespace="mediaproxy.metrics")

#: The label values of ``admission_shed_total`` (anything else is counted as ``other``).
SHED_REASONS = frozenset({"queue_full", "timeout", "too_large"})
#: The ``priority`` labels of the admission series (anything else is ``other``).
PRIORITIES = ("live", "background")
#: Fields of the ``request`` event never kept as labels, even by :class:`EventCounters`:
#: unbounded (one value per path, client or body size).
UNBOUNDED_FIELDS = frozenset({"path", "client", "bytes", "bytes_in"})
#: Most label sets :class:`EventCounters` keeps; events past it are counted by name alone.
MAX_EVENT_KEYS = 10_000
#: The status classes of the ``status`` labels (a status outside 100-599 is ``other``).
STATUS_CLASSES = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}
#: ``cache_lookups_total{result}``: the pipeline's events and the result each counts as.
LOOKUP_EVENTS = {"cache.hit": "hit", "cache.stale": "stale", "cache.miss": "miss"}
#: The two backend purposes (``backend.response`` and ``backend.retry`` events).
PURPOSES = ("source", "passthrough")

#: Request durations: from a memory hit (about a millisecond) to a slow download.
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
                   60)
#: One backend attempt.
BACKEND_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
#: One cache layer call: microseconds in memory, milliseconds for Redis and files.
CACHE_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                 0.1, 0.25, 1)


def status_class(status) -> str:
    """``2xx`` for 204, ``error`` for None (no response), ``other`` outside 100-599."""
    if status is None:
        return "error"
    try:
        return STATUS_CLASSES.get(int(status) // 100, "other")
    except (TypeError, ValueError):
        return "other"


@attrs.define
class EventCounters:
    """Counts of every event by name and labels (for tests, health and admin views). The
    request's unbounded fields (:data:`UNBOUNDED_FIELDS`) are left out, and past
    :data:`MAX_EVENT_KEYS` label sets a new one is counted under its name alone, so the counts
    stay bounded whatever clients send."""

    #: (name, labels) -> [count, sum of the values]: one dict lookup an event (a hit sends four)
    _cells: dict = attrs.field(factory=dict)

    @property
    def counts(self) -> Counter:
        """How many events by (name, labels)."""
        return Counter({key: cell[0] for key, cell in self._cells.items()})

    @property
    def sums(self) -> Counter:
        """The sum of the events' values by (name, labels)."""
        return Counter({key: cell[1] for key, cell in self._cells.items()})

    @hookimpl
    def mediaproxy_event(self, event):
        # Every event of every request comes here: the key is the fields as they come (one
        # call site gives them in one order), converted and compared only by count().
        name = event.name
        fields = event.fields
        if name == "request":
            labels = tuple([item for item in fields.items() if item[0] not in UNBOUNDED_FIELDS])
        else:
            labels = tuple(fields.items()) if fields else ()
        key = (name, labels)
        cells = self._cells
        try:
            cell = cells.get(key)
        except TypeError:   # a plugin's event with a value that cannot be a key
            key = (name, tuple((k, str(v)) for k, v in labels))
            cell = cells.get(key)
        if cell is None:
            if len(cells) >= MAX_EVENT_KEYS:
                key = (name, ())   # a field a client chooses (a method, a parameter name)
                cell = cells.get(key)
            if cell is None:
                cell = cells[key] = [0, 0.0]
        cell[0] += 1
        cell[1] += event.value

    def count(self, name: str, **labels) -> int:
        """How many events named ``name`` carried at least these labels (compared as
        strings: ``status=404`` and ``status="404"`` are one)."""
        want = {(k, str(v)) for k, v in labels.items()}
        return sum(cell[0] for (ev, lab), cell in self._cells.items()
                   if ev == name and want <= {(k, str(v)) for k, v in lab})


class _Guarded:
    """A plugin's collector: one that raises is logged and shows nothing, instead of failing
    the whole scrape."""

    def __init__(self, collector):
        self.collector = collector

    def describe(self):
        describe = getattr(self.collector, "describe", None)
        return describe() if describe is not None else []

    def collect(self):
        try:
            return list(self.collector.collect())
        except Exception:
            _log.failure("metrics collector {collector!r} failed", collector=self.collector)
            return []


def _priority(fields) -> str:
    priority = fields.get("priority", "live")
    return priority if priority in PRIORITIES else "other"


class QueueCollector:
    """The queues' depths, read at scrape time: transforms waiting for the memory budget by
    priority, and the background jobs queued and running."""

    def __init__(self, runtime):
        self.runtime = runtime

    def describe(self):
        return list(self.collect())

    def collect(self):
        rt = self.runtime
        depth = GaugeMetricFamily("mediaproxy_queue_depth", "Transforms waiting for room in "
                                  "the memory budget, by priority.", labels=["priority"])
        for priority, count in rt.admission.waiting_by_priority().items():
            depth.add_metric([priority], count)
        yield depth
        yield GaugeMetricFamily(
            "mediaproxy_queue_standing", "1 while the live transform queue is standing (an "
            "overload: the door admits up to processing.queue_target of waiting), else 0.",
            value=1.0 if rt.admission.standing else 0.0)
        jobs = GaugeMetricFamily("mediaproxy_jobs_queue", "Background jobs waiting to start "
                                 "(queued, or waiting to retry) and running.",
                                 labels=["state"])
        jobs.add_metric(["queued"], rt.jobs.depth)
        jobs.add_metric(["running"], rt.jobs.active)
        yield jobs


class PrometheusMetrics:
    """Turns events into Prometheus series in a registry of its own (one per runtime), with the
    scrape-time collectors beside them (see the module docstring)."""

    def __init__(self, runtime):
        self.runtime = runtime
        # auto_describe: a collector without describe() is collected once when registered, so
        # the registry knows every name, and a plugin's collector cannot take one of ours
        self.registry = r = CollectorRegistry(auto_describe=True)
        self._children = {}
        self._requests = {}
        self.lag_probe = ReactorLagProbe(runtime.reactor)
        self._plugin_collectors = False

        # The series every request updates: plain numbers, no lock (monitoring/series.py).
        self.series = hot = Series()
        r.register(hot)
        # -- requests ------------------------------------------------------------------------
        self.http_requests = hot.counters(
            "mediaproxy_http_requests", "Main-port requests by route kind, method and status "
            "class (aborted: the client went away first).", ["kind", "method", "status"])
        self.http_duration = hot.histograms(
            "mediaproxy_http_request_duration_seconds",
            "Main-port request durations, from the request seen to its response's end.",
            ["kind"], buckets=REQUEST_BUCKETS)
        self.http_response_bytes = hot.counters(
            "mediaproxy_http_response_bytes", "Body bytes sent to clients.", ["kind"])
        self.http_request_bytes = hot.counters(
            "mediaproxy_http_request_bytes", "Request body bytes received from clients.",
            ["kind"])
        # -- the cache -----------------------------------------------------------------------
        self.lookups = hot.counters(
            "mediaproxy_cache_lookups", "Image cache lookups by result (fresh hit, stale copy "
            "served, miss).", ["result"])
        self.layer_hits = hot.counters(
            "mediaproxy_cache_hits", "Lookups a cache layer answered with an entry.", ["layer"])
        self.layer_misses = hot.counters(
            "mediaproxy_cache_misses", "Lookups a cache layer had no live entry for.",
            ["layer"])
        self.cache_ops = hot.histograms(
            "mediaproxy_cache_operation_seconds", "Cache layer calls: reads and writes.",
            ["layer", "op"], buckets=CACHE_BUCKETS)
        self.cache_errors = PCounter("mediaproxy_cache_errors", "Cache layer failures.",
                                     ["layer", "op"], registry=r)
        self.coalesced = PCounter(
            "mediaproxy_coalesced_waiters", "Requests that waited for another request's render "
            "instead of rendering.", registry=r)
        # -- the backend ---------------------------------------------------------------------
        self.backend_responses = PCounter(
            "mediaproxy_backend_responses", "Backend attempts by purpose and status class "
            "(error: no response).", ["purpose", "status"], registry=r)
        self.backend_duration = Histogram(
            "mediaproxy_backend_request_duration_seconds",
            "Backend attempts, from the request sent to its outcome.", ["purpose"],
            registry=r, buckets=BACKEND_BUCKETS)
        self.backend_retries = PCounter("mediaproxy_backend_retries",
                                        "Backend attempts repeated.", ["purpose"], registry=r)
        self.breaker_opened = PCounter("mediaproxy_breaker_opened",
                                       "Times a circuit breaker opened.", ["breaker"],
                                       registry=r)
        # -- images --------------------------------------------------------------------------
        self.rejections = PCounter("mediaproxy_rejections", "Refused image requests.",
                                   ["error"], registry=r)
        self.source_errors = PCounter("mediaproxy_source_errors",
                                      "Originals that could not be had.", ["status"], registry=r)
        self.transforms = Histogram(
            "mediaproxy_transform_seconds", "Time in the thread pool per transform.",
            ["format"], registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.transform_errors = PCounter("mediaproxy_transform_errors",
                                         "Sources that could not be transformed.", ["error"],
                                         registry=r)
        self.admission_waits = Histogram(
            "mediaproxy_admission_wait_seconds",
            "Time a transform waited for room in the memory budget, by priority.",
            ["priority"], registry=r,
            buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.admission_sheds = PCounter(
            "mediaproxy_admission_shed", "Transforms refused by the memory budget.",
            ["reason", "priority"], registry=r)
        self.nearest_offers = PCounter(
            "mediaproxy_nearest_offers", "Shed requests answered with the nearest cached "
            "variant of their source instead of 503.", registry=r)
        self.jobs = PCounter("mediaproxy_jobs", "Background jobs by kind and outcome.",
                             ["kind", "outcome"], registry=r)
        self.job_retries = PCounter("mediaproxy_job_retries",
                                    "Background job attempts repeated after a failure.",
                                    ["kind"], registry=r)
        r.register(QueueCollector(runtime))
        self.admission_cancels = PCounter(
            "mediaproxy_admission_cancelled",
            "Transforms that left the memory budget's queue: every client went away.",
            registry=r)
        r.register(RuntimeCollector(runtime, __version__, self.lag_probe.worst))
        # The standard collectors, in this registry (not the global one: one per runtime).
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        r.register(GcPauseCollector())
        self._known_series()
        self._watch_breakers()

    def _known_series(self) -> None:
        """The bounded label values known in advance get their series at 0 from the start (a
        rate over a series that appears with its first event misses that event)."""
        for kind in KINDS:
            for family in (self.http_response_bytes, self.http_request_bytes,
                           self.http_duration):
                family.child(kind)
        for result in LOOKUP_EVENTS.values():
            self.lookups.child(result)
        for purpose in PURPOSES:
            self._child(self.backend_retries, purpose)
            self._child(self.backend_duration, purpose)
        for name in self.runtime.breakers():
            self._child(self.breaker_opened, name)
        for priority in PRIORITIES:
            self._child(self.admission_waits, priority)
        for kind in JOB_KINDS:
            self._child(self.job_retries, kind)
            for outcome in JOB_OUTCOMES:
                self._child(self.jobs, kind, outcome)
        for layer in getattr(self.runtime.cache, "layers", ()):
            self.layer_hits.child(layer.name)
            self.layer_misses.child(layer.name)

    def _watch_breakers(self) -> None:
        """Count every opening, after whatever the breaker already told (its warning)."""
        for name, breaker in self.runtime.breakers().items():
            counter = self._child(self.breaker_opened, name)
            before = breaker.on_change

            def on_change(breaker_name, old, new, before=before, counter=counter):
                if before is not None:
                    before(breaker_name, old, new)
                if new == OPEN:
                    counter.inc()

            breaker.on_change = on_change

    def _child(self, metric, *labels):
        # labels() costs a lock and a dict lookup per call; the children are kept here.
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def _request(self, event) -> None:
        f = event.fields
        kind = f.get("kind", "")
        aborted = bool(f.get("aborted"))
        key = (kind, f.get("method", ""), f.get("status"), aborted)
        children = self._requests.get(key)
        if children is None:
            if kind not in KINDS:
                kind = "other"
            status = "aborted" if aborted else status_class(f.get("status"))
            children = (self.http_requests.child(kind, key[1], status),
                        self.http_duration.child(kind),
                        self.http_response_bytes.child(kind),
                        self.http_request_bytes.child(kind))
            if len(self._requests) < 10_000:   # bounded whatever the statuses seen
                self._requests[key] = children
        count, duration, sent, received = children
        count[0] += 1
        duration.observe(event.value)
        sent[0] += f.get("bytes") or 0
        received[0] += f.get("bytes_in") or 0

    @hookimpl
    def mediaproxy_event(self, event):
        name = event.name
        if name == "request":
            self._request(event)
            return
        f = event.fields
        if name == "cache.read":
            layer = f.get("layer", "")
            self.cache_ops.child(layer, "read").observe(event.value)
            result = f.get("result")
            if result == "hit":
                self.layer_hits.child(layer)[0] += 1
            elif result == "miss":
                self.layer_misses.child(layer)[0] += 1
        elif name in LOOKUP_EVENTS:
            self.lookups.child(LOOKUP_EVENTS[name])[0] += 1
        elif name == "cache.write":
            self.cache_ops.child(f.get("layer", ""), "write").observe(event.value)
        elif name == "backend.response":
            purpose = f.get("purpose", "")
            self._child(self.backend_responses, purpose, status_class(f.get("status"))).inc()
            self._child(self.backend_duration, purpose).observe(event.value)
        elif name == "backend.retry":
            self._child(self.backend_retries, f.get("purpose", "")).inc()
        elif name == "coalesced":
            self.coalesced.inc()
        elif name == "cache.error":
            self._child(self.cache_errors, f.get("layer", ""), f.get("op", "")).inc()
        elif name == "rejection":
            self._child(self.rejections, f.get("error", "")).inc()
        elif name == "source.error":
            self._child(self.source_errors, str(f.get("status", ""))).inc()
        elif name == "transform":
            self._child(self.transforms, f.get("format", "")).observe(event.value)
        elif name == "transform.error":
            self._child(self.transform_errors, f.get("error", "")).inc()
        elif name == "admission.wait":
            self._child(self.admission_waits, _priority(f)).observe(event.value)
        elif name == "admission.shed":
            reason = f.get("reason", "")
            self._child(self.admission_sheds, reason if reason in SHED_REASONS else "other",
                        _priority(f)).inc()
        elif name == "admission.nearest":
            self.nearest_offers.inc()
        elif name == "job":
            kind, outcome = f.get("kind", ""), f.get("outcome", "")
            self._child(self.jobs, kind if kind in JOB_KINDS else "other",
                        outcome if outcome in JOB_OUTCOMES else "other").inc()
        elif name == "job.retry":
            kind = f.get("kind", "")
            self._child(self.job_retries, kind if kind in JOB_KINDS else "other").inc()
        elif name == "admission.cancel":
            self.admission_cancels.inc()

    def register_plugin_collectors(self) -> None:
        """Register what every ``mediaproxy_metrics_collectors`` returns (once: called when the
        services are made, after every plugin's ``mediaproxy_configure``)."""
        if self._plugin_collectors:
            return
        self._plugin_collectors = True
        rt = self.runtime
        for collectors in rt.pm.hook.mediaproxy_metrics_collectors(runtime=rt):
            for collector in collectors or ():
                try:
                    self.registry.register(_Guarded(collector))
                except ValueError as e:   # a series name already taken
                    _log.error("metrics collector {collector!r} not registered: {why}",
                               collector=collector, why=str(e))

    @hookimpl
    def mediaproxy_services(self, runtime):
        """The reactor-lag probe, always; the monitoring listener (``/metrics`` from this
        registry, ``/health``) when ``monitoring.listen`` is set."""
        self.register_plugin_collectors()
        services = [self.lag_probe]
        listen = runtime.config.monitoring.listen
        if not listen:
            return services
        from ..http.listening import ListeningService, side_site
        from ..http.monitoring import MonitoringResource

        site = side_site(MonitoringResource(runtime, self.registry),
                         runtime.config.server.server_header)
        services.append(ListeningService(runtime.reactor, listen, site,
                                         "monitoring (/metrics, /health)"))
        return services


@hookimpl
def mediaproxy_configure(runtime):
    runtime.pm.register(EventCounters(), "mediaproxy.builtin.metrics.counters")
    runtime.pm.register(PrometheusMetrics(runtime), "mediaproxy.builtin.metrics.prometheus")
