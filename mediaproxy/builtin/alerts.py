"""
Performance figures and alerts (``[alerts]``): the rolling request figures
(:mod:`mediaproxy.monitoring.rolling`) fed by the ``request`` and ``admission.shed`` events, a
reactor-lag probe of its own (:mod:`mediaproxy.monitoring.lag`: one timed call every 0.25 s; the
metrics plugin's probe is not reachable without looking it up), and the alert rules
(:mod:`mediaproxy.monitoring.alerts`) evaluated every ``alerts.interval`` seconds. What it adds:

* ``mediaproxy_alert_firing{alert,severity}`` (1 firing, 0 not) through
  ``mediaproxy_metrics_collectors``;
* the ``alerts`` health indicator: not ok while a **critical** alert fires (the proxy is then
  *degraded*, never *unhealthy*: a performance alert is no reason for a balancer to pull the
  node); warnings firing are listed in its detail and data only;
* ``GET /admin/performance`` and ``GET /admin/alerts`` through ``mediaproxy_admin_views``.

The state of each runtime is kept beside it (:func:`_state`), so every hook here finds it
without one plugin looking another up. ``alerts.enabled = false`` turns all of it off. A config
reload replaces the rules (a rule unchanged keeps its state); ``interval`` and ``window`` apply
at the next start.
"""

from __future__ import annotations

import weakref

from prometheus_client.core import GaugeMetricFamily
from twisted.application.service import Service
from twisted.internet.task import LoopingCall

from .. import hookimpl
from ..models import HealthStatus
from ..monitoring.alerts import Alerts, current_figures
from ..monitoring.lag import ReactorLagProbe
from ..monitoring.rolling import RollingFigures

_STATES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


class AlertsState:
    """One runtime's figures and rules. Registered with the plugin manager for the events
    only (its other hooks are this module's functions)."""

    def __init__(self, runtime):
        conf = runtime.config.alerts
        self.runtime = runtime
        self.rolling = RollingFigures(runtime.reactor, conf.window, conf.min_requests)
        self.lag = ReactorLagProbe(runtime.reactor)
        self.alerts = Alerts(conf.rules, runtime.reactor)
        self.evaluations = 0

    @hookimpl
    def mediaproxy_event(self, event):
        self.rolling.observe(event)

    def figures(self) -> dict:
        return current_figures(self.runtime, self.rolling, self.lag)

    def evaluate(self) -> None:
        self.evaluations += 1
        self.alerts.evaluate(self.figures())

    # -- the admin views ---------------------------------------------------------------------

    def performance_view(self, body):
        rolling = self.rolling.figures()
        now = self.figures()
        rolling["runtime"] = {name: now[name] for name in (
            "reactor.lag", "breaker.images.open", "breaker.passthrough.open",
            "disk.free_ratio", "transform.queue", "inflight.total")}
        rolling["figures"] = now
        return 200, _rounded(rolling)

    def alerts_view(self, body):
        return 200, {"alerts": self.alerts.as_list(),
                     "firing": [s.rule.name for s in self.alerts.firing()],
                     "interval": self.runtime.config.alerts.interval,
                     "evaluations": self.evaluations}


def _rounded(value):
    """Figures for people: microseconds are enough."""
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


class AlertsService(Service):
    """Runs the lag probe and the evaluation while the proxy runs."""

    def __init__(self, state: AlertsState, interval: float):
        self.state = state
        self.loop = LoopingCall(self._evaluate)
        self.loop.clock = state.runtime.reactor
        self.interval = interval

    def _evaluate(self):
        try:
            self.state.evaluate()
        except Exception:
            self.state.runtime.log.failure("the alert evaluation failed")

    def startService(self):
        super().startService()
        self.state.lag.startService()
        self.loop.start(self.interval, now=False)

    def stopService(self):
        self.state.lag.stopService()
        if self.loop.running:
            self.loop.stop()
        return super().stopService()


class AlertsHealth:
    name = "alerts"

    def __init__(self, state: AlertsState):
        self.state = state

    def check(self) -> HealthStatus:
        firing = self.state.alerts.firing()
        critical = [s.rule.name for s in firing if s.rule.severity == "critical"]
        warning = [s.rule.name for s in firing if s.rule.severity != "critical"]
        detail = (", ".join(f"{s.rule.name} ({s.rule.severity})" for s in firing) + " firing"
                  if firing else "none firing")
        return HealthStatus(self.name, not critical, detail, critical=False,
                            data={"critical": critical, "warning": warning,
                                  "rules": len(self.state.alerts.states)})


class AlertsCollector:
    """``mediaproxy_alert_firing{alert,severity}``: one series per rule (a bounded set)."""

    def __init__(self, state: AlertsState):
        self.state = state

    def collect(self):
        gauge = GaugeMetricFamily("mediaproxy_alert_firing",
                                  "1 while the in-process alert rule fires, else 0.",
                                  labels=["alert", "severity"])
        for s in self.state.alerts.states:
            gauge.add_metric([s.rule.name, s.rule.severity], 1.0 if s.state == "firing" else 0.0)
        yield gauge

    def describe(self):
        return self.collect()


def _state(runtime) -> AlertsState | None:
    if not runtime.config.alerts.enabled:
        return None
    state = _STATES.get(runtime)
    if state is None:
        state = _STATES[runtime] = AlertsState(runtime)
    return state


@hookimpl
def mediaproxy_configure(runtime):
    state = _state(runtime)
    if state is not None:
        runtime.pm.register(state, "mediaproxy.builtin.alerts.state")


@hookimpl
def mediaproxy_services(runtime):
    state = _state(runtime)
    return [] if state is None else [AlertsService(state, runtime.config.alerts.interval)]


@hookimpl
def mediaproxy_config_reloaded(runtime, old, new):
    state = _STATES.get(runtime)   # alerts.enabled applies at start
    if state is not None and old.alerts.rules != new.alerts.rules:
        state.alerts.replace_rules(new.alerts.rules)


@hookimpl
def mediaproxy_health_indicators(runtime):
    state = _state(runtime)
    return [] if state is None else [AlertsHealth(state)]


@hookimpl
def mediaproxy_metrics_collectors(runtime):
    state = _state(runtime)
    return [] if state is None else [AlertsCollector(state)]


@hookimpl
def mediaproxy_admin_views(runtime):
    state = _state(runtime)
    if state is None:
        return {}
    return {("GET", "/admin/performance"): state.performance_view,
            ("GET", "/admin/alerts"): state.alerts_view}
