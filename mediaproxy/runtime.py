"""
The runtime: the handles every plugin may use, made once by the composition root
(:func:`mediaproxy.tap.build_runtime`) and **complete before any plugin runs**: every field
below is set before ``mediaproxy_cache_layers`` and ``mediaproxy_configure`` are called, so a
plugin never builds a shared part lazily nor looks another plugin up to find one.

It owns no behaviour of its own beyond running work in the transform pool (small jobs with a
bounded queue, transforms through the memory budget of :mod:`mediaproxy.admission`) and
emitting events. On a configuration reload (``SIGHUP``) ``config``, ``params`` and
``param_names`` are replaced; nothing else changes while the process lives (the budget, like
the pool's size, is fixed at start).
"""

from __future__ import annotations

import os
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

import attrs
from twisted.internet.defer import Deferred, fail
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from .admission import LIVE, MemoryBudget, Overloaded, Priority, TooLarge
from .inflight import InFlight
from .jobs import JobQueue
from .models import Param, make_event

if TYPE_CHECKING:   # the types of the fields, for readers and type checkers only
    import pluggy
    from twisted.python.threadpool import ThreadPool

    from .cache.layered import LayeredCache
    from .cache.purge import PurgeFeed
    from .cache.redis import RedisClient
    from .config import Config
    from .http.fetch import SourceFetcher
    from .http.upstream import Upstream
    from .imaging.decoded import DecodedCache
    from .monitoring.collect import WorkerMetrics
    from .monitoring.health import HealthMonitor


__all__ = ["Overloaded", "Runtime", "TooLarge", "decoded_cache_capacity",
           "default_transform_memory", "memory_budget"]

#: The automatic transform memory budget is at most this many bytes (see
#: :func:`default_transform_memory` and docs/performance.md, "The transform memory budget").
AUTO_TRANSFORM_MEMORY_CAP = 640 * 1024 * 1024
#: ... and at most this share of the machine's memory.
AUTO_TRANSFORM_MEMORY_SHARE = 1 / 8


_thread_state = threading.local()


def _nicer_thread(niceness: int) -> None:
    """Lower the calling pool thread's scheduling priority by ``niceness`` (once per thread;
    Linux schedules threads as tasks, so the reactor thread keeps its priority). Where the
    platform does not allow it, nothing happens."""
    if getattr(_thread_state, "niceness", 0) == niceness:
        return
    _thread_state.niceness = niceness
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, os.getpid()) + niceness)
    except (AttributeError, OSError):
        pass


def default_transform_memory(total_memory: int) -> int:
    """``limits.transform_memory = 0`` (auto): an eighth of the machine's memory, at most
    640 MiB. The cap keeps the whole process under 1 GiB of RSS: the estimates
    (:func:`mediaproxy.imaging.estimate_bytes`) are upper bounds of the transforms' real peaks,
    and the memory cache, the source cache and the interpreter take the rest; the share keeps
    a small machine's other processes alive."""
    return max(1, min(int(total_memory * AUTO_TRANSFORM_MEMORY_SHARE),
                      AUTO_TRANSFORM_MEMORY_CAP))


def transform_memory(config, total_memory: int | None = None) -> int:
    """The bytes all transforms may hold: ``limits.transform_memory`` (0:
    :func:`default_transform_memory` of ``total_memory``, the machine's by default)."""
    capacity = config.limits.transform_memory
    if not capacity:
        if total_memory is None:
            import psutil

            total_memory = psutil.virtual_memory().total
        capacity = default_transform_memory(total_memory)
    return capacity


#: ``processing.decoded_cache_bytes = 0`` (auto): this share of the transform memory budget,
DECODED_CACHE_SHARE = 1 / 4
#: ... at most this many bytes: the srcset of one 12 MP JPEG (its entries at 1/4 and 1/2
#: scale take 5 and 14 MiB) with room to spare, while the largest single transform keeps
#: almost the whole budget (616 of the automatic 640 MiB). Small, because a process keeps it
#: whatever the traffic: under a cold load of new sources it only holds decodes nobody reuses
#: (64 MiB a process doubled the proxy's peak RSS in the shared bench's load scenario).
DECODED_CACHE_CAP = 24 * 1024 * 1024
#: A configured size is at most this share of the transform memory budget: the rest admits
#: transforms.
DECODED_CACHE_MAX_SHARE = 1 / 2


