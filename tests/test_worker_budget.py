"""How many workers ``server.workers`` runs (auto: one per core where that is safe) and each
worker's share of the host's per-process budgets (mediaproxy.workerbudget), exactly."""

import pytest

from mediaproxy.config import ConfigError, load_config
from mediaproxy.runtime import (
    AUTO_TRANSFORM_MEMORY_CAP, DECODED_CACHE_CAP, decoded_cache_capacity, memory_budget,
)
from mediaproxy.workerbudget import (
    MIN_WORKER_TRANSFORM_MEMORY, host_transform_memory, per_worker, shares, worker_threads,
)
from mediaproxy.workers import resolve_workers

GiB = 1024**3
MiB = 1024**2


def config(**sections):
    data = {"server": {"listen": ["tcp:8080"]}}
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return load_config(environ={}, overrides=data)


def test_auto_is_the_default_and_an_integer_or_auto_is_accepted():
    assert load_config(environ={}).server.workers == "auto"
    assert load_config(environ={"MEDIAPROXY_SERVER__WORKERS": "AUTO"}).server.workers == "auto"
    assert load_config(environ={"MEDIAPROXY_SERVER__WORKERS": "3"}).server.workers == 3


@pytest.mark.parametrize("value, message", [
    ("0", "MEDIAPROXY_SERVER__WORKERS: server.workers: 0 is below the minimum 1 (\"auto\": one per CPU core)"),
    ("many", "MEDIAPROXY_SERVER__WORKERS: server.workers: \"many\" is neither an integer nor "
             "\"auto\""),
])
def test_a_bad_worker_count_names_the_key(value, message):
    with pytest.raises(ConfigError) as e:
        load_config(environ={"MEDIAPROXY_SERVER__WORKERS": value})
    assert (e.value.key, str(e.value)) == ("server.workers", message)


def test_auto_is_one_per_core():
    assert resolve_workers(config(), cores=4, total_memory=64 * GiB) == (4, "")


def test_an_integer_is_taken_as_it_is_even_on_one_core():
    assert resolve_workers(config(server={"workers": 3}), cores=1) == (3, "")


def test_auto_on_one_core_is_one_process():
    assert resolve_workers(config(), cores=1, total_memory=64 * GiB) == (1, "one CPU core")


@pytest.mark.parametrize("endpoint, why", [
    ("unix:/run/mp.sock", "'unix:/run/mp.sock': only tcp: endpoints can be shared by several "
                          "workers"),
    ("systemd:domain=INET:index=0", "'systemd:domain=INET:index=0': only tcp: endpoints can be "
                                    "shared by several workers"),
    ("tcp:0:interface=127.0.0.1", "'tcp:0:interface=127.0.0.1' asks for any free port: each "
                                  "worker would get its own"),
])
def test_auto_with_an_endpoint_that_cannot_be_shared_is_one_process(endpoint, why):
    got = resolve_workers(config(server={"listen": ["tcp:8080", endpoint]}), cores=4,
                          total_memory=64 * GiB)
    assert got == (1, f"server.listen {endpoint!r} cannot be shared by several processes "
                      f"({why})")


def test_auto_uses_only_as_many_workers_as_the_transform_budget_can_feed():
    # 3 x MIN exactly: three workers fit, not four
    small = config(limits={"transform_memory": 3 * MIN_WORKER_TRANSFORM_MEMORY})
    assert resolve_workers(small, cores=4) == (
        3, f"the transform memory budget ({3 * MIN_WORKER_TRANSFORM_MEMORY} bytes) gives each "
           f"of at most 3 worker(s) the {MIN_WORKER_TRANSFORM_MEMORY} bytes a large photo needs")
    four = config(limits={"transform_memory": 4 * MIN_WORKER_TRANSFORM_MEMORY})
    assert resolve_workers(four, cores=4) == (4, "")
    tiny = config(limits={"transform_memory": MIN_WORKER_TRANSFORM_MEMORY - 1})
    assert resolve_workers(tiny, cores=4)[0] == 1


