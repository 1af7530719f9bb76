"""
The thumbor-compatible endpoint: thumbor's URL grammar under ``thumbor.prefix``, so frontends
that build URLs with libthumbor (or django-thumbor) keep working (docs/thumbor.md)::

    /thumbor/<signature|unsafe>/[trim[:top-left|:bottom-right][:N]/][AxB:CxD/]
        [fit-in/|full-fit-in/|adaptive-fit-in/|adaptive-full-fit-in/][-][W|orig]x[-][H|orig]/
        [left|center|right/][top|middle|bottom/][smart/][filters:f(a):g(b)/]<path on the backend>

The grammar is libthumbor's own regular expression (``libthumbor.url.Url``, which thumbor
7.8 uses), matched on the raw path as thumbor does. The signature is thumbor's: URL-safe
base64 of HMAC-SHA1, keyed by ``thumbor.security_key``, over the raw path after
``/<signature>/``; ``unsafe`` is accepted only with ``thumbor.allow_unsafe``, and not with
``routes.presets_only`` (400 ``preset_required``: an unsafe URL names any size). The
signature refusals are 400, as in thumbor. The image part is a path on the configured backend
without its leading slash, or a host of ``thumbor.allowed_hosts`` with its path
(``cdn.example.com/a.jpg``, ``https://cdn.example.com/a.jpg``), fetched here through the SSRF
guard (:func:`fetcher_for`); any other URL is refused (400): never an arbitrary host.

Everything maps onto the registered transform parameters (the query scheme's and
:mod:`.effects`'), so a thumbor URL and the equivalent query URL share one cache entry:

* crop mode (no fit-in): both sides given -> ``fit=cover``, enlarging (thumbor enlarges);
  one side -> that side, enlarging; ``no_upscale()`` -> no enlarging, and a cover box shrunk
  side by side to the source (``clamp``);
* ``fit-in`` -> ``fit=inside``, never enlarging (``upscale()`` enlarges); ``full-fit-in`` ->
  ``fit=outside``, enlarging unless ``no_upscale()``; ``adaptive-`` -> ``adaptive``;
  ``fit-in`` with ``fill(colour)`` -> ``fit=contain`` on that background;
* ``-W``/``-H`` -> ``flip``; ``orig`` -> ``orig``; ``AxB:CxD`` -> ``crop``;
  ``halign``/``valign`` -> ``pos``; ``smart`` -> ``pos=attention``; ``trim`` -> ``trim``;
* filters: :mod:`.thumbor_filters`, plus those plugins add (``mediaproxy_thumbor_filters``).
  Unknown filters are ignored, as thumbor ignores them; a known filter with bad arguments
  is a 400 ``invalid_filter`` naming it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

import attrs

from .. import hookimpl
from ..cache.keys import normalise_path, tenant_of
from ..logs import request_log
from ..memo import MAX_KEY_CHARS, Memo
from ..models import ImageRequest, Rejection
from ..presets import PRESET_PARAM
from .routing import decode_path, unsafe_path_reason
from .thumbor_filters import BUILTIN_FILTERS, FILL, NO_UPSCALE, UPSCALE

#: libthumbor 2.0's ``Url.regex(has_unsafe_or_hash=False)``, what thumbor 7.8 matches.
GRAMMAR = re.compile(
    r"/?(?:(?P<debug>debug)/)?(?:(?P<meta>meta)/)?"
    r"(?:(?P<trim>trim(?::(?:top-left|bottom-right))?(?::\d+)?)/)?"
    r"(?:(?P<crop_left>\d+)x(?P<crop_top>\d+):(?P<crop_right>\d+)x(?P<crop_bottom>\d+)/)?"
    r"(?:(?P<adaptive>adaptive-)?(?P<full>full-)?(?P<fit_in>fit-in)/)?"
    r"(?:(?P<horizontal_flip>-)?(?P<width>(?:\d+|orig))?x(?P<vertical_flip>-)?"
    r"(?P<height>(?:\d+|orig))?/)?"
    r"(?:(?P<halign>left|right|center)/)?(?:(?P<valign>top|bottom|middle)/)?"
    r"(?:(?P<smart>smart)/)?(?:filters:(?P<filters>.+?\))/)?(?P<image>.+)", re.S)

#: One segment spelt like an option of :data:`GRAMMAR`. The grammar consumes the options in its
#: own order only, so one left at the start of the image part came out of that order
#: (``smart/300x200/...``, ``fit-in/trim/...``): thumbor's loader refuses such an image (400),
#: and so do we, instead of fetching ``/300x200/...`` from the backend (a 404 that hides the
#: mistake). Deeper segments are never looked at: ``media/300x200/a.jpg`` is a backend path.
OPTION_SEGMENT = re.compile(
    r"(?:debug|meta|trim(?::(?:top-left|bottom-right))?(?::\d+)?|\d+x\d+:\d+x\d+"
    r"|(?:adaptive-)?(?:full-)?fit-in|-?(?:\d+|orig)?x-?(?:\d+|orig)?"
    r"|left|right|center|top|bottom|middle|smart|filters:.*)\Z", re.S)

#: (halign, valign) -> the query scheme's position.
_ALIGN = {("left", "top"): "northwest", ("center", "top"): "north",
          ("right", "top"): "northeast", ("left", "middle"): "west",
          ("center", "middle"): "centre", ("right", "middle"): "east",
          ("left", "bottom"): "southwest", ("center", "bottom"): "south",
          ("right", "bottom"): "southeast"}
#: thumbor's trim tolerance is a distance in RGB (0-442); ours a threshold 1-100.
_MAX_TOLERANCE = 442


def signature(key: str, signed: str) -> str:
    """thumbor's signature of ``signed`` (the raw path after ``/<signature>/``)."""
    digest = hmac.new(key.encode(), signed.encode(), hashlib.sha1).digest()
    return base64.urlsafe_b64encode(digest).decode()


