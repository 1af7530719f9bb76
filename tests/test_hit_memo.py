"""The hit path's memos (mediaproxy/memo.py): the route's match, the validation and the cache
key are remembered by URI, never the checks that are not pure functions of it (a signature, a
rate-limit token), and a reload or a plugin change is seen at once. Also the direct hook calls
of Runtime.call_first / call_all, against pluggy's own answers."""

from __future__ import annotations

import json

import pytest

from mediaproxy import hookimpl
from mediaproxy.builtin.routing import _memo as route_memo
from mediaproxy.config import load_config
from mediaproxy.memo import MAX_KEY_CHARS, Memo
from mediaproxy.models import Rejection
from mediaproxy.tap import reload_config
from mediaproxy.testing import (
    ImageOrigin, assert_image, call_in_reactor, make_image, start_proxy,
)

KEY = "k1-0123456789abcdef0123456789abcdef"


def files():
    return {"/media/uploads/a.jpg": (200, make_image((400, 200)), "image/jpeg", [])}


def error(response) -> str | None:
    status, headers, body, _ = response
    return json.loads(body)["error"] if headers.get("content-type") == "application/json" \
        else None


# -- the memo itself ---------------------------------------------------------------------------

def test_a_memo_keeps_at_most_its_size_and_drops_the_oldest_first():
    memo = Memo(3)
    table = memo.table("owner")
    for key in "abc":
        memo.put(key, key.upper())
    assert len(memo) == 3
    memo.put("a", "A2")          # a key already there takes no room
    assert dict(table) == {"a": "A2", "b": "B", "c": "C"}
    memo.put("d", "D")           # the fourth pushes out the oldest
    assert dict(memo.table("owner")) == {"b": "B", "c": "C", "d": "D"}
    with pytest.raises(ValueError):
        Memo(0)
    assert Memo().maxsize == 2048   # the bound docs/performance.md gives
    one = Memo(1)
    one.table()
    one.put("x", 1)
    one.put("y", 2)
    assert dict(one.table()) == {"y": 2}


def test_a_memo_forgets_when_an_owner_is_another_object_even_an_equal_one():
    memo = Memo()
    config, other = [1], [1]     # equal, not the same object
    memo.table(config, 7)
    memo.put("k", "v")
    assert memo.table(config, 7) == {"k": "v"}
    assert memo.table(other, 7) == {}           # a reload: a new configuration object
    memo.put("k", "v")
    assert memo.table(other, 8) == {}           # a plugin registered: another generation
    memo.put("k", "v")
    assert memo.table(other) == {}              # fewer owners
    memo.put("k", "v")
    memo.clear()
    assert memo.table(other) == {}


# -- through a running proxy -------------------------------------------------------------------

def test_different_uris_never_share_an_entry(live_reactor):
    with start_proxy(origin=ImageOrigin(files())) as proxy:
        for _ in range(2):   # the second round answers from the memos and the memory cache
            assert_image(proxy.get("/media/uploads/a.jpg?w=100").body, (100, 50))
            assert_image(proxy.get("/media/uploads/a.jpg?w=60").body, (60, 30))
            assert_image(proxy.get("/media/uploads/a.jpg?w=60&fmt=png").body, (60, 30), "png")
            assert_image(proxy.get("/media/uploads//a.jpg?w=60").body, (60, 30), "jpeg")
        assert proxy.cache_key("/media/uploads/a.jpg?w=100") != \
            proxy.cache_key("/media/uploads/a.jpg?w=60")
        assert proxy.get("/media/uploads/a.jpg?w=60").headers["x-cache"] == "HIT-MEMORY"


def test_a_bad_signature_is_refused_after_the_good_one_was_served(live_reactor):
    from mediaproxy import cli
    config = load_config(environ={}, overrides={"signing": {"keys": [KEY]}})
    good = cli.sign("/media/uploads/a.jpg?w=80", config, None)
    bad = good[:-3] + ("AAA" if not good.endswith("AAA") else "BBB")
    with start_proxy(origin=ImageOrigin(files()),
                     overrides={"signing": {"keys": [KEY]}}) as proxy:
        assert proxy.get(good).status == 200
        assert proxy.get(good).headers["x-cache"] == "HIT-MEMORY"
        assert (proxy.get(bad).status, error(proxy.get(bad))) == (403, "invalid_signature")
        unsigned = "/media/uploads/a.jpg?w=80"
        assert (proxy.get(unsigned).status, error(proxy.get(unsigned))) == \
            (403, "signature_required")
        assert proxy.get(good).status == 200


def test_the_rate_limit_still_refuses_the_nth_hit_of_one_uri(live_reactor):
    with start_proxy(origin=ImageOrigin(files()), overrides={
            "ratelimit": {"ip_rate": 0.001, "ip_burst": 4, "exempt": []}}) as proxy:
        statuses = [proxy.get("/media/uploads/a.jpg?w=90").status for _ in range(6)]
        assert statuses == [200, 200, 200, 200, 429, 429]
        assert proxy.origin.hits["/media/uploads/a.jpg"] == 1


