"""
Structured logging with twisted.logger: every event of a request carries its correlation ID.

``request_log(correlation_id)`` returns a :class:`twisted.logger.Logger` whose every event has
a ``correlation_id`` field. Observers (``observer_for``) print it on every line in text mode and
as a key in JSON mode.
"""

from __future__ import annotations

import json
import sys
import time
import weakref
from typing import IO

from twisted.logger import (
    ILogObserver, LogLevel, Logger, formatEvent, globalLogBeginner, globalLogPublisher,
)
from twisted.python.threadable import isInIOThread
from zope.interface import implementer


_LEVELS = {"debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn,
           "error": LogLevel.error, "critical": LogLevel.critical}


_PRIORITY = {LogLevel.debug: 0, LogLevel.info: 1, LogLevel.warn: 2, LogLevel.error: 3,
             LogLevel.critical: 4}
_minimum = [0]


def set_level(level: str) -> None:
    """Drop events below ``level`` at the source (cheaper than filtering in an observer, and
    it applies under twistd, whose observers print everything), and make the observers made by
    :func:`observer_for` print from ``level`` on: at start and at a reload (SIGHUP)."""
    _minimum[0] = _PRIORITY[_LEVELS[level]]
    for observer in list(_observers):
        observer.minimum = _minimum[0]


class FastLogger(Logger):
    """A :class:`twisted.logger.Logger` whose ``emit`` makes the same event for less: Twisted's
    checks the level against every LogLevel constant on each call, a good part of the cost of
    a line written per request (the access line)."""

    def __init__(self, namespace: str, source=None, observer=None):
        # Logger.__init__ imports the global publisher on every call; one per request adds up.
        self.namespace = namespace
        self.source = source
        self.observer = observer if observer is not None else globalLogPublisher

    def emit(self, level, format=None, **kwargs):
        if level not in _PRIORITY:
            super().emit(level, format, **kwargs)   # Twisted's own complaint about it
            return
        kwargs["log_logger"] = self
        kwargs["log_level"] = level
        kwargs["log_namespace"] = self.namespace
        kwargs["log_source"] = self.source
        kwargs["log_format"] = format
        kwargs["log_time"] = time.time()
        self.observer(kwargs)


class RequestLogger(FastLogger):
    """A Logger that adds ``correlation_id`` (and any other bound fields) to every event, and
    drops events below the level set with :func:`set_level`."""

    def __init__(self, namespace: str = "mediaproxy.request", source=None, observer=None,
                 **fields):
        super().__init__(namespace, source, observer)
        self._fields = fields

    def debug(self, format=None, **kwargs):
        # asked on every request (the hit path has two): below the level, nothing more is done
        if _minimum[0] > 0:
            return
        self.emit(LogLevel.debug, format, **kwargs)

    def emit(self, level, format=None, **kwargs):
        if _PRIORITY.get(level, 4) < _minimum[0]:
            return
        for key, value in self._fields.items():
            kwargs.setdefault(key, value)
        super().emit(level, format, **kwargs)

    def bind(self, **fields) -> "RequestLogger":
        return RequestLogger(self.namespace, self.source, self.observer,
                             **{**self._fields, **fields})

    @property
    def correlation_id(self) -> str:
        return self._fields.get("correlation_id", "")


def request_log(correlation_id: str, namespace: str = "mediaproxy.request") -> RequestLogger:
    return RequestLogger(namespace, correlation_id=correlation_id)




def message(event) -> str:
    """The event's message: its ``log_format`` filled in by ``str.format_map`` (C speed: the
    access line is formatted on every request) or, for what that cannot do (Twisted's
    ``{method()}`` calls, a missing field, an event without a format), by Twisted's own
    ``formatEvent``."""
    fmt = event.get("log_format")
    if fmt is not None:
        try:
            return fmt.format_map(event)
        except Exception:
            pass
    return formatEvent(event)


class _Flusher:
    """Flushes a stream once per reactor turn rather than once per line: a busy proxy writes
    an access line per request, and a write system call each was a good part of its cost.

    In the reactor's thread while it runs, a line schedules one flush for the end of the
    current turn (``callLater(0)``); anywhere else (another thread, before the reactor starts
    or after it stopped: the last lines of a shutdown) the stream is flushed at once, along
    with whatever was waiting. So a line is on its way before the reactor waits for the
    next event: ``tail -f`` sees it, and a stop loses none."""

    def __init__(self, stream):
        self.stream = stream
        self.pending = False

    def __call__(self) -> None:
        reactor = sys.modules.get("twisted.internet.reactor")
        if reactor is None or not getattr(reactor, "running", False) or not isInIOThread():
            self.stream.flush()
        elif not self.pending:
            self.pending = True
            reactor.callLater(0, self.flush)

    def flush(self) -> None:
        self.pending = False
        self.stream.flush()


