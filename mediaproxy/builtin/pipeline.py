"""
The default image pipeline, the ``trylast`` implementation of ``mediaproxy_handle_image``
(the core has run the check chain before it is called):

format negotiation -> cache key -> layered cache -> (miss) coalesced fetch ->
transform in the thread pool -> store -> response.

Concurrent misses for one key share one fetch and one transform (the first request leads, the
others wait for its result). A missing or broken source becomes a placeholder image at the
requested size and format, with the honest status (or the route's ``failure_status``) and
``Cache-Control: no-store``.
"""

from __future__ import annotations

import math
import time

import attrs
from cachetools import LRUCache
from twisted.internet.defer import (
    CancelledError, Deferred, fail, gatherResults, inlineCallbacks, succeed,
)
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.python.failure import Failure

from .. import hookimpl, imaging
from ..admission import BACKGROUND, LIVE
from ..cache.keys import cache_key, fresh_lifetime, is_fresh, resolution_key
from ..cache.coalescing import coalescing_lock
from ..cache.headers import CacheStatus, shorten_cache_control
from ..cache.locks import CoalescingLock, coalesce
from ..imaging.negotiation import negotiate_format
from ..logs import request_log
from ..memo import Memo
from ..models import CacheEntry, ImageResponse, Rejection, SourceError
from ..runtime import Overloaded, Runtime
from .transforms import (
    _estimate, _too_large, _validators, depends_on_source, http_date, render_and_tag,
    transform_spec,
)
from .popularity import Popularity
from .results import (
    STALE_IF_ERROR_STATUSES, Collapsed, Found, Stale, collapsed, job_result as _job_result,
    overloaded,
)
from .variants import Nearest, VariantIndex
from .warmup import warmup_services

#: Seconds a request waits for another process's or node's leader before producing itself.
DEFAULT_LOCK_WAIT = 30.0
#: How many (source, format token) -> output format answers the pipeline remembers.
RESOLVED_LIMIT = 10_000
#: The content type of the entry that records what a format token resolved to for a source
#: (:func:`~mediaproxy.cache.keys.resolution_key`): the body is the format's name.
RESOLUTION_TYPE = "application/vnd.mediaproxy.resolved-format"


