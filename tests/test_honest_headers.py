"""Honest headers: a stale copy or a placeholder is never marked cacheable for a year, and
``Cache-Status`` (RFC 9211) says which layer answered, or why the backend was asked.

Cache-Status is read with a small Structured Field parser written here from RFC 8941 (an oracle
independent of :mod:`mediaproxy.cache.headers`)."""

from __future__ import annotations

import re
import threading

import pytest
from hypothesis import given, strategies as st

from mediaproxy.cache.headers import CacheStatus, shorten_cache_control
from mediaproxy.testing import (
    ImageOrigin, make_image, start_proxy, wait_for,
)

PHOTO = make_image((400, 300))
PATH = "/media/uploads/p.jpg"
YEAR = "public, max-age=31536000, immutable"


# -- an independent reader of Cache-Status (RFC 8941 list of items with parameters) -----------

_KEY = r"[a-z*][a-z0-9_.*-]*"
_TOKEN = r"[A-Za-z*][A-Za-z0-9!#$%&'*+\-.^_`|~:/]*"
_BARE = rf"(?:-?[0-9]{{1,15}}|\"(?:[^\"\\]|\\[\"\\])*\"|{_TOKEN}|\?[01])"
_PARAM = re.compile(rf";\s*({_KEY})(?:=({_BARE}))?")
_MEMBER = re.compile(rf"^({_TOKEN}|\"(?:[^\"\\]|\\[\"\\])*\")((?:;\s*{_KEY}(?:={_BARE})?)*)$")


def parse_cache_status(value: str) -> list[tuple[str, dict]]:
    """[(cache name, {param: value})]; a bare param is True, integers are ints."""
    out = []
    for member in value.split(","):
        match = _MEMBER.match(member.strip())
        assert match, f"not a Structured Field list member: {member!r}"
        params = {}
        for key, raw in _PARAM.findall(match.group(2)):
            if raw == "":
                params[key] = True
            elif re.fullmatch(r"-?[0-9]+", raw):
                params[key] = int(raw)
            elif raw.startswith('"'):
                params[key] = re.sub(r"\\(.)", r"\1", raw[1:-1])
            else:
                params[key] = raw
        out.append((match.group(1), params))
    return out


def status_of(headers) -> dict:
    [(name, params)] = parse_cache_status(headers["cache-status"])
    assert name == "mediaproxy"
    return params


def counters(proxy):
    return proxy.runtime.pm.get_plugin("mediaproxy.builtin.metrics.counters")


# -- misses and hits ---------------------------------------------------------------------------

def test_miss_then_hit_per_layer(live_reactor):
    with start_proxy(files={PATH: PHOTO}) as proxy:
        status, headers, _, _ = proxy.get(PATH + "?w=100")
        assert status == 200 and headers["x-cache"] == "MISS"
        assert headers["cache-status"] == "mediaproxy; fwd=uri-miss; stored"
        assert status_of(headers) == {"fwd": "uri-miss", "stored": True}
        assert headers["cache-control"] == YEAR
        status, headers, _, _ = proxy.get(PATH + "?w=100")
        assert headers["x-cache"] == "HIT-MEMORY"
        assert status_of(headers) == {"hit": True, "detail": "memory"}
        assert headers["cache-control"] == YEAR
        # a conditional request answered 304 says the same
        status, again, _, _ = proxy.get(PATH + "?w=100",
                                        headers={"If-None-Match": headers["etag"]})
        assert status == 304 and status_of(again) == {"hit": True, "detail": "memory"}


def test_an_accept_dependent_miss_is_a_miss_not_a_uri_miss(live_reactor):
    # fmt=auto: another Accept's variant of this URI may be stored (RFC 9211 2.2: miss when
    # uri-miss and vary-miss cannot be told apart)
    with start_proxy(files={PATH: PHOTO}) as proxy:
        _, headers, _, _ = proxy.get(PATH + "?w=100&fmt=auto", headers={"Accept": "image/webp"})
        assert headers["vary"] == "Accept"
        assert status_of(headers) == {"fwd": "miss", "stored": True}


def test_a_hit_from_the_file_layer_names_it(live_reactor, tmp_path):
    with start_proxy(files={PATH: PHOTO},
                     overrides={"cache": {"memory": {"enabled": False},
                                          "file": {"dir": str(tmp_path)}}}) as proxy:
        proxy.get(PATH + "?w=100")
        wait_for(lambda: proxy.get(PATH + "?w=100")[1]["x-cache"] == "HIT-FILE", 10,
                 what="the file layer has the result")
        _, headers, _, _ = proxy.get(PATH + "?w=100")
        assert status_of(headers) == {"hit": True, "detail": "file"}


