"""
Alert rules evaluated in process: each ``[[alerts.rules]]`` table (a
:class:`~mediaproxy.config.AlertRule`) compares one figure with a number
(:func:`~mediaproxy.config.parse_condition`: parsed, never evaluated as code). A rule whose
condition holds is **pending**; once it has held ``for`` seconds it is **firing** (logged at
warn with the value, the threshold and the remedy); when the condition stops holding it is
**inactive** again (logged at info as resolved when it was firing). A figure that is unknown
(too few requests in the window, no file cache) holds no condition.

:func:`current_figures` gathers every figure a rule may name: the rolling request figures
(:mod:`mediaproxy.monitoring.rolling`) and what the runtime knows at that moment (the reactor's
lag, the breakers, the cache disk, the transform queue, requests in flight).
"""

from __future__ import annotations

import operator
from typing import Any, Iterable, Mapping

import attrs
from twisted.logger import Logger

from ..config import AlertRule, parse_condition

log = Logger(namespace="mediaproxy.alerts")

_OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le,
        "==": operator.eq, "!=": operator.ne}

INACTIVE, PENDING, FIRING = "inactive", "pending", "firing"


@attrs.define
class AlertState:
    """One rule and where it stands: ``state``, the figure's last ``value`` (None when
    unknown), ``since`` (when the state began, clock seconds; None while inactive and never
    active), ``active_since`` (when the condition began to hold)."""

    rule: AlertRule
    figure: str
    op: str
    threshold: float
    state: str = INACTIVE
    value: float | None = None
    since: float | None = None
    active_since: float | None = None

    @classmethod
    def of(cls, rule: AlertRule) -> "AlertState":
        figure, op, threshold = parse_condition(rule.expr)
        return cls(rule, figure, op, threshold)

    def holds(self, value: float | None) -> bool:
        return value is not None and _OPS[self.op](value, self.threshold)

    def as_dict(self, now: float) -> dict[str, Any]:
        return {"name": self.rule.name, "expr": self.rule.expr, "for": self.rule.for_,
                "severity": self.rule.severity, "remedy": self.rule.remedy,
                "state": self.state, "value": self.value,
                "since": self.since, "seconds_in_state": None if self.since is None
                else round(now - self.since, 3)}


class Alerts:
    """The rules' states; :meth:`evaluate` moves them on with a figures snapshot."""

    def __init__(self, rules: Iterable[AlertRule], clock):
        self.clock = clock
        self.states: list[AlertState] = [AlertState.of(rule) for rule in rules]

    def replace_rules(self, rules: Iterable[AlertRule]) -> None:
        """New rules (a config reload): a rule kept unchanged keeps its state."""
        old = {s.rule: s for s in self.states}
        self.states = [old.get(rule) or AlertState.of(rule) for rule in rules]

    def evaluate(self, figures: Mapping[str, float | None]) -> list[tuple[AlertState, str]]:
        """Judge every rule against ``figures``; return the (state, previous state) of those
        that changed, having logged every firing and every resolution."""
        now = self.clock.seconds()
        changed = []
        for s in self.states:
            value = figures.get(s.figure)
            s.value = value
            before = s.state
            if s.holds(value):
                if s.state == INACTIVE:
                    s.state, s.since, s.active_since = PENDING, now, now
                if s.state == PENDING and now - s.active_since >= s.rule.for_:
                    s.state, s.since = FIRING, now
            elif s.state != INACTIVE:
                s.state, s.since, s.active_since = INACTIVE, now, None
            if s.state != before:
                changed.append((s, before))
                self._log(s, before)
        return changed

    @staticmethod
    def _log(s: AlertState, before: str) -> None:
        if s.state == FIRING:
            log.warn("alert {alert} firing ({severity}): {figure} = {value} {op} {threshold} "
                     "for {for_seconds}s; remedy: {remedy}", alert=s.rule.name,
                     severity=s.rule.severity, figure=s.figure, value=_shown(s.value),
                     op=s.op, threshold=s.threshold, for_seconds=s.rule.for_,
                     remedy=s.rule.remedy or "-")
        elif before == FIRING:
            log.info("alert {alert} resolved: {figure} = {value} (threshold {op} {threshold})",
                     alert=s.rule.name, figure=s.figure, value=_shown(s.value), op=s.op,
                     threshold=s.threshold)

    def firing(self) -> list[AlertState]:
        return [s for s in self.states if s.state == FIRING]

    def as_list(self) -> list[dict[str, Any]]:
        now = self.clock.seconds()
        return [s.as_dict(now) for s in self.states]


def _shown(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.4g}"


def current_figures(runtime, rolling, lag_probe) -> dict[str, float | None]:
    """Every figure of :data:`~mediaproxy.config.ALERT_FIGURES`, now: ``rolling`` (a
    :class:`~mediaproxy.monitoring.rolling.RollingFigures`) gives the request figures,
    ``lag_probe`` (a :class:`~mediaproxy.monitoring.lag.ReactorLagProbe`) ``reactor.lag``; the
    runtime the rest. ``disk.free_ratio`` is the lowest free share a cache layer reports
    (the file layer's ``disk_free_percent``), None without one."""
    figures: dict[str, float | None] = rolling.flat()
    figures["reactor.lag"] = lag_probe.worst()
    breakers = runtime.breakers()
    for name in ("images", "passthrough"):
        breaker = breakers.get(name)
        figures[f"breaker.{name}.open"] = (
            1.0 if breaker is not None and breaker.state == "open" else 0.0)
    free = [stats["disk_free_percent"] for stats in runtime.cache.stats().values()
            if stats.get("disk_free_percent") is not None]
    figures["disk.free_ratio"] = min(free) / 100 if free else None
    figures["transform.queue"] = float(runtime.pending_transforms)
    figures["inflight.total"] = float(runtime.inflight.total)
    return figures
