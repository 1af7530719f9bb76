"""Several worker processes sharing the listening port (server.workers): real processes."""

import os
import signal
import subprocess
import sys

import psutil
import pytest

from mediaproxy.testing import ImageOrigin, make_image, start_origin, wait_for

from .processes import ROOT, ProxyProcess


@pytest.fixture(scope="module")
def origin_port(live_reactor):
    origin = ImageOrigin({"/media/a.jpg": (200, make_image((300, 200)), "image/jpeg", [])})
    return start_origin(origin).getHost().port


def prefixes(proxy, n=40):
    """Which processes answered: correlation IDs start with a per-process random prefix."""
    return {proxy.get(f"/media/a.jpg?w={10 + i % 5}")[1]["x-correlation-id"][:16]
            for i in range(n)}


def workers_of(proxy):
    """The live worker processes of a supervisor (a dead one not yet reaped is left out)."""
    found = []
    for child in psutil.Process(proxy.proc.pid).children():
        try:
            if (child.status() != psutil.STATUS_ZOMBIE
                    and "mediaproxy.worker" in " ".join(child.cmdline())):
                found.append(child)
        except psutil.Error:
            pass
    return found


def test_two_workers_share_the_port_and_a_dead_one_is_replaced(origin_port, tmp_path):
    proxy = ProxyProcess(origin_port, {"MEDIAPROXY_SERVER__WORKERS": "2",
                                       "MEDIAPROXY_CACHE__FILE__DIR": str(tmp_path / "c")})
    try:
        wait_for(lambda: len(workers_of(proxy)) == 1, 20, what="worker 1 started")
        wait_for(lambda: len(prefixes(proxy)) == 2, 20, what="both workers answering")
        (child,) = workers_of(proxy)
        child.send_signal(signal.SIGKILL)
        wait_for(lambda: [c.pid for c in workers_of(proxy)] not in ([], [child.pid]), 20,
                 what="a new worker 1")
        wait_for(lambda: len(prefixes(proxy)) == 2, 20, what="both answering again")
        # a result rendered by one worker is a hit for the other, through the file layer
        caches = {proxy.get("/media/a.jpg?w=77")[1]["x-cache"] for _ in range(20)}
        assert caches <= {"MISS", "HIT-MEMORY", "HIT-FILE"} and "MISS" in caches
        children = workers_of(proxy)
    finally:
        proxy.stop()
    # a graceful stop of the supervisor stops its workers
    wait_for(lambda: not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE
                             for c in children), 20, what="workers stopped")


def test_workers_stop_with_the_supervisor_even_after_kill_9(origin_port, tmp_path):
    # a kill -9 leaves the supervisor's private directories behind: in tmp_path
    proxy = ProxyProcess(origin_port, {"MEDIAPROXY_SERVER__WORKERS": "2",
                                       "TMPDIR": str(tmp_path)})
    wait_for(lambda: len(workers_of(proxy)) == 1, 20, what="worker 1 started")
    (child,) = workers_of(proxy)
    proxy.kill()
    wait_for(lambda: not child.is_running() or child.status() == psutil.STATUS_ZOMBIE, 20,
             what="the orphaned worker exits")


def test_a_port_that_cannot_be_shared_is_a_config_error():
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIAPROXY_")}
    env.update(MEDIAPROXY_SERVER__WORKERS="2", PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-m", "mediaproxy", "run", "--listen",
                             "unix:/tmp/mediaproxy-test.sock"], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "server.workers" in result.stderr and "unix:" in result.stderr


@pytest.mark.parametrize("given, expected", [
    ("tcp:8080", "tcp:8080:backlog=1024"),
    ("tcp:8080:interface=127.0.0.1", "tcp:8080:interface=127.0.0.1:backlog=1024"),
    ("tcp6:port=8080:backlog=64", "tcp6:port=8080:backlog=64"),
    ("unix:/run/mediaproxy.sock", "unix:/run/mediaproxy.sock"),
])
def test_a_tcp_endpoint_listens_with_a_deep_backlog_unless_it_names_one(given, expected):
    from mediaproxy.workers import parse_tcp, with_backlog
    assert with_backlog(given) == expected
    if given.startswith("tcp"):
        assert parse_tcp(given)[2] == parse_tcp(expected)[2]
