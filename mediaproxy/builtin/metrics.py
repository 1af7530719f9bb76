"""
Metrics: every ``mediaproxy_event`` becomes a Prometheus series in this process's own registry,
and in-process counters the tests and the health view read. With ``monitoring.listen`` set, a
separate listener serves ``/metrics`` (Prometheus text format) and ``/health``.

Series (all prefixed ``mediaproxy_``):

* ``requests_total{kind}``: ``passthrough`` or ``image`` requests;
* ``cache_hits_total{layer}``, ``cache_misses_total``, ``cache_errors_total{layer,op}``;
* ``rejections_total{error}``: 4xx/5xx refusals by error code;
* ``source_errors_total{status}``: originals that could not be had;
* ``transform_seconds{format}`` (histogram) and ``transform_errors_total{error}``;
* ``transform_queue``: transforms running or waiting (gauge);
* the transform memory budget (:mod:`mediaproxy.admission`):
  ``transform_memory_bytes{state}`` (gauge, ``reserved`` or ``capacity``),
  ``admission_queue`` (gauge: transforms waiting for room), ``admission_wait_seconds``
  (histogram: the wait of every admitted transform), ``admission_shed_total{reason}``
  (``queue_full``, ``timeout``, ``too_large``) and ``admission_cancelled_total`` (waiters whose
  clients went away);
* ``cache_bytes{layer}``, ``cache_items{layer}``: cache sizes (gauges).
"""

from __future__ import annotations

from collections import Counter

import attrs
from prometheus_client import CollectorRegistry, Counter as PCounter, Histogram
from prometheus_client.core import GaugeMetricFamily

from .. import hookimpl

#: The label values of ``admission_shed_total`` (anything else is counted as ``other``).
SHED_REASONS = frozenset({"queue_full", "timeout", "too_large"})


@attrs.define
class EventCounters:
    """Counts of every event by name and labels (for tests, health and admin views)."""

    counts: Counter = attrs.field(factory=Counter)
    sums: Counter = attrs.field(factory=Counter)

    @hookimpl
    def mediaproxy_event(self, event):
        fields = event.fields
        labels = tuple(sorted((k, str(v)) for k, v in fields.items())) if fields else ()
        key = (event.name, labels)
        self.counts[key] += 1
        self.sums[key] += event.value

    def count(self, name: str, **labels) -> int:
        """How many events named ``name`` carried at least these labels."""
        want = {(k, str(v)) for k, v in labels.items()}
        return sum(n for (ev, lab), n in self.counts.items()
                   if ev == name and want <= set(lab))


class _RuntimeCollector:
    """Gauges read at scrape time from the runtime (queue length, cache sizes)."""

    def __init__(self, runtime):
        self.runtime = runtime

    def collect(self):
        queue = GaugeMetricFamily("mediaproxy_transform_queue",
                                  "Transforms running or waiting for a thread.")
        queue.add_metric([], self.runtime.pending_transforms)
        yield queue
        budget = self.runtime.admission
        memory = GaugeMetricFamily("mediaproxy_transform_memory_bytes",
                                   "The transform memory budget: bytes reserved by admitted "
                                   "transforms, and the capacity.", labels=["state"])
        memory.add_metric(["reserved"], budget.reserved)
        memory.add_metric(["capacity"], budget.capacity)
        yield memory
        waiting = GaugeMetricFamily("mediaproxy_admission_queue",
                                    "Transforms waiting for room in the memory budget.")
        waiting.add_metric([], budget.waiting)
        yield waiting
        size = GaugeMetricFamily("mediaproxy_cache_bytes", "Bytes held by a cache layer.",
                                 labels=["layer"])
        items = GaugeMetricFamily("mediaproxy_cache_items", "Entries in a cache layer.",
                                  labels=["layer"])
        cache = self.runtime.cache
        for name, stats in (cache.stats() if cache is not None else {}).items():
            size.add_metric([name], stats.get("bytes", 0))
            items.add_metric([name], stats.get("items", 0))
        yield size
        yield items


class PrometheusMetrics:
    """Turns events into Prometheus series in a registry of its own (one per runtime)."""

    def __init__(self, runtime):
        self.runtime = runtime
        self.registry = r = CollectorRegistry()
        self._children = {}
        self.requests = PCounter("mediaproxy_requests", "Requests by kind.", ["kind"], registry=r)
        self.hits = PCounter("mediaproxy_cache_hits", "Cache hits by layer.", ["layer"],
                             registry=r)
        self.misses = PCounter("mediaproxy_cache_misses", "Cache misses.", registry=r)
        self.cache_errors = PCounter("mediaproxy_cache_errors", "Cache layer failures.",
                                     ["layer", "op"], registry=r)
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
            "Time a transform waited for room in the memory budget.", registry=r,
            buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.admission_sheds = PCounter(
            "mediaproxy_admission_shed", "Transforms refused by the memory budget.",
            ["reason"], registry=r)
        self.admission_cancels = PCounter(
            "mediaproxy_admission_cancelled",
            "Transforms that left the memory budget's queue: every client went away.",
            registry=r)
        r.register(_RuntimeCollector(self.runtime))

    def _child(self, metric, *labels):
        # labels() costs a lock and a dict lookup per call; the children are kept here.
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    @hookimpl
    def mediaproxy_event(self, event):
        f = event.fields
        name = event.name
        if name == "image.request":
            self._child(self.requests, "image").inc()
        elif name == "cache.hit":
            self._child(self.hits, f.get("layer", "")).inc()
        elif name == "passthrough":
            self._child(self.requests, "passthrough").inc()
        elif name == "cache.miss":
            self.misses.inc()
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
            self.admission_waits.observe(event.value)
        elif name == "admission.shed":
            reason = f.get("reason", "")
            self._child(self.admission_sheds,
                        reason if reason in SHED_REASONS else "other").inc()
        elif name == "admission.cancel":
            self.admission_cancels.inc()

    @hookimpl
    def mediaproxy_services(self, runtime):
        """The monitoring listener (``/metrics`` from this registry, ``/health``), when
        ``monitoring.listen`` is set."""
        listen = runtime.config.monitoring.listen
        if not listen:
            return []
        from ..http.listening import ListeningService, side_site
        from ..http.monitoring import MonitoringResource

        site = side_site(MonitoringResource(runtime, self.registry),
                         runtime.config.server.server_header)
        return [ListeningService(runtime.reactor, listen, site,
                                 "monitoring (/metrics, /health)")]


@hookimpl
def mediaproxy_configure(runtime):
    runtime.pm.register(EventCounters(), "mediaproxy.builtin.metrics.counters")
    runtime.pm.register(PrometheusMetrics(runtime), "mediaproxy.builtin.metrics.prometheus")
