"""
The log lines of worker processes (``server.workers=N``), brought into the supervisor's log.

A worker writes one JSON object per event to its stdout, a pipe to the supervisor
(``monitoring.log_format`` is ``json`` for every worker, whatever the configuration says). The
supervisor splits the pipe into lines (:class:`LineSplitter`: a line longer than
:data:`LINE_LIMIT` bytes is cut, so a runaway line cannot grow its memory) and publishes each
one as a twisted.logger event (:func:`event_from_line`) with the worker's fields (level,
namespace, time, ``correlation_id`` ...) and ``worker`` (its index). The supervisor's own
observers then write it, once, in the configured format (text or JSON, stdout or twistd's
logfile), like its own lines. A line that is not such an object (a worker's stderr, an
interpreter's crash, a cut line) passes through as a plain message.
"""

from __future__ import annotations

import json
import time

from twisted.logger import LogLevel, globalLogPublisher

#: Bytes at most of one worker log line; what follows is dropped up to the next newline.
LINE_LIMIT = 64 * 1024

#: Keys of a worker's JSON line that are not copied into the event as fields: the ones it is
#: made from, and those twisted's legacy log bridge gives a meaning to.
_NOT_FIELDS = frozenset({"time", "level", "namespace", "message", "traceback", "format",
                         "isError", "failure", "why", "system"})


class LineSplitter:
    """Bytes from a pipe in, whole lines out (without their newline), each flagged when it
    was cut at ``limit`` bytes. Holds at most ``limit`` bytes plus one read between calls."""

    def __init__(self, limit: int = LINE_LIMIT):
        self.limit = limit
        self._buffer = bytearray()
        self._skipping = False   # inside a line already cut: drop up to its newline

    def feed(self, data: bytes) -> list[tuple[bytes, bool]]:
        out = []
        self._buffer += data
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > self.limit:
                    if not self._skipping:
                        out.append((bytes(self._buffer[:self.limit]), True))
                    self._skipping = True
                    del self._buffer[:]
                return out
            line = bytes(self._buffer[:end]).rstrip(b"\r")
            del self._buffer[:end + 1]
            if self._skipping:
                self._skipping = False
            elif len(line) > self.limit:
                out.append((line[:self.limit], True))
            else:
                out.append((line, False))

    def flush(self) -> list[tuple[bytes, bool]]:
        """The last line, when the pipe closed without a newline after it."""
        rest, skipping = bytes(self._buffer), self._skipping
        self._buffer, self._skipping = bytearray(), False
        return [(rest, False)] if rest and not skipping else []


def event_from_line(line: bytes, index: int, cut: bool = False,
                    plain_level: LogLevel = LogLevel.info) -> dict:
    """The twisted.logger event of one line of worker ``index``: its JSON object's fields,
    or, for anything else, the line as a plain message at ``plain_level`` (warn for a cut
    line)."""
    text = line.decode("utf-8", errors="replace")
    found = None
    if not cut and text.startswith("{"):
        try:
            found = json.loads(text)
        except ValueError:
            found = None
    if not isinstance(found, dict) or not isinstance(found.get("message"), str):
        if cut:
            text = f"{text} [cut at {len(line)} bytes]"
        return {"log_level": LogLevel.warn if cut else plain_level,
                "log_namespace": "mediaproxy.worker", "log_time": time.time(),
                "log_format": "{log_text}", "log_text": text, "worker": index}
    try:
        level = LogLevel.levelWithName(str(found.get("level", "info")))
    except Exception:   # InvalidLogLevelError: a level this twisted does not know
        level = LogLevel.info
    message = found["message"]
    if isinstance(found.get("traceback"), str):
        message = f"{message}\n{found['traceback'].rstrip()}"
    stamp = found.get("time")
    event = {key: value for key, value in found.items()
             if key not in _NOT_FIELDS and not key.startswith("log_")}
    event.update(log_level=level,
                 log_namespace=str(found.get("namespace") or "mediaproxy.worker"),
                 log_time=stamp if isinstance(stamp, (int, float)) else time.time(),
                 log_format="{log_text}", log_text=message, worker=index)
    return event


class WorkerOutput:
    """Both pipes of one worker (stdout, stderr) into the supervisor's log."""

    def __init__(self, index: int, publisher=globalLogPublisher, limit: int = LINE_LIMIT):
        self.index = index
        self.publisher = publisher
        self._splitters = {1: LineSplitter(limit), 2: LineSplitter(limit)}

    def received(self, fd: int, data: bytes) -> None:
        for line, cut in self._splitters[fd].feed(data):
            self._publish(fd, line, cut)

    def closed(self) -> None:
        for fd, splitter in self._splitters.items():
            for line, cut in splitter.flush():
                self._publish(fd, line, cut)

    def _publish(self, fd: int, line: bytes, cut: bool) -> None:
        if not line.strip():
            return
        self.publisher(event_from_line(
            line, self.index, cut, LogLevel.info if fd == 1 else LogLevel.warn))
