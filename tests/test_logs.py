"""
Logs that carry the request: the access line (builtin/accesslog.py), the adoption of an
incoming request ID (http/requestinfo.py), the observers' formats, twistd's observer, and the
pressure warning that no longer repeats.
"""

from __future__ import annotations

import io
import socket
import json
import re
import string

import pytest
from hypothesis import given, strategies as st
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.web.http_headers import Headers

from mediaproxy import logs
from mediaproxy.builtin.ratelimit import Pressure
from mediaproxy.http.requestinfo import adopted_id
from mediaproxy.logs import RequestLogger, Throttle, observer_for
from mediaproxy.models import Event
from mediaproxy.testing import (
    call_in_reactor, make_image, make_runtime, start_proxy, wait_for,
)

PAGE = b"<p>a backend page</p>"
FILES = {"/media/a.jpg": make_image((200, 100)), "/shop/": (200, PAGE, "text/html", [])}


@pytest.fixture
def logged():
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def access_lines(events):
    return [e for e in events if e.get("log_namespace") == "mediaproxy.access"]


# -- the access line -----------------------------------------------------------------------

def test_the_access_line_carries_the_request(live_reactor, logged):
    with start_proxy(FILES, overrides={"monitoring": {"access_log": True}}) as proxy:
        image = proxy.get("/media/a.jpg?w=50", headers={"X-Request-ID": "req-1"})
        again = proxy.get("/media/a.jpg?w=50", headers={"X-Request-ID": "req-2"})
        page = proxy.get("/shop/", headers={"X-Correlation-ID": "req-3"})
        wait_for(lambda: len(access_lines(logged)) == 3, 10, what="three access lines")
    assert (image.status, again.status, page.status) == (200, 200, 200)
    got = [(e["correlation_id"], e["client"], e["method"], e["path"], e["status"], e["bytes"],
            e["cache"], e["kind"], e["route"], e["aborted"], e["log_level"])
           for e in access_lines(logged)]
    assert got == [
        ("req-1", "127.0.0.1", "GET", "/media/a.jpg", 200, len(image.body), "MISS", "image",
         "query", False, LogLevel.info),
        ("req-2", "127.0.0.1", "GET", "/media/a.jpg", 200, len(again.body), "HIT-MEMORY",
         "image", "query", False, LogLevel.info),
        ("req-3", "127.0.0.1", "GET", "/shop/", 200, len(PAGE), "", "passthrough", "", False,
         LogLevel.info),
    ]
    assert all(isinstance(e["duration"], float) and e["duration"] >= 0
               for e in access_lines(logged))


def test_no_access_line_when_it_is_off(live_reactor, logged):
    with start_proxy(FILES) as proxy:
        assert proxy.get("/shop/").status == 200
        wait_for(lambda: proxy.runtime.inflight.total == 0, 10, what="the request ended")
    assert access_lines(logged) == []


def access_event(**fields) -> Event:
    base = dict(kind="image", method="GET", status=200, bytes=5120, cache="HIT-MEMORY",
                route="query", aborted=False, path="/media/a.jpg", client="10.0.0.7")
    return Event("request", 0.0034, "c0ffee42", {**base, **fields})


def formatted(fmt: str, event: Event, level: str = "info") -> str:
    from mediaproxy.builtin.accesslog import AccessLog

    runtime = make_runtime(overrides={"monitoring": {"access_log": True}})
    out = io.StringIO()
    observer = observer_for(level, fmt, out)
    globalLogPublisher.addObserver(observer)
    try:
        AccessLog(runtime).mediaproxy_event(event)
    finally:
        globalLogPublisher.removeObserver(observer)
    return out.getvalue()


def test_the_text_access_line_is_one_readable_line():
    text = formatted("text", access_event())
    assert re.fullmatch(
        r'\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ info  mediaproxy\.access \[c0ffee42\] 10\.0\.0\.7 '
        r'"GET /media/a\.jpg" 200 5120 B 3\.4 ms HIT-MEMORY image\n', text), text
    aborted = formatted("text", access_event(cache="", aborted=True, status=200, bytes=0))
    assert aborted.endswith('"GET /media/a.jpg" 200 0 B 3.4 ms - image aborted\n'), aborted


def test_the_json_access_line_has_each_field_as_a_key():
    line = json.loads(formatted("json", access_event()))
    del line["time"]
    assert line == {
        "level": "info", "namespace": "mediaproxy.access",
        "message": '10.0.0.7 "GET /media/a.jpg" 200 5120 B 3.4 ms HIT-MEMORY image',
        "correlation_id": "c0ffee42", "client": "10.0.0.7", "method": "GET",
        "path": "/media/a.jpg", "status": 200, "bytes": 5120, "duration": 0.0034,
        "cache": "HIT-MEMORY", "kind": "image", "route": "query", "aborted": False,
    }


def test_the_access_line_is_written_whatever_the_level():
    logs.set_level("warn")
    try:
        assert formatted("text", access_event(), level="warn").endswith(" HIT-MEMORY image\n")
        out = io.StringIO()
        observer_for("warn", "text", out)({"log_namespace": "mediaproxy.other",
                                           "log_level": LogLevel.info, "log_format": "x"})
        assert out.getvalue() == ""
    finally:
        logs.set_level("debug")


