"""The layered cache end to end: real redis-server, real proxy processes, real sockets."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from twisted.web.server import NOT_DONE_YET

from mediaproxy.testing import ImageOrigin, make_image, start_origin, start_proxy, wait_for

from .processes import ProxyProcess

PHOTO = make_image((1600, 1200))


class SlowOrigin(ImageOrigin):
    """An ImageOrigin whose answers can be held back by ``delay`` seconds."""

    def __init__(self, files, delay=0.0):
        super().__init__(files)
        self.delay = delay

    def render_GET(self, request):
        self.record(request)   # counted when the request arrives
        if not self.delay:
            return self.respond(request)
        from twisted.internet import reactor

        def answer():
            if not request._disconnected:
                request.write(self.respond(request))
                request.finish()
        reactor.callLater(self.delay, answer)
        return NOT_DONE_YET


def files():
    return {"/media/uploads/p.jpg": (200, PHOTO, "image/jpeg", [("ETag", '"v1"')]),
            "/media/uploads/warm.jpg": (200, make_image((40, 30)), "image/jpeg", [])}


@pytest.fixture
def origin(live_reactor):
    origin = SlowOrigin(files())
    port = start_origin(origin)
    origin.port = port.getHost().port
    yield origin
    from mediaproxy.testing import call_in_reactor
    call_in_reactor(port.stopListening)


def stampede(targets, path, n=50):
    """n clients, each on its own connection, released together; round-robin over targets."""
    barrier = threading.Barrier(n)

    def one(i):
        barrier.wait(10)
        return targets[i % len(targets)].get(path)[0]

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


# -- layers, back-fill, Redis failures -----------------------------------------------------------

def test_back_fill_order_memory_then_redis(redis_server, origin, tmp_path):
    first = start_proxy(backend_port=origin.port, overrides={
        "cache": {"redis": {"url": redis_server.url}}})
    second = start_proxy(backend_port=origin.port, overrides={
        "cache": {"redis": {"url": redis_server.url}}})
    try:
        wait_for(lambda: first.runtime.redis.healthy, 10,
                 what="redis up")
        wait_for(lambda: second.runtime.redis.healthy, 10,
                 what="redis up")
        assert first.get("/media/uploads/p.jpg?w=200")[1]["x-cache"] == "MISS"
        # the leader answered first and stores right after; then every key has a TTL
        # (PTTL -1 would be a key without one; -2 a key already gone, like a released lock)
        wait_for(lambda: any(b":r:" in k for k in redis_server.command("KEYS", "*")), 10,
                 what="the result stored in Redis")
        keys = redis_server.command("KEYS", "*")
        assert all(int(redis_server.command("PTTL", k)) != -1 for k in keys)
        assert all(int(redis_server.command("PTTL", k)) > 0 for k in keys if b":r:" in k)
        assert second.get("/media/uploads/p.jpg?w=200")[1]["x-cache"] == "HIT-REDIS"
        assert second.get("/media/uploads/p.jpg?w=200")[1]["x-cache"] == "HIT-MEMORY"
        assert origin.hits["/media/uploads/p.jpg"] == 1
    finally:
        first.stop()
        second.stop()


def test_redis_killed_and_restarted_mid_test(redis_server, origin):
    proxy = start_proxy(backend_port=origin.port, overrides={
        "cache": {"redis": {"url": redis_server.url}, "memory": {"enabled": False}}})
    client = proxy.runtime.redis
    try:
        wait_for(lambda: client.healthy, 10, what="redis up")
        assert proxy.get("/media/uploads/p.jpg?w=100")[1]["x-cache"] == "MISS"
        assert proxy.get("/media/uploads/p.jpg?w=100")[1]["x-cache"] == "HIT-REDIS"
        redis_server.kill()
        for width in (101, 102, 100):   # keeps answering while Redis is gone
            status, headers, _, _ = proxy.get(f"/media/uploads/p.jpg?w={width}")
            assert status == 200 and headers["x-cache"] == "MISS"
        redis_server.restart()
        wait_for(lambda: client.healthy, 20, what="redis back")
        assert proxy.get("/media/uploads/p.jpg?w=103")[1]["x-cache"] == "MISS"
        assert proxy.get("/media/uploads/p.jpg?w=103")[1]["x-cache"] == "HIT-REDIS"
    finally:
        proxy.stop()


# -- stampedes: one fetch, whatever the topology ------------------------------------------------

def test_stampede_one_process(origin):
    proxy = start_proxy(backend_port=origin.port)
    try:
        origin.delay = 0.3
        assert stampede([proxy], "/media/uploads/p.jpg?w=300&h=200") == [200] * 50
        assert origin.hits["/media/uploads/p.jpg"] == 1
        counters = proxy.runtime.pm.get_plugin("mediaproxy.builtin.metrics.counters")
        assert counters.count("transform") == 1
    finally:
        proxy.stop()


def test_stampede_two_processes_without_redis(origin, tmp_path):
    env = {"MEDIAPROXY_CACHE__FILE__DIR": str(tmp_path / "cache")}
    procs = [ProxyProcess(origin.port, env), ProxyProcess(origin.port, env)]
    try:
        origin.delay = 0.5
        assert stampede(procs, "/media/uploads/p.jpg?w=310&h=210") == [200] * 50
        assert origin.hits["/media/uploads/p.jpg"] == 1
    finally:
        for p in procs:
            p.stop()


def test_stampede_two_nodes_with_redis(origin, redis_server, tmp_path):
    procs = [ProxyProcess(origin.port, {"MEDIAPROXY_CACHE__REDIS__URL": redis_server.url,
                                        "MEDIAPROXY_CACHE__FILE__DIR": str(tmp_path / f"n{i}")})
             for i in range(2)]
    try:
        for p in procs:   # both nodes connected to Redis before the stampede
            wait_for(lambda p=p: p.get("/media/uploads/warm.jpg?w=7")[0] == 200, 20,
                     what="node ready")
        origin.delay = 0.5
        assert stampede(procs, "/media/uploads/p.jpg?w=320&h=220") == [200] * 50
        assert origin.hits["/media/uploads/p.jpg"] == 1
    finally:
        for p in procs:
            p.stop()


def test_a_leader_killed_mid_render_leaves_no_waiter_hanging(origin, tmp_path):
    # one process each: the kill -9 must hit the process that renders (a worker of a killed
    # supervisor is stopped gracefully, and would finish the render)
    env = {"MEDIAPROXY_CACHE__FILE__DIR": str(tmp_path / "cache"),
           "MEDIAPROXY_SERVER__WORKERS": "1"}
    leader, follower = ProxyProcess(origin.port, env), ProxyProcess(origin.port, env)
    try:
        origin.delay = 1.5
        path = "/media/uploads/p.jpg?w=330&h=230"
        lead = threading.Thread(target=lambda: _swallow(leader.get, path), daemon=True)
        lead.start()
        wait_for(lambda: origin.hits["/media/uploads/p.jpg"] == 1, 10, what="leader fetching")
        with ThreadPoolExecutor(5) as pool:
            waiting = [pool.submit(follower.get, path) for _ in range(5)]
            time.sleep(0.2)   # let the followers find the lock taken (they poll it)
            origin.delay = 0.0
            leader.kill()
            results = [w.result(timeout=30) for w in waiting]
        assert [r[0] for r in results] == [200] * 5
        assert len({r[2] for r in results}) == 1
        assert origin.hits["/media/uploads/p.jpg"] == 2   # the dead leader's and its successor's
    finally:
        leader.stop()
        follower.stop()


def _swallow(fn, *args):
    try:
        fn(*args)
    except Exception:
        pass


def test_two_processes_share_one_redis(origin, redis_server):
    # Neither keeps results in memory: a request answered before the process's Redis
    # connection is up renders on its own, and must not leave a memory entry that hides Redis
    # from every later request (the race that made this test flaky under load).
    env = {"MEDIAPROXY_CACHE__REDIS__URL": redis_server.url,
           "MEDIAPROXY_CACHE__MEMORY__ENABLED": "false"}
    first = ProxyProcess(origin.port, env)
    second = ProxyProcess(origin.port, env)
    try:
        path = "/media/uploads/p.jpg?w=150"
        wait_for(lambda: first.get(path)[1]["x-cache"] == "HIT-REDIS", 20,
                 what="the first's render stored in Redis")
        # the entry is there before the second asks: its HIT-REDIS is the first's render (one
        # it made itself before its connection was up was never stored)
        wait_for(lambda: second.get(path)[1]["x-cache"] == "HIT-REDIS", 20,
                 what="second reads Redis")
    finally:
        first.stop()
        second.stop()


# -- freshness: stale-while-revalidate, stale-if-error, revalidation -----------------------------

def counters(proxy):
    return proxy.runtime.pm.get_plugin("mediaproxy.builtin.metrics.counters")


def test_stale_while_revalidate_serves_stale_and_revalidates_in_the_background(origin):
    proxy = start_proxy(backend_port=origin.port, overrides={"cache": {
        "memory": {"ttl": 100}, "stale_while_revalidate": 1000}})
    try:
        path = "/media/uploads/p.jpg?w=90"
        _, first, body, _ = proxy.get(path)
        proxy.age(path, 150)
        status, headers, stale_body, _ = proxy.get(path)
        assert (status, headers["x-cache"], stale_body) == (200, "STALE", body)
        # the refresh asked the backend with the original's validator and got a 304
        wait_for(lambda: counters(proxy).count("cache.revalidated") == 1, 10,
                 what="background revalidation")
        assert origin.headers_seen["/media/uploads/p.jpg"]["if-none-match"] == ['"v1"']
        assert counters(proxy).count("transform") == 1           # no second transform
        assert proxy.get(path)[1]["x-cache"] == "HIT-MEMORY"
    finally:
        proxy.stop()


def test_stale_if_error_when_the_backend_fails(origin):
    # no source cache: it would rebuild the result from the original it fetched a moment ago
    proxy = start_proxy(backend_port=origin.port, overrides={"cache": {
        "memory": {"ttl": 100}, "stale_while_revalidate": 0, "stale_if_error": 1000,
        "source": {"memory_bytes": 0}}})
    try:
        path = "/media/uploads/p.jpg?w=95"
        _, _, body, _ = proxy.get(path)
        proxy.age(path, 150)
        origin.files["/media/uploads/p.jpg"] = (503, b"down", "text/plain", [])
        status, headers, stale_body, _ = proxy.get(path)
        assert (status, headers["x-cache"], stale_body) == (200, "STALE", body)
        # past stale_if_error the backend's failure shows (as the placeholder)
        proxy.age(path, 2000)
        status, headers, _, _ = proxy.get(path)
        assert status == 502 and headers["cache-control"] == "no-store"
    finally:
        proxy.stop()


def test_a_changed_source_is_rendered_again_on_revalidation(origin):
    proxy = start_proxy(backend_port=origin.port, overrides={"cache": {
        "memory": {"ttl": 100}, "stale_while_revalidate": 0, "stale_if_error": 1000}})
    try:
        path = "/media/uploads/p.jpg?w=96"
        _, _, before, _ = proxy.get(path)
        proxy.age(path, 150)
        origin.files["/media/uploads/p.jpg"] = (200, make_image((1600, 1200), colour=(0, 90, 0)),
                                                "image/jpeg", [("ETag", '"v2"')])
        status, headers, after, _ = proxy.get(path)
        assert status == 200 and headers["x-cache"] == "MISS" and after != before
        assert counters(proxy).count("transform") == 2
    finally:
        proxy.stop()


def warm_up_job(proxy):
    """The warm-up job among the proxy's services (a TimerService calling WarmUp.run)."""
    from mediaproxy.builtin.warmup import WarmUp

    for svc in proxy.services:
        job = getattr(getattr(svc, "call", (None,))[0], "__self__", None)
        if isinstance(job, WarmUp):
            return job
    raise AssertionError("no warm-up service")


