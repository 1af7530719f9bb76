"""
The hostile corpus (tests/hostile.py) through a real proxy over loopback: for each input the
status, the body, the time to answer and the process's RSS, which must stay under 512 MiB.

The proxy, the origin and this test share one process, so the RSS measured (by a sampler
thread, every 10 ms, for the whole run) bounds the proxy's.
"""

from __future__ import annotations

import io
import json
import threading
import time

import psutil
import pytest
from PIL import Image

from mediaproxy import TransformStep, hookimpl
from mediaproxy.testing import reactor_thread, start_proxy

from .hostile import HostileOrigin, corpus, small_jpeg

#: What the whole corpus may add to this process's RSS (the test process already holds what
#: the tests before it loaded: about 500 MiB at the end of the whole suite).
RSS_GROWTH_LIMIT = 256 * 1024 * 1024


class RssSampler:
    """Peak RSS of this process, sampled every ``interval`` s until :meth:`stop`."""

    def __init__(self, interval: float = 0.01):
        self.process = psutil.Process()
        self.start = self.peak = self.process.memory_info().rss
        self.interval = interval
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self):
        while not self.done.wait(self.interval):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join(5)


@pytest.fixture(scope="module")
def hostile(live_reactor):
    files, cases = corpus()
    origin = HostileOrigin(reactor_thread(), files, trickle=0.1)
    running = start_proxy(origin=origin, overrides={"backend": {"source_timeout": 2.0}})
    yield running, cases
    running.stop()


def test_every_hostile_input_gets_a_clear_answer_within_bounds(hostile, capsys):
    running, cases = hostile
    rows = []
    with RssSampler() as rss:
        for case in cases:
            started = time.monotonic()
            status, headers, body, _ = running.get(case.path, timeout=30)
            elapsed = time.monotonic() - started
            rows.append((case, status, headers, body, elapsed, rss.peak))
    with capsys.disabled():
        print("\n| input | status | body | seconds | peak RSS MiB |\n|---|---|---|---|---|")
        for case, status, headers, body, elapsed, peak in rows:
            what = headers.get("x-placeholder") or headers.get("content-type")
            print(f"| {case.name} | {status} | {what}, {len(body)} bytes | {elapsed:.2f} | "
                  f"{peak / 2**20:.0f} |")
    for case, status, headers, body, elapsed, peak in rows:
        assert status == case.status, (case.name, status, headers.get("x-placeholder"))
        assert headers["content-type"].startswith("image/"), case.name
        assert headers["x-content-type-options"] == "nosniff"
        image = Image.open(io.BytesIO(body))
        image.load()
        assert b"<script" not in body.lower() and b"<html" not in body.lower(), case.name
        if case.error:
            # The placeholder, with the honest status and the reason in X-Placeholder.
            assert headers["x-placeholder"] == case.error, case.name
            assert headers["cache-control"] == "no-store"
        else:
            # Re-encoded from the decoded pixels: nothing of the payload survives.
            assert "x-placeholder" not in headers, case.name
            assert headers["cache-control"].startswith("public"), case.name
    assert rss.peak - rss.start < RSS_GROWTH_LIMIT, (
        f"peak RSS {rss.peak / 2**20:.0f} MiB, {rss.start / 2**20:.0f} MiB before the corpus")


def test_streams_over_the_limit_are_cut_off_not_downloaded(hostile):
    running, _ = hostile
    origin = running.origin
    status, headers, _, _ = running.get("/media/hostile/chunked.jpg?w=10")
    assert (status, headers["x-placeholder"]) == (413, "source_too_large")
    # 32 MiB for a JPEG; what the origin wrote past that is what sat in socket buffers.
    assert origin.counters["chunked_sent"] < 64 * 1024 * 1024


def test_the_process_survives_the_corpus(hostile):
    running, cases = hostile
    for case in cases[:4]:
        running.get(case.path)
    running.origin.files["fine.jpg"] = (small_jpeg((300, 200)), "image/jpeg")
    status, headers, body, _ = running.get("/media/hostile/fine.jpg?w=150")
    assert status == 200 and headers["x-cache"] == "MISS"
    assert Image.open(io.BytesIO(body)).size == (150, 100)


class Stuck:
    """A transform step that blocks until released: a decode that runs away."""

    def __init__(self):
        self.release = threading.Event()
        self.entered = threading.Event()

        self.returned = threading.Event()

    def apply(self, image, spec, request):
        self.entered.set()
        self.release.wait(30)
        self.returned.set()
        return image

    @hookimpl
    def mediaproxy_transform_steps(self, image_request, spec):
        if image_request.params.get("w") == 77:
            return [TransformStep("stuck", self.apply, order=600)]
        return None


def test_a_transform_past_its_deadline_is_a_503_and_abandoned(live_reactor):
    stuck = Stuck()
    files = {"a.jpg": (small_jpeg((300, 200)), "image/jpeg")}
    running = start_proxy(origin=HostileOrigin(reactor_thread(), files),
                          overrides={"limits": {"transform_timeout": 0.5}},
                          plugins=[stuck])
    try:
        status, headers, body, _ = running.get("/media/hostile/a.jpg?w=77")
        # The deadline answered: the step had started and has still not returned.
        assert stuck.entered.is_set() and not stuck.returned.is_set()
        assert status == 503 and json.loads(body)["error"] == "transform_timeout"
        assert headers["retry-after"]
        # Other requests are served meanwhile, by the other threads.
        assert running.get("/media/hostile/a.jpg?w=50")[0] == 200
    finally:
        stuck.release.set()
        running.stop()