def test_a_reload_applies_the_new_log_level(live_reactor, tmp_path):
    from twisted.logger import Logger

    from mediaproxy.tap import reload_config

    path = tmp_path / "mediaproxy.toml"
    path.write_text('[monitoring]\nlog_level = "error"\n')
    out = io.StringIO()
    printed = observer_for("info", "text", out, follow=True)   # as twistd's observer
    plain, dropping = Logger("mediaproxy.test-level"), logs.logger("mediaproxy.test-level")
    globalLogPublisher.addObserver(printed)
    logs.set_level("info")
    try:
        with start_proxy(files={}) as proxy:
            plain.info("plain before")
            dropping.info("dropping before")
            call_in_reactor(reload_config, proxy.runtime, str(path))
            plain.info("plain after")               # filtered by the observer
            dropping.info("dropping after")         # dropped at the source
            plain.error("plain error after")
    finally:
        globalLogPublisher.removeObserver(printed)
        logs.set_level("debug")
    mine = [line.split("mediaproxy.test-level ", 1)[1] for line in out.getvalue().splitlines()
            if "mediaproxy.test-level" in line]
    assert mine == ["plain before", "dropping before", "plain error after"]


def test_only_request_events_make_access_lines():
    assert formatted("text", Event("cache.hit", 1.0, "c0ffee42", {"layer": "memory"})) == ""


# -- the request ID ------------------------------------------------------------------------

ALLOWED = set(string.ascii_letters + string.digits + "._:-")


def oracle(sent: list[tuple[str, str]], names: list[str]) -> str | None:
    """The first configured header, in the configured order, with a value made of 1 to 128
    allowed characters; for one header sent several times, its values in the order sent."""
    for name in names:
        for sent_name, value in sent:
            if sent_name.lower() == name.lower() and 0 < len(value) <= 128 and set(value) <= ALLOWED:
                return value
    return None


header_names = st.sampled_from(["X-Correlation-ID", "x-request-id", "X-Trace", "Accept"])
values = st.one_of(
    st.text(alphabet="".join(sorted(ALLOWED)), min_size=1, max_size=130),
    st.text(alphabet="ab -/é\t", max_size=8),
    st.just(""),
)


@given(st.lists(st.tuples(header_names, values), max_size=6),
       st.lists(st.sampled_from(["X-Correlation-ID", "X-Request-ID", "X-Trace"]),
                unique=True, max_size=3))
def test_the_first_well_formed_configured_header_is_adopted(sent, names):
    headers = Headers()
    for name, value in sent:
        headers.addRawHeader(name.encode(), value.encode("latin-1", "replace"))
    sent = [(n, v.encode("latin-1", "replace").decode("latin-1")) for n, v in sent]
    assert adopted_id(headers, tuple(names)) == oracle(sent, names)


def test_x_request_id_is_adopted_answered_and_forwarded(live_reactor):
    with start_proxy(FILES) as proxy:
        page = proxy.get("/shop/", headers={"X-Request-ID": "from-the-edge.7",
                                            "X-Correlation-ID": "not well formed"})
        image = proxy.get("/media/a.jpg?w=40", headers={"X-Request-ID": "img:8"})
        made = proxy.get("/shop/", headers={"X-Request-ID": "bad id"})
        seen = proxy.origin.headers_seen
        assert page.headers["x-correlation-id"] == "from-the-edge.7"
        assert image.headers["x-correlation-id"] == "img:8"
        assert seen["/media/a.jpg"]["x-correlation-id"] == ["img:8"]
        made_id = made.headers["x-correlation-id"]
        assert made_id not in ("bad id", "from-the-edge.7")
        # the last pass-through: the backend saw the proxy's own ID in both headers
        assert (seen["/shop/"]["x-correlation-id"], seen["/shop/"]["x-request-id"]) == (
            [made_id], [made_id])


def test_the_headers_adopted_are_a_setting(live_reactor):
    with start_proxy(FILES, overrides={"monitoring": {"request_id_headers": ["X-Trace"]}}) as p:
        assert p.get("/shop/", headers={"X-Trace": "t-1"}).headers["x-correlation-id"] == "t-1"
        ignored = p.get("/shop/", headers={"X-Correlation-ID": "c-2"})
        assert ignored.headers["x-correlation-id"] != "c-2"


# -- formats and twistd ----------------------------------------------------------------------

def test_a_json_line_without_a_request_has_no_correlation_id_and_drops_text_only_fields():
    out = io.StringIO()
    observer_for("debug", "json", out)({"log_namespace": "x", "log_level": LogLevel.warn,
                                        "log_format": "{n} {_shown}", "n": 3, "_shown": "s",
                                        "correlation_id": "", "log_time": 1.0})
    assert json.loads(out.getvalue()) == {"time": 1.0, "level": "warn", "namespace": "x",
                                          "message": "3 s", "n": 3}


