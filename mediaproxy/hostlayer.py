"""
The host layer: what lets several workers of one host share results and coalesce their misses
when nothing shared is configured (no ``cache.file.dir``, no Redis).

Each worker has its own memory layer, and SO_REUSEPORT spreads one page's requests over all of
them: without a shared layer every worker would fetch and render the same image once, and
concurrent misses for one key in two workers would both fetch and transform. So the
supervisor makes a private directory (``$TMPDIR/mediaproxy-host-<random>``, mode 0700: no
other user of the host can read it) and every worker, the supervisor included, runs the
ordinary file layer (:mod:`mediaproxy.cache.files`) in it:

* a result rendered by one worker is stored there too, so another worker's first request for
  it is a ``HIT-FILE`` (then a memory hit in that worker: the memory layer is always looked at
  first, so a hit costs what it did);
* concurrent misses across workers are coalesced with the file layer's lock files
  (:class:`~mediaproxy.cache.locks.FileLock`): one worker fetches and transforms, the others
  wait for its result and read it there.

It is bounded: it holds at most the host's ``cache.memory.max_bytes`` (what the operator gave
the memory layer of the whole host; $TMPDIR may be a tmpfs, in memory), within
``cache.file.max_bytes``. It lives as long as the supervisor: removed when it stops (left
behind only by a ``kill -9``, like the metrics sockets' directory); results start cold after a
restart, as the memory layers do. A configured file layer or Redis replaces it.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref

import attrs

#: The host layer holds at least this much, even when the memory layer is small or off.
MIN_BYTES = 64 * 1024 * 1024


def needs_host_layer(config) -> bool:
    """Several workers of ``config`` would share nothing: no file layer, no Redis."""
    cache = config.cache
    return not (cache.file.dir or cache.redis.url or cache.redis.shards
                or cache.redis.sentinels)


def with_host_layer(config, directory: str):
    """``config`` with its file layer in ``directory``, bounded by the host's
    ``cache.memory.max_bytes`` (``config`` is the host's, not yet divided among workers)."""
    cache = config.cache
    limit = min(cache.file.max_bytes, max(cache.memory.max_bytes, MIN_BYTES))
    return attrs.evolve(config, cache=attrs.evolve(
        cache, file=attrs.evolve(cache.file, dir=directory, max_bytes=limit)))


class HostDirectory:
    """The supervisor's private directory for the host layer (mode 0700, from
    :func:`tempfile.mkdtemp`). :meth:`close` removes it; so does the interpreter's exit when
    nothing called it."""

    def __init__(self):
        self.path = tempfile.mkdtemp(prefix="mediaproxy-host-")
        self._remove = weakref.finalize(self, shutil.rmtree, self.path, ignore_errors=True)

    def close(self) -> None:
        self._remove()
