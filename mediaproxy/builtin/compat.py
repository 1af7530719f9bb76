"""
The grooveshop-media-stream routes, so existing frontends work unchanged:

    /media_stream-image/media/{tenant}/uploads/{path...}/{w}/{h}/{fit}/{position}/{background}/{trim}/{quality}.{format}
        -> backend /media/{tenant}/uploads/{path}
    /media_stream-image/media/uploads/{path...}/...      (older, tenant-less: tenant "public")
        -> backend /media/uploads/{path}
    /media_stream-image/static/images/{image}/...        (one segment, tenant "public")
        -> backend /static/images/{image}

Rules, as the original service had them: the path is percent-decoded up to three times until it
is stable (double-encoded TinyMCE paths); malformed encoding on any pass (``%ZZ``, ``%4``, a
``%`` at the end, ``%25ZZ`` which decodes to ``%ZZ``, bytes that are not UTF-8) is a 400 naming
``path``, never a placeholder; a path that does not match, or that climbs out with ``..``, is
a 404; a bad width, height, quality, trim, fit, position or format is a 400 naming the
parameter. Fit and position accept the query scheme's spellings (one parser,
:mod:`mediaproxy.parsing`: ``middle``, ``top-left``, ``CENTER``...). A background that is not a colour
becomes white (older clients sent CSS names). ``jpg`` means ``jpeg``; ``svg`` from a raster
source gives PNG. Enlarging is on for these routes (the original enlarged by default). A missing
or broken source is answered with the placeholder and ``routes.compat_placeholder_status``
(200 by default: what those frontends expect).

The parameters are the query scheme's, with the same canonical values, so a compat URL and the
equivalent query URL share one cache entry.

In presets-only mode (``routes.presets_only``) these routes, which name sizes and no preset,
are refused (400 ``preset_required``) unless signatures are required on them or
``routes.compat_in_presets_only`` allows them. With signatures required, a refusal of the URL
itself (a bad width, a path that matches no route) comes after the signature check (403 first).
"""

from __future__ import annotations


from .. import hookimpl
from ..cache.keys import normalise_path
from ..models import ImageRequest, Rejection
from ..presets import PRESET_PARAM
from ..parsing import parse_colour, parse_fit, parse_int, parse_position
from ..cache.keys import TENANT
from ..urlsign import decode_path, decode_repeatedly  # noqa: F401 (decode_path: offered)
from .signing import signature_first

COMPAT_FORMATS = {"webp": "webp", "jpeg": "jpeg", "jpg": "jpeg", "png": "png", "gif": "gif",
                  "tiff": "tiff", "avif": "avif", "svg": "png"}
_TAIL = 7  # w, h, fit, position, background, trim, quality.format


class _NotFound(Exception):
    pass


def compat_background(raw: str) -> tuple[int, int, int, int]:
    """``transparent``, ``#rgb``, ``#rrggbb``, ``#rrggbbaa`` or a bare hex; else white."""
    try:
        return parse_colour(raw)
    except ValueError:
        return (255, 255, 255, 255)


def _source(segments: list[str]) -> tuple[str, str]:
    """(backend path, tenant) for the segments before the transform tail, or _NotFound."""
    if len(segments) >= 3 and segments[0] == "media" and segments[1] == "uploads":
        return "/media/uploads/" + "/".join(segments[2:]), "public"
    if (len(segments) >= 4 and segments[0] == "media" and segments[2] == "uploads"
            and TENANT.match(segments[1])):
        return f"/media/{segments[1]}/uploads/" + "/".join(segments[3:]), segments[1]
    if len(segments) == 3 and segments[0] == "static" and segments[1] == "images":
        return "/static/images/" + segments[2], "public"
    raise _NotFound()


def _bad(parameter: str, message: str) -> Rejection:
    return Rejection(400, "invalid_parameter", message, parameter=parameter)


def parse_compat(path: str, prefix: str, config) -> ImageRequest | Rejection | None:
    """Parse a raw request path; None when it is not under ``prefix``."""
    if not path.startswith(prefix):
        return None
    try:
        decoded = decode_repeatedly(path[len(prefix):])
    except (ValueError, UnicodeDecodeError):
        return Rejection(400, "invalid_path", "the path is not valid percent-encoded UTF-8",
                         parameter="path")
    not_found = Rejection(404, "not_found", "no image route matches this path")
    segments = decoded.split("/")
    if (len(segments) < _TAIL + 3 or any(s in ("", ".", "..") for s in segments)
            or any(c in decoded for c in ("\x00", "\\"))):
        return not_found
    head, tail = segments[:-_TAIL], segments[-_TAIL:]
    try:
        source, tenant = _source(head)
    except _NotFound:
        return not_found
    width, height, fit, position, background, trim, last = tail
    quality, dot, fmt = last.rpartition(".")
    if not dot:
        return not_found
    limits = config.limits
    try:
        w = parse_int(width, 0, limits.max_width, "width")
    except ValueError as e:
        return _bad("width", str(e))
    try:
        h = parse_int(height, 0, limits.max_height, "height")
    except ValueError as e:
        return _bad("height", str(e))
    try:
        fit = parse_fit(fit)
    except ValueError as e:
        return _bad("fit", str(e))
    try:
        position = parse_position(position)
    except ValueError as e:
        return _bad("position", str(e))
    try:
        t = parse_int(trim, 0, 100, "trim")
    except ValueError as e:
        return _bad("trim", str(e))
    try:
        q = parse_int(quality, 1, 100, "quality")
    except ValueError as e:
        return _bad("quality", str(e))
    out_format = COMPAT_FORMATS.get(fmt.lower())
    if out_format is None:
        return _bad("format", f"format must be one of {', '.join(sorted(COMPAT_FORMATS))}")
    params = {"w": w, "h": h, "fit": fit, "pos": position,
              "bg": compat_background(background), "q": q, "fmt": out_format,
              "enlarge": True, "trim": t}
    return ImageRequest(route="compat", source_path=normalise_path(source), params=params,
                        tenant=tenant,
                        failure_status=config.routes.compat_placeholder_status or None)


#: The compat routes name sizes, not presets: in presets-only mode, unless signed, refused.
_PRESETS_ONLY = Rejection(
    400, "preset_required", "routes.presets_only is set: the compat routes name sizes, not "
    "presets; sign them (signing.keys) or allow them (routes.compat_in_presets_only)",
    parameter="path")


def _signatures_required(signing) -> bool:
    """Whether the check chain requires a valid signature on the compat routes."""
    return bool(signing.keys) and "compat" not in signing.exempt_routes


@hookimpl
def mediaproxy_match_request(request, runtime):
    routes = runtime.config.routes
    if not routes.compat or request.method not in ("GET", "HEAD"):
        return None
    result = parse_compat(request.path, routes.compat_prefix, runtime.config)
    if isinstance(result, ImageRequest):
        if routes.presets_only and not routes.compat_in_presets_only \
                and not _signatures_required(runtime.config.signing):
            return _PRESETS_ONLY
        # Parameters registered by plugins keep their defaults on this route (a preset is
        # the query scheme's: it names parameters, it is none itself).
        defaults = {name: p.default for name, p in runtime.params.items()
                    if name not in result.params and name != PRESET_PARAM}
        result = result.evolve(params={**defaults, **result.params})
    elif result is not None:
        # a bad value or path on a signed URL: the signature speaks first
        return signature_first(result, "compat", request, runtime)
    return result
