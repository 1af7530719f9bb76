"""
One way to start: ``twistd -n mediaproxy`` (tap.makeService), ``mediaproxy run`` / ``demo``
(cli.serve) and every worker (worker.main -> cli.serve) build their tree with
``tap.build_service``; signal handlers belong to starting that tree, not to building it.
"""

from __future__ import annotations

import signal

from twisted.application import service
from twisted.internet.testing import MemoryReactorClock

from mediaproxy.config import load_config
from mediaproxy.tap import (
    Options, ReloadOnHangup, RuntimeService, ThreadPoolService, build_service, makeService,
)
from mediaproxy.workers import SharedPortService


def kinds(top: service.MultiService) -> list[str]:
    return [type(svc).__name__ for svc in top]


def test_twistd_and_the_cli_build_the_same_tree():
    options = Options()
    options.parseOptions(["--listen", "tcp:0:interface=127.0.0.1"])
    from_twistd = makeService(options)
    config = load_config(environ={}, overrides={
        "server": {"listen": ["tcp:0:interface=127.0.0.1"]}})
    from_cli = build_service(config, MemoryReactorClock())
    assert kinds(from_twistd) == kinds(from_cli)
    assert kinds(from_cli)[0] == "ThreadPoolService"       # the pool before the ports
    assert kinds(from_cli)[-1] == "ReloadOnHangup"


def test_a_worker_builds_the_same_tree_on_a_shared_port_without_the_reload():
    config = load_config(environ={}, overrides={
        "server": {"listen": ["tcp:0:interface=127.0.0.1"]}})
    single = kinds(build_service(config, MemoryReactorClock()))
    worker = kinds(build_service(config, MemoryReactorClock(), shared_ports=True))
    assert worker == [("SharedPortService" if k == "ListeningService" else k)
                      for k in single if k != "ReloadOnHangup"]


def test_sighup_is_installed_when_the_tree_starts_and_put_back_when_it_stops():
    before = signal.getsignal(signal.SIGHUP)
    config = load_config(environ={}, overrides={
        "server": {"listen": ["tcp:0:interface=127.0.0.1"]}})
    top = build_service(config, MemoryReactorClock())
    assert signal.getsignal(signal.SIGHUP) is before          # building changed nothing
    reload = next(svc for svc in top if isinstance(svc, ReloadOnHangup))
    reload.startService()
    try:
        assert signal.getsignal(signal.SIGHUP) is not before
    finally:
        reload.stopService()
    assert signal.getsignal(signal.SIGHUP) is before


def test_the_tree_starts_the_pool_before_the_runtime_and_the_listeners():
    config = load_config(environ={}, overrides={
        "server": {"listen": ["tcp:0:interface=127.0.0.1"]}})
    top = build_service(config, MemoryReactorClock())
    services = list(top)
    pool = next(i for i, s in enumerate(services) if isinstance(s, ThreadPoolService))
    runtime = next(i for i, s in enumerate(services) if isinstance(s, RuntimeService))
    ports = [i for i, s in enumerate(services)
             if type(s).__name__ in ("ListeningService", SharedPortService.__name__)]
    assert pool < runtime < min(ports)