def decoded_cache_bytes(setting: int, budget: int) -> int:
    """The decoded-image cache's bytes (:mod:`mediaproxy.imaging.decoded`) for
    ``processing.decoded_cache_bytes = setting`` and a transform memory budget of ``budget``
    bytes: 0 is :data:`DECODED_CACHE_SHARE` of the budget, at most :data:`DECODED_CACHE_CAP`;
    a negative value turns the cache off (0 bytes); a positive one is taken as is but at most
    :data:`DECODED_CACHE_MAX_SHARE` of the budget."""
    if setting < 0:
        return 0
    if setting == 0:
        return min(int(budget * DECODED_CACHE_SHARE), DECODED_CACHE_CAP)
    return min(setting, int(budget * DECODED_CACHE_MAX_SHARE))


def decoded_cache_capacity(config, total_memory: int | None = None) -> int:
    """:func:`decoded_cache_bytes` of ``config``: taken out of :func:`transform_memory` (the
    composition makes the cache, :attr:`Runtime.decoded`, with it)."""
    return decoded_cache_bytes(config.processing.decoded_cache_bytes,
                               transform_memory(config, total_memory))


def memory_budget(config, reactor, slots: int, emit=lambda *a, **kw: None,
                  total_memory: int | None = None) -> MemoryBudget:
    """The transform memory budget ``config`` asks for: :func:`transform_memory` less the
    decoded-image cache's bytes (:func:`decoded_cache_bytes`: the two stay within it),
    ``slots`` transforms at once, ``processing.queue_limit`` waiters for
    ``processing.queue_timeout`` seconds at most (``processing.queue_target`` while the
    queue is standing)."""
    total = transform_memory(config, total_memory)
    capacity = total - decoded_cache_bytes(config.processing.decoded_cache_bytes, total)
    return MemoryBudget(capacity=capacity, slots=max(1, slots),
                        queue_limit=config.processing.queue_limit,
                        queue_timeout=config.processing.queue_timeout,
                        queue_target=config.processing.queue_target, reactor=reactor,
                        emit=emit, cheap_first_after=config.processing.cheap_first_after)


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
    #: the transform memory budget (:mod:`mediaproxy.admission`): admits transforms by their
    #: estimated bytes, at most one per thread; used by :meth:`run_admitted`
    admission: MemoryBudget = attrs.field(default=attrs.Factory(
        lambda self: memory_budget(self.config, self.reactor, self.threadpool.max, self.emit),
        takes_self=True))
    #: the background job queue (:mod:`mediaproxy.jobs`: warm-up, pre-render, refreshes),
    #: behind every live request; started and stopped by the service tree (the pipeline's
    #: services)
    jobs: JobQueue = attrs.field(default=attrs.Factory(
        lambda self: JobQueue.from_config(self.config.jobs, self.reactor, self.emit),
        takes_self=True))
    #: decoded sources kept for their next sizes (:mod:`mediaproxy.imaging.decoded`), shared
    #: by the pool's threads; its bytes (:func:`decoded_cache_capacity`) are taken out of
    #: :attr:`admission`'s capacity. Made by the composition; None: no cache
    decoded: DecodedCache | None = None
    log: Logger = attrs.field(factory=lambda: Logger(namespace="mediaproxy"))
    #: requests in flight on the main port by route kind (:mod:`mediaproxy.inflight`)
    inflight: InFlight = attrs.field(factory=InFlight)
    #: True once a graceful stop has begun: the ports are closed, ``ready`` answers 503, and
    #: the requests in flight are let finish
    draining: bool = False
    #: when this runtime was made (``time.time()``), for the uptime health reports
    started: float = attrs.field(factory=time.time)
    #: in the supervisor of several workers serving /metrics (``server.workers`` > 1 and
    #: ``monitoring.listen`` set): what it knows of its workers' metrics, merged into its own
    #: at every scrape (:class:`~mediaproxy.monitoring.collect.WorkerMetrics`); else None
    workers: WorkerMetrics | None = None
    #: with several workers on the host: the rate-limit exchange among them (``exchange(
    #: {key: spent})`` -> Deferred of ``{key: total}``, :mod:`mediaproxy.workercontrol`), set
    #: by the composition; else None
    exchange: Any = None
    #: the health snapshot (:class:`~mediaproxy.monitoring.health.HealthMonitor`), made by
    #: the composition with the runtime and started by the health plugin's service
    health: HealthMonitor | None = None
    #: work in the pool not finished yet (small jobs and admitted transforms)
    _queued: int = 0
    #: small jobs (run_in_pool) among them: what processing.queue_limit bounds there
    _small: int = 0
    #: the ``mediaproxy_event`` handlers (see :meth:`emit`) and the manager's generation
    #: they were derived at
    _events: list | None = None
    _events_generation: int = -1
    #: hook name -> (the spec's argument names, the implementations :meth:`call_first` /
    #: :meth:`call_all` call directly with the arguments each names, None for all of the
    #: spec's) or None (pluggy's own path), derived at ``_hooks_generation``
    _hooks: dict = attrs.field(factory=dict)
    _hooks_generation: int = -1

    def __attrs_post_init__(self) -> None:
        # The backend clients report every attempt (backend.response, backend.retry: see
        # mediaproxy.http.policy) as events of this runtime.
        for client in (self.upstream, self.fetcher):
            policy = getattr(client, "backend_policy", None)
            if policy is not None and policy.emit is None:
                policy.emit = self.emit

    @property
    def pool_size(self) -> int:
        return self.threadpool.max

    @property
    def pending_transforms(self) -> int:
        """Work submitted to the pool and not finished yet (running plus waiting for a
        thread), plus transforms waiting for room in the memory budget."""
        return self._queued + self.admission.waiting

    def run_in_pool(self, fn: Callable[..., Any], *args, **kwargs) -> Deferred:
        """Run ``fn`` (small work: a header probe, a placeholder) in the transform thread
        pool; fail with :class:`Overloaded` when more than ``processing.queue_limit`` calls
        are already pending. A transform goes through :meth:`run_admitted` instead."""
        if self._small >= self.config.processing.queue_limit:
            return fail(Overloaded("transform queue full", self.admission.retry_after()))
        self._small += 1
        return self._submit(fn, args, kwargs, None)

    def run_inspection(self, fn: Callable[..., Any], *args) -> Deferred:
        """Run ``fn(*args)``, a short inspection that decodes nothing (reading a source's
        header and structure for its estimate), in the reactor's own thread pool (Twisted's,
        which also resolves host names) rather than the transform pool: it must not wait
        behind the renders it is about to be admitted among. Counted against
        ``processing.queue_limit`` like :meth:`run_in_pool`."""
        if self._small >= self.config.processing.queue_limit:
            return fail(Overloaded("transform queue full", self.admission.retry_after()))
        self._small += 1

        def done(result):
            self._small -= 1
            return result

        return deferToThreadPool(self.reactor, self.reactor.getThreadPool(), fn,
                                 *args).addBoth(done)

    def run_admitted(self, nbytes: int, fn: Callable[..., Any], *args,
                     correlation_id: str = "", priority: Priority = LIVE,
                     cost: float | None = None) -> Deferred:
        """Run ``fn(*args)`` in the pool once the memory budget admits ``nbytes`` (its
        estimate) in its ``priority`` class and by its ``cost``:
        :meth:`~mediaproxy.admission.MemoryBudget.reserve`, then
        :meth:`run_reserved`. Fails with :class:`~mediaproxy.admission.TooLarge` at once when
        the estimate exceeds the whole budget, with :class:`Overloaded` when the budget's queue
        is full or the wait exceeds ``processing.queue_timeout``."""
        return self.admission.reserve(nbytes, correlation_id, priority=priority,
                                      cost=cost).addCallback(
            lambda reservation: self.run_reserved(reservation, fn, *args))

    def run_reserved(self, reservation, fn: Callable[..., Any], *args) -> Deferred:
        """Run ``fn(*args)`` in the pool under ``reservation`` (a
        :class:`~mediaproxy.admission.Reservation` of :attr:`admission`), and release it when
        the pool thread returns: not when a caller's deadline gives up on the Deferred, since
        a timed-out transform still holds its memory until its thread stops. Admitted work
        has its thread (the budget admits at most one per thread), so it is not counted
        against the ``processing.queue_limit`` of :meth:`run_in_pool` (its wait for admission
        was)."""
        return self._submit(fn, args, {}, reservation)

    def _submit(self, fn, args, kwargs, reservation) -> Deferred:
        self._queued += 1

        def run():
            # Counted down (and the reservation given back) in the reactor when the thread is
            # done with it, not when a waiting Deferred gives up: a timed-out transform still
            # occupies its thread and its memory.
            _nicer_thread(self.config.processing.thread_niceness)
            try:
                return fn(*args, **kwargs)
            finally:
                self.reactor.callFromThread(self._finished, reservation)

        return deferToThreadPool(self.reactor, self.threadpool, run)

    def _finished(self, reservation=None) -> None:
        self._queued -= 1
        if reservation is None:
            self._small -= 1
        else:
            reservation.release()

    def breakers(self) -> dict[str, Any]:
        """Every circuit breaker of the process by name (a bounded set: ``passthrough``, the
        pass-through client's, and ``images``, the source fetcher's), for the breaker metrics,
        readiness and the admin reset."""
        found = {}
        for client in (self.upstream, self.fetcher):
            breaker = getattr(client, "breaker", None)
            if breaker is not None:
                found[breaker.name] = breaker
        return found

    def set_params(self, params: dict[str, Param]) -> None:
        self.params = params
        self.param_names = _names(params)

    def emit(self, name: str, value: float = 1.0, correlation_id: str = "", **fields) -> None:
        """Send an :class:`~mediaproxy.models.Event` to every ``mediaproxy_event`` hook.

        The implementations are called directly, in pluggy's order, from a list derived again
        whenever a plugin is registered or unregistered (the manager's ``generation``): a
        request sends several events, and pluggy's general call machinery cost more than the
        handlers themselves. A hook wrapper among them, or a manager that does not count its
        changes, takes pluggy's own path."""
        event = make_event(name, value, correlation_id, fields)
        try:
            calls = self._event_calls()
            if calls is None:
                self.pm.hook.mediaproxy_event(event=event)
            else:
                for function, takes_event in calls:
                    if takes_event:
                        function(event)
                    else:
                        function()
        except Exception:
            self.log.failure("an event hook raised for {event_name}", event_name=name,
                             correlation_id=correlation_id)

    def _event_calls(self) -> list | None:
        generation = getattr(self.pm, "generation", None)
        if generation is None:
            return None
        if generation != self._events_generation:
            impls = self.pm.hook.mediaproxy_event.get_hookimpls()
            if any(impl.hookwrapper or getattr(impl, "wrapper", False) for impl in impls):
                calls = None
            else:
                calls = [(impl.function, bool(impl.argnames)) for impl in reversed(impls)]
            self._events_generation, self._events = generation, calls
        return self._events

    def _hook_calls(self, name: str) -> tuple | None:
        """``(spec argnames, [(function, argnames)])`` of hook ``name`` in pluggy's call order
        (``argnames`` None: the spec's, in its order), derived again
        whenever the manager's ``generation`` changes; None (pluggy's own path) when a hook
        wrapper or an implementation with default arguments is among them, or the manager does
        not count its changes."""
        generation = getattr(self.pm, "generation", None)
        if generation is None:
            return None
        if generation != self._hooks_generation:
            self._hooks = {}
            self._hooks_generation = generation
        try:
            return self._hooks[name]
        except KeyError:
            caller = getattr(self.pm.hook, name)
            impls = caller.get_hookimpls()
            spec = getattr(getattr(caller, "spec", None), "argnames", None)
            if spec is None or any(impl.hookwrapper or getattr(impl, "wrapper", False)
                                   or getattr(impl, "kwargnames", ()) for impl in impls):
                calls = None   # a wrapper, or arguments with defaults: pluggy's own path
            else:
                # an implementation naming every argument of the spec, in its order (every
                # built-in one), is given one argument list made once per call
                spec = tuple(spec)
                calls = (spec, [(impl.function,
                                 None if tuple(impl.argnames) == spec else tuple(impl.argnames))
                                for impl in reversed(impls)])
            self._hooks[name] = calls
            return calls

    def call_first(self, name: str, **kwargs):
        """``pm.hook.<name>(**kwargs)`` for a *firstresult* hook, the same calls in the same
        order (each implementation given the arguments it names; the first result that is not
        None wins), without pluggy's general machinery: a cache hit asks four hooks, and that
        machinery cost more than the built-in implementations it called."""
        calls = self._hook_calls(name)
        if calls is None:
            return getattr(self.pm.hook, name)(**kwargs)
        # _results' loop, without a generator per call (three calls a hit)
        spec, impls = calls
        full = None
        for function, argnames in impls:
            if argnames is None:
                if full is None:
                    full = [kwargs[arg] for arg in spec]
                result = function(*full)
            else:
                result = function(*[kwargs[arg] for arg in argnames])
            if result is not None:
                return result
        return None

    def call_all(self, name: str, **kwargs) -> list:
        """``pm.hook.<name>(**kwargs)`` for a hook that collects every result: the results
        that are not None, in pluggy's order (see :meth:`call_first`)."""
        calls = self._hook_calls(name)
        if calls is None:
            return getattr(self.pm.hook, name)(**kwargs)
        return list(_results(calls, kwargs))


def _results(calls, kwargs):
    """The results that are not None of the implementations in ``calls`` (the spec's argument
    names and the (function, argument names) of each implementation, in pluggy's order),
    each given the arguments it names: what :meth:`Runtime.call_first` and
    :meth:`Runtime.call_all` take the first of, or all."""
    spec, impls = calls
    full = None
    for function, argnames in impls:
        if argnames is None:
            if full is None:
                full = [kwargs[arg] for arg in spec]
            result = function(*full)
        else:
            result = function(*[kwargs[arg] for arg in argnames])
        if result is not None:
            yield result
