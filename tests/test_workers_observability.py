"""Several workers seen from outside (server.workers=2, real processes on loopback): the
supervisor's /metrics counts every worker's requests once, keeps a dead worker's counters, and
every worker's log line comes out once, in the supervisor's format, with its correlation ID."""

from __future__ import annotations

import json
import signal

import pytest

from mediaproxy.testing import ImageOrigin, make_image, start_origin, wait_for

from .processes import STARTUP_TIMEOUT, total
from .test_workers import workers_of
from .test_workers_host import Supervisor as HostSupervisor

#: The series that counts every main-port request, whatever its labels.
REQUESTS = "mediaproxy_http_requests_total"


class Supervisor(HostSupervisor):
    """``mediaproxy run`` with a TOML config (two workers, a monitoring listener, the access
    log on), its log in a file (read while it runs); ready once worker 1 runs."""

    def __init__(self, tmp, origin_port):
        super().__init__(tmp, origin_port, extra="access_log = true")
        wait_for(lambda: len(workers_of(self)) == 1, STARTUP_TIMEOUT, what="worker 1 started")


@pytest.fixture(scope="module")
def proxy(live_reactor, tmp_path_factory):
    origin = ImageOrigin({"/media/a.jpg": (200, make_image((300, 200)), "image/jpeg", [])})
    start_origin(origin)
    running = Supervisor(tmp_path_factory.mktemp("workers"), origin.port)
    # worker 1 runs, but may not listen yet: wait until both processes answer
    wait_for(lambda: len({running.get("/media/a.jpg?w=10")[1]["x-correlation-id"][:16]
                          for _ in range(12)}) == 2, STARTUP_TIMEOUT,
             what="both processes answering")
    yield running
    running.stop()


def spread(proxy, first_width, rounds=6, per_round=12):
    """Requests over new connections, 12 at a time, until both processes answered some
    (the kernel spreads connections; correlation IDs start with a per-process prefix).
    Returns how many were sent and their correlation IDs by process prefix."""
    sent, by_process = 0, {}
    for _ in range(rounds):
        for _ in range(per_round):
            status, headers, _ = proxy.get(f"/media/a.jpg?w={first_width + sent}")
            assert status == 200
            cid = headers["x-correlation-id"]
            by_process.setdefault(cid[:16], []).append(cid)
            sent += 1
        if len(by_process) == 2:
            return sent, by_process
    raise AssertionError(f"one process answered all of {sent} requests")


def test_every_workers_requests_are_counted_once_and_a_dead_ones_are_kept(proxy):
    before = proxy.series()
    sent, _ = spread(proxy, first_width=20)
    after = proxy.series()
    assert total(after, REQUESTS) - total(before, REQUESTS) == sent
    assert after[("mediaproxy_workers", (("state", "up"),))] == 2
    errors = ("mediaproxy_workers_scrape_errors_total", ())
    restarts = ("mediaproxy_workers_restarts_total", ())
    assert (after[errors], after[restarts]) == (before[errors], before[restarts])

    # worker 1 dies and is started again: what it had counted (scraped just above) stays
    (child,) = workers_of(proxy)
    child.send_signal(signal.SIGKILL)
    wait_for(lambda: [c.pid for c in workers_of(proxy)] not in ([], [child.pid]),
             STARTUP_TIMEOUT, what="a new worker 1")
    wait_for(lambda: proxy.series()[("mediaproxy_workers", (("state", "up"),))] == 2,
             STARTUP_TIMEOUT, what="the new worker 1 scraped")
    again = proxy.series()
    assert total(again, REQUESTS) == total(after, REQUESTS)
    # while the new worker started it was "starting", never a failed scrape
    assert again[errors] == after[errors]
    assert again[restarts] == after[restarts] + 1
    more, _ = spread(proxy, first_width=100)
    assert total(proxy.series(), REQUESTS) == total(after, REQUESTS) + more


def test_a_wedged_worker_cannot_hold_the_scrape(proxy):
    spread(proxy, first_width=300)
    before = proxy.series()
    (child,) = workers_of(proxy)
    child.suspend()   # SIGSTOP: the kernel still accepts on its socket, nothing answers
    try:
        during = proxy.series()   # answered after the worker's scrape timeout
    finally:
        child.resume()
    up, unreachable = (("mediaproxy_workers", (("state", s),)) for s in ("up", "unreachable"))
    errors = ("mediaproxy_workers_scrape_errors_total", ())
    assert (during[up], during[unreachable]) == (1, 1)
    assert during[errors] == before[errors] + 1
    # its counters are the last it reported, its gauges are missing
    assert total(during, REQUESTS) == total(before, REQUESTS)
    capacity = ("mediaproxy_transform_memory_bytes", (("state", "capacity"),))
    assert during[capacity] * 2 == before[capacity]
    wait_for(lambda: proxy.series()[up] == 2, STARTUP_TIMEOUT, what="worker 1 answering again")


def test_a_workers_log_line_comes_out_once_in_the_supervisors_format(proxy):
    _, by_process = spread(proxy, first_width=200)
    cids = {cid for found in by_process.values() for cid in found}

    def events():
        # every line is one JSON object (the supervisor's format): none came out raw (only
        # whole lines: the last one may be being written)
        return [json.loads(line) for line in proxy.log.read_text().split("\n")[:-1]]

    def rendered():
        return [e for e in events() if e.get("correlation_id") in cids
                and e.get("namespace") == "mediaproxy.access" and e.get("path") == "/media/a.jpg"]

    wait_for(lambda: {e["correlation_id"] for e in rendered()} == cids, 20,
             what="every request's line in the log")
    lines = rendered()
    # once per request, not formatted twice
    assert sorted(e["correlation_id"] for e in lines) == sorted(cids)
    assert [e for e in events() if e["message"].lstrip().startswith(("{", "20"))] == []
    # worker 1's lines say so; the supervisor's (worker 0) do not
    by_worker = {}
    for e in lines:
        by_worker.setdefault(e.get("worker"), set()).add(e["correlation_id"][:16])
    assert set(by_worker) == {None, 1}
    assert by_worker[None] | by_worker[1] == set(by_process)
    assert len(by_worker[None]) == len(by_worker[1]) == 1
