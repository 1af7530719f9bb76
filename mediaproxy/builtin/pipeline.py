"""
The default image pipeline, the ``trylast`` implementation of ``mediaproxy_handle_image``:

check chain -> format negotiation -> cache key -> layered cache -> (miss) coalesced fetch ->
transform in the thread pool -> store -> response.

Concurrent misses for one key share one fetch and one transform (the first request leads, the
others wait for its result). A missing or broken source becomes a placeholder image at the
requested size and format, with the honest status (or the route's ``failure_status``) and
``Cache-Control: no-store``.
"""

from __future__ import annotations

import hashlib
import time
from email.utils import formatdate

import attrs
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.error import TimeoutError as DeferredTimeout

from .. import hookimpl, imaging
from ..cache import cache_key
from ..logs import request_log
from ..negotiation import negotiate_format
from ..models import CacheEntry, ImageResponse, Rejection, SourceError, TransformSpec
from ..runtime import Overloaded


def transform_spec(image_request, fmt: str | None, config) -> TransformSpec:
    p = image_request.params
    proc, limits = config.processing, config.limits
    return TransformSpec(
        width=p.get("w") or 0, height=p.get("h") or 0, fit=p.get("fit") or "inside",
        position=p.get("pos") or "centre", background=tuple(p.get("bg") or (255, 255, 255, 255)),
        quality=p.get("q") or proc.default_quality, format=fmt, enlarge=bool(p.get("enlarge")),
        trim=p.get("trim") or 0, progressive=proc.jpeg_progressive, webp_method=proc.webp_method,
        avif_speed=proc.avif_speed, png_compress_level=proc.png_compress_level,
        reducing_gap=proc.reducing_gap, draft_gap=proc.draft_gap,
        max_source_pixels=limits.max_source_pixels,
        max_frames=limits.max_frames, extra=dict(p),
    )


def strong_etag(body: bytes) -> str:
    return '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"'


def render_and_tag(data: bytes, spec: TransformSpec, steps, image_request):
    """Runs in the thread pool: transform, then hash the output for its ETag."""
    started = time.perf_counter()
    rendered = imaging.render(data, spec, steps, image_request)
    return rendered, strong_etag(rendered.body), time.perf_counter() - started


def http_date(when: float) -> str:
    return formatdate(when, usegmt=True)


