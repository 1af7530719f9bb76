"""
The file layer's own small thread pool (:mod:`mediaproxy.cache.files`): every disk call runs
there, never in the reactor, with a bound on queued calls.
"""

from __future__ import annotations

from typing import Any, Callable

import attrs
from twisted.internet.defer import Deferred, fail
from twisted.internet.threads import deferToThreadPool

from ...threadpool import ThreadPool


class DiskBusy(Exception):
    """The disk pool has too much work queued (or is not running): the call was refused."""


@attrs.define(eq=False)
class DiskPool:
    """A small thread pool for the file layer's disk I/O, with a bound on queued calls so a
    stalled disk makes the layer fail fast instead of piling up work."""

    reactor: Any
    threads: int = 2
    max_pending: int = 1024
    name: str = "mediaproxy-filecache"
    pending: int = 0
    pool: ThreadPool = attrs.field(init=False)

    def __attrs_post_init__(self):
        self.pool = ThreadPool(minthreads=0, maxthreads=self.threads, name=self.name)

    @property
    def running(self) -> bool:
        return self.pool.started and not self.pool.joined

    def start(self) -> None:
        if not self.pool.started:
            self.pool.start()

    def stop(self) -> None:
        if self.pool.started:
            self.pool.stop()

    def run(self, fn: Callable, *args) -> Deferred:
        if not self.running:
            return fail(DiskBusy("the disk pool is not running"))
        if self.pending >= self.max_pending:
            return fail(DiskBusy(f"{self.pending} disk operations already queued"))
        self.pending += 1

        def done(result):
            self.pending -= 1
            return result

        return deferToThreadPool(self.reactor, self.pool, fn, *args).addBoth(done)
