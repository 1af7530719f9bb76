"""
Request coalescing beyond one process: when several processes (one host) or nodes (with Redis)
miss the cache for the same key at once, one of them (the *leader*) fetches and transforms;
the others wait for it and then read its result from the cache.

Inside a process the pipeline already shares one production per key; these locks coordinate
the one request per process that gets that far. Two implementations of one small interface:

* :class:`FileLock`: ``fcntl.flock`` on ``{cache.file.dir}/locks/{hash}.lock`` (processes of
  one host, no Redis). The kernel drops the lock when its holder dies, ``kill -9`` included.
* :class:`RedisLock`: ``SET key token NX PX ttl`` (every node), released by a compare-and-
  delete script so a leader whose lock expired can never release its successor's. A leader
  that dies or overruns ``ttl`` loses the lock by expiry.

The interface (:class:`CoalescingLock`)::

    lease = yield lock.acquire(key)     # a Lease: you lead; None: someone else leads
    if lease is None:
        freed = yield lock.wait(key, timeout)  # True: released or expired; False: timed out
        ... read the cache; on a miss, acquire again: the leader failed or died
    else:
        try: ... read the cache once more (a leader may have just finished), else
                 produce, and store it in the cache (wait for the store) ...
        finally: yield lease.release()

:func:`coalesce` is that loop, bounded in time. Neither method ever fails: when the lock's
backend breaks (Redis down, disk pool saturated) ``acquire`` hands out a non-exclusive lease
(:attr:`Lease.exclusive` false: the caller leads, uncoordinated, as without a lock) and ``wait``
returns at once. :class:`RedisLock` falls back to a :class:`FileLock` while Redis is down
when one is given. :func:`coalescing_lock` picks the right lock for a runtime.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import secrets
from pathlib import Path
from typing import Any, Callable, Protocol

import attrs
from twisted.internet.defer import (
    CancelledError, Deferred, inlineCallbacks, maybeDeferred, succeed,
)
from twisted.logger import Logger

from ..logs import Throttle

log = Logger(namespace="mediaproxy.locks")
#: The process's warnings about locks that can repeat on every miss (a read-only or full lock
#: directory, a Redis that drops releases): one per kind of trouble every 10 s.
_warnings = Throttle(10.0)


def _trouble(failure) -> str:
    """The kind of a failure, for :class:`Throttle` keys: its errno or its type."""
    number = getattr(failure.value, "errno", None)
    return errno.errorcode.get(number, str(number)) if number else failure.type.__name__

#: Seconds between two looks at a lock held by someone else.
POLL_INTERVAL = 0.05
#: Lifetime of a Redis lock: a leader that takes longer loses it to a waiter.
DEFAULT_TTL = 30.0

_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""


@attrs.define(eq=False)
class Lease:
    """The right to lead the production of ``key``. :meth:`release` it when the result is
    stored (or production failed); releasing twice is harmless."""

    key: str
    token: str = ""
    exclusive: bool = True
    _release: Callable[[], Deferred] | None = None
    released: bool = False

    def release(self) -> Deferred:
        """Give the lock up; fires with None and never fails."""
        if self.released or self._release is None:
            self.released = True
            return succeed(None)
        self.released = True
        d = maybeDeferred(self._release)
        d.addCallbacks(lambda _: None, lambda f: _warnings.warn(
            log, ("release", _trouble(f)), "could not release the lock of {key}: {error}",
            key=self.key, error=f.getErrorMessage()))
        return d


def uncoordinated(key: str) -> Lease:
    """A lease that coordinates nothing: the caller leads as if there were no lock."""
    return Lease(key=key, exclusive=False)


class CoalescingLock(Protocol):
    """What :func:`coalesce` and the pipeline need of a lock (see the module docs)."""

    def acquire(self, key: str) -> Deferred:
        """Fire with a :class:`Lease` (lead) or None (someone else leads). Never fails."""

    def wait(self, key: str, timeout: float) -> Deferred:
        """Fire with True once ``key``'s lock is free (released, expired, or its holder died),
        False after ``timeout`` seconds. Never fails. Cancellable."""


def poll(reactor, check: Callable[[], Deferred], interval: float, timeout: float) -> Deferred:
    """Call ``check`` (a Deferred of a bool) now and then every ``interval`` seconds until it
    answers True (fire True) or ``timeout`` passes (fire False); a failing check fails it.
    Cancelling the result stops the polling."""
    deadline = reactor.seconds() + timeout
    pending: list = []

    def cancel(_):
        for call in pending:
            if call.active():
                call.cancel()

    result: Deferred = Deferred(cancel)

    def attempt():
        pending.clear()
        check().addCallbacks(checked, failed)

    def checked(done):
        if result.called:
            return
        remaining = deadline - reactor.seconds()
        if done or remaining <= 0:
            result.callback(bool(done))
        else:
            pending.append(reactor.callLater(min(interval, remaining), attempt))

    def failed(failure):
        if not result.called:
            result.errback(failure)

    attempt()
    return result


@inlineCallbacks
def coalesce(lock: CoalescingLock, key: str, lookup: Callable[[], Deferred],
             produce: Callable[[], Deferred], reactor, timeout: float, request_log=None):
    """Lead or follow the production of ``key``; fire with its result.

    ``lookup()`` fires with the cached result or None; ``produce()`` makes the result, stores
    it and fires with it (it must wait for the store: followers read it right after the
    release). Whoever gets the lock looks the cache up once more first: the previous leader
    may have stored the result just before releasing. A follower whose leader released
    without storing (failed, or died: the lock is freed by the kernel or by expiry) tries to
    lead in its place, so one of the waiters takes over. After ``timeout`` seconds of waiting
    a follower stops waiting and produces itself. ``request_log``: the logger of the request
    that asked (its correlation ID on the line when it gives up waiting).
    """
    deadline = reactor.seconds() + timeout
    while True:
        lease = yield lock.acquire(key)
        if lease is not None:
            try:
                # a leader may have stored it and released just before we acquired
                result = yield lookup()
                if result is None:
                    result = yield produce()
            finally:
                yield lease.release()
            return result
        freed = yield lock.wait(key, max(0.0, deadline - reactor.seconds()))
        found = yield lookup()
        if found is not None:
            return found
        if not freed or reactor.seconds() >= deadline:
            _warnings.warn(request_log or log, ("gave-up",),
                           "gave up waiting {timeout} s for the leader of {key}; producing it "
                           "here", timeout=timeout, key=key)
            return (yield produce())


# -- one host: lock files -------------------------------------------------------------------------

def lock_path(directory: Path, key: str) -> Path:
    return Path(directory) / (hashlib.sha256(key.encode("utf-8")).hexdigest()[:40] + ".lock")


def try_lock(path: Path) -> int | None:
    """Blocking helper (disk pool, or any thread): take ``path``'s exclusive flock without
    waiting; return its file descriptor, or None when another holder has it.

    The holder deletes the file when it releases, so after locking make sure the path still
    names the file we locked (else someone locked a newer one meanwhile: try that)."""
    for _ in range(5):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return None
            raise
        try:
            mine, now = os.fstat(fd), os.stat(path)
            if (mine.st_dev, mine.st_ino) == (now.st_dev, now.st_ino):
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)
    return None


def unlock(path: Path, fd: int) -> None:
    """Blocking helper: release a lock from :func:`try_lock` (delete the file, then close)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    finally:
        os.close(fd)


