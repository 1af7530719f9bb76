"""
Purging: one source (every variant of it), one tenant, or everything, from every cache layer of
this process, and from every other node.

Shared layers (Redis, file) are purged directly. Other nodes' memory layers are reached through
Redis: each purge is also recorded in a short-lived sorted set that every node polls once a
second (:class:`PurgeFeed`), applying what it has not seen yet to its own memory layers. A node
without Redis has nobody to tell.
"""

from __future__ import annotations

import json
import secrets
import time

import attrs
from twisted.application import service
from twisted.internet import task
from twisted.internet.defer import DeferredList, maybeDeferred, succeed
from twisted.logger import Logger

from .keys import TENANT, normalise_path, source_prefix, tenant_of

log = Logger(namespace="mediaproxy.purge")

#: How long a purge record stays in Redis for nodes to pick up.
FEED_TTL = 3600


@attrs.frozen
class PurgeScope:
    """What to purge: ``kind`` is ``source``, ``tenant`` or ``all``."""

    kind: str
    value: str = ""

    @classmethod
    def source(cls, path: str) -> "PurgeScope":
        if not path.startswith("/") or ".." in path.split("/") or "\x00" in path:
            raise ValueError("source must be an absolute backend path such as "
                             "/media/uploads/a.jpg")
        return cls("source", normalise_path(path))

    @classmethod
    def tenant(cls, tenant: str) -> "PurgeScope":
        if not TENANT.match(tenant):
            raise ValueError("tenant must match [a-z_][a-z0-9_]{0,62}")
        return cls("tenant", tenant)

    @classmethod
    def everything(cls) -> "PurgeScope":
        return cls("all")

    @property
    def key_prefix(self) -> str:
        """The cache-key prefix this scope covers (see :func:`mediaproxy.cache.keys.cache_key`)."""
        if self.kind == "source":
            return source_prefix(tenant_of(self.value), self.value)
        if self.kind == "tenant":
            return f"{self.value}:"
        return ""

    def covers_source(self, path: str) -> bool:
        if self.kind == "source":
            return path == self.value
        if self.kind == "tenant":
            return tenant_of(path) == self.value
        return True

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, "value": self.value})

    @classmethod
    def from_json(cls, text: str) -> "PurgeScope":
        data = json.loads(text)
        return cls(str(data["kind"]), str(data.get("value", "")))


def source_caches(runtime):
    """The source-cache plugins of this process (objects with ``forget_where``)."""
    return [plugin for _, plugin in runtime.pm.list_name_plugin()
            if plugin is not None and hasattr(plugin, "forget_where")]


def _purge_failed(failure, name: str) -> int:
    log.warn("purge of {layer} failed: {error}", layer=name, error=failure.getErrorMessage())
    return 0


def purge_local(runtime, scope: PurgeScope, layers=None):
    """Purge ``scope`` from this process's cache layers (all, or those named) and source
    caches. Fires with {layer name: entries removed}."""
    chosen = [layer for layer in runtime.cache.layers if layers is None or layer.name in layers]
    ds, names = [], []
    for layer in chosen:
        d = maybeDeferred(layer.purge, scope.key_prefix)
        d.addErrback(_purge_failed, layer.name)
        ds.append(d)
        names.append(layer.name)
    forgotten = sum(cache.forget_where(scope.covers_source) for cache in source_caches(runtime))

    def counted(results):
        out = {name: (value or 0) for name, (_, value) in zip(names, results)}
        out["sources"] = forgotten
        return out

    return DeferredList(ds).addCallback(counted)


def purge(runtime, scope: PurgeScope):
    """Purge ``scope`` everywhere: this process's layers (the shared ones included) and, through
    the purge feed, the memory layers of every other node."""
    feed = runtime.purge_feed
    announced = feed.announce(scope) if feed is not None else succeed(None)
    d = purge_local(runtime, scope)

    def logged(counts):
        log.info("purged {scope}: {counts}", scope=scope.to_json(), counts=counts)
        return counts

    return announced.addCallback(lambda _: d).addCallback(logged)


class PurgeFeed(service.Service):
    """Tells other nodes about purges through Redis, and applies theirs (memory layers and
    source caches only: the shared layers were purged by the node that started the purge)."""

    name = "mediaproxy.purge.feed"  # type: ignore[assignment]  # Service.name is untyped None

    def __init__(self, runtime, redis, interval: float = 1.0):
        self.runtime = runtime
        self.redis = redis
        self.interval = interval
        self.node_id = secrets.token_hex(8)
        self.last_seen = time.time()
        self.applied = 0
        self._loop = None

    @property
    def key(self) -> str:
        return f"{self.runtime.config.cache.redis.key_prefix}purges"

    def announce(self, scope: PurgeScope):
        node = self.redis.node_for(self.key)
        member = json.dumps({"node": self.node_id, "id": secrets.token_hex(8),
                             "scope": scope.to_json()})
        now = time.time()
        d = node.call("zadd", self.key, now, member)
        d.addCallback(lambda _: node.call("expire", self.key, FEED_TTL))
        d.addCallback(lambda _: node.call("zremrangebyscore", self.key, "-inf", now - FEED_TTL))
        d.addErrback(lambda f: log.warn("could not announce a purge to other nodes: {error}",
                                        error=f.getErrorMessage()))
        return d

    def poll(self):
        node = self.redis.node_for(self.key)
        since = self.last_seen
        d = node.call("zrangebyscore", self.key, f"({since}", "+inf", withscores=True)

        def apply(records):
            for member, score in records or ():
                self.last_seen = max(self.last_seen, float(score))
                record = json.loads(member if isinstance(member, str) else member.decode())
                if record.get("node") == self.node_id:
                    continue
                scope = PurgeScope.from_json(record["scope"])
                self.applied += 1
                purge_local(self.runtime, scope, layers=("memory",))

        d.addCallback(apply)
        d.addErrback(lambda f: None)  # Redis down: try again next second
        return d

    def startService(self):
        service.Service.startService(self)
        self._loop = task.LoopingCall(self.poll)
        self._loop.clock = self.runtime.reactor
        self._loop.start(self.interval, now=False)

    def stopService(self):
        service.Service.stopService(self)
        if self._loop is not None and self._loop.running:
            self._loop.stop()
