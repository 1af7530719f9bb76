"""
Rate limiting: token buckets per client IP and per tenant, kept in process memory.

* **cheap token** (``ratelimit.ip_rate``, ``tenant_rate``): every image request, taken in the
  check chain (``trylast``: after validation and the signature), so before the cache lookup;
* **expensive token** (``ip_transform_rate``, ``tenant_transform_rate``): taken right before a
  transform, when the pipeline asks ``mediaproxy_admit_transform``, so cache hits never spend
  one;
* **pass-through** (``passthrough_rate``): unlimited by default; when set, taken when the core
  asks ``mediaproxy_check_passthrough`` before forwarding.

The client is ``RequestInfo.client_ip``: the peer, or the address ``X-Forwarded-For`` names when
the peer is one of ``server.trusted_proxies``. Health, metrics and admin live on their own
listeners and never reach these buckets; ``ratelimit.exempt`` lists client networks that are
never limited.

A refusal is a 429 with ``Retry-After``, ``RateLimit-Limit``, ``RateLimit-Remaining``,
``RateLimit-Reset`` (seconds, IETF draft), ``RateLimit-Policy`` and the ``X-RateLimit-Limit``,
``X-RateLimit-Remaining``, ``X-RateLimit-Reset`` (Unix time) that older clients read.

**Adaptive**: a LoopingCall samples CPU, memory (psutil) and the transform queue every
``sample_interval``; each of them above its threshold multiplies every rate and bucket size by
``pressure_factor``. Nothing is sampled per request.

**Across nodes**: every ``sync_interval`` the tokens each bucket spent locally are added to a
counter in Redis (one EVAL per exchange, whatever the number of keys) and the counters' new
totals come back; what the other nodes spent since the last exchange is taken out of the local
bucket, which may go into debt (at most one burst and :data:`DEBT_SECONDS` of refill deep):
under a sustained overload every node's bucket is empty when the others' spending arrives, and
forgiving it would let each node grant the whole rate. Requests never wait on Redis; without Redis each node limits alone. A
node learns a key's usage by other nodes from its second exchange of that key on.

**Across the workers of a host** (``server.workers`` > 1) without Redis: the same exchange,
every :data:`~mediaproxy.workercontrol.HOST_SYNC_INTERVAL` seconds (or a shorter
``sync_interval``), with the supervisor's ledger over each worker's private channel
(``runtime.exchange``, :mod:`mediaproxy.workercontrol`), so one client whose connections the
kernel spreads over the workers gets the configured rate, not N times it.

A bucket costs a dict entry; at most ``ratelimit.max_keys`` are kept, full (idle) ones are
dropped first.
"""

from __future__ import annotations

import ipaddress
import math
from typing import Any, Callable

import attrs
from twisted.application import service
from twisted.internet import task
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from .. import hookimpl
from ..logs import Throttle
from ..models import Rejection
from ..workercontrol import HOST_SYNC_INTERVAL

log = Logger(namespace="mediaproxy.ratelimit")

PLUGIN_NAME = "mediaproxy.builtin.ratelimit.instance"

#: How deep in debt what the other nodes (or workers) spent may take a bucket, in seconds of
#: its refill beyond one burst: deep enough for any exchange interval, bounded against a
#: counter gone wrong.
DEBT_SECONDS = 60.0

# A bucket is a list for speed: [tokens, last update, spent since the last exchange,
# last total seen in Redis (or -1)].
_TOKENS, _STAMP, _SPENT, _SEEN = 0, 1, 2, 3


