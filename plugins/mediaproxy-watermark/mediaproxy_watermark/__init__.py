"""
mediaproxy-watermark: an image or a text drawn over the output.

``?wm=/media/logo.png`` (a backend path, or an http(s) URL on a host of the core's
``ssrf.allowed_hosts``) or ``?wm_text=...``, placed by ``wm_pos`` and ``wm_margin`` (or
thumbor's ``wm_x``/``wm_y`` offsets), faded by ``wm_opacity`` (percent) and sized by
``wm_scale``/``wm_scale_h`` (percent of the output's width/height). The parameters are
registered with ``mediaproxy_params``: parsed with a 400 naming the bad one, signed, allowed in
presets, and in the cache key (left out at their defaults).

How a miss is made (:class:`Watermarker`):

1. A wrapper of ``mediaproxy_fetch_source`` fetches the overlay beside the image, through the
   same hook (so through the core's source cache: cached, coalesced and negative-cached like
   any original; a backend path over the backend's client, a URL over the SSRF-safe agent).
   An overlay that is missing or no image fails the request with a JSON 4xx naming ``wm``
   (the core's ``SourceError.parameter``); nothing is cached.
2. The overlay is decoded once, in the transform pool (at most
   :data:`~.draw.MAX_OVERLAY_PIXELS`), and kept decoded (bounded by
   :data:`DECODED_BYTES`) for the renders that follow.
3. ``mediaproxy_transform_steps`` gives a step (order :data:`ORDER`: after the resize and the
   effects) that scales, fades and composites it onto each frame (every frame of an
   animation), in the pool.

thumbor's ``watermark(url,x,y,alpha[,w_ratio[,h_ratio]])`` filter maps onto the same
parameters (:mod:`.thumbor`). Disable it without uninstalling:
``MEDIAPROXY_PLUGINS__DISABLED=watermark``: the parameters are then unknown and ignored.
"""

from __future__ import annotations

from collections import OrderedDict

import attrs
from mediaproxy import (
    ImageRequest, Overloaded, Rejection, SourceError, SourceFetcher, SourcePolicy, TransformStep,
    agent_for, hookimpl,
)
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from . import params as _params
from .draw import MAX_OVERLAY_PIXELS, Layout, OverlayRefused, Stamp, prepare
from .thumbor import watermark_filter_for

__all__ = ["Watermarker", "ORDER"]

#: The step's order: after the resize (500) and the built-in effects (600).
ORDER = 700
#: The step's memory (``TransformStep.memory``), in bytes per output pixel: the overlay
#: scaled to at most the output and faded, a converted copy of the output (an L or P frame
#: becomes RGB) and the composite's copies. Measured with an overlay as large as a 2000x1500
#: noise output: 5.5 (RGB), 4.5 (RGBA), 10.5 (L); rounded up.
STAMP_MEMORY = 16
#: Decoded overlays kept, in bytes (RGBA): a few logos, not a cache of photos.
DECODED_BYTES = 32 * 1024 * 1024
#: Bytes a decode takes per overlay pixel at most: the decoded frame and its RGBA copy.
DECODE_FACTOR = 8
#: The route name of an overlay's own fetch (never a client's route).
ROUTE = "watermark"
_log = Logger(namespace="mediaproxy_watermark.fetch")


@hookimpl
def mediaproxy_params(config):
    return _params.params(config)


@hookimpl
def mediaproxy_check_request(image_request, request, runtime):
    p = image_request.params
    if p.get("wm") is not None and p.get("wm_text") is not None:
        return Rejection(400, "invalid_parameter",
                         "wm_text cannot be combined with wm: choose an image or a text",
                         "wm_text")
    return None


@hookimpl
def mediaproxy_thumbor_filters(config):
    return {"watermark": watermark_filter_for(config)}


@hookimpl
def mediaproxy_configure(runtime):
    runtime.pm.register(Watermarker(runtime), "mediaproxy_watermark.instance")


def _decoded_size(image) -> int:
    return image.width * image.height * 4