def test_the_automatic_host_budget_is_the_machines_share_capped_per_process():
    auto = config()
    assert host_transform_memory(auto, 1, total_memory=16 * GiB) == AUTO_TRANSFORM_MEMORY_CAP
    # the cap is per process: two processes, twice the cap, below an eighth of 16 GiB
    assert host_transform_memory(auto, 2, total_memory=16 * GiB) == 2 * AUTO_TRANSFORM_MEMORY_CAP
    assert host_transform_memory(auto, 4, total_memory=16 * GiB) == 2 * GiB   # an eighth
    assert host_transform_memory(auto, 2, total_memory=8 * GiB) == GiB
    fixed = config(limits={"transform_memory": 900 * MiB})
    assert host_transform_memory(fixed, 4, total_memory=16 * GiB) == 900 * MiB


def test_one_worker_keeps_the_config_as_it_is():
    c = config()
    assert per_worker(c, 1, total_memory=16 * GiB) is c


def test_each_worker_gets_its_share_of_every_per_process_budget():
    c = config(cache={"memory": {"max_bytes": 100 * MiB}, "source": {"memory_bytes": 30 * MiB}},
               limits={"transform_memory": 900 * MiB},
               server={"body_buffer_total": 64 * MiB, "response_buffer_total": 10 * MiB + 1})
    three = per_worker(c, 3, total_memory=16 * GiB, cores=7)
    assert shares(three) == {
        "cache.memory.max_bytes": 100 * MiB // 3,
        "cache.source.memory_bytes": 10 * MiB,
        "limits.transform_memory": 300 * MiB,
        "processing.decoded_cache_bytes": 0,   # automatic: from each worker's budget
        "server.body_buffer_total": 64 * MiB // 3,
        "server.response_buffer_total": (10 * MiB + 1) // 3,
        "processing.threads": 2,         # automatic: 7 cores in 3
    }
    # what is not a per-process byte budget stays as it is
    assert (three.ratelimit.max_keys, three.cache.memory.max_item_bytes,
            three.server.body_buffer, three.server.workers) == \
        (c.ratelimit.max_keys, c.cache.memory.max_item_bytes, c.server.body_buffer,
         c.server.workers)


def test_the_automatic_transform_budget_is_divided_and_minimums_are_kept():
    c = config(server={"body_buffer_total": 64 * 1024})
    two = per_worker(c, 2, total_memory=8 * GiB)
    assert two.limits.transform_memory == 512 * MiB  # 1 GiB (an eighth of 8) in two
    assert two.server.body_buffer_total == 64 * 1024  # its minimum, not half of it
    off = per_worker(config(cache={"source": {"memory_bytes": 0}}), 2, total_memory=16 * GiB)
    assert off.cache.source.memory_bytes == 0


def test_worker_0_runs_its_share_with_the_host_layer_and_a_reload_keeps_both(monkeypatch):
    from twisted.internet.testing import MemoryReactorClock

    from mediaproxy.tap import ReloadOnHangup, build_service, reload_config

    for name in [n for n in __import__("os").environ if n.startswith("MEDIAPROXY_")]:
        monkeypatch.delenv(name)
    c = load_config(environ={}, overrides={
        "server": {"listen": ["tcp:0:interface=127.0.0.1"], "workers": 2},
        "cache": {"memory": {"max_bytes": 100 * MiB}}})
    top = build_service(c, MemoryReactorClock())
    host = top.supervisor.host_layer
    try:
        runtime = top.runtime
        assert (runtime.config.cache.memory.max_bytes, runtime.config.cache.file.dir,
                runtime.config.cache.file.max_bytes) == (50 * MiB, host.path, 100 * MiB)
        assert runtime.exchange is top.supervisor.ledger
        # the decoded-image cache this worker made: automatic, the per-process cap
        assert (runtime.config.processing.decoded_cache_bytes, runtime.decoded.capacity) == \
            (0, DECODED_CACHE_CAP)
        reload = next(svc for svc in top if isinstance(svc, ReloadOnHangup))
        reload_config(runtime, None, reload.adjust)     # the defaults now: 128 MiB
        assert (runtime.config.cache.memory.max_bytes, runtime.config.cache.file.dir,
                runtime.config.cache.file.max_bytes) == (64 * MiB, host.path, 128 * MiB)
    finally:
        host.close()


