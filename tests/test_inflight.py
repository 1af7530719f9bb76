"""The one ``request`` event every main-port request sends when it ends, and the in-flight
counts a graceful stop waits on (mediaproxy.inflight), over real sockets."""

from mediaproxy import hookimpl
from mediaproxy.inflight import InFlight, method_label
from mediaproxy.testing import make_image, start_proxy, wait_for


class Recorder:
    def __init__(self):
        self.events = []

    @hookimpl
    def mediaproxy_event(self, event):
        if event.name == "request":
            self.events.append(event)


def test_every_request_sends_one_request_event_with_its_outcome():
    recorder = Recorder()
    jpeg = make_image((300, 200))
    with start_proxy({"/media/a.jpg": (200, jpeg, "image/jpeg", []),
                      "/page": (200, b"hello", "text/plain", [])},
                     plugins=[recorder]) as proxy:
        status, _, body, _ = proxy.get("/media/a.jpg?w=100",
                                       headers={"X-Correlation-ID": "cid-image-1"})
        assert status == 200
        assert proxy.get("/media/a.jpg?w=100")[0] == 200
        assert proxy.get("/media/a.jpg?w=abc")[0] == 400
        assert proxy.get("/page", headers={"X-Correlation-ID": "cid-page-1"})[0] == 200
        wait_for(lambda: len(recorder.events) == 4, 10, what="four request events")
        assert proxy.runtime.inflight.total == 0
    first, hit, refused, page = recorder.events
    assert first.correlation_id == "cid-image-1"
    assert first.fields["kind"] == "image" and first.fields["status"] == 200
    assert first.fields["method"] == "GET" and first.fields["bytes"] == len(body)
    assert first.fields["cache"] == "MISS" and first.fields["aborted"] is False
    assert first.fields["path"] == "/media/a.jpg" and first.value >= 0
    assert hit.fields["cache"] == "HIT-MEMORY"
    assert refused.fields["status"] == 400 and refused.fields["cache"] == ""
    assert page.correlation_id == "cid-page-1"
    assert page.fields["kind"] == "passthrough" and page.fields["bytes"] == 5
    assert page.fields["route"] == ""


def test_when_idle_fires_once_the_last_request_ends():
    inflight = InFlight()
    assert inflight.when_idle().called
    inflight.start("image")
    inflight.start("passthrough")
    d = inflight.when_idle()
    inflight.end("image")
    assert not d.called and inflight.total == 1
    inflight.end("passthrough")
    assert d.called and inflight.counts == {"image": 0, "passthrough": 0}


def test_methods_are_a_bounded_label():
    assert method_label("GET") == "GET"
    assert method_label("PROPFIND") == "other"


# -- how events reach their handlers (Runtime.emit) ---------------------------------------------

class Wrapper:
    def __init__(self):
        self.seen = []

    @hookimpl(wrapper=True)
    def mediaproxy_event(self, event):
        self.seen.append(event.name)
        return (yield)


class NoArguments:
    calls = 0

    @hookimpl
    def mediaproxy_event(self):
        NoArguments.calls += 1


def test_events_reach_plugins_registered_and_no_longer_those_unregistered():
    from mediaproxy.testing import make_runtime

    runtime = make_runtime()
    runtime.emit("warm-up")                    # the handlers' list is derived here
    recorder = Recorder()
    runtime.pm.register(recorder)
    runtime.emit("request", 0.5, "cid-1", kind="image")
    assert [(e.name, e.value, e.correlation_id, dict(e.fields)) for e in recorder.events] == [
        ("request", 0.5, "cid-1", {"kind": "image"})]
    runtime.pm.unregister(recorder)
    runtime.emit("request", 0.5, "cid-2", kind="image")
    assert len(recorder.events) == 1
    # a handler that takes no argument is called without one, as pluggy would
    runtime.pm.register(NoArguments())
    runtime.emit("other")
    assert NoArguments.calls == 1


def test_a_hook_wrapper_among_the_handlers_gets_every_event_through_pluggy():
    from mediaproxy.testing import make_runtime

    runtime = make_runtime()
    wrapper, recorder = Wrapper(), Recorder()
    runtime.pm.register(wrapper)
    runtime.pm.register(recorder)
    runtime.emit("request", 1.0, "cid-3")
    assert wrapper.seen == ["request"] and len(recorder.events) == 1
    assert runtime._event_calls() is None      # pluggy's own path


def test_a_raising_handler_never_reaches_the_caller():
    from mediaproxy.testing import make_runtime

    class Raising:
        @hookimpl
        def mediaproxy_event(self, event):
            raise RuntimeError("broken handler")

    runtime = make_runtime(plugins=[Raising()])
    runtime.emit("request")                    # does not raise