def test_no_cache_status_when_its_name_is_empty(live_reactor):
    with start_proxy(files={PATH: PHOTO}, overrides={"cache": {"cache_status": ""}}) as proxy:
        _, headers, _, _ = proxy.get(PATH + "?w=100")
        assert "cache-status" not in headers and headers["x-cache"] == "MISS"
        _, headers, _, _ = proxy.get("/media/uploads/missing.jpg?w=100")
        assert "cache-status" not in headers


# -- stale copies: a short max-age, never immutable --------------------------------------------

def test_stale_while_revalidate_gets_a_short_max_age(live_reactor):
    with start_proxy(files={PATH: (200, PHOTO, "image/jpeg", [("ETag", '"v1"')])},
                     overrides={"cache": {"memory": {"ttl": 100},
                                          "stale_while_revalidate": 1000}}) as proxy:
        path = PATH + "?w=90"
        proxy.get(path)
        proxy.age(path, 150)
        status, headers, _, _ = proxy.get(path)
        assert (status, headers["x-cache"]) == (200, "STALE")
        assert headers["cache-control"] == "public, max-age=10"
        params = status_of(headers)
        assert params.pop("ttl") < 0            # stale: no freshness left
        assert params == {"hit": True, "detail": "memory"}
        wait_for(lambda: counters(proxy).count("cache.revalidated") == 1, 10,
                 what="background revalidation")
        _, headers, _, _ = proxy.get(path)
        assert headers["cache-control"] == YEAR and status_of(headers)["hit"] is True


def test_stale_if_error_gets_a_short_max_age_and_says_the_backend_failed(live_reactor):
    origin = ImageOrigin({PATH: PHOTO})
    with start_proxy(origin=origin, overrides={"cache": {
            "memory": {"ttl": 100}, "stale_while_revalidate": 0, "stale_if_error": 1000,
            "source": {"memory_bytes": 0}, "negative_ttl": 0, "transient_max_age": 3}}) as proxy:
        path = PATH + "?w=95"
        proxy.get(path)
        proxy.age(path, 150)
        origin.files[PATH] = (503, b"down", "text/plain", [])
        status, headers, _, _ = proxy.get(path)
        assert (status, headers["x-cache"]) == (200, "STALE")
        assert headers["cache-control"] == "public, max-age=3"
        params = status_of(headers)
        assert params.pop("ttl") < 0
        # went to the backend for a stale copy, served it (the backend failed: no fwd-status,
        # the proxy's fetch does not keep the backend's own status)
        assert params == {"fwd": "stale", "detail": "memory"}


def test_transient_max_age_zero_sends_no_store_for_a_stale_copy(live_reactor):
    with start_proxy(files={PATH: PHOTO}, overrides={"cache": {
            "memory": {"ttl": 100}, "stale_while_revalidate": 1000,
            "transient_max_age": 0}}) as proxy:
        proxy.get(PATH + "?w=91")
        proxy.age(PATH + "?w=91", 150)
        _, headers, _, _ = proxy.get(PATH + "?w=91")
        assert (headers["x-cache"], headers["cache-control"]) == ("STALE", "public, max-age=0, no-store")


# -- placeholders ------------------------------------------------------------------------------

def test_a_placeholder_says_the_backend_was_asked_and_nothing_stored(live_reactor):
    with start_proxy(files={}) as proxy:
        status, headers, _, _ = proxy.get("/media/uploads/missing.jpg?w=100")
        assert status == 404 and headers["cache-control"] == "no-store"
        assert status_of(headers) == {"fwd": "uri-miss", "detail": "placeholder"}


def test_a_placeholder_is_never_immutable_whatever_error_cache_control_says(live_reactor):
    with start_proxy(files={}, overrides={"cache": {
            "error_cache_control": "public, max-age=86400, s-maxage=600, immutable"}}) as proxy:
        _, headers, _, _ = proxy.get("/media/uploads/missing.jpg?w=100")
        assert headers["cache-control"] == "public, max-age=10, s-maxage=10"


# -- a coalesced waiter ------------------------------------------------------------------------

def HeldOrigin(files):
    """Holds every answer until ``release()``: the first request's transform is still under
    way when the second arrives."""
    origin = ImageOrigin(files)
    origin.hold()
    return origin