def _bad(error: str, message: str, parameter: str | None = None) -> Rejection:
    return Rejection(400, error, message, parameter=parameter)


#: An unsafe URL names any size: with routes.presets_only only a signed one (the signer chose
#: its sizes) is served, as on the compat routes.
_UNSAFE_IN_PRESETS_ONLY = Rejection(
    400, "preset_required", "routes.presets_only is set: an unsafe thumbor URL names sizes, not "
    "presets; sign it (thumbor.security_key)", parameter="signature")


def _authorise(first: str, signed: str, config) -> Rejection | None:
    """``first`` is ``unsafe`` or the signature of ``signed``."""
    if first == "unsafe":
        if config.allow_unsafe:
            return None
        return _bad("unsafe_not_allowed", "unsafe thumbor URLs are not allowed here "
                    "(thumbor.allow_unsafe); sign the URL", "signature")
    key = config.security_key
    try:
        given = decode_path(first)
    except (ValueError, UnicodeDecodeError):
        given = ""
    if not key or not hmac.compare_digest(signature(key, signed).encode(),
                                          given.encode("utf-8", "replace")):
        return _bad("invalid_signature", "the thumbor signature does not match this URL",
                    "signature")
    return None


def _filters(raw: str) -> list[tuple[str, tuple[str, ...]]]:
    """``name(a,b):other()`` -> [(name, (a, b)), (other, ("",))], split as thumbor splits."""
    out = []
    for part in raw.split("):"):
        name, paren, args = part.partition("(")
        if not paren:
            continue
        out.append((name.strip(), tuple(args.rstrip(")").split(","))))
    return out


def _trim(raw: str) -> int:
    """Our threshold (1-100) for thumbor's ``trim[:corner][:tolerance]``."""
    tolerance = 0
    last = raw.rpartition(":")[2]
    if last.isdigit():
        tolerance = min(int(last), _MAX_TOLERANCE)
    return max(1, min(100, round(tolerance * 100 / _MAX_TOLERANCE)))


def _side(raw: str | None, limit: int, what: str) -> tuple[int, bool]:
    """(pixels, orig) of one side: 0 when absent."""
    if raw == "orig":
        return 0, True
    value = int(raw or 0)
    if value > limit:
        raise ValueError(f"{what} must be at most {limit}")
    return value, False


