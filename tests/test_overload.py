"""
Overload at small scale (issue 14, "Must deliver" 5; the full-size run is bench/overload.py):
a burst of never-seen images beyond what the transform pool and its queue hold is shed with
503 ``overloaded``, a JSON body and a ``Retry-After``; a cached image keeps being served from
memory throughout; once the burst is through, a new image is served at once and a shed one is
rendered when it is asked for again (it was never cached).

The pool is held busy by a transform step that waits on an event (the only way to keep a real
render running for as long as the test needs, without timing); everything else is real: the
proxy, its pool, the admission queue, the origin over loopback.
"""

from __future__ import annotations

import contextlib
import json
import threading
from concurrent.futures import ThreadPoolExecutor

from mediaproxy import TransformStep, hookimpl
from mediaproxy.testing import call_in_reactor, decode, make_image, start_proxy, wait_for

#: images of the burst: each its own source, so no cached variant of it exists anywhere
BURST = [f"/media/burst{i}.jpg?w=48" for i in range(8)]
HIT = "/media/hot.jpg?w=40"
AFTER = "/media/after.jpg?w=48"


class HeldRenders:
    """Holds every render of ``w=48`` in its pool thread until :attr:`open` is set."""

    def __init__(self):
        self.open = threading.Event()
        self.entered = 0
        self._lock = threading.Lock()

    def hold(self, image, spec, request):
        with self._lock:
            self.entered += 1
        self.open.wait(30)
        return image

    @hookimpl
    def mediaproxy_transform_steps(self, image_request, spec):
        if image_request.params.get("w") == 48:
            return [TransformStep("held", self.hold, order=600)]
        return None


def sources():
    out = {f"/media/burst{i}.jpg": make_image((96, 96), colour=(20 * i, 90, 140))
           for i in range(8)}
    out["/media/hot.jpg"] = make_image((96, 96), colour=(250, 250, 0))
    out["/media/after.jpg"] = make_image((96, 96), colour=(0, 200, 90))
    return out


@contextlib.contextmanager
def small_proxy(held):
    """One transform thread, two waiting at most, a budget of one render at a time; the held
    renders are let go before the proxy stops, whatever the test did. No decoded-image cache:
    its share would come out of the budget, which fits exactly one render."""
    running = start_proxy(sources(), plugins=[held], overrides={
        "processing": {"threads": 1, "queue_limit": 2, "queue_timeout": 30.0,
                       "decoded_cache_bytes": -1},
        "limits": {"transform_memory": 20_000_000},
        "cache": {"x_cache_header": True}})
    try:
        yield running
    finally:
        held.open.set()
        running.stop()


def waiting(running):
    return call_in_reactor(lambda: running.runtime.admission.waiting)


def cached(running, path):
    return call_in_reactor(running.runtime.cache.get, running.cache_key(path)) is not None


def test_a_burst_past_the_queue_is_shed_with_retry_after_while_hits_stay_and_service_returns(
        live_reactor):
    held = HeldRenders()
    with ThreadPoolExecutor(len(BURST)) as pool, small_proxy(held) as running:
        status, headers, _, _ = running.get(HIT)
        assert (status, headers["x-cache"]) == (200, "MISS")

        first = pool.submit(running.get, BURST[0])
        wait_for(lambda: held.entered == 1, 30, "the first render holding the only thread")
        rest = [pool.submit(running.get, path) for path in BURST[1:]]
        # two wait for the thread; the other five are answered at once
        wait_for(lambda: sum(f.done() for f in rest) == 5 and waiting(running) == 2, 30,
                 "five answered, two waiting")
        shed = [f.result() for f in rest if f.done()]
        for status, headers, body, _ in shed:
            assert status == 503
            assert headers["content-type"].startswith("application/json")
            answer = json.loads(body)
            assert (answer["error"], answer["status"]) == ("overloaded", 503)
            assert int(headers["retry-after"]) >= 1

        # the cached image is served from memory all along
        for _ in range(5):
            status, headers, body, _ = running.get(HIT)
            assert (status, headers["x-cache"]) == (200, "HIT-MEMORY")
            assert decode(body).size == (40, 40)
        assert held.entered == 1

        held.open.set()
        served = [first.result(30)] + [f.result(30) for f in rest if f.result(30)[0] == 200]
        assert len(served) == 3
        for status, headers, body, _ in served:
            assert (status, headers["x-cache"]) == (200, "MISS")
            assert decode(body).size == (48, 48)
        assert held.entered == 3
        wait_for(lambda: waiting(running) == 0, 30, "the queue drained")

        # service is back at once: a never-seen image, and a shed one asked again
        status, headers, body, _ = running.get(AFTER)
        assert (status, headers["x-cache"]) == (200, "MISS")
        assert decode(body).size == (48, 48)
        shed_paths = [path for path, f in zip(BURST[1:], rest) if f.result()[0] == 503]
        assert len(shed_paths) == 5
        assert not any(cached(running, path) for path in shed_paths)
        status, headers, body, _ = running.get(shed_paths[0])
        assert (status, headers["x-cache"]) == (200, "MISS")
        assert decode(body).size == (48, 48)
        assert held.entered == 5


