"""Text or JSON, by the client's ``Accept``."""

from __future__ import annotations


def quality(accept: str | None) -> dict[str, float]:
    """Each media range ``accept`` names with its q: the core's own reading
    (``mediaproxy.parse_accept``, the one ``fmt=auto`` negotiates with)."""
    from mediaproxy import parse_accept

    return parse_accept(accept)


def wants_json(accept: str | None) -> bool:
    """Whether the client prefers ``application/json`` to ``text/plain``: it names
    ``application/json`` with q > 0, higher than the q it gives ``text/plain`` (or
    ``text/*`` when it does not name ``text/plain``). Wildcards alone (``*/*``) get text, and a
    tie too: text is the default."""
    named = quality(accept)
    as_json = named.get("application/json", 0.0)
    text = named.get("text/plain", named.get("text/*", 0.0))
    return as_json > 0 and as_json > text