_stamp: list = [-1, ""]


def _utc(when: float) -> str:
    second = int(when)
    if second != _stamp[0]:   # one strftime per second, not per line
        _stamp[:] = [second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))]
    return _stamp[1]


def _text_observer(stream: IO[str]):
    flush = _Flusher(stream)

    def observe(event):
        text = message(event)
        if event.get("log_failure") is not None:
            text = f"{text}\n{event['log_failure'].getTraceback()}"
        stamp = _utc(event.get("log_time") or time.time())
        level = event.get("log_level", LogLevel.info).name
        cid = event.get("correlation_id")
        cid = f" [{cid}]" if cid else ""
        worker = event.get("worker")   # a worker's line, re-published by the supervisor
        worker = f" worker={worker}" if worker is not None else ""
        stream.write(f"{stamp}Z {level:<5} {event.get('log_namespace', '-')}{worker}{cid} "
                     f"{text}\n")
        flush()
    return observe


_RESERVED = frozenset({"format", "message", "time", "level"})
_PLAIN = frozenset({str, int, float, bool, type(None)})
_encode = json.JSONEncoder(default=str).encode


def _json_observer(stream: IO[str]):
    flush = _Flusher(stream)

    def observe(event):
        out = {"time": event.get("log_time"), "level": event.get("log_level", LogLevel.info).name,
               "namespace": event.get("log_namespace"), "message": message(event)}
        for key, value in event.items():
            # log_* are Twisted's, _* are for the text only (the access line's)
            if (type(value) in _PLAIN and key[:1] != "_" and key[:4] != "log_"
                    and key not in _RESERVED):
                out[key] = value
        if not out.get("correlation_id", True):
            del out["correlation_id"]   # a line about no request in particular
        if event.get("log_failure") is not None:
            out["traceback"] = event["log_failure"].getTraceback()
        stream.write(_encode(out) + "\n")
        flush()
    return observe


#: Namespaces printed at info whatever the level: lines the operator asked for by a setting of
#: their own (the access line, ``monitoring.access_log``).
ALWAYS_AT_INFO = frozenset({"mediaproxy.access"})


@implementer(ILogObserver)
class _LevelFilter:
    """Passes events at ``minimum`` priority and above (those of :data:`ALWAYS_AT_INFO` at
    info and above) to ``observer``: Twisted's FilteringLogObserver and its per-namespace
    predicate do the same with more calls per line."""

    def __init__(self, observer, minimum: int):
        self.observer = observer
        self.minimum = minimum

    def __call__(self, event) -> None:
        priority = _PRIORITY.get(event.get("log_level"), 4)
        if priority >= self.minimum or (priority >= 1 and
                                        event.get("log_namespace") in ALWAYS_AT_INFO):
            self.observer(event)


def observer_for(level: str = "info", fmt: str = "text", stream: IO[str] | None = None,
                 follow: bool = False):
    """A log observer printing events at ``level`` and above (those of :data:`ALWAYS_AT_INFO`
    at info and above), as text or JSON lines. ``follow``: the process's log, which takes the
    level :func:`set_level` sets (``monitoring.log_level`` at start and at a reload); else
    ``level`` stays (a command's own, such as ``purge``'s warnings)."""
    stream = stream if stream is not None else sys.stdout
    base = _json_observer(stream) if fmt == "json" else _text_observer(stream)
    observer = _LevelFilter(base, _PRIORITY[_LEVELS[level]])
    if follow:
        _observers.add(observer)
    return observer


#: The observers :func:`set_level` keeps at the configured level (weakly: one a test drops goes).
_observers: "weakref.WeakSet[_LevelFilter]" = weakref.WeakSet()


def begin_logging(level: str, fmt: str, stream: IO[str] | None = None,
                  follow: bool = True) -> None:
    """Start global logging for the console script (under twistd, :func:`twistd_observer`);
    ``follow``: see :func:`observer_for`."""
    globalLogBeginner.beginLoggingTo([observer_for(level, fmt, stream, follow)],
                                     redirectStandardIO=False)


