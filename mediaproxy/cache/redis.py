"""
The process's one Redis connection, shared by the Redis cache layer, the coalescing locks and
anything else that keeps state in Redis (rate limits, health).

:class:`RedisClient` is built from ``cache.redis`` (:class:`~mediaproxy.config.RedisCacheConfig`)
in one of three shapes:

* **single**: ``url`` (``redis://[user:password@]host:port/db``, ``rediss://`` for TLS,
  ``unix:///path/redis.sock?db=0``): one txredisapi lazy connection pool;
* **sharded**: ``shards`` (several URLs): one pool per shard; a key lives on the shard
  txredisapi's consistent :class:`txredisapi.HashRing` picks for it (a ``{tag}`` in the key
  hashes the tag only). Commands that span keys (SCAN, purge) run on every shard;
* **sentinel**: ``sentinels`` + ``sentinel_service``: the master is found, and found again
  after a failover, through Sentinel (``txredisapi.Sentinel(...).master_for(...)``); ``url``,
  if also set, only supplies the password and database number.

Every command is bounded by ``timeout`` (``Deferred.addTimeout``). A node that fails to answer
(refused, lost, timed out) is marked *down*: from then on its commands fail at once with
:class:`RedisUnavailable` without touching the network, so a dead Redis costs nothing per
request, while a background PING retries it with exponential backoff. The first PING that
answers marks it *up* again: Redis coming back is used without a restart (a pool txredisapi
has given up on is replaced, see :class:`RedisNode`). A node also starts *down* and is probed
at once when the client starts, so requests never wait on a Redis that was never there.

The composition root makes the process's one client (``runtime.redis``, ``None`` without Redis)
and starts it with :class:`RedisService`.

txredisapi notes (1.6): its ``ShardedConnectionHandler`` hashes ``str`` keys with
``zlib.crc32``, which wants ``bytes`` on Python 3, and has no SCAN or EVAL; so the shards
here are plain pools routed by the same ``HashRing`` with the key's UTF-8 bytes. Connections
use ``charset="utf-8"`` and ``convertNumbers=False``: a reply that is valid UTF-8 comes back
as ``str`` and is re-encoded losslessly, anything else comes back as the bytes it was.
"""

from __future__ import annotations

import random
import re
from typing import Any, Callable
from urllib.parse import parse_qs, unquote, urlsplit

import attrs
import txredisapi
from twisted.application import service
from twisted.internet import error as ierror
from twisted.internet.defer import (
    CancelledError, Deferred, DeferredList, TimeoutError as CommandTimeout, fail,
    inlineCallbacks, maybeDeferred, succeed,
)
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import Logger

from ..config import ConfigError

log = Logger(namespace="mediaproxy.redis")

#: Name under which the client is registered with the plugin manager.
#: Failures that mean "the node is not answering" (as opposed to an error reply).
_UNREACHABLE = (txredisapi.ConnectionError, CommandTimeout, CancelledError,
                ierror.ConnectionLost, ierror.ConnectionDone, ierror.ConnectError,
                ierror.TimeoutError, OSError)

_HASH_TAG = re.compile(r"\{([^{}]+)\}")

#: Failed probes in a row after which a node's connection pool is replaced (see RedisNode).
REBUILD_AFTER = 5


class RedisUnavailable(Exception):
    """A Redis node is known to be down (the command was not sent), or it did not answer
    (refused, lost, timed out) and is now marked down."""


def _as_bytes(value: Any) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    return str(value).encode("ascii")


def _as_str(value: Any) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)