def parse_thumbor(path: str, config, defaults: dict, filters: dict) -> ImageRequest | Rejection | None:
    """The image request a raw path asks for, a refusal, or None when it is not under
    ``thumbor.prefix``. ``defaults`` are every registered parameter's default; ``filters``
    the filters by name."""
    thumbor = config.thumbor
    prefix = thumbor.prefix + "/"
    if not path.startswith(prefix):
        return None
    first, slash, signed = path[len(prefix):].partition("/")
    if not slash or not signed:
        return _bad("invalid_path", "no original image was specified in the thumbor URL", "path")
    refusal = _authorise(first, signed, thumbor)
    if refusal is not None:
        return refusal
    if first == "unsafe" and config.routes.presets_only:
        return _UNSAFE_IN_PRESETS_ONLY
    match = GRAMMAR.match(signed)
    if match is None:                   # (.+) always matches a non-empty path)
        return _bad("invalid_path", "not a thumbor URL", "path")
    try:
        groups = {name: (decode_path(value) if value else value)
                  for name, value in match.groupdict().items()}
    except (ValueError, UnicodeDecodeError):
        return _bad("invalid_path", "the path is not valid percent-encoded UTF-8", "path")
    if groups["debug"] or groups["meta"]:
        return _bad("unsupported", "thumbor's debug and meta modes are not supported", "path")
    image = groups["image"]
    first_segment = image.partition("/")[0]
    if OPTION_SEGMENT.match(first_segment):
        shown = first_segment if len(first_segment) <= 64 else first_segment[:64] + "..."
        return _bad("misplaced_option", f"{shown!r} is a thumbor option out of thumbor's order "
                    "(trim/AxB:CxD/fit-in/WxH/halign/valign/smart/filters:.../image)", "path")
    origin, source = remote_source(image, thumbor.allowed_hosts)
    if not origin and ("://" in image or image.startswith("//")):
        return _bad("invalid_path", "the image must be a path on the backend "
                    "(media/uploads/a.jpg) or on a host of thumbor.allowed_hosts", "path")
    reason = unsafe_path_reason(source)
    if reason:
        return _bad("invalid_path", reason, "path")
    params = dict(defaults)
    limits = config.limits
    try:
        width, orig_w = _side(groups["width"], limits.max_width, "width")
        height, orig_h = _side(groups["height"], limits.max_height, "height")
    except ValueError as e:
        return _bad("invalid_parameter", str(e), "size")
    for name, args in _filters(groups["filters"] or ""):
        apply = filters.get(name)
        if apply is None:
            continue                    # thumbor ignores filters it does not know
        try:
            apply(args, params)
        except ValueError as e:
            return _bad("invalid_filter", f"{name}(): {e}", f"filters:{name}"[:64])
    fill, no_upscale, upscale = (params.pop(flag, False) for flag in (FILL, NO_UPSCALE, UPSCALE))
    params["w"], params["h"] = width, height
    params["orig"] = ("w" if orig_w else "") + ("h" if orig_h else "")
    params["flip"] = ("h" if groups["horizontal_flip"] else "") + (
        "v" if groups["vertical_flip"] else "")
    both = bool((width or orig_w) and (height or orig_h))
    if groups["fit_in"]:
        params["adaptive"] = bool(groups["adaptive"])
        if groups["full"]:
            params["fit"], params["enlarge"] = "outside", not no_upscale
        elif fill and both:
            params["fit"], params["enlarge"] = "contain", not no_upscale
            params["clamp"] = no_upscale
        else:
            params["fit"], params["enlarge"] = "inside", upscale and not no_upscale
    else:
        params["fit"] = "cover" if both else "inside"
        params["enlarge"] = not no_upscale
        params["clamp"] = no_upscale and both
    if groups["smart"]:
        params["pos"] = "attention"
    else:
        params["pos"] = _ALIGN[(groups["halign"] or "center", groups["valign"] or "middle")]
    if groups["trim"]:
        params["trim"] = _trim(groups["trim"])
    crop = tuple(int(groups[f"crop_{side}"] or 0) for side in ("left", "top", "right", "bottom"))
    if crop[2] > crop[0] and crop[3] > crop[1]:
        params["crop"] = crop
    source = normalise_path(source)
    if origin:
        host = origin.partition("://")[2]
        return ImageRequest(route="thumbor", source_path=f"/{host}{source}", params=params,
                            source_origin=origin, signed=first != "unsafe")
    return ImageRequest(route="thumbor", source_path=source, params=params,
                        tenant=tenant_of(source), signed=first != "unsafe")


