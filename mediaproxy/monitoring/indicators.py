"""
The checks behind the built-in health indicators that do I/O: the backend probe and the
cache directory's disk. (The glue that picks them for a runtime is ``builtin/health.py``.)

* :class:`BackendProbe`: a ``HEAD`` of ``monitoring.health_backend_probe`` over the
  pass-through client's agent, outside the breakers' count and the concurrency limit: any
  answer below 500 is "reachable" (a 404 or a redirect from a backend's root is fine), a 5xx
  or no answer is not. It is **critical**: without its backend the proxy cannot serve. It also
  stands in for traffic when a breaker is open: a node that answers ``ready`` 503 while a
  breaker is open gets no requests from its balancer, so nothing would ever take the breaker
  through its half-open probe; the health probe does, and the breaker closes within one health
  interval of the backend coming back.
* :func:`disk_report`: free space of the cache directory's file system against the file
  layer's own thresholds (``cache.file.disk_warning_percent`` / ``disk_critical_percent``,
  :func:`~mediaproxy.cache.files.pressure.disk_pressure`) and whether a file can be created
  there. Run in the file layer's disk pool, never in the reactor.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, Callable

import attrs
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.protocol import Protocol
from twisted.web.http_headers import Headers

from ..cache.files.pressure import disk_pressure
from ..models import HealthStatus


class _Discard(Protocol):
    """The body of a HEAD answer (none, or whatever a broken backend sends): dropped."""

    def dataReceived(self, data: bytes) -> None:
        pass


@attrs.define(eq=False)
class BackendProbe:
    """Health indicator ``backend``: is the backend reachable, and how fast it answers."""

    reactor: Any
    agent: Any
    url: bytes
    breakers: Callable[[], dict] = dict
    name: str = "backend"

    def check(self) -> Deferred:
        began = self.reactor.seconds()
        # An open breaker whose open time has passed lets this call through as its half-open
        # probe (allow() moves it to half_open); a closed one is not told: the probe is not
        # traffic, and the breakers judge traffic.
        probing = [b for b in self.breakers().values()
                   if getattr(b, "state", "closed") == "open" and b.allow()]
        data = {"url": self.url.decode("ascii", "replace")}

        def ms() -> float:
            return round((self.reactor.seconds() - began) * 1000, 1)

        def answered(response):
            response.deliverBody(_Discard())
            ok = response.code < 500
            for breaker in probing:
                if ok:
                    breaker.success()
                else:
                    breaker.release()     # a 5xx: some breakers count it, some do not
            latency = ms()
            return HealthStatus(
                self.name, ok, f"HTTP {response.code} in {latency:.0f} ms" if ok else
                f"answers HTTP {response.code}", critical=True,
                data={**data, "status": response.code, "latency_ms": latency,
                      "reachable": True})

        def failed(failure):
            for breaker in probing:
                breaker.failure()
            if failure.check(CancelledError):
                return failure        # the monitor's timeout: reported as "timed out"
            return HealthStatus(self.name, False, f"unreachable: {failure.getErrorMessage()}",
                                critical=True,
                                data={**data, "latency_ms": ms(), "reachable": False})

        d = maybeDeferred(self.agent.request, b"HEAD", self.url,
                          Headers({b"User-Agent": [b"mediaproxy-health"]}), None)
        return d.addCallbacks(answered, failed)


def write_probe(directory: str) -> None:
    """Create, write and delete a small file in ``directory``; raises OSError if it cannot."""
    fd, path = tempfile.mkstemp(prefix=".health-", dir=directory)
    try:
        os.write(fd, b"ok")
    finally:
        os.close(fd)
        os.unlink(path)


def disk_report(directory: str, warning_percent: float, critical_percent: float,
                probe: Callable[[str], None] = write_probe) -> dict[str, Any]:
    """Free space and writability of ``directory`` (blocking: call it in a thread)."""
    usage = shutil.disk_usage(directory)
    free_percent = 100.0 * usage.free / usage.total if usage.total else 100.0
    try:
        probe(directory)
        writable, error = True, ""
    except OSError as e:
        writable, error = False, e.strerror or str(e)
    return {"path": directory, "free_bytes": usage.free, "total_bytes": usage.total,
            "free_percent": round(free_percent, 2), "warning_percent": warning_percent,
            "critical_percent": critical_percent,
            "pressure": disk_pressure(free_percent, warning_percent, critical_percent),
            "writable": writable, "error": error}


def disk_status(name: str, report: dict[str, Any], layer_pressure: str = "ok") -> HealthStatus:
    """The ``cache_dir`` indicator's answer for a :func:`disk_report`: not ok (degraded: the
    file layer is an optional cache) when the directory cannot be written, or when its disk
    is under the warning threshold (the layer shrinks) or the critical one (it stops writing);
    ``layer_pressure`` is the layer's own view, which also turns critical on a write that
    failed for want of space."""
    order = ("ok", "warning", "critical")
    pressure = max(report["pressure"], layer_pressure, key=order.index)
    data = {**report, "pressure": pressure}
    if not report["writable"]:
        return HealthStatus(name, False, f"{report['path']} not writable: {report['error']}",
                            data=data)
    free = f"{report['free_percent']:.1f}% free"
    if pressure == "critical":
        return HealthStatus(name, False, f"disk {free}, under {report['critical_percent']}%: "
                            "the file cache stopped writing", data=data)
    if pressure == "warning":
        return HealthStatus(name, False, f"disk {free}, under {report['warning_percent']}%: "
                            "the file cache is shrinking", data=data)
    return HealthStatus(name, True, f"writable, disk {free}", data=data)
