"""The source cache and negative cache on a controlled clock (one module, no sockets)."""

from twisted.internet.defer import Deferred, fail, succeed

from mediaproxy.builtin.sourcecache import SourceCache
from mediaproxy.models import ImageRequest, RequestInfo, SourceError, SourceImage


class Runtime:
    def emit(self, *args, **kwargs):
        pass


def fetch_through(cache, path, backend):
    """Drive the two hook implementations the way pluggy does for a firstresult call."""
    request = ImageRequest(route="query", source_path=path)
    info = RequestInfo(method="GET", path=path)
    answered = cache.mediaproxy_fetch_source(request, info, Runtime())
    wrapper = cache.record_fetch(request, info, Runtime())
    next(wrapper)
    try:
        wrapper.send(answered if answered is not None else backend())
    except StopIteration as stop:
        return stop.value
    raise AssertionError("the wrapper did not return")


def result_of(d):
    out = []
    d.addBoth(out.append)
    return out[0]


def test_originals_are_reused_until_their_ttl():
    now = [0.0]
    cache = SourceCache(Runtime(), max_bytes=10_000, ttl=100, clock=lambda: now[0])
    calls = []

    def backend():
        calls.append(1)
        return succeed(SourceImage(b"original"))

    assert result_of(fetch_through(cache, "/media/a.jpg", backend)).body == b"original"
    assert result_of(fetch_through(cache, "/media/a.jpg", backend)).body == b"original"
    assert len(calls) == 1
    now[0] = 101
    fetch_through(cache, "/media/a.jpg", backend)
    assert len(calls) == 2


def test_a_missing_source_is_remembered_for_negative_ttl_only():
    now = [0.0]
    cache = SourceCache(Runtime(), max_bytes=10_000, ttl=100, negative_ttl=60,
                        clock=lambda: now[0])
    calls = []

    def backend():
        calls.append(1)
        return fail(SourceError(404, "source_not_found", "missing"))

    for _ in range(3):
        failure = result_of(fetch_through(cache, "/media/gone.jpg", backend))
        assert failure.value.status == 404
    assert len(calls) == 1
    now[0] = 61
    result_of(fetch_through(cache, "/media/gone.jpg", backend))
    assert len(calls) == 2


def test_timeouts_are_not_remembered():
    cache = SourceCache(Runtime(), max_bytes=10_000, ttl=100, negative_ttl=60)
    calls = []

    def backend():
        calls.append(1)
        return fail(SourceError(504, "backend_timeout", "slow"))

    result_of(fetch_through(cache, "/media/slow.jpg", backend))
    result_of(fetch_through(cache, "/media/slow.jpg", backend))
    assert len(calls) == 2


def test_concurrent_fetches_join_the_first():
    cache = SourceCache(Runtime(), max_bytes=10_000, ttl=100)
    pending = Deferred()
    first = fetch_through(cache, "/media/b.jpg", lambda: pending)
    second = fetch_through(cache, "/media/b.jpg", lambda: succeed(SourceImage(b"other")))
    assert cache.joined == 1
    pending.callback(SourceImage(b"first"))
    assert result_of(first).body == result_of(second).body == b"first"
