"""
The handles every plugin may use, made once by the composition root (:mod:`mediaproxy.tap`):
the config, the plugin manager, the reactor, the transform thread pool, the backend client, the
layered cache and the parameter registry. It owns no behaviour of its own beyond running work in
the pool with a bounded queue and emitting events.
"""

from __future__ import annotations

from typing import Any, Callable

import attrs
from twisted.internet.defer import Deferred, fail
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from .models import Event, Param


class Overloaded(Exception):
    """The transform queue is full: the request is answered 503 at once."""


@attrs.define
class Runtime:
    config: Any
    reactor: Any
    pm: Any = None
    threadpool: Any = None
    upstream: Any = None
    fetcher: Any = None
    cache: Any = None
    params: dict[str, Param] = attrs.field(factory=dict)
    #: every query name of every registered parameter (names and aliases)
    param_names: frozenset = frozenset()
    log: Logger = attrs.field(factory=lambda: Logger(namespace="mediaproxy"))
    _queued: int = 0

    @property
    def pool_size(self) -> int:
        return self.threadpool.max if self.threadpool is not None else 0

    @property
    def pending_transforms(self) -> int:
        """Work submitted to the pool and not finished yet (running plus waiting)."""
        return self._queued

    def run_in_pool(self, fn: Callable[..., Any], *args, **kwargs) -> Deferred:
        """Run ``fn`` in the transform thread pool; fail with :class:`Overloaded` when more
        than ``processing.queue_limit`` calls are already pending."""
        if self._queued >= self.config.processing.queue_limit:
            return fail(Overloaded("transform queue full"))
        self._queued += 1

        def run():
            # Counted down in the reactor when the thread is done with it, not when a waiting
            # Deferred gives up (a timed-out transform still occupies its thread).
            try:
                return fn(*args, **kwargs)
            finally:
                self.reactor.callFromThread(self._finished)

        return deferToThreadPool(self.reactor, self.threadpool, run)

    def _finished(self) -> None:
        self._queued -= 1

    def set_params(self, params: dict[str, Param]) -> None:
        self.params = params
        self.param_names = frozenset(n for name, p in params.items() for n in (name, *p.aliases))

    def emit(self, name: str, value: float = 1.0, correlation_id: str = "", **fields) -> None:
        """Send an :class:`~mediaproxy.models.Event` to every ``mediaproxy_event`` hook."""
        if self.pm is None:
            return
        try:
            self.pm.hook.mediaproxy_event(event=Event(name, value, correlation_id, fields))
        except Exception:
            self.log.failure("an event hook raised for {event_name}", event_name=name)