def test_a_reload_applies_to_a_memoized_uri_at_once(live_reactor, tmp_path):
    path = tmp_path / "mediaproxy.toml"
    path.write_text("[limits]\nmax_width = 4000\n")
    with start_proxy(origin=ImageOrigin(files())) as proxy:
        url = "/media/uploads/a.jpg?w=300"
        assert proxy.get(url).status == 200
        assert proxy.get(url).status == 200
        path.write_text("[limits]\nmax_width = 200\n")
        call_in_reactor(reload_config, proxy.runtime, str(path))
        assert (proxy.get(url).status, error(proxy.get(url))) == (400, "invalid_parameter")


class Refuser:
    """A plugin's check: refuses every image request with 451."""

    @hookimpl
    def mediaproxy_check_request(self, image_request, request, runtime):
        return Rejection(451, "refused_here", "a plugin said no")


class Router:
    """A plugin route for one path, first in the chain."""

    @hookimpl(tryfirst=True)
    def mediaproxy_match_request(self, request, runtime):
        if request.path == "/media/uploads/a.jpg" and request.query == (("w", "70"),):
            return Rejection(418, "teapot", "a plugin's route")
        return None


def test_a_plugin_registered_later_is_called_for_a_memoized_uri(live_reactor):
    with start_proxy(origin=ImageOrigin(files())) as proxy:
        url = "/media/uploads/a.jpg?w=70"
        assert proxy.get(url).status == 200
        assert proxy.get(url).status == 200
        pm = proxy.runtime.pm
        for plugin, status, code in ((Refuser(), 451, "refused_here"),
                                     (Router(), 418, "teapot")):
            call_in_reactor(pm.register, plugin)
            assert (proxy.get(url).status, error(proxy.get(url))) == (status, code)
            call_in_reactor(pm.unregister, plugin)
            assert proxy.get(url).status == 200


def test_long_uris_are_worked_out_every_time_not_kept(live_reactor):
    with start_proxy(origin=ImageOrigin(files())) as proxy:
        call_in_reactor(route_memo.clear)
        long = "/media/uploads/a.jpg?w=40&v=" + "x" * MAX_KEY_CHARS
        assert_image(proxy.get(long).body, (40, 20))
        assert len(route_memo) == 0
        assert_image(proxy.get("/media/uploads/a.jpg?w=40").body, (40, 20))
        assert len(route_memo) == 1


# -- Runtime.call_first / call_all against pluggy ----------------------------------------------

class First:
    def __init__(self, answer):
        self.answer = answer

    @hookimpl
    def mediaproxy_check_passthrough(self, request, runtime):
        return self.answer


class Headers:
    def __init__(self, headers):
        self.headers = headers

    @hookimpl
    def mediaproxy_response_headers(self, image_request, response, request, runtime):
        return self.headers


class Wrapper:
    def __init__(self):
        self.calls = 0

    @hookimpl(wrapper=True)
    def mediaproxy_check_passthrough(self, request, runtime):
        self.calls += 1
        return (yield)


def test_direct_hook_calls_answer_as_pluggy_does(live_reactor):
    from mediaproxy.models import RequestInfo
    with start_proxy(origin=ImageOrigin(files())) as proxy:
        rt = proxy.runtime
        info = RequestInfo(method="GET", path="/x")
        refusal = Rejection(403, "no", "no")

        def both(name, **kw):
            return (getattr(rt.pm.hook, name)(**kw),
                    getattr(rt, "call_first" if name.endswith("passthrough") else "call_all")(
                        name, **kw))

        kw = {"request": info, "runtime": rt}
        hkw = {"image_request": None, "response": None, "request": info, "runtime": rt}
        plugins = [First(None), First(refusal), Headers([("A", "1")]), Headers(None),
                   Headers([("B", "2")])]
        for plugin in plugins:
            call_in_reactor(rt.pm.register, plugin)
        pluggy_first, direct_first = call_in_reactor(both, "mediaproxy_check_passthrough", **kw)
        assert direct_first is pluggy_first is refusal
        pluggy_all, direct_all = call_in_reactor(both, "mediaproxy_response_headers", **hkw)
        assert direct_all == pluggy_all
        assert [("A", "1")] in direct_all and [("B", "2")] in direct_all and None not in direct_all
        wrapper = Wrapper()
        call_in_reactor(rt.pm.register, wrapper)   # a wrapper: pluggy's own path
        assert call_in_reactor(rt.call_first, "mediaproxy_check_passthrough", **kw) is refusal
        assert wrapper.calls == 1
        for plugin in [*plugins, wrapper]:
            call_in_reactor(rt.pm.unregister, plugin)
        assert call_in_reactor(rt.call_first, "mediaproxy_check_passthrough", **kw) is None


class Reordered:
    """Names some of the spec's arguments, in another order: given exactly those."""

    @hookimpl
    def mediaproxy_response_headers(self, request, image_request):
        return [("X-Path", request.path), ("X-Image", repr(image_request))]


