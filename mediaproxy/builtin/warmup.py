"""
Warming, as background jobs (:mod:`mediaproxy.jobs`: behind every live request, retried with
backoff, bounded by ``jobs.*``):

* **Periodic warm-up** (``warmup.interval`` > 0): every interval, the most requested variants
  (``warmup.top``, by the access counts the pipeline keeps) that are missing from the cache, or
  stale, are rendered again. A request the transform queue shed is dropped from the counts, so
  warming does not render it unless it is asked for again.
* **Warm-up URLs** (``warmup.urls``): rendered at start and at every warm-up when missing or
  stale.
* **Pre-render** (``warmup.prerender``): the first time this process fetches a source, the
  variants of it these query strings describe are queued (the sizes a page asks for next).

A URL or query goes through the same match and check chain as a client's request (routes,
validation, signatures, rate limits), so warming never reaches a host or route that is not
configured; one refused is logged and skipped. Only paths (``/media/a.jpg?w=300``) are taken.

The pipeline keeps the access counts and makes the copies, so the warm-up is one of its
services (:meth:`ImagePipeline.mediaproxy_services`); this module is the warming itself.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

from cachetools import LRUCache
from twisted.application.internet import TimerService
from twisted.application.service import Service
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.logger import Logger

from ..cache.keys import is_fresh
from ..models import ImageRequest, RequestInfo

log = Logger(namespace="mediaproxy.warmup")

#: Sources the pre-render remembers having seen (least recently seen forgotten first).
SEEN_SOURCES = 10_000


def as_request(runtime, path: str, query, correlation_id: str):
    """``path`` and ``query`` (pairs) through the match and check chain of a request: the
    (image_request, request) to render, or None (logged) when it is not an image request or is
    refused."""
    info = RequestInfo(method="GET", path=path, query=tuple(query),
                       correlation_id=correlation_id)
    rt = runtime
    match = rt.pm.hook.mediaproxy_match_request(request=info, runtime=rt)
    if not isinstance(match, ImageRequest):
        log.warn("warming {path}: not an image request here; skipped", path=path)
        return None
    refused = rt.pm.hook.mediaproxy_check_request(image_request=match, request=info, runtime=rt)
    if refused is not None:
        log.warn("warming {path}: refused ({error}); skipped", path=path, error=refused.error)
        return None
    return match, info


def parse_url(runtime, url: str, correlation_id: str = "warmup-url"):
    """A ``warmup.urls`` entry as a request (see :func:`as_request`); a URL with a scheme or a
    host is refused: warming asks only this proxy's own routes."""
    parts = urlsplit(url.strip())
    if parts.scheme or parts.netloc or not parts.path.startswith("/"):
        log.warn("warming {url}: only a path and query are taken; skipped", url=url)
        return None
    return as_request(runtime, parts.path, parse_qsl(parts.query, keep_blank_values=True),
                      correlation_id)


class WarmUp:
    """The warm-up: ``pipeline`` is the :class:`~.pipeline.ImagePipeline` whose access
    counts choose the variants and whose ``background`` queues them."""

    def __init__(self, runtime, pipeline, top: int, urls=()):
        self.runtime = runtime
        self.pipeline = pipeline
        self.top = top
        self.urls = tuple(urls)
        self.rendered = 0
        self.running = False

    @inlineCallbacks
    def run(self):
        """One pass: queue every variant missing or stale, and wait for those jobs;
        overlapping passes are skipped."""
        if self.running:
            return
        self.running = True
        try:
            todo = []
            for key, image_request, fmt in self.pipeline.most_requested(self.top):
                request = RequestInfo(method="GET", path=image_request.source_path,
                                      correlation_id=f"warmup-{key[-12:]}")
                todo.append(("warmup", key, image_request, request, fmt))
            for url in self.urls:
                found = parse_url(self.runtime, url)
                if found is not None:
                    image_request, request = found
                    key, fmt, _ = self.pipeline.key_for(image_request, None)
                    todo.append(("url", key, image_request, request, fmt))
            jobs = []
            for kind, key, image_request, request, fmt in todo:
                stale = yield self._stale(key)
                if stale is not False:
                    jobs.append(self.pipeline.background(kind, key, image_request, request,
                                                         fmt, stale))
            results = yield gatherResults(jobs, consumeErrors=True)
            self.rendered += sum(1 for result in results if result is not None)
        finally:
            self.running = False

    def _stale(self, key):
        """False when ``key`` is fresh in the cache; else the stale entry, or None."""
        rt = self.runtime

        def judged(hit):
            if hit is None:
                return None
            return False if is_fresh(*hit, rt.config.cache, layers=rt.cache.layers) else hit[0]

        return rt.cache.get(key).addCallback(judged)


class Prerender:
    """``warmup.prerender``: called by the pipeline when a source is fetched; the first time
    (per tenant and source path, :data:`SEEN_SOURCES` remembered) it queues the variants the
    queries describe, as ``prerender`` jobs."""

    def __init__(self, runtime, pipeline, queries):
        self.runtime = runtime
        self.pipeline = pipeline
        self.queries = tuple(tuple(parse_qsl(q, keep_blank_values=True)) for q in queries)
        self.seen = LRUCache(maxsize=SEEN_SOURCES)

    def __call__(self, image_request, request) -> None:
        ident = (image_request.tenant, image_request.source_path)
        if ident in self.seen:
            return
        self.seen[ident] = True
        for query in self.queries:
            found = as_request(self.runtime, request.path, query,
                               f"prerender-{request.correlation_id}")
            if found is None:
                continue
            variant, info = found
            key, fmt, _ = self.pipeline.key_for(variant, None)
            self.pipeline.background("prerender", key, variant, info, fmt)


class _AtStart(Service):
    """Runs ``call`` once when the service tree starts."""

    def __init__(self, reactor, call):
        self.reactor, self.call = reactor, call

    def startService(self):
        Service.startService(self)
        self.reactor.callLater(0, self.call)


def warmup_services(runtime, pipeline) -> list:
    """The job queue, and the warming ``runtime.config.warmup`` asks for (the periodic
    warm-up, a first pass over the URLs at start, the pre-render hook of ``pipeline``)."""
    conf = runtime.config.warmup
    services = [runtime.jobs]
    warm = WarmUp(runtime, pipeline, conf.top, conf.urls)
    if conf.interval > 0:
        timer = TimerService(conf.interval, warm.run)   # runs at start too
        timer.clock = runtime.reactor
        services.append(timer)
    elif conf.urls:
        # no periodic warm-up: the URLs once, at start (top 0: not the access counts)
        services.append(_AtStart(runtime.reactor, WarmUp(runtime, pipeline, 0, conf.urls).run))
    if conf.prerender:
        pipeline.on_new_source = Prerender(runtime, pipeline, conf.prerender)
    return services

