"""
Frozen values passed between hooks. Nothing here does I/O.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Callable, Mapping

import attrs
from attrs import frozen

from .memo import Pairs


def _freeze(mapping: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


def _pairs(items) -> tuple[tuple[str, str], ...]:
    if items.__class__ is Pairs:
        return items
    return Pairs((str(k), str(v)) for k, v in (items or ()))


@frozen
class RequestInfo:
    """The client's HTTP request as the hooks see it (no body; the body is streamed elsewhere).

    ``path`` is the raw (still percent-encoded) path without the query; ``query`` the decoded
    query pairs in order; ``headers`` the request headers as (lower-case name, value) pairs, a
    repeated header once per value. ``client_ip`` is the end client: the peer, or the first
    untrusted address of ``X-Forwarded-For`` when the peer is a trusted proxy.
    """

    method: str
    path: str
    query: tuple[tuple[str, str], ...] = attrs.field(default=(), converter=_pairs)
    headers: tuple[tuple[str, str], ...] = attrs.field(default=(), converter=_pairs)
    client_ip: str = ""
    peer_ip: str = ""
    scheme: str = "http"
    host: str = ""
    correlation_id: str = ""

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (any case), or ``None``."""
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def query_dict(self) -> dict[str, str]:
        """The query as a dict; for a repeated parameter the last value wins."""
        return dict(self.query)


@frozen
class ImageRequest:
    """A parsed image request: which source, which canonical transform parameters.

    ``params`` maps each registered parameter's name to its parsed, canonical value (see
    :class:`Param`); two URLs meaning the same transform produce equal ``params``.
    ``failure_status`` is the status a placeholder is served with when the source is missing or
    broken: ``None`` means the honest status (404, 502, 422).
    """

    route: str
    source_path: str
    params: Mapping[str, Any] = attrs.field(factory=dict, converter=_freeze,
                                            eq=attrs.cmp_using(eq=lambda a, b: dict(a) == dict(b)))
    tenant: str = "public"
    failure_status: int | None = None
    #: conditional request headers for the source fetch (revalidating a stale copy)
    validators: tuple[tuple[str, str], ...] = ()
    #: ``scheme://host[:port]`` of a source that is not on the backend (an allow-listed
    #: remote host, fetched through the SSRF guard by the plugin that set it); ``""``: the
    #: backend. ``source_path`` then starts with ``/host[:port]``, so no backend path shares
    #: its cache entries, and the host enters the cache key.
    source_origin: str = ""
    #: The route checked a signature of its own URL grammar (thumbor's HMAC over its path):
    #: the query scheme's signing (``signing.keys``) does not apply to it.
    signed: bool = False

    def evolve(self, **changes) -> "ImageRequest":
        return attrs.evolve(self, **changes)

    def with_params(self, **params) -> "ImageRequest":
        return attrs.evolve(self, params={**self.params, **params})


@frozen
class Rejection:
    """A refusal: the request is answered with ``status`` and a short JSON body
    ``{error, message, status, parameter, correlation_id}``, plus ``headers``."""

    status: int
    error: str
    message: str
    parameter: str | None = None
    headers: tuple[tuple[str, str], ...] = attrs.field(default=(), converter=_pairs)


@frozen
class Param:
    """A transform parameter that a route may read from a request.

    ``parse(raw: str) -> value`` turns the raw text into the canonical value and raises
    ``ValueError`` (the message is shown to the client) when it is bad. ``default`` is used
    when the request does not name it. ``key(value) -> str | None`` is the parameter's
    contribution to the cache key (``None``: it does not change the output, leave it out).
    ``aliases`` are other query names for the same parameter.
    """

    name: str
    parse: Callable[[str], Any]
    default: Any = None
    key: Callable[[Any], str | None] = attrs.field(default=lambda value: repr(value))
    aliases: tuple[str, ...] = ()
    help: str = ""


@frozen
class SourceImage:
    """An original fetched from the backend (or elsewhere, by a fetch plugin)."""

    body: bytes
    content_type: str | None = None
    etag: str | None = None
    last_modified: str | None = None
    #: the backend answered 304 to a conditional fetch: ``body`` is empty, the copy held is good
    not_modified: bool = False


