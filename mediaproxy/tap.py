"""
The composition root: ``twistd mediaproxy`` options and the service tree.

``compose(config, reactor)`` builds everything (plugin manager, thread pool, backend client,
cache, site) without touching the global reactor; ``makeService`` is the outermost edge where
the global reactor is used.
"""

from __future__ import annotations

import os
import signal
from itertools import chain

from twisted.application import service
from twisted.internet.defer import maybeDeferred
from twisted.logger import Logger
from twisted.python import usage, threadpool

from . import __version__, presets
from .cache.keys import stale_grace
from .cache.layered import LayeredCache
from .cache.purge import PurgeFeed
from .cache.redis import RedisClient, RedisService
from .config import ConfigError, environment_warnings, load_config
from .http.fetch import SourceFetcher
from .logs import for_twistd, set_level
from .manager import get_plugin_manager, loaded_plugins
from .resource import ProxyResource
from .admission import return_freed_images_to_the_os
from .runtime import Runtime, decoded_cache_capacity
from .imaging.decoded import DecodedCache
from .http.connection import ConnectionLimits
from .http.draining import ServingSite
from .http.listening import ListeningService
from .lifecycle import ProxyService, StopOnTerm, freeze_startup_objects
from .recycling import Recycler
from .workercontrol import Ledger
from .http.upstream import Upstream
from .http.monitoring import HealthFirst
from .monitoring.health import HealthService, monitor_for
from .hostlayer import HostDirectory, needs_host_layer, with_host_layer
from .workerbudget import per_worker, shares
from .threadpool import ThreadPool, without_cycles
from .workers import (
    SharedPortService, UnsupportedEndpoint, WorkerSupervisor, parse_tcp, resolve_workers,
    with_backlog,
)

log = Logger(namespace="mediaproxy")


class Options(usage.Options):
    synopsis = "[--config FILE] [--listen ENDPOINT ...]"
    longdesc = ("Run the mediaproxy image edge proxy. Settings come from --config, then "
                "MEDIAPROXY_SECTION__KEY environment variables; see docs/configuration.md.")
    optParameters = [["config", "c", None, "TOML configuration file (optional)."]]

    def __init__(self):
        super().__init__()
        self["listen"] = []

    def opt_listen(self, endpoint):
        """Endpoint to listen on, repeatable (tcp:8080, unix:/run/mp.sock, ...). Replaces
        server.listen. Default: tcp:8080."""
        self["listen"].append(endpoint)

    opt_l = opt_listen

    def opt_version(self):
        """Print the version and exit."""
        print(f"mediaproxy {__version__}")
        raise SystemExit(0)

    def postOptions(self):
        overrides = {"server": {"listen": list(self["listen"])}} if self["listen"] else None
        try:
            self["config_obj"] = load_config(self["config"], overrides=overrides)
            check_presets(self["config_obj"])
        except ConfigError as e:
            raise usage.UsageError(f"configuration error: {e}") from None
        self._log_as_configured()

    def _log_as_configured(self):
        """Under twistd, make twistd's log observer ours: the configured level and format
        (``monitoring.log_level``, ``monitoring.log_format``) written where twistd's
        ``--logfile`` says. twistd builds its observer after every option is parsed, from its
        ``logger`` option (a factory's name); the operator's own ``--logger`` or ``--syslog``
        is kept."""
        parent = getattr(self, "parent", None)
        if (parent is None or "logger" not in parent or parent["logger"] is not None
                or parent.get("syslog")):
            return
        monitoring = self["config_obj"].monitoring
        parent["logger"] = for_twistd(monitoring.log_level, monitoring.log_format,
                                      parent.get("logfile"), parent.get("nodaemon"))


class ThreadPoolService(service.Service):
    """Starts and stops the transform thread pool with the daemon."""

    name = "mediaproxy-transform-pool"  # type: ignore[assignment]  # Service.name is untyped None

    def __init__(self, pool: threadpool.ThreadPool):
        self.pool = pool

    def startService(self):
        super().startService()
        self.pool.start()

    def stopService(self):
        super().stopService()
        self.pool.stop()


