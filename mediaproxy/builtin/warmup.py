"""
Periodic warm-up (``warmup.interval`` > 0): every interval, the most requested variants
(``warmup.top``, by the access counts the pipeline keeps) that are missing from the cache, or
stale, are rendered again, **one at a time**, and only while no live transform is waiting, so
the warm-up never competes with traffic. Useful after a restart with a shared layer, or to keep
popular variants fresh.

The pipeline keeps the access counts and makes the copies, so the warm-up job is one of its
services (:meth:`ImagePipeline.mediaproxy_services`); this module is the job itself.
"""

from __future__ import annotations

import time

from twisted.application.internet import TimerService
from twisted.internet.defer import inlineCallbacks
from twisted.logger import Logger

from ..cache.keys import fresh_ttls
from ..models import RequestInfo

log = Logger(namespace="mediaproxy.warmup")


class WarmUp:
    """One warm-up job: ``pipeline`` is the :class:`~.pipeline.ImagePipeline` whose access
    counts choose the variants and whose ``refresh`` makes them."""

    def __init__(self, runtime, pipeline, top: int):
        self.runtime = runtime
        self.pipeline = pipeline
        self.top = top
        self.rendered = 0
        self.running = False

    @inlineCallbacks
    def run(self):
        """One pass; overlapping passes are skipped."""
        if self.running:
            return
        self.running = True
        rt = self.runtime
        pipeline = self.pipeline
        try:
            for key, image_request, fmt in pipeline.most_requested(self.top):
                if rt.pending_transforms > 0:
                    log.debug("live transforms waiting: warm-up pass stopped")
                    return
                hit = yield rt.cache.get(key)
                if hit is not None:
                    entry, layer = hit
                    if time.time() - entry.created_at <= fresh_ttls(rt.config.cache).get(
                            layer, float("inf")):
                        continue
                request = RequestInfo(method="GET", path=image_request.source_path,
                                      correlation_id=f"warmup-{key[-12:]}")
                yield pipeline.refresh(key, image_request, request, fmt,
                                       hit[0] if hit is not None else None)
                self.rendered += 1
        finally:
            self.running = False


def warmup_service(runtime, pipeline) -> TimerService | None:
    """The periodic warm-up for ``pipeline``, or None when ``warmup.interval`` is 0."""
    conf = runtime.config.warmup
    if conf.interval <= 0:
        return None
    timer = TimerService(conf.interval, WarmUp(runtime, pipeline, conf.top).run)
    timer.clock = runtime.reactor
    return timer