class SourceError(Exception):
    """The source could not be had: ``status`` is the honest HTTP status (404, 502, 504, 413...).

    ``parameter`` names the request parameter whose fetch failed when it is not the image
    itself (a watermark plugin's overlay, ``wm``): the client then gets a JSON refusal naming
    it, not a placeholder image, since the image URL is fine and the parameter is not."""

    def __init__(self, status: int, error: str, message: str, parameter: str | None = None):
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.parameter = parameter


@frozen
class TransformSpec:
    """What one transform must produce; built from an :class:`ImageRequest` by the pipeline and
    handed to the thread pool. ``width``/``height`` 0 leave that axis free. ``format`` ``None``
    keeps the source's format when it is a web format (JPEG, PNG, WebP, AVIF, GIF), else JPEG,
    or PNG when the image has alpha. ``background`` is RGBA."""

    width: int = 0
    height: int = 0
    fit: str = "inside"
    position: str = "centre"
    background: tuple[int, int, int, int] = (255, 255, 255, 255)
    quality: int = 80
    format: str | None = None
    enlarge: bool = False
    trim: int = 0
    progressive: bool = False
    webp_method: int = 2
    avif_speed: int = 8
    png_compress_level: int = 6
    reducing_gap: float = 2.0
    draft_gap: float = 1.0
    max_source_pixels: int = 50_000_000
    max_frames: int = 200
    extra: Mapping[str, Any] = attrs.field(factory=dict, converter=_freeze,
                                           eq=attrs.cmp_using(eq=lambda a, b: dict(a) == dict(b)))
    #: The format an animated source (more than one frame) is written in when the output
    #: format cannot animate (AVIF, JPEG, TIFF): set by ``fmt=auto`` (``webp`` when the client
    #: accepts it, else ``gif``); ``None`` keeps the first frame only.
    animated_format: str | None = None
    #: Most scans a JPEG source may have (each walks every block: the decode's CPU).
    max_jpeg_scans: int = 100
    #: When the transform stops (:func:`time.monotonic` seconds; ``None``: never): past it,
    #: the thread raises :class:`~mediaproxy.imaging.TransformTimeout` at its next check.
    deadline: float | None = None
    #: Most bytes one transform may allocate, by :func:`mediaproxy.imaging.estimate_bytes`
    #: (checked before decoding; over it: 422 ``over_memory_budget``).
    max_transform_bytes: int = 1024 * 1024 * 1024
    #: The output caps (``limits.max_width``, ``max_height``, ``max_output_pixels``), checked
    #: on the source's geometry before decoding.
    max_output_width: int = 8192
    max_output_height: int = 8192
    max_output_pixels: int = 7680 * 4320
    #: Optimised Huffman tables for JPEG output (a second pass over the coefficients).
    jpeg_optimize: bool = True
    #: A large downscale in two strips, the second on a helper thread when it is free
    #: (:mod:`mediaproxy.imaging.strips`).
    parallel_resize: bool = False
    #: The filter of a large output's resize (``lanczos`` or ``bicubic``; smaller outputs
    #: always take LANCZOS): :data:`mediaproxy.imaging.rendering.LARGE_OUTPUT_PIXELS`.
    large_resample: str = "lanczos"
    #: A manual crop (left, top, right, bottom) in source pixels, taken before the fit (and
    #: within the trim box); ``None``: none. A box left empty by the source's edges is ignored.
    crop: tuple[int, int, int, int] | None = None
    #: Mirror the output: ``""``, ``"h"`` (left-right), ``"v"`` (top-bottom) or ``"hv"``.
    flip: str = ""
    #: The axes whose size is the source's own (thumbor's ``orig``): ``""``, ``"w"``, ``"h"``.
    orig: str = ""
    #: Turn the box a quarter when its orientation differs from the source's (thumbor's
    #: ``adaptive-fit-in``).
    adaptive: bool = False
    #: Without ``enlarge``, shrink each side of a ``cover``/``contain``/``fill`` box to the
    #: source's separately (thumbor's ``no_upscale()``) instead of keeping the box's shape.
    clamp: bool = False
    #: Largest output in bytes (0: no limit): the quality is lowered until the body fits.
    max_bytes: int = 0


