"""A worker's log lines in the supervisor's log (mediaproxy.workerlogs): split from the pipe
whatever the reads, bounded, and written once by the supervisor's own observer in its format."""

from __future__ import annotations

import io
import json

from hypothesis import given, strategies as st
from twisted.logger import LogLevel

from mediaproxy.logs import observer_for
from mediaproxy.workerlogs import LineSplitter, WorkerOutput, event_from_line

LIMIT = 16


def expected_lines(stream: bytes) -> list[tuple[bytes, bool]]:
    """The oracle: split the whole stream at once; a line longer than LIMIT is cut to its
    first LIMIT bytes; a last line without a newline is flushed as it is."""
    *whole, last = stream.split(b"\n")
    out = [(line[:LIMIT], True) if len(line) > LIMIT else (line, False) for line in whole]
    if last:
        out.append((last[:LIMIT], True) if len(last) > LIMIT else (last, False))
    return out


@given(st.lists(st.binary(max_size=8).map(lambda b: b.replace(b"\r", b"")) | st.just(b"\n"),
                max_size=40),
       st.lists(st.integers(1, 12), min_size=1, max_size=20))
def test_lines_come_out_the_same_whatever_the_reads(pieces, cuts):
    stream = b"".join(pieces)
    splitter, got, at, i = LineSplitter(LIMIT), [], 0, 0
    while at < len(stream):
        size = cuts[i % len(cuts)]
        got += splitter.feed(stream[at:at + size])
        at, i = at + size, i + 1
        assert len(splitter._buffer) <= LIMIT + 12   # bounded between reads
    got += splitter.flush()
    assert got == expected_lines(stream)


def worker_line(**fields) -> bytes:
    line = {"time": 1700000000.5, "level": "warn", "namespace": "mediaproxy.pipeline",
            "message": "rendered /media/a.jpg -> webp 10x7", "correlation_id": "abc123"}
    return json.dumps({**line, **fields}).encode()


def through(fmt: str, *lines: bytes, fd: int = 1) -> str:
    out = io.StringIO()
    output = WorkerOutput(1, observer_for("info", fmt, out))
    for line in lines:
        output.received(fd, line)
    output.closed()
    return out.getvalue()


def test_a_json_line_is_written_once_in_the_supervisors_text_format_naming_its_worker():
    text = through("text", worker_line() + b"\n")
    assert text == ("2023-11-14T22:13:20Z warn  mediaproxy.pipeline worker=1 [abc123] "
                    "rendered /media/a.jpg -> webp 10x7\n")


def test_a_json_line_keeps_its_fields_and_says_which_worker_in_json():
    (line,) = through("json", worker_line(status=200) + b"\n").splitlines()
    assert json.loads(line) == {
        "time": 1700000000.5, "level": "warn", "namespace": "mediaproxy.pipeline",
        "message": "rendered /media/a.jpg -> webp 10x7", "correlation_id": "abc123",
        "status": 200, "worker": 1}


def test_anything_else_passes_through_as_a_plain_message():
    # a braces-laden non-JSON line, a crash on stderr, a last line without its newline
    lines = through("json", b"{not json at all {x}\n", b"Traceback (most recent", fd=2)
    got = [json.loads(line) for line in lines.splitlines()]
    assert [(e["level"], e["namespace"], e["message"], e["worker"]) for e in got] == [
        ("warn", "mediaproxy.worker", "{not json at all {x}", 1),
        ("warn", "mediaproxy.worker", "Traceback (most recent", 1)]


def test_a_line_over_the_limit_is_cut_and_said_so():
    event = event_from_line(b"x" * 10, 2, cut=True)
    assert (event["log_level"], event["log_text"], event["worker"]) == (
        LogLevel.warn, "xxxxxxxxxx [cut at 10 bytes]", 2)
    splitter = LineSplitter(4)
    assert splitter.feed(b"abcdefgh") == [(b"abcd", True)]
    assert splitter.feed(b"ij\nok\n") == [(b"ok", False)]
