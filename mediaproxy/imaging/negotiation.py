"""Output format negotiation from the Accept header (``fmt=auto``).

The negotiation happens before the source is known, so its answer must also say what an
*animated* source becomes: JPEG and TIFF would keep only its first frame, and an animated AVIF
is written only when asked for by name (``fmt=avif``) or kept from an AVIF source: browsers
that announce AVIF did not all play AVIF animations (Firefox before 113). The answer
is a format token: a format name, or ``still~animated`` (:data:`ANIMATION_SEPARATOR`) when the
two differ, e.g. ``avif~webp`` (AVIF for a still, an animated WebP for an animation) or
``avif~gif`` (the client named AVIF but not WebP). The token is what the cache key records
(``format=avif~webp``), so two clients that would get different animations never share an
entry; :func:`~mediaproxy.imaging.formats.split_format` takes it apart for the transform.
"""

from __future__ import annotations

from .formats import ANIMATION_SEPARATOR


def accept_qualities(accept: str | None) -> dict[str, float]:
    """Each media range ``accept`` names, lower case, with its q (1 when absent, 0 when
    unreadable); a range named twice keeps its last q. Public as ``mediaproxy.parse_accept``
    (the placeholder plugin chooses text or JSON with it)."""
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


def negotiate_format(requested: str | None, accept: str | None) -> tuple[str | None, bool]:
    """The output format token and whether the answer depends on ``Accept`` (``Vary: Accept``).

    ``auto`` picks AVIF, then WebP, only when ``Accept`` names them explicitly with q > 0;
    wildcards (``*/*``, ``image/*``) select neither, and the source's own format is kept
    (``None``). ``auto`` choosing AVIF answers ``avif~webp`` when the client also names WebP,
    else ``avif~gif``: an animated source stays animated, as WebP or GIF, whatever ``Accept``
    prefers (an animated AVIF is for ``fmt=avif`` by name: see the module's text).
    """
    if requested != "auto":
        return requested, False
    named = accept_qualities(accept)
    webp = named.get("image/webp", 0) > 0
    if named.get("image/avif", 0) > 0:
        return f"avif{ANIMATION_SEPARATOR}{'webp' if webp else 'gif'}", True
    if webp:
        return "webp", True
    return None, True