@attrs.define(eq=False)   # registered with pluggy: identity, and hashable
class Watermarker:
    runtime: object
    #: reference -> (the overlay's body, its decoded RGBA image), least recently used first
    _decoded: OrderedDict = attrs.field(factory=OrderedDict)
    _decoded_bytes: int = 0
    #: reference -> the Deferred of a decode under way (shared by concurrent misses)
    _decoding: dict = attrs.field(factory=dict)
    #: [configuration, {origin: SourceFetcher}, agent] for overlays on allowed hosts
    _remote: list = attrs.field(factory=lambda: [None, {}, None])
    #: id -> the image request whose fetch this plugin is wrapping now (see the wrapper)
    _outer: dict = attrs.field(factory=dict)
    #: reference -> [the decoded overlay handed to the steps of fetches answered in this
    #: reactor turn, how many of them]
    _pinned: dict = attrs.field(factory=dict)
    decodes: int = 0     #: overlays decoded (tests read it: one per overlay, not per request)

    # -- 1. the overlay beside the image ----------------------------------------------------

    @hookimpl(wrapper=True, tryfirst=True)
    def mediaproxy_fetch_source(self, image_request, request, runtime):
        """The outermost wrapper (``tryfirst``): the source cache's own wrapper has recorded
        the image's fetch before the overlay's is started here, and never sees the overlay's
        failure as the image's. The image's answer waits for the overlay; a fetch of the same
        request made again inside this one (the source cache reading its file layer, then
        asking the other fetch plugins) passes through."""
        ref = image_request.params.get("wm")
        key = id(image_request)
        if ref is None or image_request.route == ROUTE or self._outer.get(key) is image_request:
            return (yield)
        self._outer[key] = image_request
        try:
            fetching = yield
        except BaseException:
            self._outer.pop(key, None)
            raise
        if fetching is None:
            self._outer.pop(key, None)
            return None
        overlay = self._overlay(ref, image_request, request)
        answer: Deferred = Deferred()

        def fetched(result):
            if self._outer.get(key) is image_request:
                del self._outer[key]
            if isinstance(result, Failure) or result.not_modified:
                # the image's own failure is the answer; a revalidated copy renders nothing
                overlay.addErrback(lambda failure: None)
                answer.callback(result)
            else:
                overlay.addCallbacks(lambda decoded: self._hand_over(ref, decoded, answer,
                                                                     result), answer.errback)
            return None

        fetching.addBoth(fetched)
        return answer

    def _hand_over(self, ref: str, decoded, answer: Deferred, source) -> None:
        """Answer the image's fetch with the overlay pinned until the end of this reactor
        turn: the pipeline asks for the steps within it (at once, or, when this fires before
        the pipeline holds the Deferred, as soon as it does), and gets this decoded overlay
        even if the bounded store of decoded overlays has let it go since it was decoded."""
        pin = self._pinned.get(ref)
        if pin is None or pin[0] is not decoded:
            pin = self._pinned[ref] = [decoded, 0]
        pin[1] += 1
        self.runtime.reactor.callLater(0, self._unpin, ref, pin)
        answer.callback(source)

    def _unpin(self, ref: str, pin: list) -> None:
        pin[1] -= 1
        if pin[1] <= 0 and self._pinned.get(ref) is pin:
            del self._pinned[ref]

    def _overlay(self, ref: str, image_request, request) -> Deferred:
        """Fetch ``ref`` through the fetch hook (the source cache first) and make sure its
        decoded copy is kept; fail with a :class:`SourceError` naming ``wm``."""
        rt = self.runtime
        overlay_request = overlay_request_for(ref, image_request)
        try:
            fetching = rt.pm.hook.mediaproxy_fetch_source(
                image_request=overlay_request, request=request, runtime=rt)
        except SourceError as e:
            fetching = fail(e)
        if fetching is None:
            fetching = fail(SourceError(404, "source_not_found", "no plugin serves it"))
        return fetching.addCallbacks(
            lambda source: self._decode(ref, source.body, request.correlation_id),
            lambda failure: _refused(failure, ref))

    def _decode(self, ref: str, body: bytes, correlation_id: str = "") -> Deferred:
        """The decoded overlay of ``body``: the one kept (same bytes), the decode under way,
        or a new decode in the transform pool."""
        kept = self._decoded.get(ref)
        if kept is not None and (kept[0] is body or kept[0] == body):
            self._decoded.move_to_end(ref)
            return succeed(kept[1])
        waiting = self._decoding.get(ref)
        if waiting is not None and (waiting[0] is body or waiting[0] == body):
            d: Deferred = Deferred()
            waiting[1].append(d)
            return d
        waiters: list[Deferred] = []
        self._decoding[ref] = (body, waiters)

        def refused(failure):
            failure.trap(OverlayRefused, Overloaded)
            e = failure.value
            if isinstance(e, Overloaded):
                raise SourceError(503, "overloaded", f"wm: the watermark could not be "
                                  f"prepared now ({e}); try again", "wm")
            raise SourceError(e.status, e.error, f"wm: {e.message}", "wm")

        def done(result):
            if self._decoding.get(ref, (None, None))[1] is waiters:
                del self._decoding[ref]
            if not isinstance(result, Failure):
                self.decodes += 1
                self._keep(ref, body, result)
            for d in waiters:
                if isinstance(result, Failure):
                    d.errback(result)
                else:
                    d.callback(result)
            return result

        # under the memory budget, with the most a decode of an accepted overlay takes
        rt = self.runtime
        nbytes = min(MAX_OVERLAY_PIXELS * DECODE_FACTOR, rt.admission.capacity)
        return rt.run_admitted(nbytes, prepare, body, correlation_id=correlation_id
                               ).addErrback(refused).addBoth(done)

    def _keep(self, ref: str, body: bytes, image) -> None:
        old = self._decoded.pop(ref, None)
        if old is not None:
            self._decoded_bytes -= _decoded_size(old[1])
        self._decoded[ref] = (body, image)
        self._decoded_bytes += _decoded_size(image)
        while self._decoded_bytes > DECODED_BYTES and len(self._decoded) > 1:
            _, (_, dropped) = self._decoded.popitem(last=False)
            self._decoded_bytes -= _decoded_size(dropped)

    # -- overlays on allowed hosts -----------------------------------------------------------

    @hookimpl(specname="mediaproxy_fetch_source")
    def fetch_remote_overlay(self, image_request, request, runtime):
        """An overlay named by URL (its ``source_origin``), over the SSRF-safe agent
        (``[ssrf]``: ``allowed_hosts``, the address filter) with the backend's deadlines,
        retries, breaker settings and source limits; one fetcher per origin."""
        origin = image_request.source_origin
        if image_request.route != ROUTE or not origin:
            return None
        host = origin.partition("://")[2]
        path = image_request.source_path[len(host) + 1:]
        return self._fetcher(origin).fetch(path, request.correlation_id, _log)

    def _fetcher(self, origin: str):
        config = self.runtime.config
        if self._remote[0] is not config:
            self._remote[:] = [config, {}, agent_for(self.runtime)]
        fetchers = self._remote[1]
        fetcher = fetchers.get(origin)
        if fetcher is None:
            fetcher = fetchers[origin] = SourceFetcher(
                self.runtime.reactor, attrs.evolve(config.backend, url=origin),
                config.limits.max_source_bytes, self._remote[2],
                policy=SourcePolicy.from_limits(config.limits))
        return fetcher

    # -- 3. the step ------------------------------------------------------------------------

    @hookimpl
    def mediaproxy_transform_steps(self, image_request, spec):
        p = image_request.params
        ref, text = p.get("wm"), p.get("wm_text")
        if ref is None and text is None:
            return None
        layout = Layout(pos=p.get("wm_pos", "se"), margin=p.get("wm_margin", 10),
                        opacity=p.get("wm_opacity", 100), width_pct=p.get("wm_scale", 0),
                        height_pct=p.get("wm_scale_h", 0), x=p.get("wm_x"), y=p.get("wm_y"))
        if ref is not None:
            pin = self._pinned.get(ref)
            overlay = pin[0] if pin is not None else None
            if overlay is None:   # fetched and pinned just before: only a bug gets here, and
                return [TransformStep("watermark", _unavailable, order=ORDER)]   # no image
            return [TransformStep("watermark", Stamp(layout, overlay=overlay), order=ORDER,
                                  memory=STAMP_MEMORY)]
        return [TransformStep("watermark", Stamp(layout, text=text), order=ORDER,
                              memory=STAMP_MEMORY)]


