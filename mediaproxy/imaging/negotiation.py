"""Output format negotiation from the Accept header (``fmt=auto``)."""

from __future__ import annotations


def negotiate_format(requested: str | None, accept: str | None) -> tuple[str | None, bool]:
    """The output format and whether the answer depends on ``Accept`` (``Vary: Accept``).

    ``auto`` picks AVIF, then WebP, only when ``Accept`` names them explicitly with q > 0;
    wildcards (``*/*``, ``image/*``) select neither, and the source's own format is kept.
    """
    if requested != "auto":
        return requested, False
    named = {}
    for part in (accept or "").split(","):
        fields = [f.strip() for f in part.split(";")]
        media = fields[0].lower()
        q = 1.0
        for f in fields[1:]:
            if f.lower().startswith("q="):
                try:
                    q = float(f[2:])
                except ValueError:
                    q = 0.0
        named[media] = q
    for fmt in ("avif", "webp"):
        if named.get(f"image/{fmt}", 0) > 0:
            return fmt, True
    return None, True