def is_free(path: Path) -> bool:
    """Blocking helper: True when nobody holds ``path``'s lock (no file, or a file left by a
    holder that died: its flock went with it)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return True
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise
    finally:
        os.close(fd)


@attrs.define(eq=False)
class FileLock:
    """Coalescing across the processes of one host with lock files in ``directory``.

    ``run(fn, *args)`` runs a blocking call off the reactor and fires with its result (the
    file layer's :meth:`~mediaproxy.cache.files.diskpool.DiskPool.run`); waiting polls every
    ``poll_interval`` seconds from the reactor."""

    directory: Path = attrs.field(converter=Path)
    reactor: Any
    run: Callable[..., Deferred]
    poll_interval: float = POLL_INTERVAL

    def acquire(self, key: str) -> Deferred:
        path = lock_path(self.directory, key)
        d = self.run(try_lock, path)
        d.addCallbacks(self._acquired, self._broken, callbackArgs=(key, path),
                       errbackArgs=(key,))
        return d

    def _acquired(self, fd: int | None, key: str, path: Path) -> Lease | None:
        if fd is None:
            return None
        return Lease(key=key, token=str(fd), release=lambda: self._release(path, fd))

    def _release(self, path: Path, fd: int) -> Deferred:
        done: list[bool] = []

        def release_once():
            if not done:  # never twice: the descriptor number may be reused meanwhile
                done.append(True)
                unlock(path, fd)

        # must not be lost: when the pool refuses, release right here (two quick syscalls)
        return self.run(release_once).addErrback(lambda _: release_once())

    def _broken(self, failure, key: str) -> Lease:
        _warnings.warn(log, ("lock-file", _trouble(failure)),
                       "lock file for {key} unavailable ({error}); leading uncoordinated",
                       key=key, error=failure.getErrorMessage())
        return uncoordinated(key)

    def wait(self, key: str, timeout: float) -> Deferred:
        path = lock_path(self.directory, key)
        d = poll(self.reactor, lambda: self.run(is_free, path), self.poll_interval, timeout)
        return d.addErrback(self._wait_broken, key)

    def _wait_broken(self, failure, key: str) -> bool:
        if failure.check(CancelledError):
            return failure
        _warnings.warn(log, ("watch", _trouble(failure)),
                       "cannot watch the lock file of {key} ({error})", key=key,
                       error=failure.getErrorMessage())
        return True


# -- every node: Redis ----------------------------------------------------------------------------

@attrs.define(eq=False)
class RedisLock:
    """Coalescing across nodes with a Redis key per lock (see the module docs). While Redis
    is unavailable, ``fallback`` (a :class:`FileLock`, if any) coordinates this host."""

    client: Any                      #: a :class:`~mediaproxy.cache.redis.RedisClient`
    reactor: Any
    ttl: float = DEFAULT_TTL
    key_prefix: str = "mediaproxy:"
    poll_interval: float = POLL_INTERVAL
    fallback: Any = None

    def redis_key(self, key: str) -> str:
        return f"{self.key_prefix}lock:{key}"

    def acquire(self, key: str) -> Deferred:
        token = secrets.token_hex(16)
        d = self.client.set_nx(self.redis_key(key), token, self.ttl)
        d.addCallbacks(self._acquired, self._unavailable, callbackArgs=(key, token),
                       errbackArgs=(key,))
        return d

    def _acquired(self, got: bool, key: str, token: str) -> Lease | None:
        if not got:
            return None
        return Lease(key=key, token=token, release=lambda: self.client.eval(
            _RELEASE, [self.redis_key(key)], [token]))

    def _unavailable(self, failure, key: str):
        if self.fallback is not None:
            return self.fallback.acquire(key)
        log.debug("Redis lock for {key} unavailable ({error}); leading uncoordinated",
                  key=key, error=failure.getErrorMessage())
        return uncoordinated(key)

    def wait(self, key: str, timeout: float) -> Deferred:
        rkey = self.redis_key(key)
        started = self.reactor.seconds()

        def released():
            return self.client.exists(rkey).addCallback(lambda exists: not exists)

        d = poll(self.reactor, released, self.poll_interval, timeout)
        d.addErrback(self._wait_unavailable, key, started + timeout)
        return d

    def _wait_unavailable(self, failure, key: str, deadline: float):
        if failure.check(CancelledError):
            return failure
        if self.fallback is not None:
            return self.fallback.wait(key, max(0.0, deadline - self.reactor.seconds()))
        return True
