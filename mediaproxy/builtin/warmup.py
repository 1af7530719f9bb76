"""
Periodic warm-up (``warmup.interval`` > 0): every interval, the most requested variants
(``warmup.top``, by the access counts the pipeline keeps) that are missing from the cache, or
stale, are rendered again, **one at a time**, and only while no live transform is waiting, so
the warm-up never competes with traffic. Useful after a restart with a shared layer, or to keep
popular variants fresh.
"""

from __future__ import annotations

import time

from twisted.application.internet import TimerService
from twisted.internet.defer import inlineCallbacks
from twisted.logger import Logger

from .. import hookimpl
from ..cache.keys import fresh_ttls
from ..models import RequestInfo

log = Logger(namespace="mediaproxy.warmup")


class WarmUp:
    def __init__(self, runtime, top: int):
        self.runtime = runtime
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
        pipeline = rt.pm.get_plugin("mediaproxy.builtin.pipeline.instance")
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


@hookimpl
def mediaproxy_services(runtime):
    conf = runtime.config.warmup
    if conf.interval <= 0:
        return []
    warm = WarmUp(runtime, conf.top)
    runtime.pm.register(warm, "mediaproxy.builtin.warmup.job")
    timer = TimerService(conf.interval, warm.run)
    timer.clock = runtime.reactor
    return [timer]
