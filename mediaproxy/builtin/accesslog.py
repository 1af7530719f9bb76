"""
The access line (``monitoring.access_log``): one log event per main-port request, made from the
request's ``request`` event (:mod:`mediaproxy.inflight`) when it ends.

It replaces Twisted's combined log line, which had neither the correlation ID, nor the
duration, nor the cache outcome. The event goes through twisted.logger like every other line,
so it comes out in the configured format: text, one readable line

    2026-12-01T17:40:02Z info  mediaproxy.access [c0ffee42] 127.0.0.1 "GET /media/a.jpg?w=300" 200 5120 B 3.4 ms HIT-MEMORY image

or, in JSON, these as keys (``correlation_id``, ``client``, ``method``, ``path``, ``status``,
``bytes``, ``duration`` in seconds, ``cache``, ``kind``, ``route``, ``aborted``).

Cheap by design: a request sends its ``request`` event anyway; this adds one log event with
the fields it already carries, and does nothing when the setting is off (read on every event,
so a configuration reload turns it on or off). It is written whatever ``monitoring.log_level``
says: turning it on is asking for it.
"""

from __future__ import annotations

from .. import hookimpl
from ..logs import FastLogger

#: Not dropped below ``monitoring.log_level``: the operator who turned the access line on gets
#: it even with ``log_level = "warn"`` (the observers let this namespace through at info, see
#: :func:`mediaproxy.logs.observer_for`).
log = FastLogger("mediaproxy.access")

#: The text of the access line; the JSON line has each of these fields as a key.
#: (Fields starting with ``_`` are for the text only: the JSON line leaves them out.)
FORMAT = ('{client} "{method} {path}" {status} {bytes} B {_ms:.1f} ms {_cache} {kind}'
          '{_aborted}')


def access_fields(event) -> dict:
    """The fields of the access line of a ``request`` event (what the JSON line carries)."""
    f = event.fields
    return {
        "correlation_id": event.correlation_id,
        "client": f.get("client", ""),
        "method": f.get("method", ""),
        "path": f.get("path", ""),
        "status": f.get("status", 0),
        "bytes": f.get("bytes", 0),
        "duration": event.value,
        "cache": f.get("cache", ""),
        "kind": f.get("kind", ""),
        "route": f.get("route", ""),
        "aborted": bool(f.get("aborted", False)),
    }


class AccessLog:
    """Turns each ``request`` event into the access line while ``monitoring.access_log`` is
    on."""

    def __init__(self, runtime):
        self.runtime = runtime

    @hookimpl
    def mediaproxy_event(self, event):
        if event.name != "request" or not self.runtime.config.monitoring.access_log:
            return
        fields = access_fields(event)
        log.info(FORMAT, _ms=event.value * 1000.0, _cache=fields["cache"] or "-",
                 _aborted=" aborted" if fields["aborted"] else "", **fields)


@hookimpl
def mediaproxy_configure(runtime):
    runtime.pm.register(AccessLog(runtime), "mediaproxy.builtin.accesslog.line")