_REMOTE = re.compile(r"(?:(?P<scheme>https?)://)?(?P<host>[^/?#@\\]+)(?P<path>/.*)", re.S)


def remote_source(image: str, allowed: tuple[str, ...]) -> tuple[str, str]:
    """(``scheme://host[:port]``, path) when ``image`` names a host of ``allowed``
    (``host/path``, ``http://host/path``, ``https://host/path``: thumbor's HTTP loader
    reads ``host/path`` over http), else ("", the image as a backend path)."""
    match = _REMOTE.match(image) if allowed else None
    if match:
        scheme = match["scheme"] or "http"
        host = match["host"].lower()
        default = ":443" if scheme == "https" else ":80"
        if host.endswith(default):
            host = host[:-len(default)]
        if host in allowed:
            return f"{scheme}://{host}", match["path"]
    return "", "/" + image


#: the fetchers of remote hosts, for one configuration: [config, agent, {origin: fetcher}]
_remote_fetchers: list = [None, None, {}]


def fetcher_for(origin: str, runtime):
    """A :class:`~mediaproxy.http.fetch.SourceFetcher` of ``origin`` (the backend's timeouts,
    retries, breaker settings and source limits) over the SSRF-safe agent of ``[ssrf]``; one
    per allowed origin, made again when the configuration changes."""
    from ..http.fetch import SourceFetcher, SourcePolicy
    from ..http.ssrf import agent_for

    config = runtime.config
    if _remote_fetchers[0] is not config:
        _remote_fetchers[:] = [config, agent_for(runtime), {}]
    fetchers = _remote_fetchers[2]
    fetcher = fetchers.get(origin)
    if fetcher is None:
        backend = attrs.evolve(config.backend, url=origin)
        fetcher = fetchers[origin] = SourceFetcher(
            runtime.reactor, backend, config.limits.max_source_bytes, _remote_fetchers[1],
            policy=SourcePolicy.from_limits(config.limits))
    return fetcher


@hookimpl
def mediaproxy_fetch_source(image_request, request, runtime):
    """The sources of allow-listed hosts (``source_origin`` set by this route)."""
    origin = image_request.source_origin
    if not origin or image_request.route != "thumbor":
        return None
    host = origin.partition("://")[2]
    path = image_request.source_path[len(host) + 1:]
    cid = request.correlation_id
    return fetcher_for(origin, runtime).fetch(path, cid, request_log(cid, "mediaproxy.fetch"),
                                              headers=dict(image_request.validators) or None)


#: (configuration, plugin manager generation) -> the filters by name
_filters_for: list = [None, None]


def filters_of(runtime) -> dict:
    """The built-in filters and those plugins add, remembered for the configuration and
    the registered plugins they were collected from."""
    config, generation = runtime.config, getattr(runtime.pm, "generation", None)
    key = _filters_for[0]
    if key is None or key[0] is not config or key[1] != generation:
        key = (config, generation)
        table = dict(BUILTIN_FILTERS)
        for added in runtime.pm.hook.mediaproxy_thumbor_filters(config=runtime.config):
            table.update(added or {})
        _filters_for[:] = [key, table]
    return _filters_for[1]


_MISSING = object()
#: raw path -> what :func:`parse_thumbor` answered, for the configuration, parameter registry
#: and plugins it was derived with (:mod:`mediaproxy.memo`): a hit skips the HMAC and the
#: grammar (33 us a request)
_memo = Memo()


@hookimpl
def mediaproxy_match_request(request, runtime):
    config = runtime.config
    if not config.thumbor.enabled or request.method not in ("GET", "HEAD"):
        return None
    path = request.path
    if not path.startswith(config.thumbor.prefix + "/"):
        return None
    if len(path) > MAX_KEY_CHARS:
        return _parse(path, runtime)
    table = _memo.table(config, runtime.params, getattr(runtime.pm, "generation", None))
    found = table.get(path, _MISSING)
    if found is _MISSING:
        found = _parse(path, runtime)
        _memo.put(path, found)
    return found


def _parse(path: str, runtime):
    # a preset is the query scheme's: it names parameters, it is none itself
    defaults = {name: p.default for name, p in runtime.params.items() if name != PRESET_PARAM}
    return parse_thumbor(path, runtime.config, defaults, filters_of(runtime))