def test_request_lines_carry_the_id_in_both_formats():
    for fmt, expect in (("text", " [cid-9] "), ("json", '"correlation_id": "cid-9"')):
        out = io.StringIO()
        RequestLogger("mediaproxy.request", observer=observer_for("info", fmt, out),
                      correlation_id="cid-9").info("served {path}", path="/a")
        assert expect in out.getvalue()


def test_a_workers_text_line_says_which_worker():
    out = io.StringIO()
    event = {"log_namespace": "mediaproxy.request", "log_level": LogLevel.info,
             "log_format": "served", "correlation_id": "cid-7", "log_time": 86400.0}
    observer_for("info", "text", out)({**event, "worker": 1})
    observer_for("info", "text", out)(event)
    assert out.getvalue().splitlines() == [
        "1970-01-02T00:00:00Z info  mediaproxy.request worker=1 [cid-7] served",
        "1970-01-02T00:00:00Z info  mediaproxy.request [cid-7] served"]


class CountingStream(io.StringIO):
    flushes = 0

    def flush(self):
        self.flushes += 1


def test_lines_of_one_reactor_turn_are_flushed_once(live_reactor):
    out = CountingStream()
    observer = observer_for("info", "json", out)
    line = {"log_namespace": "mediaproxy.access", "log_level": LogLevel.info,
            "log_format": "served", "log_time": 1.0}

    def three_lines():
        for _ in range(3):
            observer(dict(line))
        return out.flushes

    assert call_in_reactor(three_lines) == 0
    wait_for(lambda: out.flushes == 1, 10, what="the flush at the end of the reactor turn")
    observer(dict(line))        # not in the reactor's thread: flushed at once
    assert (out.flushes, len(out.getvalue().splitlines())) == (2, 4)


class _TwistdOptions(dict):
    """twistd's ServerOptions as our subcommand sees it: a dict of its options."""


def parsed(parent: dict, args=()) -> dict:
    from mediaproxy.tap import Options

    options = Options()
    options.parent = _TwistdOptions(parent)
    options.parseOptions(["--listen", "tcp:0", *args])
    return options.parent


def test_twistd_is_given_our_observer_unless_the_operator_chose_one(tmp_path, monkeypatch):
    for key in list(logs._twistd):
        monkeypatch.setitem(logs._twistd, key, logs._twistd[key])
    monkeypatch.setenv("MEDIAPROXY_MONITORING__LOG_FORMAT", "json")
    rotated = []   # twistd's SIGUSR1 rotation, not installed in the test process
    monkeypatch.setattr(logs, "_rotate_on_sigusr1", rotated.append)
    parent = parsed({"logger": None, "logfile": str(tmp_path / "p.log"), "nodaemon": False})
    assert parent["logger"] == logs.TWISTD_OBSERVER == "mediaproxy.logs.twistd_observer"
    observer = logs.twistd_observer()
    RequestLogger("mediaproxy.request", observer=observer, correlation_id="c-1").info("hello")
    [logfile] = rotated
    logfile.close()
    assert logfile.path == str(tmp_path / "p.log")
    assert json.loads((tmp_path / "p.log").read_text())["correlation_id"] == "c-1"
    assert parsed({"logger": "my.observer", "logfile": ""})["logger"] == "my.observer"
    assert parsed({"logger": None, "syslog": True})["logger"] is None


# -- repeated warnings ---------------------------------------------------------------------

def test_pressure_flapping_warns_once_a_minute(logged):
    clock = Clock()
    pressure = Pressure(cpu_percent=50, warned=Throttle(60.0, clock=clock.seconds))
    for _ in range(10):                      # over and under the threshold every 5 s
        pressure.update(90, 0, 0)
        clock.advance(5)
        pressure.update(10, 0, 0)
        clock.advance(5)
    scaled = [e for e in logged if e.get("log_namespace") == "mediaproxy.ratelimit"
              and e.get("memory") == 0 and e.get("cpu") in (90, 10)]
    assert [e["log_level"] for e in scaled] == [LogLevel.warn] + [LogLevel.debug] * 11 + [
        LogLevel.warn] + [LogLevel.debug] * 7
    assert scaled[12]["suppressed"] == 11


def test_a_backend_that_is_down_warns_once_then_at_debug(live_reactor, logged):
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]
    dead.close()   # nothing listens there: every connection is refused
    with start_proxy(backend_port=dead_port, overrides={
            "backend": {"retries": 0}, "monitoring": {"log_level": "debug"}}) as proxy:
        # a clock that stands still: all three failures fall within one throttle period
        proxy.runtime.upstream.warnings = Throttle(10.0, clock=Clock().seconds)
        statuses = [proxy.get("/page/", headers={"X-Request-ID": f"down-{i}"}).status
                    for i in range(3)]
    assert statuses == [502, 502, 502]
    failed = [(e["log_level"], e["correlation_id"]) for e in logged
              if str(e.get("log_format", "")).startswith("backend request failed")]
    assert failed == [(LogLevel.warn, "down-0"), (LogLevel.debug, "down-1"),
                      (LogLevel.debug, "down-2")]