@attrs.define
class ImagePipeline:
    runtime: Runtime
    _inflight: dict = attrs.field(factory=dict)
    #: the cross-process / cross-node lock (None: in-process coalescing only)
    _lock: CoalescingLock | None = attrs.field(
        default=attrs.Factory(lambda self: coalescing_lock(self.runtime), takes_self=True))
    #: the access counts: what the warm-up re-renders first
    popular: Popularity = attrs.field(factory=Popularity)
    #: key -> the Deferred of a production waiting for room in the memory budget
    _admitting: dict = attrs.field(factory=dict)
    #: (tenant, source path, format token) -> the output format a render of it wrote
    _resolved: LRUCache = attrs.field(factory=lambda: LRUCache(maxsize=RESOLVED_LIMIT))
    #: (id of an ImageRequest, key format) -> (that ImageRequest, its cache key)
    _keys: Memo = attrs.field(factory=Memo)
    #: (layer, vary) -> a fresh hit's X-Cache token and headers (:meth:`_hit_headers`)
    _hits: Memo = attrs.field(factory=lambda: Memo(64))

    #: the variants stored per source, for the nearest-variant offer of a shed request
    variants: VariantIndex = attrs.field(factory=VariantIndex)
    #: called with (image_request, request) when a source is fetched for the first time by
    #: this process (the warm-up's pre-render; None: nothing to do)
    on_new_source: object = None

    @hookimpl(trylast=True)
    def mediaproxy_handle_image(self, image_request, request, runtime):
        return self.handle(image_request, request)

    def handle(self, image_request, request) -> Deferred:
        """The cache; on a miss, one coalesced fetch and transform (the core has run the check
        chain already).

        Written with plain callbacks rather than inlineCallbacks: a memory hit is the hot path
        and fires synchronously."""
        accept = request.header("accept")
        key, fmt, vary = self.key_for(image_request, accept)
        if depends_on_source(fmt) and not self._knows(image_request, fmt):
            # First sight of this source and token in this process: another process or node
            # may have resolved it already (its resolution entry names the format).
            def learned(hit):
                if hit is not None and hit[0].content_type == RESOLUTION_TYPE:
                    self._resolved[image_request.tenant, image_request.source_path, fmt] = \
                        hit[0].body.decode("ascii", "replace")
                return self._serve(image_request, request,
                                   self.key_for(image_request, accept)[0], fmt, vary)
            return self.runtime.cache.get(resolution_key(image_request, fmt)).addCallback(
                learned)
        return self._serve(image_request, request, key, fmt, vary)

    def _serve(self, image_request, request, key, fmt, vary) -> Deferred:
        """:meth:`handle` once the key is known."""
        rt = self.runtime
        log = request_log(request.correlation_id, "mediaproxy.pipeline")
        self.popular.count(key, image_request, fmt)

        def looked_up(hit):
            stale = None
            if hit is not None:
                entry, layer = hit
                age = time.time() - entry.created_at
                fresh_for = fresh_lifetime(layer, rt.config.cache, rt.cache.layers)
                if age <= fresh_for:
                    rt.emit("cache.hit", correlation_id=request.correlation_id, layer=layer)
                    token, headers = self._hit_headers(layer, vary)
                    return ImageResponse(status=200, body=entry.body,
                                         content_type=entry.content_type, headers=headers,
                                         etag=entry.etag, last_modified=entry.last_modified,
                                         cache_status=token)
                cache = rt.config.cache
                if age <= fresh_for + cache.stale_while_revalidate:
                    rt.emit("cache.stale", correlation_id=request.correlation_id, layer=layer)
                    log.debug("serving a stale copy of {key} and refreshing it", key=key)
                    self.refresh(key, image_request, request, fmt, entry)
                    return self._from_entry(
                        entry, "STALE", vary,
                        CacheStatus(hit=True, ttl=math.floor(fresh_for - age), detail=layer),
                        stale=True)
                if age <= fresh_for + cache.stale_if_error:
                    stale = entry
            rt.emit("cache.miss", correlation_id=request.correlation_id)
            if key not in self._inflight:
                if stale is None:   # shed at the door: before the lock, the token, the fetch
                    busy = rt.admission.refusal(0, request.correlation_id)
                    if busy is not None:
                        log.debug("transform refused before fetching: {why}", why=str(busy))
                        return self._shed(key, image_request, request, fmt, busy,
                                          LIVE).addCallback(self._answer, vary)
                # The expensive token: only a request that will start a transform pays it
                # (one joining a transform under way does not, nor gets another client's 429).
                refused = rt.pm.hook.mediaproxy_admit_transform(
                    image_request=image_request, request=request, runtime=rt)
                if refused is not None:
                    rt.emit("rejection", correlation_id=request.correlation_id,
                            error=refused.error, parameter=refused.parameter or "")
                    return refused
            # RFC 9211: without Vary nothing else could have matched this URI (uri-miss); an
            # fmt=auto answer may have missed only another Accept's variant (miss).
            fwd = "stale" if stale is not None else ("miss" if vary else "uri-miss")
            d = self._coalesced(key, image_request, request, fmt, log, stale)
            return d.addCallback(self._answer, vary, fwd, hit[1] if stale is not None else None)

        found = rt.cache.lookup(key, log)
        if isinstance(found, Deferred):
            return found.addCallback(looked_up)
        # a memory hit: answered now, in a Deferred that has fired (the hook's contract)
        try:
            answer = looked_up(found)
        except Exception:
            return fail()
        return answer if isinstance(answer, Deferred) else succeed(answer)

    def key_for(self, image_request, accept: str | None) -> tuple[str, str | None, bool]:
        """The cache key of ``image_request`` for a client sending ``accept``, with the
        negotiated format token and whether the answer varies on ``Accept``.

        The key is remembered for the very ``image_request`` object (the route's memo gives the
        same one again for the same URI) and the format the key names: a pure function of those
        and the registered parameters (:mod:`mediaproxy.memo`)."""
        requested = image_request.params.get("fmt")
        if requested == "auto":
            fmt, vary = negotiate_format(requested, accept)
        else:
            fmt, vary = requested, False   # what negotiate_format answers without ``auto``
        key_format = self._key_format(image_request, fmt)
        rt = self.runtime
        table = self._keys.table(rt.params, getattr(rt.pm, "generation", None))
        memo_key = (id(image_request), key_format)
        found = table.get(memo_key)
        if found is not None and found[0] is image_request:
            return found[1], fmt, vary
        key = cache_key(image_request, rt.params, key_format)
        self._keys.put(memo_key, (image_request, key))   # holds it: its id stays its own
        return key, fmt, vary

    def _knows(self, image_request, fmt: str | None) -> bool:
        return (image_request.tenant, image_request.source_path, fmt) in self._resolved

    def _key_format(self, image_request, fmt: str | None) -> str | None:
        """The format the cache key names: the negotiated token, or, for a token only the
        source decides, the output format a render of this source gave it before. So
        ``fmt=auto`` (or no ``fmt``) and the explicit format it resolves to share one entry."""
        if depends_on_source(fmt):
            return self._resolved.get((image_request.tenant, image_request.source_path, fmt), fmt)
        return fmt

    def _answer(self, result, vary, fwd="miss", stale_layer=None):
        """The response for what a production gave (``fwd``: why the request went to the
        backend; ``stale_layer``: the layer of the stale copy it had)."""
        reused = isinstance(result, Collapsed)
        if reused:
            result = result.result
        if isinstance(result, Nearest):
            response = self._from_entry(result.entry, "NEAREST", vary,
                                        CacheStatus(hit=True, detail="nearest"), stale=True)
            return attrs.evolve(response, headers=(*response.headers,
                                                   ("Content-Location", result.location)))
        if isinstance(result, Found):
            return self._from_entry(result.entry, f"HIT-{result.layer.upper()}", vary,
                                    CacheStatus(hit=True, collapsed=reused,
                                                detail=result.layer))
        if isinstance(result, CacheEntry):
            return self._from_entry(result, "MISS", vary,
                                    CacheStatus(fwd=fwd, stored=True, collapsed=reused))
        if isinstance(result, Stale):
            fresh_for = fresh_lifetime(stale_layer, self.runtime.config.cache,
                                       self.runtime.cache.layers, unknown=0.0)
            ttl = math.floor(fresh_for - (time.time() - result.entry.created_at))
            return self._from_entry(result.entry, "STALE", vary, CacheStatus(
                fwd="stale", ttl=min(ttl, -1), collapsed=reused, detail=stale_layer), stale=True)
        if isinstance(result, ImageResponse):
            # a placeholder: the backend was asked, nothing was stored
            name = self.runtime.config.cache.cache_status
            if name:
                status = CacheStatus(fwd=fwd, collapsed=reused, detail="placeholder")
                return attrs.evolve(result, headers=(*result.headers,
                                                     ("Cache-Status", status.header(name))))
        return result

    def most_requested(self, count: int):
        """The ``count`` most requested variants: (key, image_request, fmt), busiest first,
        each key as it is stored now: a token only the source decides (no fmt, fmt=auto)
        resolved to the format a render of it wrote."""
        return [(cache_key(image_request, self.runtime.params,
                           self._key_format(image_request, fmt))
                 if depends_on_source(fmt) else key, image_request, fmt)
                for key, image_request, fmt in self.popular.ranked(count)]

    def refresh(self, key, image_request, request, fmt, stale) -> Deferred:
        """Make a fresh copy of ``key`` in the background (revalidating against the backend's
        validators of the stale copy), as a job of the background queue; a refresh already
        under way is not repeated."""
        if key in self._inflight:
            return succeed(None)
        return self.background("refresh", key, image_request, request, fmt, stale)

    def background(self, kind, key, image_request, request, fmt, stale=None) -> Deferred:
        """Render ``key`` as a background job (``kind``: warmup, url, prerender, refresh) of
        :attr:`runtime.jobs <mediaproxy.runtime.Runtime.jobs>`, reserving with BACKGROUND
        priority: behind every live request. A busy queue or a failing backend is retried
        with backoff; a refused or missing source is not."""
        log = request_log(request.correlation_id, "mediaproxy.pipeline")

        def work():
            return self._coalesced(key, image_request, request, fmt, log, stale,
                                   priority=BACKGROUND).addCallback(_job_result)

        return self.runtime.jobs.submit(kind, key, work)

    def _coalesced(self, key, image_request, request, fmt, log, stale=None,
                   priority=LIVE) -> Deferred:
        """One production per key; every caller gets a Deferred of its own. Cancelling one
        (its client went away) drops that caller only; when no caller is left while the
        production still waits for room in the memory budget, it leaves the budget's queue."""
        waiters = self._inflight.get(key)
        leading = waiters is None
        if waiters is None:
            waiters = self._inflight[key] = []
        else:
            log.debug("waiting for the transform already under way for {key}", key=key)
            self.runtime.emit("coalesced", correlation_id=request.correlation_id)
            if priority == LIVE and key in self._admitting:
                # a client now waits for a background render: it moves to the live queue
                self.runtime.admission.promote(self._admitting[key])
        d: Deferred = Deferred(lambda d: self._gone(key, waiters, d))
        waiters.append(d)
        if not leading:
            return d.addCallback(collapsed)

        def release(result):
            if self._inflight.get(key) is waiters:
                del self._inflight[key]
            if not waiters and isinstance(result, Failure) and not result.check(CancelledError):
                log.failure("producing {key} failed", result, key=key)
            for waiter in list(waiters):
                waiter.callback(result)
            return None

        self._lead(key, image_request, request, fmt, log, stale, priority).addBoth(release)
        return d

    def _gone(self, key, waiters, d) -> None:
        """A caller of :meth:`_coalesced` cancelled its wait (its client went away)."""
        if d in waiters:
            waiters.remove(d)
        if not waiters and key in self._admitting:
            if self._inflight.get(key) is waiters:
                del self._inflight[key]   # a new request for the key starts afresh
            self._admitting.pop(key).cancel()

    def _lead(self, key, image_request, request, fmt, log, stale, priority=LIVE) -> Deferred:
        rt = self.runtime
        lock = self._lock
        if lock is None:
            return self._produce(key, image_request, request, fmt, log, stale, wait=False,
                                 priority=priority)

        def lookup():
            def reused(found):
                if found is None:
                    return None
                # found here: another process's or node's production, reused
                rt.emit("coalesced", correlation_id=request.correlation_id)
                return Collapsed(found.entry)
            found = self._fresh(key, log).addCallback(reused)
            if depends_on_source(fmt):
                found.addCallback(lambda hit: hit if hit is not None
                                  else self._resolved_elsewhere(image_request, fmt))
            return found

        # The leader answers its own clients as soon as the result exists; the lock is released
        # (and the followers elsewhere look it up) only once it is stored in the shared layers.
        answer: Deferred = Deferred()

        def rendered(result):
            if not answer.called:
                answer.callback(result)

        coalesced = coalesce(lock, key, lookup,
                             lambda: self._produce(key, image_request, request, fmt, log, stale,
                                                   wait=True, on_rendered=rendered,
                                                   priority=priority),
                             rt.reactor,
                             max(DEFAULT_LOCK_WAIT, rt.config.limits.transform_timeout), log)

        def finished(result):
            if not answer.called:
                answer.callback(result)   # a follower's answer, or a failure
            elif isinstance(result, Failure):
                log.failure("storing {key} failed", result, key=key)
            return None

        coalesced.addBoth(finished)
        return answer

    def _produce(self, key, image_request, request, fmt, log, stale=None, wait=False,
                 on_rendered=None, priority=LIVE) -> Deferred:
        """Fetch, transform and store one result. ``stale`` is the copy being refreshed: its
        validators make the fetch conditional, and it is the answer if the backend fails.
        ``wait``: fire only once the result is stored (followers in other processes read it
        from the shared layers right after); ``on_rendered(entry)`` is called as soon as the
        result exists, before the store. Shed at the admission's door before any fetch."""
        ticket = self.runtime.admission.door(request.correlation_id, priority, stale)
        if isinstance(ticket, Overloaded):
            log.debug("transform refused before fetching: {why}", why=str(ticket))
            return self._shed(key, image_request, request, fmt, ticket, priority)
        return self._fetch_and_render(key, image_request, request, fmt, log, stale, wait,
                                      on_rendered, priority, ticket).addBoth(ticket.passing)

    @inlineCallbacks
    def _fetch_and_render(self, key, image_request, request, fmt, log, stale, wait,
                          on_rendered, priority, ticket):
        rt, started = self.runtime, time.perf_counter()
        conditional = image_request
        if stale is not None and (stale.source_etag or stale.source_last_modified):
            conditional = image_request.evolve(validators=_validators(stale))
        try:
            fetching = rt.pm.hook.mediaproxy_fetch_source(
                image_request=conditional, request=request, runtime=rt)
            if fetching is None:
                raise SourceError(404, "source_not_found", "no plugin serves this source")
            source = yield fetching
            if self.on_new_source is not None and not source.not_modified:
                self.on_new_source(image_request, request)
        except SourceError as e:
            # a missing original is the client's business (404 in the access line), not news
            (log.debug if e.status == 404 else log.info)(
                "source unavailable: {error} ({status})", error=e.error, status=e.status)
            rt.emit("source.error", correlation_id=request.correlation_id, status=e.status)
            if e.parameter is not None:     # a parameter's fetch (an overlay): JSON, uncached
                return Rejection(e.status, e.error, e.message, e.parameter)
            if stale is not None and e.status in STALE_IF_ERROR_STATUSES:
                log.info("serving the stale copy of {key}: the backend failed", key=key)
                return Stale(stale)
            return (yield self._placeholder(image_request, fmt, e.status, e.error, e.message))
        if source.not_modified and stale is not None:
            entry = attrs.evolve(stale, created_at=time.time())
            log.debug("{source} not modified at the backend; entry refreshed",
                      source=image_request.source_path)
            rt.emit("cache.revalidated", correlation_id=request.correlation_id)
            if on_rendered is not None:
                on_rendered(entry)
            yield self._store(key, entry, wait, log)
            return entry
        fetched = time.perf_counter()
        spec = transform_spec(image_request, fmt, rt.config)
        spec = attrs.evolve(spec, max_transform_bytes=min(   # at most what all transforms get
            spec.max_transform_bytes, rt.admission.capacity))
        steps = tuple(step for steps in rt.pm.hook.mediaproxy_transform_steps(
            image_request=image_request, spec=spec) or () for step in (steps or ()))
        output = rt.pm.hook.mediaproxy_output(image_request=image_request, spec=spec)
        budgeted = output.spec if output is not None and output.spec is not None else spec
        store_key = key
        try:
            # The estimate (of a plugin's output spec where it has one) beside the pool, a wait
            # for room in the memory budget, the render; the timeout starts once admitted.
            estimated = yield rt.run_inspection(_estimate, source.body, budgeted, rt.decoded, steps)
            nbytes = estimated.bytes
            if depends_on_source(fmt):
                # Now the output format is known: its entry may exist under the explicit key.
                # (Remembered only once that key holds the result: until then requests for
                # this token keep joining this production under its key.)
                resolved = (image_request.tenant, image_request.source_path, fmt)
                store_key = cache_key(image_request, rt.params, estimated.format)
                if store_key != key:
                    found = yield self._fresh(store_key)
                    if found is not None:
                        self._resolved[resolved] = estimated.format
                        return found
            ticket.leave()   # counted in the queue (or running) from here
            admitting = rt.admission.reserve(nbytes, request.correlation_id,
                                             priority=priority, cost=nbytes,
                                             since=ticket.since)
            self._admitting[key] = admitting
            try:
                reservation = yield admitting.addErrback(_too_large)
            finally:
                if self._admitting.get(key) is admitting:
                    del self._admitting[key]
            d = rt.run_reserved(reservation, render_and_tag, source.body, spec, steps,
                                image_request, rt.decoded, output)
            d.addTimeout(rt.config.limits.transform_timeout, rt.reactor)
            rendered, etag, busy = yield d
        except imaging.TransformTimeout:
            log.warn("transform exceeded {timeout} s; stopped",
                     timeout=rt.config.limits.transform_timeout)
            return Rejection(503, "transform_timeout", "the image took too long to process",
                             headers=[("Retry-After", "5")])
        except imaging.ImageError as e:
            log.info("source not usable: {error}: {message}", error=e.error, message=e.message)
            rt.emit("transform.error", correlation_id=request.correlation_id, error=e.error)
            if isinstance(e, imaging.BudgetExceeded):   # JSON, never cached
                return Rejection(e.status, e.error, e.message)
            return (yield self._placeholder(image_request, fmt, e.status, e.error, e.message))
        except Overloaded as e:
            log.info("transform refused: {why}", why=str(e))
            if stale is not None:
                return Stale(stale)   # within stale-if-error: the old copy beats a 503
            return (yield self._shed(key, image_request, request, fmt, e, priority))
        except CancelledError:
            log.info("every client of {key} went away before it was admitted; not rendered",
                     key=key)
            return Rejection(503, "overloaded", "the client went away")
        except DeferredTimeout:
            log.warn("transform exceeded {timeout} s; abandoned",
                     timeout=rt.config.limits.transform_timeout)
            return Rejection(503, "transform_timeout", "the image took too long to process",
                             headers=[("Retry-After", "5")])
        done = time.perf_counter()
        log.debug("rendered {source} -> {out_format} {width}x{height}, {size} bytes "
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
        if on_rendered is not None:
            on_rendered(entry)
        stored = self._store(store_key, entry, wait, log)
        if output is None:   # a plugin's output is no variant to offer a shed request
            self.variants.add(image_request, request, store_key, rendered.width, rendered.format)
        if store_key != key:
            self._resolved[resolved] = estimated.format
            if rt.cache.shared:
                # and for the other processes and nodes, before the coalescing lock is released
                note = CacheEntry(body=estimated.format.encode("ascii"),
                                  content_type=RESOLUTION_TYPE, created_at=now, etag="",
                                  last_modified=entry.last_modified)
                noted = rt.cache.set(resolution_key(image_request, fmt), note, shared_only=True)
                stored = gatherResults([stored, noted if wait else succeed(None)],
                                       consumeErrors=True)
        yield stored
        return entry

    def _resolved_elsewhere(self, image_request, fmt) -> Deferred:
        """For a lock follower whose token only the source decides: what another process or
        node resolved it to (its resolution entry), and the result under that format's key,
        as a :class:`Collapsed` (None when either is missing or not fresh)."""
        rt = self.runtime

        def resolved(hit):
            if hit is None or hit[0].content_type != RESOLUTION_TYPE:
                return None
            out = hit[0].body.decode("ascii", "replace")
            self._resolved[image_request.tenant, image_request.source_path, fmt] = out
            return self._fresh(cache_key(image_request, rt.params, out)).addCallback(
                lambda found: Collapsed(found.entry) if found is not None else None)

        return rt.cache.get(resolution_key(image_request, fmt)).addCallback(resolved)

    def _shed(self, key, image_request, request, fmt, e: Overloaded, priority) -> Deferred:
        """What a request the budget shed gets: for a live one, the nearest variant of its
        source in the cache (``processing.offer_nearest``), else 503 with Retry-After. A shed
        request is forgotten by the access counts: the warm-up renders it again only once it
        is asked for again."""
        self.popular.forget(key)
        rt = self.runtime
        if priority != LIVE or not rt.config.processing.offer_nearest:
            return succeed(overloaded(e))

        def offered(nearest):
            if nearest is None:
                return overloaded(e)
            rt.emit("admission.nearest", correlation_id=request.correlation_id)
            return nearest

        return self.variants.nearest(rt.cache, image_request, request, fmt, key).addCallback(
            offered)

    def _fresh(self, key, log=None) -> Deferred:
        """A :class:`Found` for ``key`` when a layer holds it fresh, else None."""
        rt = self.runtime

        def fresh(hit):
            if hit is None or not is_fresh(*hit, rt.config.cache, layers=rt.cache.layers):
                return None
            return Found(*hit)

        return rt.cache.get(key, log).addCallback(fresh)

    def _store(self, key, entry, wait: bool, log=None) -> Deferred:
        stored = self.runtime.cache.set(key, entry, log=log)
        return stored if wait else succeed(None)

    @inlineCallbacks
    def _placeholder(self, image_request, fmt, status, error, message):
        rt, p = self.runtime, image_request.params
        rendered = yield rt.run_in_pool(imaging.placeholder, p.get("w") or 0, p.get("h") or 0,
                                        fmt or "jpeg")
        return ImageResponse(
            status=image_request.failure_status or status, body=rendered.body,
            content_type=rendered.content_type,
            headers=[("Cache-Control", shorten_cache_control(
                         rt.config.cache.error_cache_control, rt.config.cache.transient_max_age)),
                     ("X-Placeholder", error)],
            cache_status="MISS")

    def _hit_headers(self, layer: str, vary: bool) -> tuple[str, tuple]:
        """The X-Cache token and the headers of a fresh hit in ``layer`` (what
        :meth:`_from_entry` gives it), remembered for the configuration object they were made
        from: a hit's headers depend on nothing else."""
        table = self._hits.table(self.runtime.config.cache)
        found = table.get((layer, vary))
        if found is None:
            response = self._from_entry(CacheEntry(body=b"", content_type="", created_at=0.0,
                                                   etag="", last_modified=None),  # type: ignore[arg-type]  # a stand-in: only its headers are kept
                                        f"HIT-{layer.upper()}", vary,
                                        CacheStatus(hit=True, detail=layer))
            found = (response.cache_status, response.headers)
            self._hits.put((layer, vary), found)
        return found

    def _from_entry(self, entry: CacheEntry, cache_status: str, vary: bool,
                    status: CacheStatus, stale: bool = False) -> ImageResponse:
        """``cache_status`` is the X-Cache token, ``status`` the Cache-Status; a ``stale`` copy
        gets a short max-age and no ``immutable`` (a CDN must not keep it for a year)."""
        cache = self.runtime.config.cache
        cache_control = cache.cache_control
        if stale:
            cache_control = shorten_cache_control(cache_control, cache.transient_max_age)
        headers = [("Cache-Control", cache_control)]
        if vary:
            headers.append(("Vary", "Accept"))
        if cache.cache_status:
            headers.append(("Cache-Status", status.header(cache.cache_status)))
        return ImageResponse(status=200, body=entry.body, content_type=entry.content_type,
                             headers=headers, etag=entry.etag, last_modified=entry.last_modified,
                             cache_status=cache_status)

    @hookimpl
    def mediaproxy_services(self, runtime):
        """The background job queue and the warming (:func:`.warmup.warmup_services`)."""
        return warmup_services(runtime, self)


@hookimpl
def mediaproxy_configure(runtime):
    runtime.pm.register(ImagePipeline(runtime), "mediaproxy.builtin.pipeline.instance")
