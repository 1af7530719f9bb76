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


def _failing(calls, status, error):
    def backend():
        calls.append(1)
        return fail(SourceError(status, error, "down"))
    return backend


def test_a_backend_failure_is_remembered_for_error_ttl_and_hits_never_extend_it():
    # The issue: every negative hit stored the failure again with a fresh TTL, so a source
    # asked for more often than the TTL stayed broken after the backend had recovered.
    now = [0.0]
    cache = SourceCache(Runtime(), max_bytes=10_000, ttl=100, negative_ttl=60, error_ttl=1.0,
                        clock=lambda: now[0])
    calls = []
    backend = _failing(calls, 502, "backend_error")
    for t in (0.0, 0.3, 0.6, 0.9, 0.99):
        now[0] = t
        assert result_of(fetch_through(cache, "/media/a.jpg", backend)).value.status == 502
    assert len(calls) == 1 and cache.negative_hits == 4
    now[0] = 1.0                     # one second after the failure, however many hits since
    assert result_of(fetch_through(cache, "/media/a.jpg", lambda: succeed(
        SourceImage(b"back")))).body == b"back"
    assert result_of(fetch_through(cache, "/media/a.jpg", backend)).body == b"back"


def test_a_missing_source_keeps_the_long_ttl_and_its_hits_never_extend_it_either():
    now = [0.0]
    cache = SourceCache(Runtime(), max_bytes=10_000, ttl=100, negative_ttl=60, error_ttl=1.0,
                        clock=lambda: now[0])
    calls = []
    backend = _failing(calls, 404, "source_not_found")
    for t in (0, 1, 30, 59.9):
        now[0] = t
        assert result_of(fetch_through(cache, "/media/gone.jpg", backend)).value.status == 404
    assert len(calls) == 1
    now[0] = 60
    result_of(fetch_through(cache, "/media/gone.jpg", backend))
    assert len(calls) == 2


def test_each_kind_of_failure_can_be_switched_off_alone():
    only_missing = SourceCache(Runtime(), max_bytes=0, ttl=100, negative_ttl=60, error_ttl=0)
    only_errors = SourceCache(Runtime(), max_bytes=0, ttl=100, negative_ttl=0, error_ttl=5)
    for cache, remembered in ((only_missing, {404}), (only_errors, {502})):
        for status, error in ((404, "source_not_found"), (502, "backend_unavailable"),
                              (503, "circuit_open")):
            calls = []
            backend = _failing(calls, status, error)
            result_of(fetch_through(cache, f"/media/{status}.jpg", backend))
            result_of(fetch_through(cache, f"/media/{status}.jpg", backend))
            assert len(calls) == (1 if status in remembered else 2), (cache, status)