class RuntimeService(service.Service):
    """Runs the unconfigure hook and closes the backend pool on stop."""

    name = "mediaproxy-runtime"  # type: ignore[assignment]  # Service.name is untyped None

    def __init__(self, runtime: Runtime):
        self.runtime = runtime

    def stopService(self):
        super().stopService()
        rt = self.runtime
        rt.pm.hook.mediaproxy_unconfigure(runtime=rt)
        return maybeDeferred(rt.upstream.close)


class ReloadOnHangup(service.Service):
    """``SIGHUP`` re-reads the configuration (:func:`reload_config`). The handler is installed
    when the service starts and the previous one put back when it stops, never as a side
    effect of building the service tree."""

    name = "mediaproxy-reload"  # type: ignore[assignment]  # Service.name is untyped None

    def __init__(self, runtime: Runtime, config_path, adjust=None):
        self.runtime = runtime
        self.config_path = config_path
        #: what makes a configuration this process's (several workers: the host layer, the
        #: share of the budgets), applied to the re-read one too
        self.adjust = adjust
        self._previous = None

    def startService(self):
        super().startService()
        if hasattr(signal, "SIGHUP"):
            reactor = self.runtime.reactor
            self._previous = signal.signal(
                signal.SIGHUP,
                lambda *_: reactor.callFromThread(reload_config, self.runtime, self.config_path,
                                                  self.adjust))

    def stopService(self):
        super().stopService()
        if hasattr(signal, "SIGHUP") and self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)
            self._previous = None


def pool_size(config) -> int:
    return config.processing.threads or os.cpu_count() or 2


def build_runtime(config, reactor, extra_plugins=(), load_entrypoints=None,
                  workers: int = 1) -> Runtime:
    """The runtime for ``config`` on ``reactor``, complete, with every plugin configured.

    In order: the plugin manager (built-ins, entry points, ``extra_plugins``), the transform
    pool, the two backend clients, the Redis client and purge feed (when Redis is configured),
    the parameter registry, the layered cache with the layers ``mediaproxy_cache_layers``
    gives, and only then ``mediaproxy_configure``. Nothing is started: the services of
    :func:`compose` do that. (The runtime makes its transform memory budget from ``config``.)
    ``workers`` is how many worker processes this one supervises (1: none).
    """
    pm = get_plugin_manager(config, load_entrypoints=load_entrypoints,
                            extra_plugins=extra_plugins)
    pool = ThreadPool(minthreads=0, maxthreads=pool_size(config), name="mediaproxy-transform")
    if hasattr(reactor, "getThreadPool"):     # inspections and name lookups run there
        without_cycles(reactor.getThreadPool())
    upstream = Upstream(reactor, config.backend, config.server)
    fetcher = SourceFetcher(reactor, config.backend, config.limits.max_source_bytes,
                            upstream.agent)
    fetcher.set_limits(config.limits)
    redis = RedisClient.from_config(config.cache.redis, reactor)
    if redis is not None:
        log.info("Redis ({mode}): {nodes}", mode=redis.mode,
                 nodes=", ".join(node.label for node in redis.nodes))
    cache = LayeredCache([])
    runtime = Runtime(config=config, reactor=reactor, pm=pm, threadpool=pool,
                      upstream=upstream, fetcher=fetcher, cache=cache, redis=redis,
                      params=collect_params(pm, config),
                      workers=worker_metrics(config, reactor, workers))
    cache.emit = runtime.emit
    runtime.health = monitor_for(runtime)
    # decoded sources for the next sizes: its bytes come out of runtime.admission's capacity
    runtime.decoded = DecodedCache(decoded_cache_capacity(config))
    # runtime.admission, the transform memory budget, is made with the runtime from config;
    # it bounds the RSS only if a freed image goes back to the system.
    return_freed_images_to_the_os()
    log.info("transform memory budget: {capacity} bytes for {threads} threads",
             capacity=runtime.admission.capacity, threads=pool.max)
    if redis is not None:
        runtime.purge_feed = PurgeFeed(runtime, redis)
    cache.layers = list(chain.from_iterable(
        pm.hook.mediaproxy_cache_layers(runtime=runtime)))
    cache.keep_stale(stale_grace(config.cache))
    pm.hook.mediaproxy_configure(runtime=runtime)
    return runtime