def test_requests_still_fetching_count_at_the_door_so_a_burst_fetches_only_what_can_run(
        live_reactor):
    """The origin holds every answer, so the burst's first requests are still fetching when
    the rest arrive: with one thread and two places in the queue, three are let in (one per
    free thread, then the queue's two places) and the other five are shed at the door with
    Retry-After, never fetched; the three are served once the origin answers."""
    held = HeldRenders()
    with ThreadPoolExecutor(len(BURST)) as pool, small_proxy(held) as running:
        status, headers, _, _ = running.get(HIT)
        assert (status, headers["x-cache"]) == (200, "MISS")
        running.origin.hold()
        futures = [pool.submit(running.get, path) for path in BURST]
        wait_for(lambda: len(running.origin.held) == 3 and sum(f.done() for f in futures) == 5,
                 30, "three fetching, five shed")
        shed_futures = [f for f in futures if f.done()]
        shed = [f.result() for f in shed_futures]
        admission = running.runtime.admission
        assert call_in_reactor(lambda: admission.approaching) == 3
        # behind the two of the three that will wait for the thread
        retry_after = str(call_in_reactor(admission.retry_after, 0, 2))
        for status, headers, body, _ in shed:
            answer = json.loads(body)
            assert (status, answer["error"], answer["status"]) == (503, "overloaded", 503)
            assert headers["retry-after"] == retry_after
            assert answer["correlation_id"] == headers["x-correlation-id"]
        status, headers, _, _ = running.get(HIT)      # the cached image meanwhile
        assert (status, headers["x-cache"]) == (200, "HIT-MEMORY")

        # the origin answers one at a time (three inspections at once would pass the
        # inspection limit, processing.queue_limit, a shed of its own)
        held.open.set()
        for left in (2, 1, 0):
            call_in_reactor(answer_first, running.origin)
            wait_for(lambda: call_in_reactor(lambda: admission.approaching) == left, 30,  # noqa: B023 -- waited for in this iteration
                     "one reserved")
        running.origin.release()
        served = [f.result(30) for f in futures if f not in shed_futures]
        for status, headers, body, _ in served:
            assert (status, headers["x-cache"]) == (200, "MISS")
            assert decode(body).size == (48, 48)
        fetched = [path for path in running.origin.hits if path.startswith("/media/burst")]
        assert len(fetched) == 3 and all(running.origin.hits[p] == 1 for p in fetched)


def test_a_ticket_is_given_back_when_the_source_is_missing(live_reactor):
    held = HeldRenders()
    with small_proxy(held) as running:
        status, headers, _, _ = running.get("/media/missing.jpg?w=48")
        assert (status, headers["content-type"]) == (404, "image/jpeg")   # the placeholder
        assert call_in_reactor(lambda: running.runtime.admission.approaching) == 0
        assert running.origin.hits["/media/missing.jpg"] == 1


def answer_first(origin):
    """Answer the oldest request the origin holds (in the reactor)."""
    request = origin.held.pop(0)
    request.write(origin.respond(request))
    request.finish()