@attrs.define
class ImagePipeline:
    runtime: object
    _inflight: dict = attrs.field(factory=dict)

    @hookimpl(trylast=True)
    def mediaproxy_handle_image(self, image_request, request, runtime):
        return self.handle(image_request, request)

    def handle(self, image_request, request) -> Deferred:
        """Checks, then the cache; on a miss, one coalesced fetch and transform.

        Written with plain callbacks rather than inlineCallbacks: a memory hit is the hot path
        and fires synchronously."""
        rt = self.runtime
        log = request_log(request.correlation_id, "mediaproxy.pipeline")
        rejection = rt.pm.hook.mediaproxy_check_request(
            image_request=image_request, request=request, runtime=rt)
        if rejection is not None:
            rt.emit("rejection", correlation_id=request.correlation_id,
                    error=rejection.error, parameter=rejection.parameter or "")
            log.info("refused: {error} ({parameter})", error=rejection.error,
                     parameter=rejection.parameter)
            return succeed(rejection)
        fmt, vary = negotiate_format(image_request.params.get("fmt"), request.header("accept"))
        key = cache_key(image_request, rt.params, fmt)

        def looked_up(hit):
            if hit is not None:
                entry, layer = hit
                rt.emit("cache.hit", correlation_id=request.correlation_id, layer=layer)
                return self._from_entry(entry, f"HIT-{layer.upper()}", vary)
            rt.emit("cache.miss", correlation_id=request.correlation_id)
            d = self._coalesced(key, image_request, request, fmt, log)
            return d.addCallback(
                lambda result: self._from_entry(result, "MISS", vary)
                if isinstance(result, CacheEntry) else result)

        return rt.cache.get(key).addCallback(looked_up)

    def _coalesced(self, key, image_request, request, fmt, log) -> Deferred:
        waiters = self._inflight.get(key)
        if waiters is not None:
            log.debug("waiting for the transform already under way for {key}", key=key)
            d = Deferred()
            waiters.append(d)
            return d
        waiters = self._inflight[key] = []

        def release(result):
            del self._inflight[key]
            for d in waiters:
                d.callback(result)
            return result

        return self._produce(key, image_request, request, fmt, log).addBoth(release)

    @inlineCallbacks
    def _produce(self, key, image_request, request, fmt, log):
        rt = self.runtime
        started = time.perf_counter()
        try:
            fetching = rt.pm.hook.mediaproxy_fetch_source(
                image_request=image_request, request=request, runtime=rt)
            if fetching is None:
                raise SourceError(404, "source_not_found", "no plugin serves this source")
            source = yield fetching
        except SourceError as e:
            log.info("source unavailable: {error} ({status})", error=e.error, status=e.status)
            rt.emit("source.error", correlation_id=request.correlation_id, status=e.status)
            return (yield self._placeholder(image_request, fmt, e.status, e.error, e.message))
        fetched = time.perf_counter()
        spec = transform_spec(image_request, fmt, rt.config)
        steps = tuple(step for steps in rt.pm.hook.mediaproxy_transform_steps(
            image_request=image_request, spec=spec) or () for step in (steps or ()))
        try:
            d = rt.run_in_pool(render_and_tag, source.body, spec, steps, image_request)
            d.addTimeout(rt.config.limits.transform_timeout, rt.reactor)
            rendered, etag, busy = yield d
        except imaging.ImageError as e:
            log.info("source not usable: {error}: {message}", error=e.error, message=e.message)
            rt.emit("transform.error", correlation_id=request.correlation_id, error=e.error)
            return (yield self._placeholder(image_request, fmt, e.status, e.error, e.message))
        except Overloaded:
            log.warn("transform queue full; refusing")
            return Rejection(503, "overloaded", "the server is busy; retry shortly",
                             headers=[("Retry-After", "1")])
        except DeferredTimeout:
            log.warn("transform exceeded {timeout} s; abandoned",
                     timeout=rt.config.limits.transform_timeout)
            return Rejection(503, "transform_timeout", "the image took too long to process",
                             headers=[("Retry-After", "5")])
        done = time.perf_counter()
        log.info("rendered {source} -> {out_format} {width}x{height}, {size} bytes "
                 "(fetch {fetch_ms:.1f} ms, transform {transform_ms:.1f} ms)",
                 source=image_request.source_path, out_format=rendered.format,
                 width=rendered.width, height=rendered.height, size=len(rendered.body),
                 fetch_ms=(fetched - started) * 1000, transform_ms=busy * 1000)
        rt.emit("transform", value=done - fetched, correlation_id=request.correlation_id,
                format=rendered.format)
        now = time.time()
        entry = CacheEntry(
            body=rendered.body, content_type=rendered.content_type, created_at=now, etag=etag,
            last_modified=source.last_modified or http_date(now),
            source_etag=source.etag, source_last_modified=source.last_modified)
        rt.cache.set(key, entry)
        return entry

    @inlineCallbacks
    def _placeholder(self, image_request, fmt, status, error, message):
        rt = self.runtime
        p = image_request.params
        rendered = yield rt.run_in_pool(imaging.placeholder, p.get("w") or 0, p.get("h") or 0,
                                        fmt or "jpeg")
        return ImageResponse(
            status=image_request.failure_status or status, body=rendered.body,
            content_type=rendered.content_type,
            headers=[("Cache-Control", rt.config.cache.error_cache_control),
                     ("X-Placeholder", error)],
            cache_status="MISS")

    def _from_entry(self, entry: CacheEntry, cache_status: str, vary: bool) -> ImageResponse:
        headers = [("Cache-Control", self.runtime.config.cache.cache_control)]
        if vary:
            headers.append(("Vary", "Accept"))
        return ImageResponse(status=200, body=entry.body, content_type=entry.content_type,
                             headers=headers, etag=entry.etag, last_modified=entry.last_modified,
                             cache_status=cache_status)


@hookimpl
def mediaproxy_configure(runtime):
    runtime.pm.register(ImagePipeline(runtime), "mediaproxy.builtin.pipeline.instance")