def test_periodic_warm_up_re_renders_the_most_requested_missing_variants(origin):
    proxy = start_proxy(backend_port=origin.port, overrides={
        "warmup": {"interval": 3600, "top": 2}})
    try:
        for _ in range(3):
            proxy.get("/media/uploads/p.jpg?w=111")
        for _ in range(2):
            proxy.get("/media/uploads/p.jpg?w=112")
        proxy.get("/media/uploads/p.jpg?w=113")          # requested once: not in the top 2
        from mediaproxy.testing import call_in_reactor
        rt = proxy.runtime
        call_in_reactor(lambda: rt.cache.purge(""))      # e.g. a restart lost the memory layer
        warm = warm_up_job(proxy)
        call_in_reactor(warm.run, timeout=30)
        assert warm.rendered == 2
        assert proxy.get("/media/uploads/p.jpg?w=111")[1]["x-cache"] == "HIT-MEMORY"
        assert proxy.get("/media/uploads/p.jpg?w=112")[1]["x-cache"] == "HIT-MEMORY"
        assert proxy.get("/media/uploads/p.jpg?w=113")[1]["x-cache"] == "MISS"
    finally:
        proxy.stop()


def test_originals_in_the_file_layer_survive_a_restart(origin, tmp_path):
    overrides = {"cache": {"file": {"dir": str(tmp_path / "cache")}}}
    first = start_proxy(backend_port=origin.port, overrides=overrides)
    try:
        assert first.get("/media/uploads/p.jpg?w=140")[0] == 200
        disk = next(l for l in first.runtime.cache.layers if l.name == "file")
        wait_for(lambda: disk.stats()["items"] >= 2, 10, what="original and result on disk")
    finally:
        first.stop()
    second = start_proxy(backend_port=origin.port, overrides=overrides)   # a restart
    try:
        assert second.get("/media/uploads/p.jpg?w=140")[1]["x-cache"] == "HIT-FILE"
        for width in (141, 142, 143):                  # new sizes: made from the kept original
            assert second.get(f"/media/uploads/p.jpg?w={width}")[1]["x-cache"] == "MISS"
        assert origin.hits["/media/uploads/p.jpg"] == 1
    finally:
        second.stop()
