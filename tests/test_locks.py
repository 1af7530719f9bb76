"""Coalescing locks: lock files across processes (a holder killed with SIGKILL is taken over)
and Redis locks across nodes (an expired leader is taken over, and cannot release its
successor's lock)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from twisted.internet.defer import Deferred, succeed

from mediaproxy.cache.files import DiskPool
from mediaproxy.config import RedisCacheConfig
from mediaproxy.cache.locks import (
    FileLock, Lease, RedisLock, coalesce, lock_path, poll,
)
from mediaproxy.cache.coalescing import coalescing_lock
from mediaproxy.cache.redis import RedisClient
from mediaproxy.testing import call_in_reactor, make_runtime, reactor_thread, wait_for


KEY = "shop:0123456789abcdef0123:" + "ab" * 32


@pytest.fixture
def reactor():
    return reactor_thread()


@pytest.fixture
def disk_pool(reactor):
    pool = DiskPool(reactor)
    call_in_reactor(pool.start)
    yield pool
    call_in_reactor(pool.stop)


@pytest.fixture
def redis(redis_server, reactor):
    client = RedisClient.from_config(RedisCacheConfig(url=redis_server.url, timeout=0.5),
                                     reactor, backoff_initial=0.05, backoff_max=0.5)
    call_in_reactor(client.start)
    assert call_in_reactor(client.when_up, 5.0)
    yield client
    call_in_reactor(client.stop)


def in_background(fn, *args):
    """Start ``fn(*args)`` (returning a Deferred) in the reactor without waiting; return a
    ``(done event, outcome list)`` pair."""
    reactor = reactor_thread()
    done, outcome = threading.Event(), []

    def run():
        d = fn(*args)
        d.addBoth(lambda result: (outcome.append(result), done.set()))

    reactor.callFromThread(run)
    return done, outcome


# -- lock files -----------------------------------------------------------------------------------

def test_a_file_lock_excludes_until_released(tmp_path, reactor, disk_pool):
    lock = FileLock(tmp_path / "locks", reactor, disk_pool.run)
    lease = call_in_reactor(lock.acquire, KEY)
    assert isinstance(lease, Lease) and lease.exclusive
    assert call_in_reactor(lock.acquire, KEY) is None  # another open file: excluded too
    assert call_in_reactor(lock.acquire, KEY + "other") is not None
    assert call_in_reactor(lock.wait, KEY, 0.2) is False
    call_in_reactor(lease.release)
    call_in_reactor(lease.release)  # twice is harmless
    assert not lock_path(tmp_path / "locks", KEY).exists()
    assert call_in_reactor(lock.wait, KEY, 0.2) is True
    assert call_in_reactor(lock.acquire, KEY) is not None


HOLDER = r"""
import sys
from pathlib import Path
from mediaproxy.cache.locks import lock_path, try_lock
fd = try_lock(lock_path(Path(sys.argv[1]), sys.argv[2]))
print("locked" if fd is not None else "busy", flush=True)
sys.stdin.read()  # hold the lock until killed
"""


def test_a_killed_holder_of_a_lock_file_is_taken_over_by_a_waiter(tmp_path, reactor,
                                                                   disk_pool):
    locks = tmp_path / "locks"
    locks.mkdir()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(locks), KEY], env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"locked\n"
        polls = []

        def run(fn, *args):
            polls.append(fn.__name__)
            return disk_pool.run(fn, *args)

        lock = FileLock(locks, reactor, run, poll_interval=0.01)
        produced, cached = [], {}

        def produce():
            produced.append(KEY)
            cached[KEY] = "result"
            return succeed("result")

        done, outcome = in_background(coalesce, lock, KEY,
                                      lambda: succeed(cached.get(KEY)), produce, reactor, 20)
        wait_for(lambda: polls.count("is_free") >= 3, 10, what="the waiter polling")
        assert not done.is_set() and produced == []  # the holder is alive: it waits
        holder.kill()  # SIGKILL: the kernel drops the flock, the file stays
        holder.wait(10)
        assert done.wait(10)
        assert outcome == ["result"] and produced == [KEY]
    finally:
        holder.kill()
        holder.wait(10)


def test_a_lock_file_left_by_a_dead_process_is_free(tmp_path, reactor, disk_pool):
    path = lock_path(tmp_path, KEY)
    path.write_bytes(b"")  # nobody holds a flock on it
    lock = FileLock(tmp_path, reactor, disk_pool.run)
    assert call_in_reactor(lock.wait, KEY, 1.0) is True
    assert call_in_reactor(lock.acquire, KEY) is not None


def test_a_file_lock_without_its_pool_leads_uncoordinated(tmp_path, reactor):
    lock = FileLock(tmp_path, reactor, DiskPool(reactor).run)  # never started
    lease = call_in_reactor(lock.acquire, KEY)
    assert lease is not None and not lease.exclusive
    assert call_in_reactor(lock.wait, KEY, 1.0) is True


# -- Redis locks ----------------------------------------------------------------------------------

def test_an_expired_redis_lock_is_taken_over_and_the_late_leader_cannot_release_it(
        redis, redis_server, reactor):
    leader = RedisLock(redis, reactor, ttl=1.0)
    follower = RedisLock(redis, reactor, ttl=30, poll_interval=0.02)
    first = call_in_reactor(leader.acquire, KEY)  # and then the leader hangs or dies
    assert first is not None and first.exclusive
    assert 0 < redis_server.command("PTTL", f"mediaproxy:lock:{KEY}") <= 1000
    assert call_in_reactor(follower.acquire, KEY) is None
    assert call_in_reactor(follower.wait, KEY, 5.0) is True  # freed by expiry
    second = call_in_reactor(follower.acquire, KEY)
    assert second is not None
    call_in_reactor(first.release)  # too late: compare-and-delete leaves the new lock
    assert redis_server.command("GET", f"mediaproxy:lock:{KEY}") == second.token.encode()
    call_in_reactor(second.release)
    assert redis_server.command("EXISTS", f"mediaproxy:lock:{KEY}") == 0


def test_followers_wait_for_the_leader_and_read_its_result(redis, reactor):
    lock = RedisLock(redis, reactor, ttl=30, poll_interval=0.02)
    cached, produced, release_leader = {}, [], Deferred()

    def lookup():
        return succeed(cached.get(KEY))

    def produce():
        produced.append(1)

        def store(_):
            cached[KEY] = "made once"
            return "made once"

        return release_leader.addCallback(store)

    leader_done, leader = in_background(coalesce, lock, KEY, lookup, produce, reactor, 10)
    wait_for(lambda: produced, 5, what="a leader")
    followers = [in_background(coalesce, lock, KEY, lookup, produce, reactor, 10)
                 for _ in range(3)]
    reactor.callFromThread(release_leader.callback, None)
    assert leader_done.wait(10) and all(done.wait(10) for done, _ in followers)
    assert leader == ["made once"]
    assert [outcome for _, outcome in followers] == [["made once"]] * 3
    assert produced == [1]


def test_a_leader_that_fails_without_storing_is_replaced_by_one_follower(redis, reactor):
    lock = RedisLock(redis, reactor, ttl=30, poll_interval=0.02)
    cached, calls, fail_first = {}, [], Deferred()

    def produce():
        calls.append(1)
        if len(calls) == 1:
            return fail_first
        cached[KEY] = "second try"
        return succeed("second try")

    lookup = lambda: succeed(cached.get(KEY))  # noqa: E731
    leader_done, leader = in_background(coalesce, lock, KEY, lookup, produce, reactor, 10)
    wait_for(lambda: calls, 5, what="a leader")
    followers = [in_background(coalesce, lock, KEY, lookup, produce, reactor, 10)
                 for _ in range(2)]
    reactor.callFromThread(fail_first.errback, RuntimeError("backend down"))
    assert leader_done.wait(10) and all(done.wait(10) for done, _ in followers)
    assert leader[0].check(RuntimeError)
    assert [outcome for _, outcome in followers] == [["second try"]] * 2
    assert len(calls) == 2  # one follower took over, the other read its result


def test_a_follower_stops_waiting_after_its_timeout(tmp_path, reactor, disk_pool):
    lock = FileLock(tmp_path, reactor, disk_pool.run, poll_interval=0.02)
    held = call_in_reactor(lock.acquire, KEY)  # a leader that never finishes
    made = call_in_reactor(coalesce, lock, KEY, lambda: succeed(None),
                           lambda: succeed("made anyway"), reactor, 0.2)
    assert made == "made anyway"
    call_in_reactor(held.release)


def test_with_redis_down_the_lock_falls_back_to_lock_files(redis, redis_server, tmp_path,
                                                           reactor, disk_pool):
    files = FileLock(tmp_path, reactor, disk_pool.run)
    lock = RedisLock(redis, reactor, fallback=files)
    bare = RedisLock(redis, reactor)
    redis_server.kill()
    wait_for(lambda: not call_in_reactor(redis.ping)[0][1], 5, what="Redis seen down")
    lease = call_in_reactor(lock.acquire, KEY)
    assert lease is not None and lease.exclusive
    assert call_in_reactor(lock.acquire, KEY) is None  # the lock file coordinates the host
    assert call_in_reactor(lock.wait, KEY, 0.1) is False
    call_in_reactor(lease.release)
    assert call_in_reactor(lock.wait, KEY, 1.0) is True
    uncoordinated = call_in_reactor(bare.acquire, KEY)
    assert uncoordinated is not None and not uncoordinated.exclusive
    assert call_in_reactor(bare.wait, KEY, 1.0) is True


def test_polling_can_be_cancelled(reactor):
    checks = []

    def check():
        checks.append(1)
        return succeed(False)

    def start_and_cancel():
        d = poll(reactor, check, 0.01, 10)
        d.cancel()
        return d.addErrback(lambda f: f.type.__name__)

    assert call_in_reactor(start_and_cancel) == "CancelledError"
    assert checks == [1]


# -- choosing a lock ------------------------------------------------------------------------------

def _runtime(reactor, tmp_path, redis_url="", file_layer=True):
    cache = {"redis": {"url": redis_url}}
    if file_layer:
        cache["file"] = {"dir": str(tmp_path)}
    return make_runtime({"cache": cache}, reactor=reactor)


def test_the_lock_is_chosen_from_what_is_configured(tmp_path, reactor):
    assert coalescing_lock(_runtime(reactor, tmp_path, file_layer=False)) is None
    file_only = coalescing_lock(_runtime(reactor, tmp_path))
    assert isinstance(file_only, FileLock) and file_only.directory == tmp_path / "locks"
    both = coalescing_lock(_runtime(reactor, tmp_path, "redis://127.0.0.1:1/0"))
    assert isinstance(both, RedisLock) and isinstance(both.fallback, FileLock)
    assert both.ttl >= 30 and both.key_prefix == "mediaproxy:"
    redis_only = coalescing_lock(_runtime(reactor, tmp_path, "redis://127.0.0.1:1/0",
                                          file_layer=False))
    assert isinstance(redis_only, RedisLock) and redis_only.fallback is None