@pytest.mark.parametrize("files, first, waiter", [
    ({PATH: PHOTO}, "mediaproxy; fwd=uri-miss; stored",
     "mediaproxy; fwd=uri-miss; stored; collapsed"),
    ({}, "mediaproxy; fwd=uri-miss; detail=placeholder",
     "mediaproxy; fwd=uri-miss; collapsed; detail=placeholder"),
], ids=["result", "placeholder"])
def test_a_request_that_waited_for_another_ones_transform_is_collapsed(live_reactor, files,
                                                                         first, waiter):
    origin = HeldOrigin(files)
    path = PATH + "?w=80"
    with start_proxy(origin=origin, overrides={"cache": {"negative_ttl": 0}}) as proxy:
        pipeline = proxy.runtime.pm.get_plugin("mediaproxy.builtin.pipeline.instance")
        key = proxy.cache_key(path)
        answers = {}

        def fetch(name):
            answers[name] = proxy.get(path)

        leader = threading.Thread(target=fetch, args=("leader",))
        leader.start()
        wait_for(lambda: origin.hits[PATH] == 1, 10, what="the leader's fetch")
        follower = threading.Thread(target=fetch, args=("waiter",))
        follower.start()
        # the leader and its waiter, each with a Deferred of its own
        wait_for(lambda: len(pipeline._inflight.get(key, ())) == 2, 10, what="one waiter")
        origin.release()
        leader.join(10)
        follower.join(10)
        assert origin.hits[PATH] == 1
        assert answers["leader"].headers["cache-status"] == first
        assert answers["waiter"].headers["cache-status"] == waiter
        assert answers["leader"].body == answers["waiter"].body


# -- the two pure helpers ----------------------------------------------------------------------

def test_cache_status_syntax():
    assert CacheStatus(hit=True, detail="memory").header("mediaproxy") == \
        "mediaproxy; hit; detail=memory"
    full = CacheStatus(fwd="stale", fwd_status=503, ttl=-12, stored=True, collapsed=True,
                       detail='odd "layer"\\')
    assert parse_cache_status(full.header("edge")) == [("edge", {
        "fwd": "stale", "fwd-status": 503, "ttl": -12, "stored": True, "collapsed": True,
        "detail": 'odd "layer"\\'})]
    with pytest.raises(ValueError):
        CacheStatus(fwd="because")


DIRECTIVE = st.sampled_from(["public", "private", "immutable", "no-transform",
                             "must-revalidate", "no-cache", "no-store", "max-age=0",
                             "max-age=5", "max-age=31536000", "s-maxage=600",
                             "stale-if-error=60"])


@given(st.lists(DIRECTIVE, max_size=6), st.integers(0, 100))
def test_shorten_cache_control_never_lets_a_cdn_keep_it_longer(directives, max_age):
    out = shorten_cache_control(", ".join(directives), max_age)
    got = [d.strip() for d in out.split(",") if d.strip()]
    assert "immutable" not in got
    ages = {}
    for directive in got:
        name, _, value = directive.partition("=")
        if name in ("max-age", "s-maxage"):
            ages.setdefault(name, []).append(int(value))
            assert int(value) <= max_age
    if "no-store" not in got and "no-cache" not in got:
        assert ages.get("max-age"), out                # an explicit, short lifetime
    if max_age == 0:
        assert "no-store" in got
    # nothing else is invented or lost (public/private, revalidation rules...)
    kept = [d for d in directives
            if d.partition("=")[0] not in ("max-age", "s-maxage", "immutable")]
    assert [d for d in got if d.partition("=")[0] not in ("max-age", "s-maxage", "no-store")] \
        == [d for d in kept if d != "no-store"]


def test_a_request_that_found_another_processes_result_under_the_lock_is_collapsed(
        live_reactor, tmp_path):
    # two proxies sharing a file cache coordinate through its lock files (as two processes of
    # one host do): the second waits for the first one's transform and reads its result
    origin = HeldOrigin({PATH: PHOTO})
    path = PATH + "?w=70"
    overrides = {"cache": {"file": {"dir": str(tmp_path)}, "negative_ttl": 0,
                           "source": {"memory_bytes": 0}}}
    with start_proxy(origin=origin, overrides=overrides) as first, \
            start_proxy(backend_port=origin.port, overrides=overrides) as second:
        answers = {}

        def fetch(name, proxy):
            answers[name] = proxy.get(path)

        leader = threading.Thread(target=fetch, args=("leader", first))
        leader.start()
        wait_for(lambda: origin.hits[PATH] == 1, 10, what="the leader's fetch")
        follower = threading.Thread(target=fetch, args=("follower", second))
        follower.start()
        pipeline = second.runtime.pm.get_plugin("mediaproxy.builtin.pipeline.instance")
        wait_for(lambda: second.cache_key(path) in pipeline._inflight, 10,
                 what="the second proxy waiting for the lock")
        origin.release()
        leader.join(10)
        follower.join(10)
        assert origin.hits[PATH] == 1
        assert answers["leader"].headers["cache-status"] == "mediaproxy; fwd=uri-miss; stored"
        assert answers["follower"].headers["cache-status"] == \
            "mediaproxy; fwd=uri-miss; stored; collapsed"
        assert answers["leader"].body == answers["follower"].body
