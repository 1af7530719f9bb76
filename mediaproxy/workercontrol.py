"""
The private channel between the supervisor and each worker it started: a UNIX socket pair
made at the spawn (the worker's end is its descriptor :data:`CONTROL_FD`), nothing on the
file system, nothing another process can reach. One JSON-free line protocol, bounded
(:data:`MAX_LINE`):

* ``recycle REASON`` (worker -> supervisor): the worker is being recycled
  (:mod:`mediaproxy.recycling`); the supervisor starts its replacement at once;
* ``spend N {json}`` (worker -> supervisor) and ``totals N {json}`` (the answer): the
  rate-limit exchange among the workers of one host (:class:`Ledger`).

**Rate limits across workers.** SO_REUSEPORT spreads one client's connections over every
worker, and each worker's buckets are its own: alone, N workers would let N times the rate
through. So, with several workers and no Redis, the rate limiter exchanges what each bucket
spent (the algorithm of its Redis exchange, :mod:`mediaproxy.builtin.ratelimit`) every
:data:`HOST_SYNC_INTERVAL` seconds with the supervisor's :class:`Ledger` instead of Redis:
worker 0 calls it directly, the others over this channel. With Redis configured, Redis is the
exchange (it covers every node, this host's workers included).
"""

from __future__ import annotations

import json
import socket
from typing import Callable

from twisted.internet import protocol
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver

log = Logger(namespace="mediaproxy.workers")

#: The worker's descriptor of its end of the channel.
CONTROL_FD = 3
#: The longest line either side accepts (an exchange of ~100,000 buckets); a longer one
#: closes the channel.
MAX_LINE = 16 * 1024 * 1024
#: Seconds between two rate-limit exchanges among the workers of a host (at most: a
#: shorter ratelimit.sync_interval is used as it is; 0 turns the exchange off).
HOST_SYNC_INTERVAL = 0.5
#: Seconds a worker waits for the supervisor's answer to an exchange; then the counts go out
#: again with the next one.
EXCHANGE_TIMEOUT = 5.0
#: Seconds a ledger counter lives after its last change; then it is forgotten (a worker that
#: sends it again starts it over, as with Redis's TTL).
LEDGER_TTL = 60.0
#: Most counters the ledger keeps; beyond it the least recently changed half goes.
LEDGER_KEYS = 1_000_000


class Ledger:
    """The supervisor's counters of tokens spent, by bucket: ``exchange({key: spent})`` adds
    each count and fires with ``{key: new total}`` (what the Redis script does), at once."""

    def __init__(self, clock: Callable[[], float], ttl: float = LEDGER_TTL,
                 max_keys: int = LEDGER_KEYS):
        self.clock = clock
        self.ttl = ttl
        self.max_keys = max_keys
        self.totals: dict[str, list] = {}   # key -> [total, last change]

    def add(self, spent: dict[str, int]) -> dict[str, int]:
        now = self.clock()
        out = {}
        for key, n in spent.items():
            entry = self.totals.get(key)
            if entry is None or now - entry[1] > self.ttl:
                entry = self.totals[key] = [0, now]
            entry[0] += int(n)
            entry[1] = now
            out[key] = entry[0]
        if len(self.totals) > self.max_keys:
            self.forget(now)
        return out

    def forget(self, now: float) -> None:
        """Drop the expired counters; if still too many, the least recently changed half."""
        self.totals = {k: e for k, e in self.totals.items() if now - e[1] <= self.ttl}
        if len(self.totals) > self.max_keys:
            keep = sorted(self.totals, key=lambda k: self.totals[k][1])[len(self.totals) // 2:]
            self.totals = {k: self.totals[k] for k in keep}

    def exchange(self, spent: dict[str, int]) -> Deferred:
        return succeed(self.add(spent))


class SupervisorEnd(LineOnlyReceiver):
    """The supervisor's end of one worker's channel."""

    MAX_LENGTH = MAX_LINE
    delimiter = b"\n"

    def __init__(self, ledger: Ledger, on_recycle: Callable[[str], None]):
        self.ledger = ledger
        self.on_recycle = on_recycle

    def lineReceived(self, line: bytes) -> None:
        command, _, rest = line.partition(b" ")
        if command == b"recycle":
            self.on_recycle(rest.decode("ascii", "replace"))
        elif command == b"spend":
            number, _, body = rest.partition(b" ")
            try:
                spent = {str(k): int(v) for k, v in json.loads(body).items()}
            except (ValueError, AttributeError, TypeError):
                return   # not from our worker's code: ignored
            totals = self.ledger.add(spent)
            self.sendLine(b"totals " + number + b" " + json.dumps(totals).encode())

    def lineLengthExceeded(self, line):
        self.transport.loseConnection()


class WorkerEnd(LineOnlyReceiver):
    """A worker's end: :meth:`recycle` and :meth:`exchange` (the rate limiter's sync
    backend)."""

    MAX_LENGTH = MAX_LINE
    delimiter = b"\n"

    def __init__(self, reactor):
        self.reactor = reactor
        self.pending: dict[int, Deferred] = {}
        self.sent = 0
        self.connected = False

    def connectionMade(self):
        self.connected = True

    def connectionLost(self, reason=None):
        self.connected = False
        pending, self.pending = self.pending, {}
        for d in pending.values():
            d.errback(ConnectionError("the supervisor's channel closed"))

    def recycle(self, reason: str) -> None:
        if self.connected:
            self.sendLine(f"recycle {reason}".encode("ascii"))

    def _forget(self, number: int) -> None:
        self.pending.pop(number, None)

    def exchange(self, spent: dict[str, int]) -> Deferred:
        if not self.connected:
            return fail(ConnectionError("no channel to the supervisor"))
        self.sent += 1
        number = self.sent
        d: Deferred = Deferred(lambda _: self._forget(number))
        self.pending[number] = d
        self.sendLine(b"spend %d " % number + json.dumps(spent).encode())
        return d.addTimeout(EXCHANGE_TIMEOUT, self.reactor)

    def lineReceived(self, line: bytes) -> None:
        command, _, rest = line.partition(b" ")
        if command != b"totals":
            return
        number, _, body = rest.partition(b" ")
        d = self.pending.pop(int(number), None) if number.isdigit() else None
        if d is not None:
            d.callback({str(k): int(v) for k, v in json.loads(body).items()})

    def lineLengthExceeded(self, line):
        self.transport.loseConnection()


class _One(protocol.Factory):
    def __init__(self, proto):
        self.proto = proto

    def buildProtocol(self, addr):
        return self.proto


def adopt(reactor, sock_or_fd, proto) -> None:
    """Run ``proto`` on a connected UNIX stream socket (a socket object, or a descriptor
    number this process owns); the reactor takes a duplicate, the original is closed."""
    if isinstance(sock_or_fd, int):
        sock_or_fd = socket.socket(fileno=sock_or_fd)
    try:
        sock_or_fd.setblocking(False)
        reactor.adoptStreamConnection(sock_or_fd.fileno(), socket.AF_UNIX, _One(proto))
    finally:
        sock_or_fd.close()


def worker_end(reactor) -> WorkerEnd | None:
    """This worker's end of the channel (:data:`CONTROL_FD`), or None when it has none (run
    by hand)."""
    import os
    import stat

    try:
        if not stat.S_ISSOCK(os.fstat(CONTROL_FD).st_mode):
            return None
    except OSError:
        return None
    end = WorkerEnd(reactor)
    adopt(reactor, CONTROL_FD, end)
    return end
