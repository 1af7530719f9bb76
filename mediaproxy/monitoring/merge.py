"""
The merge of several processes' metrics into one exposition (``server.workers=N``): the
supervisor's ``/metrics`` parses every worker's Prometheus text with
:func:`prometheus_client.parser.text_string_to_metric_families` and merges the families with
its own, so each series appears once, as if one process had served every request.

How a series is merged depends on what it means:

* counters, histograms (``_bucket``, ``_count``, ``_sum``) and summaries: **summed** (every
  worker's requests counted once);
* gauges: **summed** (in-flight requests, queue depth, cache bytes of per-process layers,
  open file descriptors...), except those named in :data:`MAX_GAUGES` (the worst of the
  processes: reactor lag, breaker state, alert firing, build info) and :data:`MIN_GAUGES`
  (start times: the oldest process);
* ``*_created`` samples (the creation time prometheus-client gives every counter and
  histogram): the **earliest**.

Sums use :func:`math.fsum` (exactly rounded), so the result does not depend on the order the
processes answered in. The functions here are pure: no I/O, no reactor.
"""

from __future__ import annotations

import math
from typing import Iterable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

#: Gauges whose merged value is the largest of the processes' (a "worst of" or a constant 1).
MAX_GAUGES = frozenset({
    "mediaproxy_reactor_lag_seconds", "mediaproxy_build_info", "mediaproxy_alert_firing",
    "mediaproxy_breaker_state", "python_info",
})
#: Gauges whose merged value is the smallest of the processes' (the oldest start).
MIN_GAUGES = frozenset({"mediaproxy_start_time_seconds", "process_start_time_seconds"})
#: Family types whose samples are summed.
SUMMED_TYPES = frozenset({"counter", "histogram", "summary", "gaugehistogram"})


def rule(family_type: str, family_name: str, sample_name: str) -> str:
    """How a sample is merged: ``"sum"``, ``"max"`` or ``"min"``."""
    if sample_name.endswith("_created"):
        return "min"
    if family_type in SUMMED_TYPES:
        return "sum"
    if family_name in MAX_GAUGES:
        return "max"
    if family_name in MIN_GAUGES:
        return "min"
    return "sum"


_COMBINE = {"sum": math.fsum, "max": max, "min": min}


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
            combine = _COMBINE[rule(family.type, name, sample_name)]
            family.add_sample(sample_name, dict(labels), combine(found))
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