def worker_metrics(config, reactor, workers: int = 1):
    """What the supervisor of ``workers`` processes needs to merge their metrics into its
    /metrics (nothing without a monitoring listener, nor in a worker, nor with one process)."""
    if workers > 1 and config.monitoring.listen:
        from .monitoring.collect import WorkerMetrics

        return WorkerMetrics(reactor)
    return None


def compose(config, reactor, extra_plugins=(), load_entrypoints=None, workers: int = 1):
    """Build the runtime, the site and the services for ``config`` on ``reactor``
    (``workers``: how many worker processes this one supervises; 1, the default, none).

    Returns ``(runtime, site, services)``; the caller listens with ``site`` and starts the
    services in order (the thread pool and Redis first, the plugins' services last).
    """
    runtime = build_runtime(config, reactor, extra_plugins=extra_plugins,
                            load_entrypoints=load_entrypoints, workers=workers)
    site = ServingSite(HealthFirst(ProxyResource(runtime), runtime),
                       limits=ConnectionLimits.from_config(config.server))
    site.noisy = False
    site.timeOut = config.server.client_timeout
    site.log = lambda request: None  # type: ignore[method-assign]  # the access line is builtin/accesslog.py's
    set_level(config.monitoring.log_level)
    services: list[service.Service] = [ThreadPoolService(runtime.threadpool)]
    if runtime.redis is not None:
        services.append(RedisService(runtime.redis))
    services.append(RuntimeService(runtime))
    if runtime.purge_feed is not None:
        services.append(runtime.purge_feed)
    services += list(chain.from_iterable(
        svcs or () for svcs in runtime.pm.hook.mediaproxy_services(runtime=runtime)))
    services.append(HealthService(runtime.health))  # type: ignore[arg-type]  # build_runtime makes it
    return runtime, site, services


def collect_params(pm, config) -> dict:
    params: dict = {}
    for group in pm.hook.mediaproxy_params(config=config):
        for param in group or ():
            names = (param.name, *param.aliases)
            taken = [n for n in names if n in params or
                     any(n in p.aliases for p in params.values())]
            if taken:
                raise ConfigError("plugins", f"parameter {taken[0]!r} is registered twice")
            params[param.name] = param
    presets.resolve(config, params)   # every [presets.NAME] value parses, or ConfigError
    return params


def check_presets(config) -> None:
    """Parse every ``[presets.NAME]`` value with the parameter registry the proxy would build
    (its plugins loaded), before anything starts; ConfigError naming the first bad one."""
    if config.presets:
        collect_params(get_plugin_manager(config), config)


def reload_config(runtime, path, adjust=None):
    """SIGHUP: re-read the file and environment, made this process's by ``adjust`` (with
    several workers: the host layer and the share of the budgets, as at start), and tell the
    plugins."""
    try:
        # the plugins' sections are those of the plugins this process loaded at start
        loaded = [plugin for _, plugin in runtime.pm.list_name_plugin() if plugin is not None]
        listen = list(runtime.config.server.listen)
        new = load_config(path, overrides={"server": {"listen": listen}}, plugins=loaded,
                          load_entrypoints=False)
        if adjust is not None:
            new = adjust(new)
        params = collect_params(runtime.pm, new)   # checks the presets: refused before use
    except ConfigError as e:
        log.error("configuration reload refused: {error}", error=str(e))
        return
    old, runtime.config = runtime.config, new
    set_level(new.monitoring.log_level)
    runtime.set_params(params)
    runtime.fetcher.set_limits(new.limits)
    runtime.pm.hook.mediaproxy_config_reloaded(runtime=runtime, old=old, new=new)
    log.info("configuration reloaded")


def log_start(runtime) -> None:
    """What the operator should see once at start: the loaded plugins (one structured line:
    name, version, where from) and one warning per ``MEDIAPROXY_*`` variable no setting
    reads (a misspelt name would otherwise be ignored in silence)."""
    plugins = loaded_plugins(runtime.pm)
    log.info("{count} plugins loaded: {names}", count=len(plugins),
             names=", ".join(f"{name} {version} ({where})" for name, version, where in plugins),
             plugins=[{"name": name, "version": version, "from": where}
                      for name, version, where in plugins])
    for line in environment_warnings(runtime.config):
        log.warn("environment: {warning}", warning=line)