@frozen
class TransformStep:
    """One step of the transform, run in the thread pool after decoding and orienting, in
    ``order`` (the built-in resize is 500). ``apply(image, spec, request) -> image`` gets a
    Pillow image, must not touch the reactor or the plugin manager, and returns an image.

    ``memory``: the bytes per pixel of the image it gets that the step allocates at its peak
    beyond that image (a converted copy of it: 4; an overlay up to its size, scaled, faded
    and composited: a few such copies). The render's memory estimate counts the largest
    step's, on the decoded size for a step before the resize and the output's after it, so
    the memory budget admits the render with it before anything is decoded. 0: nothing worth
    counting (a step that works in place or on a small part)."""

    name: str
    apply: Callable[..., Any]
    order: int = 500
    memory: float = 0


@frozen
class Output:
    """Something a render makes instead of the encoded image, answered by a plugin's
    ``mediaproxy_output`` (a placeholder hash, a dominant colour, a tiny preview).

    ``encode(image, spec, request, size) -> Rendered`` runs in the transform thread pool on the
    final still (decoded, oriented, steps and resize done; an animation's first frame), with
    the same purity rules as a :class:`TransformStep`; ``size`` is the (width, height) the
    request would have been answered with without this output (its layout box: the geometry of
    the full-size variant, trim aside). ``spec``, when set, is the spec the image is rendered
    and budgeted with instead of the request's (a tiny one: the source is then decoded at its
    shrink-on-load scale and a decoded copy at hand is reused); it must keep the request's
    ``format`` (the cache key's format resolution relies on it). ``name`` labels the render."""

    name: str
    encode: Callable[..., "Rendered"]
    spec: "TransformSpec | None" = None


@frozen
class Rendered:
    """The output of a transform."""

    body: bytes
    content_type: str
    format: str
    width: int
    height: int
    frames: int = 1


@frozen
class CacheEntry:
    """A stored result. ``etag`` is the strong ETag of ``body``; ``source_etag`` and
    ``source_last_modified`` are the backend's validators of the original."""

    body: bytes
    content_type: str
    created_at: float
    etag: str
    last_modified: str
    source_etag: str | None = None
    source_last_modified: str | None = None


@frozen
class ImageResponse:
    """What the image pipeline answers; the resource writes it (HEAD and 304 included)."""

    status: int
    body: bytes
    content_type: str
    headers: tuple[tuple[str, str], ...] = attrs.field(default=(), converter=_pairs)
    etag: str | None = None
    last_modified: str | None = None
    cache_status: str = "MISS"


@frozen
class HealthStatus:
    """One health indicator's answer. ``ok`` False with ``critical`` False (an optional
    dependency down: Redis, a full cache disk) makes the proxy **degraded** (still 200); with
    ``critical`` True (the proxy cannot serve: the backend unreachable) **unhealthy**.
    ``data`` holds the indicator's figures for the detailed report (JSON values)."""

    name: str
    ok: bool
    detail: str = ""
    critical: bool = False
    data: Mapping[str, Any] = attrs.field(factory=dict)


@frozen
class Event:
    """Something worth counting: ``name`` such as ``request``, ``cache.hit``, ``transform``,
    ``rejection``; ``value`` (1 for a count, seconds for a duration); ``fields`` labels."""

    name: str
    value: float = 1.0
    correlation_id: str = ""
    #: labels; a fresh dict per event (not copied again: events are made on every request)
    fields: Mapping[str, Any] = attrs.field(factory=dict)


def _event_maker():
    """``make_event(name, value, correlation_id, fields)``: the same :class:`Event` as
    ``Event(name, value, correlation_id, fields)``, set through its slots. A hit sends four
    events, and a frozen class's ``__init__`` goes through ``object.__setattr__`` for each
    field (about twice the cost). ``fields`` is taken as it is, as ``Event`` takes it."""
    new = object.__new__
    set_name, set_value, set_cid, set_fields = (
        Event.__dict__[name].__set__ for name in ("name", "value", "correlation_id", "fields"))

    def make_event(name: str, value: float, correlation_id: str, fields) -> Event:
        event = new(Event)
        set_name(event, name)
        set_value(event, value)
        set_cid(event, correlation_id)
        set_fields(event, fields)
        return event

    return make_event


make_event = _event_maker()
