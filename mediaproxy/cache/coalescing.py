"""
Which coalescing lock a process uses, from what is configured: a :class:`~.locks.RedisLock`
(falling back to lock files) with Redis, a :class:`~.locks.FileLock` with a file layer only,
else none (in-process coalescing is all there is). Apart from :mod:`.locks` because it looks at
the layers (the file layer's directory), and the file store itself uses the lock files.
"""

from __future__ import annotations

from .files.layer import FileLayer
from .layered import find_layer
from .locks import DEFAULT_TTL, CoalescingLock, FileLock, RedisLock


def coalescing_lock(runtime, ttl: float | None = None) -> CoalescingLock | None:
    """The lock for this runtime: a :class:`RedisLock` (falling back to lock files) with
    Redis, a :class:`FileLock` with a file layer only, else None (in-process coalescing is
    all there is). The runtime's cache layers must exist (they do from
    ``mediaproxy_configure`` on)."""
    file_layer = find_layer(runtime, FileLayer)
    file_lock = None
    if file_layer is not None:
        file_lock = FileLock(file_layer.store.root / "locks", runtime.reactor,
                             file_layer.pool.run)
    client = runtime.redis
    if client is None:
        return file_lock
    if ttl is None:
        ttl = max(DEFAULT_TTL, runtime.config.limits.transform_timeout)
    return RedisLock(client, runtime.reactor, ttl=ttl,
                     key_prefix=runtime.config.cache.redis.key_prefix, fallback=file_lock)