def build_service(config, reactor, config_path=None, extra_services=(),
                  shared_ports=False, worker_env=None, recycle=None,
                  exchange=None) -> ProxyService:
    """The whole daemon as one service (:class:`~mediaproxy.lifecycle.ProxyService`: how it
    binds, drains and stops): the runtime's services first (thread pool, Redis, disk pool,
    the plugins' side listeners...), then the listening ports, then, with several workers
    (server.workers, :func:`~mediaproxy.workers.resolve_workers`), the supervisor of the
    other workers (the ports are then shared with SO_REUSEPORT), then the signal handlers.

    ``shared_ports``: this is one of several workers (its config already its share). Else
    this process is worker 0: the per-process budgets of ``config`` are divided among the
    workers (:func:`~mediaproxy.workerbudget.per_worker`), and ``worker_env`` (environment
    variables) is given to the other workers on top of this process's environment.
    ``recycle(reason)``: what a worker does when it is over server.max_worker_requests or
    server.max_worker_rss (:mod:`mediaproxy.recycling`); None: only a warning.
    ``exchange``: a worker's rate-limit exchange with its supervisor
    (:mod:`mediaproxy.workercontrol`); worker 0 of several makes the host's ledger itself."""
    workers, host_layer = 1, None
    if not shared_ports:
        workers, why = resolve_workers(config)
        if why:
            log.info("server.workers = auto: {workers} worker(s), not one per core: {why}",
                     workers=workers, why=why)
        if workers > 1 and needs_host_layer(config):
            host_layer = HostDirectory()

    def adjust(c):
        """``c`` as this process runs it (at start, and again at a reload)."""
        if host_layer is not None:
            c = with_host_layer(c, host_layer.path)
        return per_worker(c, workers)
    if not shared_ports:
        config = adjust(config)
        if host_layer is not None:
            log.info("no cache.file.dir nor Redis: the workers share results and coalesce "
                     "misses through the host layer in {path} (at most {limit} bytes)",
                     path=host_layer.path, limit=config.cache.file.max_bytes)
        if workers > 1:
            log.info("{workers} workers, the per-process budgets divided among them; each "
                     "has {shares}", workers=workers,
                     shares=", ".join(f"{k}={v}" for k, v in shares(config).items()))
    runtime, site, services = compose(config, reactor, workers=workers)
    if not shared_ports:   # once per daemon, not once per worker
        log_start(runtime)
    ledger = None
    if workers > 1:
        ledger = exchange = Ledger(reactor.seconds)
    runtime.exchange = exchange
    top = ProxyService(runtime, site)
    # The thread pool, the Redis client and the disk pool start before the ports open, so the
    # first requests find them up; they stop last, after the drain.
    for svc in [*services, *extra_services]:
        svc.setServiceParent(top)
    for endpoint in config.server.listen:
        if workers > 1 or shared_ports:
            parse_tcp(endpoint)   # fails early, naming the endpoint, if it cannot be shared
            top.add_port(SharedPortService(reactor, endpoint, site, first=not shared_ports))
        else:
            top.add_port(ListeningService(reactor, endpoint, site, "proxy",
                                          listen_as=with_backlog(endpoint)))
    if workers > 1 and not shared_ports:
        supervisor = WorkerSupervisor(reactor, workers, config_path, config.server.listen,
                                      metrics=runtime.workers, env=worker_env,
                                      host_layer=host_layer, ledger=ledger)
        supervisor.drain_timeout = config.server.drain_timeout
        top.add_supervisor(supervisor)
    Recycler(runtime, recycle).setServiceParent(top)
    StopOnTerm(reactor).setServiceParent(top)
    if not shared_ports:
        ReloadOnHangup(runtime, config_path, adjust).setServiceParent(top)

    def announce():
        log.info("mediaproxy {version} listening on {listen} ({workers} worker(s)), backend "
                 "{backend}", version=__version__, listen=", ".join(config.server.listen),
                 workers=workers if not shared_ports else "1 of several",
                 backend=config.backend.url)
    top.announce = announce
    return top


def makeService(options) -> service.MultiService:
    from twisted.internet import reactor

    config = options["config_obj"]
    reactor.callWhenRunning(freeze_startup_objects)
    try:
        return build_service(config, reactor, config_path=options["config"])
    except UnsupportedEndpoint as e:
        raise usage.UsageError(f"configuration error: server.workers: {e}") from None
