"""
Each worker's share of the host's budgets (``server.workers`` > 1): the one place that turns
the configuration an operator wrote for the host into the one a worker runs with.

Every worker is a whole proxy with its own memory, so a per-process byte budget taken as it is
would be spent N times over: N workers with ``cache.memory.max_bytes = 128MiB`` hold up to
N x 128 MiB. :func:`per_worker` divides each such budget by N instead, so the host's total
stays what the operator configured (and what the automatic transform budget derives from the
machine's memory):

* ``cache.memory.max_bytes`` (the memory layer), ``cache.source.memory_bytes`` (originals kept
  after a fetch);
* ``limits.transform_memory``, the transform memory budget (0, automatic: the machine's share,
  :func:`host_transform_memory`);
* ``processing.decoded_cache_bytes`` when configured (a size: the host's, divided, at most half
  of the host's transform budget before the division). The automatic size (0) is derived from
  each worker's transform budget, so its share of the budget is divided with it; its 24 MiB
  cap (:data:`~mediaproxy.runtime.DECODED_CACHE_CAP`) is not: it is the working set of decode
  once, render many (one 12 MP source's entries at 1/4 and 1/2 scale), like a per-item limit.
  Divided, two workers' 12 MiB each could not keep a 4000x3000 JPEG's 1/2-scale decode: three
  srcsets of one took 11 decodes instead of 4, for 13 MiB less at the cold load's peak
  (docs/performance.md, "Every core"; a host preferring the memory configures the size);
* ``server.body_buffer_total`` and ``server.response_buffer_total`` (bytes held for slow
  uploads and slow readers), not below their minimums;
* ``processing.threads`` when automatic (0): the host's cores divided among the workers, at
  least one each, so the transform threads of all workers together are one per core, as in
  one process. One per core in *each* worker put twice the cores' worth of CPU-bound threads
  on the machine, and during an overload the reactors that answer cached hits and refusals
  waited behind them (docs/performance.md, "Overload": hits' p50 3 to 4 times lower with one
  thread per worker on 2 cores, at the same cold throughput). A number set is kept.

Not divided: ``ratelimit.max_keys`` (each worker sees every client, SO_REUSEPORT spreads one
client's connections over all of them, so each must be able to hold every active bucket; a
bucket is about a hundred bytes), per-request and per-item limits, and everything shared
(the file layer, Redis).
"""

from __future__ import annotations

import os

import attrs

#: auto uses no more workers than give each this much transform memory: below it a worker
#: would refuse (422 over_memory_budget) a photo that one process renders. By the estimates
#: (mediaproxy.imaging.estimate_bytes) a 24 MP JPEG resized to 1920 px takes 76 MiB as JPEG or
#: PNG and 123 MiB as WebP: 256 MiB renders two such at once.
MIN_WORKER_TRANSFORM_MEMORY = 256 * 1024 * 1024


def _total_memory() -> int:
    import psutil

    return psutil.virtual_memory().total


def host_transform_memory(config, workers: int, total_memory: int | None = None) -> int:
    """The transform memory budget of the whole host: ``limits.transform_memory`` when set;
    else, automatic, the machine's share (:data:`~mediaproxy.runtime.AUTO_TRANSFORM_MEMORY_SHARE`
    of ``total_memory``) with the per-process cap (:data:`~mediaproxy.runtime.
    AUTO_TRANSFORM_MEMORY_CAP`, which keeps one process under 1 GiB of RSS) applying to each of
    ``workers`` processes."""
    from .runtime import AUTO_TRANSFORM_MEMORY_CAP, AUTO_TRANSFORM_MEMORY_SHARE

    if config.limits.transform_memory:
        return config.limits.transform_memory
    total = _total_memory() if total_memory is None else total_memory
    return max(1, min(int(total * AUTO_TRANSFORM_MEMORY_SHARE),
                      AUTO_TRANSFORM_MEMORY_CAP * workers))


def worker_threads(config, workers: int, cores: int | None = None) -> int:
    """``processing.threads`` of one of ``workers`` workers: as set, or, automatic (0),
    ``cores`` divided by ``workers``, at least 1. ``cores`` by default: those this process may
    run on (its affinity, as ``server.workers = auto`` counts them), else the machine's."""
    if config.processing.threads:
        return config.processing.threads
    if cores is None:
        try:
            cores = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cores = os.cpu_count() or 1
    return max(1, cores // workers)


def per_worker(config, workers: int, total_memory: int | None = None,
               cores: int | None = None):
    """``config`` as one of ``workers`` worker processes runs it: every per-process budget
    divided by ``workers`` (see the module docstring). One worker: ``config`` itself."""
    if workers <= 1:
        return config

    def share(value: int, low: int = 0) -> int:
        return max(low, value // workers)

    server, cache, limits = config.server, config.cache, config.limits
    host_transform = host_transform_memory(config, workers, total_memory)
    transform = max(1, host_transform // workers)
    return attrs.evolve(
        config,
        server=attrs.evolve(
            server, body_buffer_total=share(server.body_buffer_total, 64 * 1024),
            response_buffer_total=share(server.response_buffer_total)),
        cache=attrs.evolve(
            cache, memory=attrs.evolve(cache.memory, max_bytes=share(cache.memory.max_bytes)),
            source=attrs.evolve(cache.source,
                                memory_bytes=share(cache.source.memory_bytes))),
        limits=attrs.evolve(limits, transform_memory=transform),
        processing=attrs.evolve(
            config.processing, threads=worker_threads(config, workers, cores),
            decoded_cache_bytes=decoded_share(config.processing.decoded_cache_bytes,
                                              host_transform, workers)))


def decoded_share(setting: int, host_transform: int, workers: int) -> int:
    """``processing.decoded_cache_bytes`` for one of ``workers`` workers of a host whose
    setting is ``setting`` and whose transform memory budget is ``host_transform`` bytes: a
    configured size is the host's, divided (off, -1, when a share would be less than a byte: 0
    would mean automatic); automatic (0) and off (negative) stay as they are (see the module
    docstring)."""
    from .runtime import decoded_cache_bytes

    if setting <= 0:
        return setting
    share = decoded_cache_bytes(setting, host_transform) // workers
    return share if share > 0 else -1


#: The settings :func:`per_worker` changes, in the order the startup log names them.
DIVIDED = ("cache.memory.max_bytes", "cache.source.memory_bytes", "limits.transform_memory",
           "processing.decoded_cache_bytes", "server.body_buffer_total",
           "server.response_buffer_total", "processing.threads")


def shares(config) -> dict[str, int]:
    """The values of :data:`DIVIDED` in ``config`` (for the startup log)."""
    out = {}
    for key in DIVIDED:
        value = config
        for part in key.split("."):
            value = getattr(value, part)
        out[key] = value
    return out
