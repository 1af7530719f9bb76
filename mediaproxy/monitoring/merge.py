"""
The merge of several processes' metrics into one exposition (``server.workers=N``): the
supervisor's ``/metrics`` parses every worker's Prometheus text with
:func:`prometheus_client.parser.text_string_to_metric_families` and merges the families with
its own, so each series appears once, as if one process had served every request.

How a series is merged depends on what it means:

* counters, histograms (``_bucket``, ``_count``, ``_sum``) and summaries: **summed** (every
  worker's requests counted once);
* gauges: **summed** (in-flight requests, queue depth, the memory layer's bytes, open file
  descriptors...), except those named in :data:`MAX_GAUGES` (the worst of the processes:
  reactor lag, breaker state, alert firing, build info; and what every process reads from the
  same shared thing: the cache directory's disk, the sizes of the shared cache layers of
  :data:`SHARED_LAYERS`, which summed would count the one Redis or directory N times) and
  :data:`MIN_GAUGES` (start times: the oldest process);
* ``*_created`` samples (the creation time prometheus-client gives every counter and
  histogram): the **earliest**.

Sums use :func:`math.fsum` (exactly rounded), so the result does not depend on the order the
processes answered in. The functions here are pure: no I/O, no reactor.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

#: Gauges whose merged value is the largest of the processes' (a "worst of" or a constant 1).
MAX_GAUGES = frozenset({
    "mediaproxy_reactor_lag_seconds", "mediaproxy_build_info", "mediaproxy_alert_firing",
    "mediaproxy_breaker_state", "python_info",
    "mediaproxy_cache_dir_free_bytes", "mediaproxy_cache_dir_used_bytes",
})
#: Gauges with a ``layer`` label whose value is the largest for the shared layers of
#: :data:`SHARED_LAYERS` (every worker sees the same Redis, the same directory) and summed
#: for the others (each worker's own memory layer).
LAYER_GAUGES = frozenset({"mediaproxy_cache_bytes", "mediaproxy_cache_items"})
SHARED_LAYERS = frozenset({"redis", "file"})
#: Gauges whose merged value is the smallest of the processes' (the oldest start).
MIN_GAUGES = frozenset({"mediaproxy_start_time_seconds", "process_start_time_seconds"})
#: Family types whose samples are summed.
SUMMED_TYPES = frozenset({"counter", "histogram", "summary", "gaugehistogram"})


def rule(family_type: str, family_name: str, sample_name: str, labels: dict) -> str:
    """How a sample is merged: ``"sum"``, ``"max"`` or ``"min"``."""
    if sample_name.endswith("_created"):
        return "min"
    if family_type in SUMMED_TYPES:
        return "sum"
    if family_name in MAX_GAUGES or (family_name in LAYER_GAUGES
                                     and labels.get("layer") in SHARED_LAYERS):
        return "max"
    if family_name in MIN_GAUGES:
        return "min"
    return "sum"


_COMBINE: dict[str, Callable[[list[float]], float]] = {"sum": math.fsum, "max": max, "min": min}


def merge(expositions: Iterable[Iterable[Metric]]) -> list[Metric]:
    """One list of families from several processes' lists: a family keeps the type and help
    of its first appearance, and each of its series (sample name and labels) the merged value
    of every process that has it (see the module's rules). A series present in one process
    only keeps that process's value."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple, list[float]]] = {}
    for exposition in expositions:
        for family in exposition:
            if family.name not in families:
                families[family.name] = Metric(family.name, family.documentation, family.type,
                                               getattr(family, "unit", ""))
                values[family.name] = {}
            series = values[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                series.setdefault(key, []).append(sample.value)
    out = []
    for name, family in families.items():
        for (sample_name, labels), found in values[name].items():
            labels = dict(labels)
            combine = _COMBINE[rule(family.type, name, sample_name, labels)]
            family.add_sample(sample_name, labels, combine(found))
        out.append(family)
    return out


def parse(text: str) -> list[Metric]:
    """The families of one Prometheus text exposition (raises ValueError when it is not one)."""
    return list(text_string_to_metric_families(text))


def monotonic_part(families: Iterable[Metric]) -> list[Metric]:
    """The families that only ever grow while a process lives (counters, histograms,
    summaries, and their ``_created`` times): what is kept of a worker that stopped answering
    or died, so the merged totals never go back."""
    kept = []
    for family in families:
        if family.type in SUMMED_TYPES or family.name.endswith("_created"):
            kept.append(family)
    return kept


class _Families:
    def __init__(self, families):
        self.families = families

    def collect(self):
        return self.families


def render(families: Iterable[Metric]) -> bytes:
    """The Prometheus text exposition (format 0.0.4) of ``families``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(list(families)))
    return generate_latest(registry)
