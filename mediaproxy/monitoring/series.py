"""
Counters and histograms kept as plain numbers, for the series every request updates.

prometheus-client's metrics take a lock per update (they may be updated from any thread):
about 2 us per counter increment and 3.5 us per histogram observation here, so the five or six
updates of a cache hit cost more than the rest of the metrics together. The event hook runs
on the reactor thread only (``mediaproxy_event``), so the series fed by it need no lock: a
child here is a list, an update an addition to one of its items (a histogram finds its bucket
with ``bisect``), and the totals become metric families when Prometheus scrapes
(:meth:`Series.collect`). Only for the reactor thread: update them from nowhere else.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Iterable, Sequence

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString


class Counters:
    """A counter family (``name`` without ``_total``): ``child(*labels)`` is a one-item list,
    incremented with ``child[0] += n``."""

    def __init__(self, name: str, doc: str, labels: Sequence[str] = ()):
        self.name, self.doc, self.labels = name, doc, list(labels)
        self.children: dict[tuple, list] = {}

    def child(self, *labels: str) -> list:
        cell = self.children.get(labels)
        if cell is None:
            cell = self.children[labels] = [0.0]
        return cell

    def family(self):
        family = CounterMetricFamily(self.name, self.doc, labels=self.labels)
        for labels, cell in self.children.items():
            family.add_metric(list(labels), cell[0])
        return family


class Histograms:
    """A histogram family with fixed ``buckets`` (upper bounds, +Inf added): ``child(*labels)``
    is a :class:`Histogram`."""

    def __init__(self, name: str, doc: str, labels: Sequence[str] = (),
                 buckets: Iterable[float] = ()):
        self.name, self.doc, self.labels = name, doc, list(labels)
        self.bounds = tuple(sorted(float(b) for b in buckets))
        self._le = [floatToGoString(b) for b in self.bounds] + ["+Inf"]
        self.children: dict[tuple, Histogram] = {}

    def child(self, *labels: str) -> "Histogram":
        child = self.children.get(labels)
        if child is None:
            child = self.children[labels] = Histogram(self.bounds)
        return child

    def family(self):
        family = HistogramMetricFamily(self.name, self.doc, labels=self.labels)
        for labels, child in self.children.items():
            total, buckets = 0, []
            for le, count in zip(self._le, child.counts):
                total += count
                buckets.append((le, total))
            family.add_metric(list(labels), buckets, child.sum)
        return family


class Histogram:
    """One histogram child: counts per bucket (the last one +Inf) and the sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bucket (le is inclusive)
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


class Series:
    """A collector of :class:`Counters` and :class:`Histograms` families (register it in a
    registry; add families with :meth:`counters` and :meth:`histograms`)."""

    def __init__(self):
        self._families: list = []

    def counters(self, name: str, doc: str, labels: Sequence[str] = ()) -> Counters:
        family = Counters(name, doc, labels)
        self._families.append(family)
        return family

    def histograms(self, name: str, doc: str, labels: Sequence[str] = (),
                   buckets: Iterable[float] = ()) -> Histograms:
        family = Histograms(name, doc, labels, buckets)
        self._families.append(family)
        return family

    def collect(self):
        for family in self._families:
            yield family.family()