def test_an_implementation_naming_some_arguments_in_another_order_gets_them(live_reactor):
    from mediaproxy.models import RequestInfo
    with start_proxy(origin=ImageOrigin(files())) as proxy:
        rt = proxy.runtime
        plugin = Reordered()
        call_in_reactor(rt.pm.register, plugin)
        try:
            kw = {"image_request": "IMG", "response": None,
                  "request": RequestInfo(method="GET", path="/p"), "runtime": rt}
            direct = call_in_reactor(rt.call_all, "mediaproxy_response_headers", **kw)
            assert direct == call_in_reactor(
                lambda: rt.pm.hook.mediaproxy_response_headers(**kw))
            assert [("X-Path", "/p"), ("X-Image", "'IMG'")] in direct
            # and a real response carries them, with the built-in CORS headers (all arguments)
            response = proxy.get("/media/uploads/a.jpg?w=40")
            assert response.headers["x-path"] == "/media/uploads/a.jpg"
            assert response.headers["access-control-allow-origin"] == "*"
        finally:
            call_in_reactor(rt.pm.unregister, plugin)


def test_the_route_memo_keeps_uris_up_to_its_bound_exactly(live_reactor):
    with start_proxy(origin=ImageOrigin(files())) as proxy:
        base = "/media/uploads/a.jpg"   # 20 characters; "w=40" counts 1 + 2 + 2, "v=..." 1 + n + 2
        # docs/performance.md promises 512 characters: 28 + 484 is kept, 28 + 485 is not
        for extra, kept in ((484, 1), (485, 0)):
            call_in_reactor(route_memo.clear)
            assert_image(proxy.get(f"{base}?w=40&v={'x' * extra}").body, (40, 20))
            assert len(route_memo) == kept


class Direct:
    """An image protocol of a plugin's: answers at once with a value, raises, or fails."""

    def __init__(self, how):
        self.how = how

    @hookimpl(tryfirst=True)
    def mediaproxy_handle_image(self, image_request, request, runtime):
        from twisted.internet.defer import fail

        from mediaproxy.models import ImageResponse
        if self.how == "value":
            return ImageResponse(status=200, body=b"direct", content_type="image/png",
                                 cache_status="MISS")
        if self.how == "raise":
            raise RuntimeError("a plugin's bug")
        return fail(RuntimeError("a plugin's failed Deferred"))


@pytest.mark.parametrize("how,status,body", [
    ("value", 200, b"direct"), ("raise", 500, "internal_error"),
    ("failed", 500, "internal_error")])
def test_an_image_protocol_answering_at_once_is_written_or_refused(live_reactor, how, status,
                                                                     body):
    with start_proxy(origin=ImageOrigin(files()), plugins=[Direct(how)]) as proxy:
        response = proxy.get("/media/uploads/a.jpg?w=50")
        assert response.status == status
        assert (response.body if status == 200 else error(response)) == body


class Defaulted:
    """An implementation with an argument that has a default: pluggy's own path."""

    def __init__(self):
        self.calls = 0

    @hookimpl
    def mediaproxy_check_passthrough(self, request, runtime, extra=None):
        self.calls += 1


def test_an_implementation_with_defaults_goes_through_pluggy(live_reactor):
    from mediaproxy.models import RequestInfo
    with start_proxy(origin=ImageOrigin(files())) as proxy:
        rt = proxy.runtime
        plugin = Defaulted()
        call_in_reactor(rt.pm.register, plugin)
        try:
            assert call_in_reactor(rt._hook_calls, "mediaproxy_check_passthrough") is None
            assert call_in_reactor(rt.call_first, "mediaproxy_check_passthrough",
                                   request=RequestInfo(method="GET", path="/x"),
                                   runtime=rt) is None
            assert plugin.calls == 1
        finally:
            call_in_reactor(rt.pm.unregister, plugin)
        assert call_in_reactor(rt._hook_calls, "mediaproxy_check_passthrough") is not None


def test_pairs_are_kept_as_they_are_and_anything_else_is_converted():
    from mediaproxy.memo import Pairs
    from mediaproxy.models import ImageResponse, RequestInfo

    ready = Pairs([("accept", "image/webp")])
    info = RequestInfo(method="GET", path="/a", headers=ready, query=[("w", 40), ("h", "2")])
    assert info.headers is ready                            # not re-made
    assert info.query == (("w", "40"), ("h", "2"))          # converted: strings, a tuple
    assert type(info.query) is Pairs and hash(info.query) == hash((("w", "40"), ("h", "2")))
    assert RequestInfo(method="GET", path="/a", headers=(("accept", "image/webp"),),
                       query=(("w", "40"), ("h", "2"))) == info   # equal to plain tuples
    response = ImageResponse(status=200, body=b"", content_type="image/png", headers=ready)
    assert response.headers is ready and response.headers == (("accept", "image/webp"),)