# -- under twistd ---------------------------------------------------------------------------
#
# twistd builds its log observer (AppLogger) after every option is parsed, from the
# ServerOptions' ``logger`` entry: the *name* of a zero-argument factory (its own postOptions
# imports it with namedAny). ``mediaproxy.tap.Options.postOptions`` calls :func:`for_twistd`
# with the configured level and format and twistd's own --logfile/--nodaemon, and names
# :func:`twistd_observer`; the factory then makes the same observer as ``mediaproxy run``.

#: The factory's name, as ``twistd --logger`` takes it.
TWISTD_OBSERVER = "mediaproxy.logs.twistd_observer"
_twistd: dict = {"level": "info", "fmt": "text", "logfile": "", "nodaemon": False}


def for_twistd(level: str, fmt: str, logfile: str | None, nodaemon: bool) -> str:
    """Remember what :func:`twistd_observer` makes; returns its name for twistd's ``logger``."""
    _twistd.update(level=level, fmt=fmt, logfile=logfile or "", nodaemon=bool(nodaemon))
    return TWISTD_OBSERVER


def _rotate_on_sigusr1(logfile) -> None:
    """What twistd does for its own log file: SIGUSR1 (logrotate's postrotate) rotates it,
    unless something else already handles SIGUSR1."""
    import signal
    if not signal.getsignal(signal.SIGUSR1):
        def rotate(signum, frame):
            from twisted.internet import reactor
            reactor.callFromThread(logfile.rotate)
        signal.signal(signal.SIGUSR1, rotate)


def twistd_observer():
    """The observer twistd installs (its ``--logger``): the configured level and format, to the
    stream twistd's ``--logfile`` names, as twistd would choose it: ``-`` or no ``--logfile``
    with ``--nodaemon`` is stdout; otherwise the file (``twistd.log`` by default), rotated by
    size like twistd's own (:class:`twisted.python.logfile.LogFile`, 1 MB, and on SIGUSR1)."""
    name, nodaemon = _twistd["logfile"], _twistd["nodaemon"]
    if name == "-":
        if not nodaemon:
            sys.exit("Daemons cannot log to stdout, exiting!")
        stream = sys.stdout
    elif nodaemon and not name:
        stream = sys.stdout
    else:
        from twisted.python.logfile import LogFile
        stream = LogFile.fromFullPath(name or "twistd.log")
        _rotate_on_sigusr1(stream)
    return observer_for(_twistd["level"], _twistd["fmt"], stream, follow=True)


def logger(namespace: str) -> RequestLogger:
    """A module's logger: a :class:`RequestLogger` with no bound fields."""
    return RequestLogger(namespace)


class Throttle:
    """Rate limit for a warning that can repeat on every request (a read-only cache directory,
    a backend that is down): at most one event per ``every`` seconds per ``kind``; the events
    in between go to debug and are counted, and the next one let through says how many were
    held back (``{suppressed}``).

    ``kind`` names the kind of trouble (``("set", "EROFS")``), never a per-request value, or
    nothing would be held back; at most ``max_keys`` kinds are remembered (the oldest is
    forgotten first), so a flood of distinct kinds cannot grow it. ``clock`` returns seconds
    (``time.monotonic``; a test passes ``twisted.internet.task.Clock().seconds``).
    """

    def __init__(self, every: float = 10.0, clock=time.monotonic, max_keys: int = 1024):
        self.every = every
        self.clock = clock
        self.max_keys = max_keys
        self._seen: dict = {}   # key -> [time let through, suppressed since]

    def allow(self, kind, /) -> int | None:
        """``None`` when an event of ``kind`` must be held back (it is counted); else how many
        were held back since the last one let through."""
        now = self.clock()
        seen = self._seen.get(kind)
        if seen is not None and now - seen[0] < self.every:
            seen[1] += 1
            return None
        suppressed = seen[1] if seen is not None else 0
        if seen is None and len(self._seen) >= self.max_keys:
            del self._seen[next(iter(self._seen))]
        self._seen.pop(kind, None)
        self._seen[kind] = [now, 0]
        return suppressed

    def warn(self, log: Logger, kind, format: str, /, **kwargs) -> bool:
        """``log.warn(format, **kwargs)`` unless an event of ``kind`` was let through less than
        ``every`` seconds ago (then ``log.debug``); a warning let through after held-back ones
        ends with how many there were. True when it warned."""
        suppressed = self.allow(kind)
        if suppressed is None:
            log.debug(format, **kwargs)
            return False
        if suppressed:
            format += " ({suppressed} more like this since the last warning, logged at debug)"
        log.warn(format, suppressed=suppressed, **kwargs)
        return True