def _unavailable(image, spec=None, request=None):
    """The step of a watermark whose overlay is not at hand: the render fails (500) rather
    than an image without its watermark being cached under the watermark's key."""
    raise RuntimeError("the watermark's overlay was not handed over")


def overlay_request_for(ref: str, image_request) -> ImageRequest:
    """The source request of an overlay: a backend path, or a remote URL with its origin
    (``source_path`` ``/host/path``, as the core keys remote sources)."""
    if "://" in ref:
        scheme, _, rest = ref.partition("://")
        host, slash, path = rest.partition("/")
        return ImageRequest(route=ROUTE, source_path=f"/{host}/{path}",
                            tenant=image_request.tenant, source_origin=f"{scheme}://{host}")
    return ImageRequest(route=ROUTE, source_path=ref, tenant=image_request.tenant)


def _refused(failure, ref: str):
    """A failed overlay fetch as a :class:`SourceError` naming ``wm``."""
    failure.trap(SourceError)
    e = failure.value
    if e.parameter is not None:
        return failure
    if e.status == 404:
        raise SourceError(404, "watermark_not_found",
                          f"wm: the watermark {ref[:128]!r} does not exist", "wm")
    if e.status in (413, 415, 422):
        raise SourceError(e.status, "invalid_watermark",
                          f"wm: the watermark {ref[:128]!r} cannot be used: {e.message}", "wm")
    raise SourceError(e.status, e.error, f"wm: the watermark could not be fetched: {e.message}",
                      "wm")
