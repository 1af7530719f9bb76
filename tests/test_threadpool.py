"""mediaproxy.threadpool: a call through the pools leaves no garbage cycle (Twisted's own pool
leaves one per call, and under load the collections they cause stop the whole process), with
Twisted's semantics kept: the result or a Failure to ``onResult``, in the caller's context.
And the daemon freezes what its start built (lifecycle.freeze_startup_objects)."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from twisted.python import context
from twisted.python import threadpool as twisted_threadpool
from twisted.python.failure import Failure

from mediaproxy.threadpool import ThreadPool, without_cycles

ROOT = Path(__file__).resolve().parent.parent
CALLS = 200


def run_calls(pool, count: int, func=lambda i: i * 2) -> list:
    """``count`` calls through ``pool.callInThreadWithCallback``; their (ok, result) pairs."""
    results: list = []
    done = threading.Event()

    def on_result(ok, result):
        results.append((ok, result))
        if len(results) == count:
            done.set()

    for i in range(count):
        pool.callInThreadWithCallback(on_result, func, i)
    assert done.wait(30), f"{len(results)} of {count} calls answered"
    return results


def garbage_cycles_of(pool_class) -> int:
    """Objects the cyclic collector finds after ``CALLS`` calls through a new pool."""
    return garbage_cycles_after_calls(pool_class(minthreads=1, maxthreads=2, name="test-cycles"))


def test_twisted_pool_leaves_a_cycle_per_call():
    """What the test below guards against: Twisted's pool does leave cycles."""
    assert garbage_cycles_of(twisted_threadpool.ThreadPool) >= CALLS


def test_a_call_leaves_no_cycle():
    assert garbage_cycles_of(ThreadPool) == 0


@pytest.fixture
def pool():
    p = ThreadPool(minthreads=1, maxthreads=2, name="test-pool")
    p.start()
    yield p
    p.stop()


def test_results_and_failures_reach_on_result(pool):
    def work(i):
        if i % 3 == 0:
            raise ValueError(f"bad {i}")
        return i * 10

    results = sorted(run_calls(pool, 9, work), key=lambda r: str(r))
    good = sorted(r for ok, r in results if ok)
    bad = [r for ok, r in results if not ok]
    assert good == [10, 20, 40, 50, 70, 80]
    assert len(bad) == 3 and all(isinstance(f, Failure) for f in bad)
    assert sorted(str(f.value) for f in bad) == ["bad 0", "bad 3", "bad 6"]
    assert all(f.check(ValueError) for f in bad)


def test_the_call_runs_in_the_callers_context(pool):
    seen = []
    done = threading.Event()

    def on_result(ok, result):
        seen.append((ok, result))
        done.set()

    context.call({"mediaproxy-test": "theirs"}, pool.callInThreadWithCallback, on_result,
                 context.get, "mediaproxy-test")
    assert done.wait(30)
    assert seen == [(True, "theirs")]


def test_no_on_result_and_callInThread(pool):
    ran = threading.Event()
    pool.callInThread(ran.set)
    assert ran.wait(30)
    again = threading.Event()
    pool.callInThreadWithCallback(None, again.set)
    assert again.wait(30)


def test_a_stopped_pool_runs_nothing():
    p = ThreadPool(minthreads=0, maxthreads=1, name="test-stopped")
    p.start()
    p.stop()
    ran = []
    p.callInThreadWithCallback(lambda ok, r: ran.append(r), ran.append, 1)
    assert ran == []


def test_without_cycles_gives_twisteds_pool_the_method():
    theirs = twisted_threadpool.ThreadPool(minthreads=0, maxthreads=1, name="test-theirs")
    assert without_cycles(theirs) is theirs
    assert type(theirs) is ThreadPool
    assert garbage_cycles_after_calls(theirs) == 0

    class Special(twisted_threadpool.ThreadPool):
        pass

    special = Special(minthreads=0, maxthreads=1)
    assert type(without_cycles(special)) is Special     # another class is left alone


def garbage_cycles_after_calls(pool) -> int:
    """Objects the cyclic collector finds after ``CALLS`` calls through ``pool`` (started
    here, stopped after)."""
    pool.start()
    try:
        run_calls(pool, 10)                 # the threads exist before counting
        gc.collect()
        gc.disable()
        try:
            run_calls(pool, CALLS)
            return gc.collect()
        finally:
            gc.enable()
    finally:
        pool.stop()


def test_the_running_daemon_freezes_what_its_start_built():
    """``mediaproxy run``'s serve(): once running, the start's objects are out of the
    collector's reach (a real reactor and listener, in a process of its own)."""
    script = """
import gc, sys
from twisted.internet import reactor
from mediaproxy.cli import serve
from mediaproxy.config import load_config

config = load_config(None, overrides={
    "server": {"listen": ["tcp:0:interface=127.0.0.1"], "workers": 1},
    "backend": {"url": "http://127.0.0.1:9"}, "monitoring": {"listen": ""}})
before = gc.get_freeze_count()

def check():
    print("frozen", before, gc.get_freeze_count(), flush=True)
    reactor.stop()

reactor.callWhenRunning(reactor.callLater, 0.5, check)
sys.exit(serve(config))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIAPROXY_")}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, timeout=120,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    line = [l for l in out.stdout.splitlines() if l.startswith("frozen ")]
    assert line, out.stdout + out.stderr
    _, before, after = line[0].split()
    assert int(before) == 0
    assert int(after) > 10_000     # modules, plugins, the runtime


def test_the_collectors_pauses_are_a_histogram_by_generation():
    """mediaproxy_gc_pause_seconds: each collection counted under its generation, its wall
    time in the sum and in the buckets (read from a runtime's own registry)."""
    from prometheus_client import CollectorRegistry

    from mediaproxy.monitoring.gcpauses import BUCKETS, GcPauseCollector

    registry = CollectorRegistry()
    registry.register(GcPauseCollector())

    def count(generation, suffix="_count", **labels):
        return registry.get_sample_value("mediaproxy_gc_pause_seconds" + suffix,
                                         {"generation": str(generation), **labels})

    before = [count(g) for g in range(3)]
    gc.collect(2)
    gc.collect(2)
    assert count(2) >= before[2] + 2
    assert count(2, "_sum") > 0
    assert count(2, "_bucket", le="+Inf") == count(2)
    buckets = [count(2, "_bucket", le=repr(b)) for b in BUCKETS]
    assert buckets == sorted(buckets) and buckets[-1] <= count(2)
    # one recorder per process, whatever the number of collectors
    GcPauseCollector()
    from mediaproxy.monitoring import gcpauses
    assert sum(1 for cb in gc.callbacks if cb is gcpauses.recorder()) == 1
