"""A warning that can repeat on every request is rate limited (mediaproxy.logs.Throttle): one per
kind of trouble every N seconds, the rest at debug and counted, the next warning saying how
many were held back. Time is a twisted Clock; the broken cache directory is a real one."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock
from twisted.logger import LogLevel, Logger, formatEvent, globalLogPublisher

from mediaproxy.cache import locks
from mediaproxy.cache.files.layer import FileLayer
from mediaproxy.cache.layered import find_layer
from mediaproxy.logs import Throttle
from mediaproxy.testing import make_image, start_proxy


def capture():
    events = []
    return events, Logger(namespace="test.throttle", observer=events.append)


def test_one_warning_per_kind_per_period_then_the_count_of_held_back_ones():
    clock = Clock()
    throttle = Throttle(10.0, clock=clock.seconds)
    events, log = capture()
    for i in range(5):
        throttle.warn(log, "set", "could not write {n}", n=i)
    clock.advance(9.9)
    throttle.warn(log, "set", "could not write {n}", n=5)
    throttle.warn(log, "read", "could not read {n}", n=6)   # another kind: its own budget
    clock.advance(0.1)
    throttle.warn(log, "set", "could not write {n}", n=7)
    clock.advance(10)
    throttle.warn(log, "set", "could not write {n}", n=8)
    said = [(e["log_level"], formatEvent(e)) for e in events]
    assert said == [
        (LogLevel.warn, "could not write 0"),
        (LogLevel.debug, "could not write 1"),
        (LogLevel.debug, "could not write 2"),
        (LogLevel.debug, "could not write 3"),
        (LogLevel.debug, "could not write 4"),
        (LogLevel.debug, "could not write 5"),
        (LogLevel.warn, "could not read 6"),
        (LogLevel.warn, "could not write 7 (5 more like this since the last warning, "
                        "logged at debug)"),
        (LogLevel.warn, "could not write 8"),
    ]


def test_the_kinds_remembered_are_bounded():
    clock = Clock()
    throttle = Throttle(10.0, clock=clock.seconds, max_keys=3)
    assert [throttle.allow(kind) for kind in ("a", "b", "c", "d")] == [0, 0, 0, 0]
    assert len(throttle._seen) == 3
    assert throttle.allow("a") == 0            # forgotten (the oldest): let through again
    assert throttle.allow("d") is None         # remembered: held back


def test_a_field_named_like_a_parameter_is_passed_through():
    events, log = capture()
    Throttle(clock=Clock().seconds).warn(log, "k", "lock of {key} for {kind}", key="x", kind="y")
    assert formatEvent(events[0]) == "lock of x for y"


# -- a cache directory that fails every write: one warning, not one per miss -------------------

@pytest.fixture
def warnings():
    seen = []

    def observe(event):
        if event.get("log_level") == LogLevel.warn and event.get("log_namespace", "").startswith(
                ("mediaproxy.locks", "mediaproxy.cache")):
            seen.append(formatEvent(event))
    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


def break_tree(tree):
    """Replace the directory ``tree`` by a plain file. The writes of the request before may
    still be in flight (the disk pool stores an answer after sending it), and a write makes its
    directories: one may re-create ``tree`` between the move and the new file. Then the new
    tree is moved away too (so each move catches the writes that were in flight), until the
    file takes its place."""
    for attempt in range(100):
        tree.rename(tree.with_name(f"{tree.name}.away{attempt}"))   # atomic: writes in flight
        try:                                                        # land in the moved tree
            with open(tree, "xb") as plain:
                plain.write(b"not a directory")
            return
        except (FileExistsError, IsADirectoryError):
            continue
    raise AssertionError(f"{tree} kept coming back as a directory")


def test_a_broken_cache_directory_warns_once_not_on_every_miss(live_reactor, tmp_path,
                                                                 monkeypatch, warnings):
    files = {f"/media/uploads/{i}.jpg": make_image((40, 30)) for i in range(9)}
    with start_proxy(files=files, overrides={"cache": {"file": {"dir": str(tmp_path)},
                                                       "source": {"memory_bytes": 0}}}) as proxy:
        # Time stands still (a Clock), so every warning below falls in one period; the
        # originals' layered cache shares the results' throttle from its first use (the
        # request below).
        clock = Clock()
        monkeypatch.setattr(locks, "_warnings", Throttle(10.0, clock=clock.seconds))
        proxy.runtime.cache._warned = Throttle(10.0, clock=clock.seconds)
        assert proxy.get("/media/uploads/0.jpg?w=10").status == 200
        layer = find_layer(proxy.runtime, FileLayer)
        layer._warnings = Throttle(10.0, clock=clock.seconds)
        # Break the directory for real: its lock and result trees become plain files, so every
        # lock and every write fails (a read-only mount needs privileges a test does not have).
        for part in ("locks", "results"):
            break_tree(tmp_path / part)
        del warnings[:]
        for i in range(1, 9):
            assert proxy.get(f"/media/uploads/{i}.jpg?w=10").status == 200
        stats = layer.stats()
    lock_warnings = [w for w in warnings if w.startswith("lock file for")]
    # one per failing layer, whichever of its calls (a read or a write) failed first
    layer_warnings = [w for w in warnings if w.startswith("cache layer file failed to ")]
    # The file layer counts every failure itself; whether one also reaches the layered cache
    # as an exception (its warning) depends on which of its calls fails first and when the
    # disk pool gets to the writes queued after the answers. Throttled either way: at most one.
    assert len(lock_warnings) == 1 and len(layer_warnings) <= 1, warnings
    assert len(warnings) == len(lock_warnings) + len(layer_warnings), warnings
    assert stats["errors"] >= 8                    # every failure is still counted
