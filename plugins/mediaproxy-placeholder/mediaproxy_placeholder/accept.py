"""Text or JSON, by the client's ``Accept``."""

from __future__ import annotations


def quality(accept: str | None) -> dict[str, float]:
    """Each media range ``accept`` names, lower case, with its q (1 when absent, 0 when
    unreadable); a range named twice keeps its last q."""
    named = {}
    for part in (accept or "").split(","):
        fields = [f.strip() for f in part.split(";")]
        media = fields[0].lower()
        if not media:
            continue
        q = 1.0
        for f in fields[1:]:
            if f.lower().startswith("q="):
                try:
                    q = float(f[2:])
                except ValueError:
                    q = 0.0
        named[media] = q
    return named


def wants_json(accept: str | None) -> bool:
    """Whether the client prefers ``application/json`` to ``text/plain``: it names
    ``application/json`` with q > 0, higher than the q it gives ``text/plain`` (or
    ``text/*`` when it does not name ``text/plain``). Wildcards alone (``*/*``) get text, and a
    tie too: text is the default."""
    named = quality(accept)
    as_json = named.get("application/json", 0.0)
    text = named.get("text/plain", named.get("text/*", 0.0))
    return as_json > 0 and as_json > text
