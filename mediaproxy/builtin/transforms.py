"""
The pipeline's work on one source, apart from the pipeline's flow (:mod:`.pipeline`): the
:class:`~mediaproxy.models.TransformSpec` a request asks for, the estimate that admits a render
(and says which format it will write), the render and its ETag in the pool, and the backend
validators and dates of a stored result.
"""

from __future__ import annotations

import hashlib
import time
from email.utils import formatdate

from .. import imaging
from ..models import CacheEntry, TransformSpec
from ..runtime import TooLarge


def transform_spec(image_request, fmt: str | None, config) -> TransformSpec:
    """The spec of one transform; ``fmt`` is the negotiated format token (``avif~webp``:
    AVIF for a still, WebP for an animation)."""
    p = image_request.params
    proc, limits = config.processing, config.limits
    fmt, animated = imaging.split_format(fmt)
    return TransformSpec(
        width=p.get("w") or 0, height=p.get("h") or 0, fit=p.get("fit") or "inside",
        position=p.get("pos") or "centre", background=tuple(p.get("bg") or (255, 255, 255, 255)),
        quality=p.get("q") or proc.default_quality, format=fmt, enlarge=bool(p.get("enlarge")),
        trim=p.get("trim") or 0, progressive=proc.jpeg_progressive, webp_method=proc.webp_method,
        avif_speed=proc.avif_speed, png_compress_level=proc.png_compress_level,
        reducing_gap=proc.reducing_gap, draft_gap=proc.draft_gap,
        max_source_pixels=limits.max_source_pixels,
        max_frames=limits.max_frames, extra=dict(p), animated_format=animated,
        max_jpeg_scans=limits.max_jpeg_scans, max_transform_bytes=limits.max_transform_bytes,
        max_output_width=limits.max_width, max_output_height=limits.max_height,
        max_output_pixels=limits.max_output_pixels, jpeg_optimize=proc.jpeg_optimize,
        parallel_resize=proc.parallel_resize, large_resample=proc.large_resample,
        deadline=time.monotonic() + limits.transform_timeout,
        crop=p.get("crop"), flip=p.get("flip") or "", orig=p.get("orig") or "",
        adaptive=bool(p.get("adaptive")), clamp=bool(p.get("clamp")),
        max_bytes=p.get("max_bytes") or 0,
    )


def strong_etag(body: bytes) -> str:
    return '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"'


def _estimate(data: bytes, spec: TransformSpec, decoded=None, steps=()) -> imaging.Estimate:
    """Runs in the thread pool, nothing decoded: the bytes a render of ``data`` allocates at
    its peak, for the memory budget, and the format it will write
    (:func:`mediaproxy.imaging.estimate`); over the request's budget it raises
    :class:`~mediaproxy.imaging.OverMemoryBudget` (a 422 JSON), before any of that memory is
    taken. ``decoded``: the runtime's decoded-image cache (a large source's first decode is
    finer with it: counted here); ``steps``: the render's plugin steps (their ``memory``)."""
    return imaging.estimate(data, spec, enforce=True, cache=decoded, steps=steps)


def depends_on_source(fmt: str | None) -> bool:
    """Whether the negotiated format token names an output only the source decides: ``None``
    (the source's own format) or ``still~animated`` (``avif~webp``)."""
    return fmt is None or imaging.split_format(fmt)[1] is not None


def _too_large(failure):
    """An estimate larger than the whole memory budget can never run (a guard: the request's
    budget is never more than the process's, so :func:`_estimate` refuses it first)."""
    failure.trap(TooLarge)
    raise imaging.OverMemoryBudget("The transform needs more memory than this server gives "
                                   "all transforms together.")


def render_and_tag(data: bytes, spec: TransformSpec, steps, image_request, decoded=None,
                   output=None):
    """Runs in the thread pool: transform, then hash the output for its ETag. ``decoded``
    is the runtime's decoded-image cache (:mod:`mediaproxy.imaging.decoded`): the sizes of
    one source decode it once. ``output``: a plugin's :class:`~mediaproxy.models.Output`."""
    started = time.perf_counter()
    rendered = imaging.render(data, spec, steps, image_request, cache=decoded, output=output)
    return rendered, strong_etag(rendered.body), time.perf_counter() - started


def _validators(entry: CacheEntry) -> tuple[tuple[str, str], ...]:
    """Conditional request headers that revalidate ``entry``'s original at the backend."""
    out = []
    if entry.source_etag:
        out.append(("If-None-Match", entry.source_etag))
    if entry.source_last_modified:
        out.append(("If-Modified-Since", entry.source_last_modified))
    return tuple(out)


def http_date(when: float) -> str:
    return formatdate(when, usegmt=True)