def glob_escape(text: str) -> str:
    """``text`` with Redis glob metacharacters escaped, for ``SCAN MATCH``."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


# -- addresses ----------------------------------------------------------------------------------

@attrs.frozen
class RedisAddress:
    """Where one Redis listens, parsed from a URL (see the module docs)."""

    host: str = "127.0.0.1"
    port: int = 6379
    db: int | None = None
    password: str | None = None
    username: str | None = None
    tls: bool = False
    unix_path: str | None = None

    @classmethod
    def from_url(cls, url: str) -> "RedisAddress":
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        password = unquote(parts.password) if parts.password is not None else None
        username = unquote(parts.username) if parts.username else None
        if parts.scheme == "unix":
            unix_db = query.get("db", [None])[0]
            return cls(unix_path=parts.path, db=int(unix_db) if unix_db is not None else None,
                       password=password, username=username)
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError(f"{url!r} is not a redis://, rediss:// or unix:// URL")
        path = parts.path.strip("/")
        db = int(path) if path else (int(query["db"][0]) if "db" in query else None)
        return cls(host=parts.hostname or "127.0.0.1", port=parts.port or 6379, db=db,
                   password=password, username=username, tls=parts.scheme == "rediss")

    @classmethod
    def from_host_port(cls, text: str) -> "RedisAddress":
        host, _, port = text.rpartition(":")
        return cls(host=host.strip("[]") or "127.0.0.1", port=int(port))

    @property
    def label(self) -> str:
        """For logs and health: the address without credentials."""
        where = self.unix_path or f"{self.host}:{self.port}"
        return where if self.db is None else f"{where}/{self.db}"


def _quiet(handler):
    """txredisapi errbacks a lazy pool's "all connected" Deferred, which nobody holds, when a
    connection fails its AUTH/SELECT handshake; consume that so it is not logged as an
    unhandled error (the node's probes report the problem instead)."""
    connected = getattr(handler, "_connected", None)
    if isinstance(connected, Deferred):
        connected.addErrback(lambda _: None)
    return handler


def _pool(address: RedisAddress, poolsize: int, timeout: float):
    """A lazy txredisapi connection pool to ``address`` (connecting starts at once) and the
    function that closes it."""
    common = dict(dbid=address.db or None,  # db 0 needs no SELECT (one handshake step less)
                  poolsize=poolsize, charset="utf-8", password=address.password,
                  username=address.username, connectTimeout=timeout, replyTimeout=timeout,
                  convertNumbers=False)
    if address.unix_path:
        handler = txredisapi.lazyUnixConnectionPool(address.unix_path, **common)
    else:
        tls = optionsForClientTLS(address.host) if address.tls else False
        handler = txredisapi.lazyConnectionPool(address.host, address.port,
                                                ssl_context_factory=tls, **common)
    return _quiet(handler), handler.disconnect


# -- one node: a pool with its own health ---------------------------------------------------------

@attrs.define
class Backoff:
    """Exponential delays between retries of a down node, with a little jitter so that many
    processes do not probe in step."""

    initial: float = 0.25
    maximum: float = 10.0
    factor: float = 2.0
    jitter: float = 0.1
    failures: int = 0

    def next_delay(self) -> float:
        delay = min(self.maximum, self.initial * self.factor ** min(self.failures, 64))
        self.failures += 1
        return delay * random.uniform(1 - self.jitter, 1 + self.jitter)

    def reset(self) -> None:
        self.failures = 0


@attrs.define(eq=False)
class RedisNode:
    """One Redis server (or Sentinel-managed master) behind a connection pool, with a circuit
    breaker: *stopped* -> start -> *down* (probing) -> *up*; a command that finds the node
    unreachable turns it *down* again, and a down node fails commands at once.

    Every :data:`REBUILD_AFTER` failed probes in a row the pool is replaced by a new one:
    txredisapi stops reconnecting a pool for good when a connection is lost during its
    AUTH/SELECT handshake (a Redis restarting at the wrong moment), and a new pool is the way
    back from that without a restart."""

    label: str
    connect: Callable[[], tuple[Any, Callable[[], Any]]]  #: opens a pool: (handler, close)
    reactor: Any
    timeout: float
    backoff: Backoff = attrs.field(factory=Backoff)
    handler: Any = None
    state: str = "stopped"
    _close: Callable[[], Any] | None = None
    _probe: Any = None
    _retry_at: float = 0.0
    _waiting: list = attrs.field(factory=list)

    @property
    def up(self) -> bool:
        return self.state == "up"

    def start(self) -> None:
        if self.state != "stopped":
            return
        self.handler, self._close = self.connect()
        self.state = "down"
        self._schedule_probe(0.0)

    def stop(self) -> Deferred:
        """Close the pool; fires when its connections are closed."""
        if self.state == "stopped":
            return succeed(None)
        self.state = "stopped"
        if self._probe is not None and self._probe.active():
            self._probe.cancel()
        self._probe = None
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.errback(RedisUnavailable(f"{self.label}: client stopped"))
        return self._closed(self._close)

    @staticmethod
    def _closed(close) -> Deferred:
        return maybeDeferred(close).addBoth(lambda _: None)

    def describe(self) -> str:
        if self.state == "down":
            wait = max(0.0, self._retry_at - self.reactor.seconds())
            return f"down (next try in {wait:.2f} s)"
        return self.state

    def call(self, method: str, *args, **kwargs) -> Deferred:
        """Run txredisapi command ``method``; fails with :class:`RedisUnavailable` at once
        while the node is down, or when it turns out to be unreachable."""
        if self.state != "up":
            return fail(RedisUnavailable(f"Redis {self.label} is {self.describe()}"))
        return self._send(method, *args, **kwargs).addErrback(self._failed)

    def when_up(self, timeout: float) -> Deferred:
        """Fire with True once the node is up, or False after ``timeout`` seconds."""
        if self.up:
            return succeed(True)
        d: Deferred = Deferred()
        self._waiting.append(d)

        def expired():
            if d in self._waiting:
                self._waiting.remove(d)
                d.callback(False)

        call = self.reactor.callLater(timeout, expired)

        def done(result):
            if call.active():
                call.cancel()
            return result

        return d.addBoth(done)

    def _send(self, method, *args, **kwargs) -> Deferred:
        d = maybeDeferred(getattr(self.handler, method), *args, **kwargs)
        return d.addTimeout(self.timeout, self.reactor)

    def _failed(self, failure):
        if not failure.check(*_UNREACHABLE):
            return failure  # an error reply: the node is fine
        reason = self._reason(failure)
        self._mark_down(reason)
        raise RedisUnavailable(f"Redis {self.label}: {reason}")

    def _reason(self, failure) -> str:
        if failure.check(CommandTimeout, CancelledError):
            return f"no answer in {self.timeout:g} s"
        return failure.getErrorMessage() or failure.type.__name__

    def _mark_down(self, reason: str) -> None:
        if self.state != "up":
            return
        self.state = "down"
        delay = self.backoff.next_delay()
        log.warn("Redis {node} is unreachable ({reason}); skipping it, next try in "
                 "{delay:.2f} s", node=self.label, reason=reason, delay=delay)
        self._schedule_probe(delay)

    def _schedule_probe(self, delay: float) -> None:
        self._retry_at = self.reactor.seconds() + delay
        self._probe = self.reactor.callLater(delay, self._run_probe)

    def _run_probe(self) -> None:
        self._probe = None
        self._send("ping").addCallbacks(self._probe_answered, self._probe_failed)

    def _probe_answered(self, _):
        if self.state != "down":
            return
        recovered = self.backoff.failures > 0
        self.backoff.reset()
        self.state = "up"
        if recovered:
            log.info("Redis {node} answers again; using it", node=self.label)
        else:
            log.info("connected to Redis {node}", node=self.label)
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(True)

    def _probe_failed(self, failure):
        if self.state != "down":
            return
        first = self.backoff.failures == 0
        delay = self.backoff.next_delay()
        (log.warn if first else log.debug)(
            "Redis {node} does not answer ({reason}); next try in {delay:.2f} s",
            node=self.label, reason=self._reason(failure), delay=delay)
        if self.backoff.failures % REBUILD_AFTER == 0:
            self._rebuild()
        self._schedule_probe(delay)

    def _rebuild(self) -> None:
        old = self._close
        self.handler, self._close = self.connect()
        self._closed(old)
        log.info("Redis {node}: opened a new connection pool after {n} failed probes",
                 node=self.label, n=self.backoff.failures)


# -- the client -----------------------------------------------------------------------------------

@attrs.define(eq=False)
class RedisClient:
    """The shared Redis connection of a process (see the module docs). Keys are ``str``,
    values ``bytes``; every write takes a TTL, so no key lives for ever."""

    nodes: list[RedisNode]
    mode: str = "single"
    _ring: Any = None
    _ring_nodes: dict = attrs.field(factory=dict)

    @classmethod
    def from_config(cls, config, reactor, backoff_initial: float = 0.25,
                    backoff_max: float = 10.0) -> "RedisClient | None":
        """The client for ``cache.redis`` (:class:`~mediaproxy.config.RedisCacheConfig`), or
        None when no Redis is configured. No connection is made before :meth:`start`."""
        timeout, size = config.timeout, config.pool_size

        def node(label, connect):
            return RedisNode(label=label, connect=connect, reactor=reactor, timeout=timeout,
                             backoff=Backoff(initial=backoff_initial, maximum=backoff_max))

        if config.sentinels:
            if not config.sentinel_service:
                raise ConfigError("cache.redis.sentinel_service",
                                  "required when cache.redis.sentinels is set")
            base = RedisAddress.from_url(config.url) if config.url else RedisAddress()
            sentinels = [RedisAddress.from_host_port(s) for s in config.sentinels]

            def connect_sentinel():
                sentinel = txredisapi.Sentinel([(s.host, s.port) for s in sentinels],
                                               replyTimeout=timeout, connectTimeout=timeout)
                handler = _quiet(sentinel.master_for(
                    config.sentinel_service, dbid=base.db or None, poolsize=size,
                    isLazy=True, charset="utf-8", password=base.password,
                    username=base.username, replyTimeout=timeout, convertNumbers=False))

                def close():
                    return DeferredList([maybeDeferred(handler.disconnect),
                                         maybeDeferred(sentinel.disconnect)],
                                        consumeErrors=True)

                return handler, close

            label = f"sentinel:{config.sentinel_service}"
            return cls([node(label, connect_sentinel)], mode="sentinel")
        if config.shards:
            addresses = [RedisAddress.from_url(url) for url in config.shards]
            return cls([node(a.label, lambda a=a: _pool(a, size, timeout)) for a in addresses],
                       mode="sharded")
        if config.url:
            address = RedisAddress.from_url(config.url)
            return cls([node(address.label, lambda: _pool(address, size, timeout))])
        return None

    # lifecycle

    def start(self) -> None:
        """Open the pools and start probing every node."""
        for node in self.nodes:
            node.start()
        if self.mode == "sharded":
            # the ring hands back the handler it was built with; a node may replace its
            # handler later (RedisNode), so map the ring's answer to the node, not the pool
            self._ring = txredisapi.HashRing([node.handler for node in self.nodes])
            self._ring_nodes = {id(node.handler): node for node in self.nodes}

    def stop(self) -> Deferred:
        """Close every pool; fires when the connections are closed."""
        return DeferredList([node.stop() for node in self.nodes],
                            consumeErrors=True).addCallback(lambda _: None)

    def when_up(self, timeout: float) -> Deferred:
        """Fire with True once every node is up, False when one is not within ``timeout``."""
        return DeferredList([node.when_up(timeout) for node in self.nodes],
                            consumeErrors=True).addCallback(
            lambda results: all(ok and value for ok, value in results))

    @property
    def healthy(self) -> bool:
        return all(node.up for node in self.nodes)

    def node_for(self, key: str) -> RedisNode:
        """The node that holds ``key``."""
        if self._ring is None:
            return self.nodes[0]
        tag = _HASH_TAG.search(key)
        return self._ring_nodes[id(self._ring((tag.group(1) if tag else key).encode("utf-8")))]

    # single-key commands

    def get(self, key: str) -> Deferred:
        """Fire with the value of ``key`` as bytes, or None."""
        return self.node_for(key).call("get", key).addCallback(_as_bytes)

    def set(self, key: str, value: bytes, ttl: float) -> Deferred:
        """Store ``value`` under ``key`` for ``ttl`` seconds (``SET ... PX``)."""
        return self.node_for(key).call("set", key, value, pexpire=_ms(ttl)).addCallback(
            lambda _: None)

    def set_nx(self, key: str, value: bytes | str, ttl: float) -> Deferred:
        """``SET key value NX PX ttl``: fire with True when set, False when ``key`` exists."""
        d = self.node_for(key).call("set", key, value, pexpire=_ms(ttl),
                                    only_if_not_exists=True)
        return d.addCallback(lambda reply: reply is not None)

    def pttl(self, key: str) -> Deferred:
        """Milliseconds ``key`` has left (-1: no TTL, -2: no such key)."""
        return self.node_for(key).call("execute_command", "PTTL", key).addCallback(int)

    def exists(self, key: str) -> Deferred:
        return self.node_for(key).call("exists", key).addCallback(lambda n: int(n) > 0)

    def eval(self, script: str, keys: list[str], args: list | tuple = ()) -> Deferred:
        """Run a Lua ``script`` on the node of ``keys[0]`` (all keys must live together: give
        them a common ``{tag}`` when sharded)."""
        return self.node_for(keys[0]).call("eval", script, list(keys), list(args))

    def delete(self, *keys: str) -> Deferred:
        """Delete ``keys`` (grouped by node); fire with how many existed."""
        groups: dict[int, tuple[RedisNode, list[str]]] = {}
        for key in keys:
            node = self.node_for(key)
            groups.setdefault(id(node), (node, []))[1].append(key)
        ds = [node.call("delete", batch).addCallback(int) for node, batch in groups.values()]
        return _gather_sum(ds)

    # every node

    def scan(self, pattern: str, count: int = 500) -> Deferred:
        """Fire with every key matching ``pattern`` on every node (for modest key sets)."""
        found: list[str] = []

        def collect(node, keys):
            found.extend(keys)
            return 0

        return _gather_sum([self._scan(node, pattern, count, collect)
                            for node in self.nodes]).addCallback(lambda _: found)

    def delete_matching(self, pattern: str, count: int = 500) -> Deferred:
        """``SCAN MATCH pattern`` on every node, deleting each batch as it comes; fire with the
        number deleted. Holds one batch per node at a time, whatever the key count."""
        def delete(node, keys):
            return node.call("delete", keys).addCallback(int)

        return _gather_sum([self._scan(node, pattern, count, delete) for node in self.nodes])

    @inlineCallbacks
    def _scan(self, node: RedisNode, pattern: str, count: int, each_batch):
        cursor, total = 0, 0
        while True:
            cursor, keys = yield node.call("scan", cursor, pattern, count)
            cursor = int(cursor)
            if keys:
                total += (yield each_batch(node, [_as_str(k) for k in keys])) or 0
            if cursor == 0:
                return total

    def ping(self) -> Deferred:
        """PING every node; fire with ``[(label, ok, detail)]``."""
        def one(node):
            d = node.call("ping")
            d.addCallbacks(lambda _: (node.label, True, "up"),
                           lambda f: (node.label, False, f.getErrorMessage()))
            return d

        return DeferredList([one(node) for node in self.nodes]).addCallback(
            lambda results: [value for _, value in results])

    def server_stats(self) -> Deferred:
        """Fire with ``{"keys", "used_memory", "evicted_keys", "nodes_answering"}`` summed over
        the nodes that answer (cheap: DBSIZE and two INFO sections per node)."""
        fields = ("used_memory", "evicted_keys")

        @inlineCallbacks
        def one(node):
            stats = {"keys": int((yield node.call("dbsize")))}
            for section in ("memory", "stats"):
                info = _as_str((yield node.call("execute_command", "INFO", section)))
                for name in fields:
                    found = re.search(rf"^{name}:(\d+)", info, re.M)
                    if found:
                        stats[name] = int(found.group(1))
            return stats

        def total(results):
            answers = [value for ok, value in results if ok]
            out = {name: sum(a.get(name, 0) for a in answers)
                   for name in ("keys", *fields)}
            out["nodes_answering"] = len(answers)
            return out

        return DeferredList([one(node) for node in self.nodes],
                            consumeErrors=True).addCallback(total)


def _ms(ttl: float) -> int:
    return max(1, int(ttl * 1000))


def _gather_sum(ds: list[Deferred]) -> Deferred:
    """Fire with the sum of ``ds``' results, or with the first failure once all are done."""
    def total(results):
        for ok, value in results:
            if not ok:
                return value
        return sum(value or 0 for _, value in results)

    return DeferredList(ds, consumeErrors=True).addCallback(total)


# -- the service ----------------------------------------------------------------------------------

class RedisService(service.Service):
    """Opens the shared Redis connection with the daemon and closes it on shutdown."""

    name = "mediaproxy-redis"  # type: ignore[assignment]  # Service.name is untyped None

    def __init__(self, client: RedisClient):
        self.client = client

    def startService(self):
        super().startService()
        self.client.start()

    def stopService(self):
        super().stopService()
        return self.client.stop()