@attrs.define(eq=False)
class Buckets:
    """Token buckets of one kind (``name``), ``rate`` tokens a second up to ``burst``."""

    name: str
    rate: float
    burst: int
    max_keys: int = 100_000
    state: dict = attrs.field(factory=dict)

    def take(self, key: str, now: float, factor: float = 1.0) -> float:
        """Take a token for ``key``: 0.0 when granted, else the seconds until one is there."""
        rate = self.rate * factor
        burst = max(1.0, self.burst * factor)
        bucket = self.state.get(key)
        if bucket is None:
            if len(self.state) >= self.max_keys:
                self.sweep(now, factor)
            bucket = self.state[key] = [burst, now, 0, -1]
        tokens = bucket[_TOKENS] + (now - bucket[_STAMP]) * rate
        if tokens > burst:
            tokens = burst
        bucket[_STAMP] = now
        if tokens >= 1.0:
            bucket[_TOKENS] = tokens - 1.0
            bucket[_SPENT] += 1
            return 0.0
        bucket[_TOKENS] = tokens
        return (1.0 - tokens) / rate

    def remaining(self, key: str) -> int:
        bucket = self.state.get(key)
        return max(0, int(bucket[_TOKENS])) if bucket is not None else int(self.burst)

    def sweep(self, now: float, factor: float = 1.0) -> int:
        """Drop the buckets that have refilled (they are as good as new); when that is not
        enough to get under ``max_keys``, drop the oldest half. Returns how many went."""
        rate, burst = self.rate * factor, max(1.0, self.burst * factor)
        full = [key for key, b in self.state.items()
                if b[_SPENT] == 0 and b[_TOKENS] + (now - b[_STAMP]) * rate >= burst]
        for key in full:
            del self.state[key]
        dropped = len(full)
        if len(self.state) >= self.max_keys:
            oldest = sorted(self.state, key=lambda k: self.state[k][_STAMP])
            for key in oldest[:len(oldest) // 2 + 1]:
                del self.state[key]
                dropped += 1
        return dropped


@attrs.define(eq=False)
class Pressure:
    """The budget factor from CPU, memory and queue samples (1.0: no pressure)."""

    cpu_percent: float = 85.0
    memory_percent: float = 90.0
    queue_percent: float = 75.0
    factor_each: float = 0.5
    factor: float = 1.0
    last: tuple = (0.0, 0.0, 0.0)
    #: A host whose load hovers around a threshold flips the factor every few samples: one
    #: warning a minute, the flips in between at debug.
    warned: Throttle = attrs.field(factory=lambda: Throttle(60.0))

    def update(self, cpu: float, memory: float, queue: float) -> float:
        crossed = ((cpu > self.cpu_percent) + (memory > self.memory_percent)
                   + (queue > self.queue_percent))
        old, self.factor = self.factor, self.factor_each ** crossed
        self.last = (cpu, memory, queue)
        if old != self.factor:
            self.warned.warn(log, "pressure", "rate limits scaled by {factor} (cpu {cpu:.0f}%, "
                             "memory {memory:.0f}%, queue {queue:.0f}%)", factor=self.factor,
                             cpu=cpu, memory=memory, queue=queue)
        return self.factor


def psutil_sampler(runtime) -> Callable[[], tuple[float, float, float]]:
    """CPU % of the host since the last call, memory % of the host, transform queue % full."""
    import psutil

    psutil.cpu_percent(None)   # the first call only starts the measurement

    def sample():
        limit = runtime.config.processing.queue_limit
        return (psutil.cpu_percent(None), psutil.virtual_memory().percent,
                100.0 * runtime.pending_transforms / limit if limit else 0.0)
    return sample


class RedisBucketSync:
    """Exchanges spent tokens through Redis: ``exchange({key: spent})`` adds each count to
    ``{prefix}rl:{{rl}}:{key}`` (the ``{rl}`` hash tag keeps them on one shard) and fires with
    ``{key: new total}``. Every key expires ``ttl`` seconds after its last change."""

    SCRIPT = """
local ttl = tonumber(ARGV[1])
local out = {}
for i = 1, #KEYS do
  out[i] = redis.call('INCRBY', KEYS[i], ARGV[i + 1])
  redis.call('PEXPIRE', KEYS[i], ttl)
end
return out
"""
    BATCH = 500

    def __init__(self, client, prefix: str, ttl: float):
        self.client = client
        self.prefix = prefix
        self.ttl_ms = max(1000, int(ttl * 1000))

    def exchange(self, spent: dict[str, int]) -> Deferred:
        keys = list(spent)
        totals: dict[str, int] = {}
        d = succeed(None)
        for start in range(0, len(keys), self.BATCH):
            batch = keys[start:start + self.BATCH]
            d.addCallback(lambda _, batch: self._one(batch, spent, totals), batch)
        return d.addCallback(lambda _: totals)

    def _one(self, batch: list[str], spent: dict[str, int], totals: dict[str, int]):
        redis_keys = [f"{self.prefix}rl:{{rl}}:{key}" for key in batch]
        d = self.client.eval(self.SCRIPT, redis_keys,
                             [self.ttl_ms, *(spent[key] for key in batch)])

        def store(values):
            for key, value in zip(batch, values or ()):
                totals[key] = int(value)
        return d.addCallback(store)


def _headers(limit: int, remaining: int, wait: float, now_wall: float, rate: float):
    reset = max(1, math.ceil(wait))
    window = max(1, math.ceil(limit / rate)) if rate > 0 else 1
    return [("Retry-After", str(reset)),
            ("RateLimit-Limit", str(limit)), ("RateLimit-Remaining", str(remaining)),
            ("RateLimit-Reset", str(reset)), ("RateLimit-Policy", f"{limit};w={window}"),
            ("X-RateLimit-Limit", str(limit)), ("X-RateLimit-Remaining", str(remaining)),
            ("X-RateLimit-Reset", str(int(now_wall) + reset))]


@attrs.define(eq=False)
class RateLimiter:
    """The rate-limit plugin instance (registered as :data:`PLUGIN_NAME`)."""

    runtime: Any
    clock: Any = None
    wall: Callable[[], float] | None = None
    sampler: Callable[[], tuple[float, float, float]] | None = None
    sync_backend: Any = None
    pressure: Pressure = attrs.field(factory=Pressure)
    tables: dict = attrs.field(factory=dict)
    enabled: bool = True
    adaptive: bool = True
    _exempt: tuple = ()
    _exempt_cache: dict = attrs.field(factory=dict)
    _syncing: bool = False
    #: buckets that spent nothing since the last exchange go out with every idle_every-th
    #: one (the host exchange is frequent: it sends those at ratelimit.sync_interval)
    idle_every: int = 1
    _exchanges: int = 0
    _sync_warned: Throttle = attrs.field(factory=lambda: Throttle(60.0))
    #: decisions taken (every token asked for while enabled), for
    #: ``mediaproxy_ratelimit_decisions_total{result}``: two ints, nothing per request beyond
    allowed: int = 0
    rejected: int = 0

    def __attrs_post_init__(self) -> None:
        if self.clock is None:
            self.clock = self.runtime.reactor
        if self.wall is None:
            import time
            self.wall = time.time
        self.refresh()

    # -- settings ----------------------------------------------------------------------------

    def refresh(self) -> None:
        """(Re)read ``[ratelimit]``; buckets of unchanged kinds keep their state."""
        config = self.runtime.config.ratelimit
        self.enabled = config.enabled
        self.adaptive = config.adaptive
        self.pressure.cpu_percent = config.cpu_percent
        self.pressure.memory_percent = config.memory_percent
        self.pressure.queue_percent = config.queue_percent
        self.pressure.factor_each = config.pressure_factor
        if not self.adaptive:
            self.pressure.factor = 1.0
        self._exempt = tuple(ipaddress.ip_network(n, strict=False) for n in config.exempt)
        self._exempt_cache.clear()
        kinds = {"ip": (config.ip_rate, config.ip_burst),
                 "tenant": (config.tenant_rate, config.tenant_burst),
                 "ip_transform": (config.ip_transform_rate, config.ip_transform_burst),
                 "tenant_transform": (config.tenant_transform_rate,
                                      config.tenant_transform_burst),
                 "passthrough": (config.passthrough_rate, config.passthrough_burst)}
        tables = {}
        for name, (rate, burst) in kinds.items():
            if rate <= 0:
                continue
            table = self.tables.get(name)
            if table is None:
                table = Buckets(name, rate, burst, config.max_keys)
            table.rate, table.burst, table.max_keys = rate, burst, config.max_keys
            tables[name] = table
        self.tables = tables

    # -- taking tokens ---------------------------------------------------------------------

    def _is_exempt(self, ip: str) -> bool:
        if not self._exempt:
            return False
        cached = self._exempt_cache.get(ip)
        if cached is None:
            try:
                address = ipaddress.ip_address(ip.split("%", 1)[0])
                if address.version == 6 and address.ipv4_mapped is not None:
                    address = address.ipv4_mapped
                cached = any(address.version == n.version and address in n
                             for n in self._exempt)
            except ValueError:
                cached = False
            if len(self._exempt_cache) > 10_000:
                self._exempt_cache.clear()
            self._exempt_cache[ip] = cached
        return cached

    def _take(self, kinds: tuple[tuple[str, str], ...]) -> Rejection | None:
        now = self.clock.seconds()
        factor = self.pressure.factor
        for kind, key in kinds:
            table = self.tables.get(kind)
            if table is None:
                continue
            wait = table.take(key, now, factor)
            if wait:
                self.rejected += 1
                limit = max(1, int(table.burst * factor))
                return Rejection(
                    429, "rate_limited",
                    "too many requests; retry after the time in Retry-After",
                    parameter=None,
                    headers=_headers(limit, table.remaining(key), wait, self.wall(),  # type: ignore[misc]  # set by __attrs_post_init__
                                     table.rate * factor))
        self.allowed += 1
        return None

    def take_cheap(self, image_request, request) -> Rejection | None:
        """The per-request token (client IP, then tenant)."""
        if not self.enabled or self._is_exempt(request.client_ip):
            return None
        return self._take((("ip", request.client_ip), ("tenant", image_request.tenant)))

    def take_expensive(self, image_request, request) -> Rejection | None:
        """The per-transform token: call right before a transform (a cache miss)."""
        if not self.enabled or self._is_exempt(request.client_ip):
            return None
        return self._take((("ip_transform", request.client_ip),
                           ("tenant_transform", image_request.tenant)))

    def take_passthrough(self, info) -> Rejection | None:
        """The pass-through token (only when ``ratelimit.passthrough_rate`` is set)."""
        if not self.enabled or self._is_exempt(info.client_ip):
            return None
        return self._take((("passthrough", info.client_ip),))

    # -- background ------------------------------------------------------------------------

    def sample(self) -> None:
        """Take one CPU/memory/queue sample (the LoopingCall's work)."""
        if not self.adaptive or self.sampler is None:
            return
        try:
            self.pressure.update(*self.sampler())
        except Exception:
            log.failure("sampling the host's load failed")

    def sweep(self) -> None:
        now = self.clock.seconds()
        for table in self.tables.values():
            if len(table.state) > table.max_keys // 2:
                table.sweep(now, self.pressure.factor)

    def sync(self) -> Deferred:
        """Exchange what each bucket spent with the other nodes (see the module docstring)."""
        if self.sync_backend is None or self._syncing:
            return succeed(None)
        spent: dict[str, int] = {}
        buckets: dict[str, list] = {}
        floors: dict[str, float] = {}
        # a bucket that spent nothing since the last exchange only learns what the others
        # spent: every idle_every-th exchange (it learns all of it as soon as it spends)
        idle_too = self._exchanges % self.idle_every == 0
        self._exchanges += 1
        for kind, table in self.tables.items():
            floor = -(table.burst + table.rate * DEBT_SECONDS)
            for key, bucket in table.state.items():
                if bucket[_SPENT] or (idle_too and bucket[_SEEN] >= 0):
                    name = f"{kind}:{key}"
                    spent[name] = bucket[_SPENT]
                    buckets[name] = bucket
                    floors[name] = floor
                    bucket[_SPENT] = 0
        if not spent:
            return succeed(None)
        self._syncing = True

        def apply(totals):
            for name, total in totals.items():
                bucket = buckets[name]
                if bucket[_SEEN] >= 0:
                    others = total - bucket[_SEEN] - spent[name]
                    if others > 0:
                        # a debt, bounded (see the module docstring)
                        bucket[_TOKENS] = max(floors[name], bucket[_TOKENS] - others)
                bucket[_SEEN] = total

        def failed(failure):
            # Give the counts back: they go out with the next exchange.
            for name, bucket in buckets.items():
                bucket[_SPENT] += spent[name]
            self._sync_warned.warn(log, "sync", "rate-limit exchange with Redis failed: {why}",
                                   why=failure.getErrorMessage())

        def done(result):
            self._syncing = False
            return result

        d = self.sync_backend.exchange(spent)
        d.addCallbacks(apply, failed)
        return d.addBoth(done)

    # -- hooks -------------------------------------------------------------------------------

    @hookimpl(trylast=True)
    def mediaproxy_check_request(self, image_request, request, runtime):
        return self.take_cheap(image_request, request)

    @hookimpl(trylast=True)
    def mediaproxy_admit_transform(self, image_request, request, runtime):
        return self.take_expensive(image_request, request)

    @hookimpl(trylast=True)
    def mediaproxy_check_passthrough(self, request, runtime):
        if "passthrough" not in self.tables:
            return None
        return self.take_passthrough(request)

    @hookimpl
    def mediaproxy_config_reloaded(self, runtime, old, new):
        self.refresh()

    @hookimpl
    def mediaproxy_services(self, runtime):
        return [RateLimitService(self, runtime)]

    @hookimpl
    def mediaproxy_metrics_collectors(self, runtime):
        return [_DecisionsCollector(self)]


class _DecisionsCollector:
    """``mediaproxy_ratelimit_decisions_total{result}``, read from the limiter's two counts
    at scrape time."""

    def __init__(self, limiter: RateLimiter):
        self.limiter = limiter

    def collect(self):
        from prometheus_client.core import CounterMetricFamily

        family = CounterMetricFamily("mediaproxy_ratelimit_decisions",
                                     "Rate-limit decisions: tokens granted and requests refused "
                                     "(429).", labels=["result"])
        family.add_metric(["allowed"], self.limiter.allowed)
        family.add_metric(["rejected"], self.limiter.rejected)
        yield family


class RateLimitService(service.Service):
    """The background half: load sampling, bucket sweeping and the Redis exchange."""

    name = "mediaproxy-ratelimit"  # type: ignore[assignment]  # Service.name is untyped None

    def __init__(self, limiter: RateLimiter, runtime):
        self.limiter = limiter
        self.runtime = runtime
        self.loops: list[task.LoopingCall] = []

    def startService(self):
        super().startService()
        limiter, config = self.limiter, self.runtime.config.ratelimit
        reactor = self.runtime.reactor
        if limiter.adaptive and limiter.sampler is None:
            limiter.sampler = psutil_sampler(self.runtime)
        self._loop(limiter.sample, config.sample_interval, reactor)
        self._loop(limiter.sweep, 60.0, reactor)
        interval = config.sync_interval
        if interval > 0 and limiter.sync_backend is None:
            client = self.runtime.redis
            if client is not None:
                ttl = max(60.0, 4 * interval)
                limiter.sync_backend = RedisBucketSync(
                    client, self.runtime.config.cache.redis.key_prefix, ttl)
            elif getattr(self.runtime, "exchange", None) is not None:
                # the workers of this host, through their supervisor: often, it is local
                limiter.sync_backend = self.runtime.exchange
                interval = min(interval, HOST_SYNC_INTERVAL)
                limiter.idle_every = max(1, round(config.sync_interval / interval))
        if limiter.sync_backend is not None and interval > 0:
            self._loop(limiter.sync, interval, reactor)

    def _loop(self, fn, interval: float, reactor) -> None:
        loop = task.LoopingCall(fn)
        loop.clock = reactor
        loop.start(interval, now=False).addErrback(
            lambda f: log.failure("rate-limit background job stopped", f))
        self.loops.append(loop)

    def stopService(self):
        super().stopService()
        for loop in self.loops:
            if loop.running:
                loop.stop()
        self.loops = []


def rate_limiter(runtime) -> RateLimiter | None:
    """The process's rate limiter, or None when the plugin is disabled."""
    return runtime.pm.get_plugin(PLUGIN_NAME)


@hookimpl
def mediaproxy_configure(runtime):
    runtime.pm.register(RateLimiter(runtime), PLUGIN_NAME)
