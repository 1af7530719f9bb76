"""
What an image response says about how it was made: the ``Cache-Status`` header (RFC 9211) and
the ``Cache-Control`` of an answer that is not a fresh result.

``Cache-Status`` is a Structured Field list (RFC 8941); this cache writes one member, its name
with parameters from the RFC 9211 registry only (``hit``, ``fwd``, ``fwd-status``, ``ttl``,
``stored``, ``collapsed``, ``detail``), e.g. ``mediaproxy; hit; detail=memory`` or
``mediaproxy; fwd=uri-miss; stored``. A CDN in front appends its own member after ours.

A stale copy or a placeholder must not be kept by a CDN for the year a fresh result may:
:func:`shorten_cache_control` lowers ``max-age``/``s-maxage`` and drops ``immutable``.
"""

from __future__ import annotations

import functools
import re

import attrs

#: An sf-token (RFC 8941 3.3.4): what a cache name or a ``detail``/``fwd`` value may be bare.
SF_TOKEN = re.compile(r"^[A-Za-z*][A-Za-z0-9!#$%&'*+\-.^_`|~:/]*$")
#: The ``fwd`` reasons of RFC 9211 2.2.
FWD_REASONS = ("bypass", "method", "uri-miss", "vary-miss", "miss", "request", "stale",
               "partial")


def _sf_bare_item(value: str) -> str:
    """A token when it is one, else an sf-string (printable ASCII; anything else replaced)."""
    if SF_TOKEN.match(value):
        return value
    text = "".join(c if 0x20 <= ord(c) < 0x7F else "?" for c in value)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@attrs.frozen
class CacheStatus:
    """How this cache handled one request (RFC 9211 2.1-2.8). ``hit``: answered from a layer
    (``detail`` names it) without going to the backend; ``fwd``: the request went to the
    backend, and why (``uri-miss``, ``miss``, ``stale``); ``fwd_status``: the status the fetch
    ended with; ``ttl``: seconds of freshness left (negative: a stale copy); ``stored``: the
    result was written to the cache; ``collapsed``: this request waited for another one's
    fetch and transform and got its result."""

    hit: bool = False
    fwd: str | None = attrs.field(default=None, validator=attrs.validators.optional(
        attrs.validators.in_(FWD_REASONS)))
    fwd_status: int | None = None
    ttl: int | None = None
    stored: bool = False
    collapsed: bool = False
    detail: str | None = None

    def header(self, name: str) -> str:
        """The field value naming this cache ``name`` (an sf-token)."""
        return _render(self, name)


@functools.lru_cache(maxsize=256)
def _render(status: CacheStatus, name: str) -> str:
    # Cached: the hits of the hot path make the same few values again and again.
    params = []
    if status.hit:
        params.append("hit")
    if status.fwd is not None:
        params.append(f"fwd={status.fwd}")
    if status.fwd_status is not None:
        params.append(f"fwd-status={int(status.fwd_status)}")
    if status.ttl is not None:
        params.append(f"ttl={int(status.ttl)}")
    if status.stored:
        params.append("stored")
    if status.collapsed:
        params.append("collapsed")
    if status.detail:
        params.append(f"detail={_sf_bare_item(status.detail)}")
    return "; ".join([name, *params])


_DIRECTIVE = re.compile(r"^\s*([A-Za-z-]+)\s*(?:=\s*(.*?))?\s*$")


@functools.lru_cache(maxsize=32)
def shorten_cache_control(value: str, max_age: int) -> str:
    """``value`` for an answer a shared cache should keep ``max_age`` seconds at most: every
    ``max-age``/``s-maxage`` lowered to it (``max-age`` added when the answer is cacheable and
    has none), ``immutable`` removed, every other directive kept. ``max_age`` 0 adds
    ``no-store`` instead."""
    out, names = [], set()
    for directive in (d.strip() for d in value.split(",")):
        match = _DIRECTIVE.match(directive)
        name = match.group(1).lower() if match else ""
        if not directive or name == "immutable":
            continue
        names.add(name)
        if match is not None and name in ("max-age", "s-maxage"):
            raw = (match.group(2) or "").strip('"')
            seconds = int(raw) if raw.isdigit() else 0   # a malformed age counts as stale
            out.append(f"{name}={min(seconds, max_age)}")
        else:
            out.append(directive)
    if max_age <= 0:
        if "no-store" not in names:
            out.append("no-store")
    elif "max-age" not in names and not names & {"no-store", "no-cache"}:
        out.append(f"max-age={max_age}")
    return ", ".join(out)
