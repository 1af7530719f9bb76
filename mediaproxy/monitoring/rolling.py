"""
Rolling request figures over the last ``alerts.window`` seconds, per route kind: latency
percentiles (p50, p95, p99), requests per second, the share of 5xx and of 4xx answers, the
image cache's hit ratio, and transforms shed per second. They are read from the one
``request`` event every main-port request sends (:mod:`mediaproxy.inflight`) and from the
``admission.shed`` events, so nothing hooks into the request path itself.

Bounded whatever the traffic: the window is a ring of one-second slots, and a slot keeps, per
route kind, a few counters and a fixed log-scale histogram of durations (:data:`BINS` counts),
never the samples. Recording is a handful of additions and one logarithm (the hot cache-hit
path pays it on every request). A percentile is read from the merged histograms: the upper
bound of the bin holding the request of that rank (nearest rank), so it is never below the true
value and at most :data:`GROWTH` times above it (9 %), for durations between :data:`BASE` and
:data:`TOP`; shorter ones read as ``BASE``, longer ones as ``TOP``.

The clock is injected (``seconds()``): the reactor in the proxy, a ``task.Clock`` in tests.
"""

from __future__ import annotations

import math
from typing import Any

from ..inflight import KINDS

#: The lowest bin's upper bound, in seconds.
BASE = 1e-4
#: Each bin's bounds are this factor apart (the relative resolution of a percentile).
GROWTH = 2 ** 0.125
#: Bins per histogram: bin 0 holds durations up to BASE, bin i those in
#: (BASE * GROWTH**(i-1), BASE * GROWTH**i]; the last also every longer one.
BINS = 200
#: The last bin's upper bound (about 3.4 minutes): longer durations read as this.
TOP = BASE * GROWTH ** (BINS - 1)
#: The percentiles reported, as whole percents.
PERCENTILES = (50, 95, 99)

_SCALE = 1 / math.log(GROWTH)
_LOG_BASE = math.log(BASE)
_BOUNDS = [BASE * GROWTH ** i for i in range(BINS)]


def bin_of(seconds: float) -> int:
    """The histogram bin a duration falls in."""
    if seconds <= BASE:
        return 0
    i = math.ceil((math.log(seconds) - _LOG_BASE) * _SCALE)
    return i if i < BINS else BINS - 1


def upper_bound(index: int) -> float:
    return _BOUNDS[index]


class _KindSlot:
    """One route kind's requests in one second."""

    __slots__ = ("hist", "requests", "answered", "server_errors", "client_errors", "hits",
                 "lookups")

    def __init__(self):
        self.hist = [0] * BINS
        self.requests = self.answered = self.server_errors = self.client_errors = 0
        self.hits = self.lookups = 0


class _Slot:
    __slots__ = ("second", "kinds", "sheds")

    def __init__(self, second: int):
        self.second = second
        self.kinds: dict[str, _KindSlot] = {}
        self.sheds = 0


class RollingFigures:
    """The window's figures. :meth:`observe` takes every event (cheap; ignores all but
    ``request`` and ``admission.shed``); :meth:`figures` and :meth:`flat` read them."""

    def __init__(self, clock, window: float = 60.0, min_requests: int = 1):
        self.clock = clock
        self.window = max(1, math.ceil(window))
        self.min_requests = max(1, min_requests)
        self.started = clock.seconds()
        self._ring: list[_Slot | None] = [None] * self.window

    # -- recording -----------------------------------------------------------------------------

    def _slot(self) -> _Slot:
        second = int(self.clock.seconds())
        index = second % self.window
        slot = self._ring[index]
        if slot is None or slot.second != second:
            slot = self._ring[index] = _Slot(second)
        return slot

    def observe(self, event) -> None:
        name = event.name
        if name == "request":
            f = event.fields
            self.record(f.get("kind", ""), event.value, f.get("status", 0),
                        f.get("cache", ""), f.get("aborted", False))
        elif name == "admission.shed":
            self._slot().sheds += 1

    def record(self, kind: str, seconds: float, status: int, cache: str = "",
               aborted: bool = False) -> None:
        """One request that ended: its duration, status and cache outcome. An aborted one
        (the client went away) counts in the rate only: its duration is the client's."""
        slot = self._slot()
        ks = slot.kinds.get(kind)
        if ks is None:
            if kind not in KINDS:
                return   # a bounded set: an unknown kind is not kept
            ks = slot.kinds[kind] = _KindSlot()
        ks.requests += 1
        if aborted:
            return
        ks.answered += 1
        ks.hist[bin_of(seconds)] += 1
        if status >= 500:
            ks.server_errors += 1
        elif status >= 400:
            ks.client_errors += 1
        if cache:
            ks.lookups += 1
            if cache.startswith("HIT") or cache == "STALE":
                ks.hits += 1

    # -- reading -------------------------------------------------------------------------------

    def _live(self) -> list[_Slot]:
        now = int(self.clock.seconds())
        return [s for s in self._ring if s is not None and now - self.window < s.second <= now]

    def figures(self) -> dict[str, Any]:
        """Every figure, nested: ``{"window": s, "image": {"requests", "rate", "p50", "p95",
        "p99", "error_rate", "client_error_rate"}, "passthrough": {...}, "cache": {"hit_ratio",
        "lookups"}, "shed": {"count", "rate"}}``. Percentiles are seconds; a percentile or a
        ratio over fewer than ``min_requests`` answered requests is None (unknown)."""
        live = self._live()
        span = max(1.0, min(float(self.window), self.clock.seconds() - self.started))
        out: dict[str, Any] = {"window": self.window, "min_requests": self.min_requests}
        lookups = hits = 0
        for kind in KINDS:
            hist = [0] * BINS
            requests = answered = server = client = 0
            for slot in live:
                ks = slot.kinds.get(kind)
                if ks is None:
                    continue
                requests += ks.requests
                answered += ks.answered
                server += ks.server_errors
                client += ks.client_errors
                lookups += ks.lookups
                hits += ks.hits
                for i, n in enumerate(ks.hist):
                    if n:
                        hist[i] += n
            known = answered >= self.min_requests
            row = {"requests": requests, "rate": requests / span,
                   "error_rate": server / answered if known else None,
                   "client_error_rate": client / answered if known else None}
            for pct in PERCENTILES:
                row[f"p{pct}"] = percentile(hist, answered, pct) if known else None
            out[kind] = row
        out["cache"] = {"lookups": lookups,
                        "hit_ratio": hits / lookups if lookups >= self.min_requests else None}
        sheds = sum(slot.sheds for slot in live)
        out["shed"] = {"count": sheds, "rate": sheds / span}
        return out

    def flat(self) -> dict[str, float | None]:
        """The figures as ``{"image.p99": 0.12, "cache.hit_ratio": 0.9, ...}`` (the names
        alert rules use)."""
        out = {}
        for group, row in self.figures().items():
            if isinstance(row, dict):
                for name, value in row.items():
                    out[f"{group}.{name}"] = value
        return out


def percentile(hist: list[int], total: int, pct: int) -> float | None:
    """The upper bound of the bin holding the request of rank ceil(total * pct / 100)."""
    if total <= 0:
        return None
    rank = max(1, (total * pct + 99) // 100)
    seen = 0
    for i, n in enumerate(hist):
        seen += n
        if seen >= rank:
            return _BOUNDS[i]
    return _BOUNDS[-1]
