"""
The runtime: the handles every plugin may use, made once by the composition root
(:func:`mediaproxy.tap.build_runtime`) and **complete before any plugin runs**: every field
below is set before ``mediaproxy_cache_layers`` and ``mediaproxy_configure`` are called, so a
plugin never builds a shared part lazily nor looks another plugin up to find one.

It owns no behaviour of its own beyond running work in the transform pool with a bounded queue
and emitting events. On a configuration reload (``SIGHUP``) ``config``, ``params`` and
``param_names`` are replaced; nothing else changes while the process lives.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import attrs
from twisted.internet.defer import Deferred, fail
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from .models import Event, Param

if TYPE_CHECKING:   # the types of the fields, for readers and type checkers only
    import pluggy
    from twisted.python.threadpool import ThreadPool

    from .cache.layered import LayeredCache
    from .cache.purge import PurgeFeed
    from .cache.redis import RedisClient
    from .config import Config
    from .http.fetch import SourceFetcher
    from .http.upstream import Upstream


class Overloaded(Exception):
    """The transform queue is full: the request is answered 503 at once."""


def _names(params: dict[str, Param]) -> frozenset[str]:
    return frozenset(n for name, p in params.items() for n in (name, *p.aliases))


@attrs.define(eq=False)
class Runtime:
    #: the validated configuration (replaced on reload)
    config: Config
    #: the reactor everything runs on (injected: a ``MemoryReactorClock`` in unit tests)
    reactor: Any
    #: the plugin manager: the registry of every plugin and the way to call hooks
    pm: pluggy.PluginManager
    #: the transform thread pool (started and stopped by the service tree)
    threadpool: ThreadPool
    #: the pass-through client: streams every non-image request to the backend
    upstream: Upstream
    #: the source client: fetches originals from the backend for the image pipeline
    fetcher: SourceFetcher
    #: the layered result cache; its layers come from ``mediaproxy_cache_layers``, collected
    #: right after the runtime is made and before ``mediaproxy_configure``
    cache: LayeredCache
    #: the process's one Redis client (cache layer, locks, rate-limit sync, purge feed), or
    #: None when no Redis is configured
    redis: RedisClient | None = None
    #: tells other nodes about purges and applies theirs; present whenever ``redis`` is
    purge_feed: PurgeFeed | None = None
    #: every registered transform parameter by name (``mediaproxy_params``)
    params: dict[str, Param] = attrs.field(factory=dict)
    #: every query name of every registered parameter (names and aliases)
    param_names: frozenset[str] = attrs.field(
        default=attrs.Factory(lambda self: _names(self.params), takes_self=True))
    log: Logger = attrs.field(factory=lambda: Logger(namespace="mediaproxy"))
    _queued: int = 0

    @property
    def pool_size(self) -> int:
        return self.threadpool.max

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
        self.param_names = _names(params)

    def emit(self, name: str, value: float = 1.0, correlation_id: str = "", **fields) -> None:
        """Send an :class:`~mediaproxy.models.Event` to every ``mediaproxy_event`` hook."""
        try:
            self.pm.hook.mediaproxy_event(event=Event(name, value, correlation_id, fields))
        except Exception:
            self.log.failure("an event hook raised for {event_name}", event_name=name)