def test_auto_gives_each_worker_at_least_256_mib_of_transform_memory():
    eight_gib = config()                          # automatic: an eighth of 8 GiB, 1 GiB
    assert resolve_workers(eight_gib, cores=8, total_memory=8 * GiB)[0] == 4
    assert resolve_workers(config(limits={"transform_memory": 512 * MiB}), cores=4)[0] == 2
    assert resolve_workers(config(limits={"transform_memory": 512 * MiB - 1}), cores=4)[0] == 1


def test_a_tiny_machine_or_budget_still_has_a_budget_of_at_least_one_byte():
    assert host_transform_memory(config(), 1, total_memory=7) == 1     # an eighth is 0
    # a 1-byte budget split in two stays 1 byte: 0 would mean "automatic"
    assert per_worker(config(limits={"transform_memory": 1}), 2).limits.transform_memory == 1


def test_a_configured_decoded_cache_is_the_hosts_size_divided():
    three = per_worker(config(processing={"decoded_cache_bytes": 60 * MiB},
                              limits={"transform_memory": 900 * MiB}), 3)
    assert (three.processing.decoded_cache_bytes, decoded_cache_capacity(three)) == \
        (20 * MiB, 20 * MiB)
    # at most half of the host's budget (450 MiB), then divided
    halved = per_worker(config(processing={"decoded_cache_bytes": 600 * MiB},
                               limits={"transform_memory": 900 * MiB}), 3)
    assert decoded_cache_capacity(halved) == 150 * MiB
    # ... and the rest of the worker's transform budget admits transforms
    assert memory_budget(three, None, 2).capacity == 300 * MiB - 20 * MiB


def test_the_automatic_decoded_cache_follows_each_workers_divided_budget_and_keeps_its_cap():
    # a quarter of the worker's budget (512 MiB of the host's 1 GiB), at most the 24 MiB a
    # 12 MP source's decodes need: the cap is a working set, per process
    two = per_worker(config(), 2, total_memory=8 * GiB)
    assert two.processing.decoded_cache_bytes == 0
    assert decoded_cache_capacity(two) == DECODED_CACHE_CAP
    # below the cap: a quarter of each worker's 20 MiB (the host's 40 MiB in two)
    small = per_worker(config(limits={"transform_memory": 40 * MiB}), 2)
    assert decoded_cache_capacity(small) == 5 * MiB


@pytest.mark.parametrize("setting, workers, share", [
    (-1, 2, -1),    # off stays off
    (0, 2, 0),      # automatic stays automatic
    (2, 2, 1),      # one byte each
    (1, 2, -1),     # less than a byte each: off, not 0 (automatic)
])
def test_a_decoded_cache_share_below_a_byte_is_off(setting, workers, share):
    c = config(processing={"decoded_cache_bytes": setting}, limits={"transform_memory": 1 * GiB})
    divided = per_worker(c, workers)
    assert divided.processing.decoded_cache_bytes == share
    assert decoded_cache_capacity(divided) == (DECODED_CACHE_CAP if share == 0 else max(0, share))


@pytest.mark.parametrize("cores, workers, threads", [
    (2, 2, 1), (4, 2, 2), (5, 2, 2), (8, 3, 2), (2, 3, 1), (1, 2, 1), (8, 8, 1), (16, 1, 16)])
def test_automatic_threads_are_the_cores_divided_among_the_workers_at_least_one(
        cores, workers, threads):
    assert worker_threads(config(), workers, cores=cores) == threads
    if workers > 1:
        assert per_worker(config(), workers, total_memory=16 * GiB,
                          cores=cores).processing.threads == threads


def test_a_thread_count_set_is_per_worker_and_kept():
    c = config(processing={"threads": 3})
    assert worker_threads(c, 2, cores=2) == 3
    assert per_worker(c, 2, total_memory=16 * GiB, cores=2).processing.threads == 3
    # one worker: the config as it is; its pool resolves 0 to one thread per core
    assert per_worker(config(), 1, cores=2).processing.threads == 0


def test_automatic_threads_count_the_cores_this_process_may_run_on():
    import os

    cores = len(os.sched_getaffinity(0))
    assert worker_threads(config(), 1) == cores
    assert worker_threads(config(), cores + 1) == 1
