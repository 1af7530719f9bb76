"""
Several worker processes (``server.workers``): every worker is a whole proxy (its own reactor,
thread pool and memory cache) listening on the same TCP ports with ``SO_REUSEPORT``, so the
kernel spreads connections over them and one slow worker never holds another's clients.

The process that ``twistd``/``mediaproxy run`` started is worker 0 and the supervisor: it starts
the others (``python -m mediaproxy.worker``, same config file and environment), starts a new one
when one dies, and stops them all when it stops. Workers die with it even after a ``kill -9``
(``PR_SET_PDEATHSIG`` on Linux).

How many: :func:`resolve_workers` (``server.workers``, ``auto`` by default: one per core where
that is safe). Each runs its share of the host's budgets (:mod:`mediaproxy.workerbudget`).
Workers share what the shared layers hold, so that a result rendered by one worker is a hit for
the others and concurrent misses across workers are coalesced: ``cache.file.dir`` or Redis when
configured, else the supervisor's private host layer (:mod:`mediaproxy.hostlayer`). Each worker
has a private channel to the supervisor (:mod:`mediaproxy.workercontrol`: the rate-limit
exchange, the recycling message, :mod:`mediaproxy.recycling`).

What an operator sees comes out once, from the supervisor:

* **Metrics.** Worker 0 alone runs the monitoring listener. With ``monitoring.listen`` set, each
  other worker serves its own registry on a UNIX socket in a private directory the supervisor
  made (mode 0700; ``--metrics-socket`` on its command line), and the supervisor's ``/metrics``
  fetches them all in parallel at scrape time, each bounded in time, and merges them with its
  own (:mod:`mediaproxy.monitoring.collect`, :mod:`mediaproxy.monitoring.merge`): counters and
  histograms summed, gauges summed or the worst/oldest of them. Not prometheus-client's
  multiprocess mode: the registries are per runtime, the collectors that read live state at
  scrape time cannot write to its files, and it needs an environment variable before
  prometheus_client is imported and a directory to clean. A dead worker's last counters are
  kept, so a restart never makes a total go back.
* **Logs.** Every worker logs one JSON object per line to its stdout, a pipe to the supervisor
  (``monitoring.log_format`` is ``json`` for workers), which publishes each line as a
  twisted.logger event with the worker's fields and ``worker`` (its index)
  (:mod:`mediaproxy.workerlogs`): its own observers write it once, in the configured format.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys
from typing import Any

from twisted.application import service
from twisted.internet import protocol
from twisted.logger import Logger

from .http.listening import CannotListen, bind_reason
from .recycling import REASONS
from .workercontrol import CONTROL_FD, Ledger, SupervisorEnd, adopt
from .workerlogs import WorkerOutput

log = Logger(namespace="mediaproxy.workers")

#: Seconds before a worker that died is started again.
RESTART_DELAY = 1.0
#: Seconds a stopping worker gets beyond its own drain (server.drain_timeout) before it is
#: killed: the time to stop its pool and Redis client and exit once drained.
STOP_GRACE = 5.0


#: The listen backlog when an endpoint names none (Twisted's is 50: a burst of new connections
#: beyond it is dropped by the kernel before the reactor sees it; nginx uses 511, the kernel caps
#: it at net.core.somaxconn).
DEFAULT_BACKLOG = 1024


def with_backlog(description: str) -> str:
    """``description`` with ``backlog=DEFAULT_BACKLOG`` added when it is a ``tcp:``/``tcp6:``
    endpoint that names no backlog."""
    kind, _, rest = description.partition(":")
    if kind not in ("tcp", "tcp6") or any(part.startswith("backlog=")
                                          for part in rest.split(":")):
        return description
    return f"{description}:backlog={DEFAULT_BACKLOG}"


class UnsupportedEndpoint(ValueError):
    """Only ``tcp:`` endpoints can be shared by several workers."""


def parse_tcp(description: str) -> tuple[str, int, int]:
    """``tcp:8080``, ``tcp:8080:interface=127.0.0.1``, ``tcp:port=8080:backlog=100``,
    ``tcp6:8080:interface=::1`` -> (interface, port, backlog)."""
    kind, _, rest = description.partition(":")
    if kind not in ("tcp", "tcp6"):
        raise UnsupportedEndpoint(
            f"{description!r}: only tcp: endpoints can be shared by several workers")
    interface, port, backlog = ("::" if kind == "tcp6" else "0.0.0.0"), None, DEFAULT_BACKLOG
    for i, part in enumerate(p for p in rest.split(":") if p):
        key, eq, value = part.partition("=")
        if not eq and i == 0:
            port = int(key)
        elif key == "port":
            port = int(value)
        elif key == "interface":
            interface = value
        elif key == "backlog":
            backlog = int(value)
        else:
            raise UnsupportedEndpoint(f"{description!r}: option {key!r} is not supported "
                                      "with several workers")
    if port is None:
        raise UnsupportedEndpoint(f"{description!r} names no port")
    return interface, port, backlog


def listen_shared(reactor, description: str, factory, first: bool = False):
    """Listen on a TCP endpoint with SO_REUSEPORT, so other workers can listen on it too.

    ``first`` (the supervisor, before it starts any worker): the port must be free. Without
    that check a second proxy started by mistake on a port a running one holds would join
    its SO_REUSEPORT group (the kernel allows it to any process of the same user) and
    silently take half of its connections; it fails instead, "address already in use", as
    one process does."""
    interface, port, backlog = parse_tcp(description)
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    if first:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # TIME_WAIT is fine
            probe.bind((interface, port))
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((interface, port))
        sock.listen(backlog)
        sock.setblocking(False)
        listening = reactor.adoptStreamPort(sock.fileno(), family, factory)
    finally:
        sock.close()   # the reactor holds its own duplicate of the descriptor
    return listening


class SharedPortService(service.Service):
    """Listens on a TCP endpoint shared with the other workers. Binds in
    ``privilegedStartService`` (or ``startService``), raising
    :class:`~mediaproxy.http.listening.CannotListen` when it cannot."""

    def __init__(self, reactor, description: str, factory, first: bool = False):
        self.reactor = reactor
        self.description = description
        self.factory = factory
        #: the supervisor's: the port must be free (see :func:`listen_shared`)
        self.first = first
        self.port: Any = None

    def privilegedStartService(self):
        super().privilegedStartService()
        self.bind()

    def startService(self):
        super().startService()
        if self.port is None:
            self.bind()

    def bind(self) -> None:
        try:
            self.port = listen_shared(self.reactor, self.description, self.factory,
                                      first=self.first)
        except OSError as e:
            raise CannotListen(self.description, "proxy", bind_reason(e)) from None
        log.info("worker {pid} listening on {address}", pid=os.getpid(),
                 address=self.port.getHost())

    def stopService(self):
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            accepted = accept_pending(port)
            closed = port.stopListening()
            if not accepted:
                return closed
            # their requests are read before the drain starts, which closes idle connections
            from twisted.internet.defer import DeferredList
            from twisted.internet.task import deferLater
            return DeferredList([closed, deferLater(self.reactor, ACCEPT_GRACE, lambda: None)],
                                consumeErrors=True)


#: Seconds a closing shared port's last accepted connections get for their request to arrive
#: before the drain starts (the drain closes connections that have sent nothing).
ACCEPT_GRACE = 0.2


def accept_pending(port) -> int:
    """Accept the connections waiting in ``port``'s accept queue, right before it closes;
    returns how many. A SO_REUSEPORT socket's queue is its own: the kernel resets what is
    still in it at close (unless net.ipv4.tcp_migrate_req=1, Linux 5.14+, hands them to
    another worker), so a worker that stops (recycled, or stopped with the others) would drop
    clients the kernel had already given it. Accepted here, they are served during the drain
    (:data:`ACCEPT_GRACE`); what arrives between this and the close (the same reactor turn) is
    all that can still be reset."""
    factory = getattr(port, "factory", None)
    before = len(getattr(factory, "channels", ()))
    try:
        port.doRead()
    except Exception:   # nothing to accept, or the port already closing: close it anyway
        log.failure("accepting the last connections of {port} failed", port=port)
    return max(0, len(getattr(factory, "channels", ())) - before)


def cpu_cores() -> int:
    """The CPU cores this process may run on (its affinity: a container's cpuset, taskset),
    else the machine's."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def shared_endpoint_problem(description: str) -> str | None:
    """Why ``description`` cannot be shared by several workers, or None when it can."""
    try:
        _, port, _ = parse_tcp(description)
    except (UnsupportedEndpoint, ValueError) as e:
        return str(e)
    if port == 0:
        return f"{description!r} asks for any free port: each worker would get its own"
    return None


def resolve_workers(config, cores: int | None = None,
                    total_memory: int | None = None) -> tuple[int, str]:
    """``(count, why)``: how many worker processes ``config`` runs. An integer
    ``server.workers`` is taken as it is (an endpoint that cannot be shared is then an error,
    raised when the ports are made). ``auto`` is one per core (``cores``, the affinity's by
    default) unless several would not be safe or useful, and then one, ``why`` saying the
    reason (empty when nothing was cut):

    * one core: a second process would only compete for it;
    * the kernel has no ``SO_REUSEPORT``, or a ``server.listen`` endpoint cannot be shared
      (``unix:``, an inherited ``systemd:`` descriptor, port 0);
    * the host's transform memory budget split N ways would leave a worker less than
      :data:`~mediaproxy.workerbudget.MIN_WORKER_TRANSFORM_MEMORY`: each would refuse
      (422 over_memory_budget) photos one process renders, so fewer workers are used.
    """
    from .workerbudget import MIN_WORKER_TRANSFORM_MEMORY, host_transform_memory

    wanted = config.server.workers
    if wanted != "auto":
        return int(wanted), ""
    cores = cpu_cores() if cores is None else cores
    if cores <= 1:
        return 1, "one CPU core"
    if not hasattr(socket, "SO_REUSEPORT"):
        return 1, "this system has no SO_REUSEPORT"
    for endpoint in config.server.listen:
        why = shared_endpoint_problem(endpoint)
        if why is not None:
            return 1, f"server.listen {endpoint!r} cannot be shared by several processes " \
                      f"({why})"
    budget = host_transform_memory(config, cores, total_memory)
    fits = max(1, budget // MIN_WORKER_TRANSFORM_MEMORY)
    if fits < cores:
        return fits, (f"the transform memory budget ({budget} bytes) gives each of at most "
                      f"{fits} worker(s) the {MIN_WORKER_TRANSFORM_MEMORY} bytes a large "
                      "photo needs")
    return cores, ""


class _WorkerProtocol(protocol.ProcessProtocol):
    """A worker's pipes: its JSON log lines are published in the supervisor's log
    (:mod:`mediaproxy.workerlogs`), so they come out once, in the configured format. Its
    control channel (:mod:`mediaproxy.workercontrol`) says when it is being recycled."""

    def __init__(self, supervisor, index):
        self.supervisor = supervisor
        self.index = index
        self.output = WorkerOutput(index)
        #: set once the worker said it is being recycled: its end is expected
        self.retiring = False

    def recycle(self, reason: str) -> None:
        """The worker said (over its control channel) it is being recycled."""
        if reason in REASONS and not self.retiring:
            self.retiring = True
            self.supervisor._recycling(self, reason)

    def outReceived(self, data):
        self.output.received(1, data)

    def errReceived(self, data):
        self.output.received(2, data)

    def processEnded(self, reason):
        self.output.closed()
        self.supervisor._ended(self, reason)


class WorkerSupervisor(service.Service):
    """Starts workers 1..n-1, restarts any that dies, stops them with the daemon (SIGTERM:
    each drains like the supervisor does, then ``drain_timeout`` + STOP_GRACE before KILL)."""

    #: server.drain_timeout, set by the composition (mediaproxy.tap.build_service)
    drain_timeout = 0.0

    def __init__(self, reactor, count: int, config_path: str | None, listen: tuple[str, ...],
                 metrics=None, env=None, host_layer=None, ledger=None):
        self.reactor = reactor
        self.count = count
        #: environment variables given to the workers on top of this process's (the
        #: settings the command line overrode, e.g. ``mediaproxy demo``'s backend)
        self.env = dict(env or {})
        #: the :class:`~mediaproxy.hostlayer.HostDirectory` every worker shares (None when a
        #: file layer or Redis is configured); removed once the reactor stopped
        self.host_layer = host_layer
        #: the rate-limit exchange of the host (:class:`~mediaproxy.workercontrol.Ledger`),
        #: answered over each worker's control channel
        self.ledger = ledger if ledger is not None else Ledger(reactor.seconds)
        self.config_path = config_path
        self.listen = listen
        #: a :class:`~mediaproxy.monitoring.collect.WorkerMetrics` when the supervisor serves
        #: /metrics (monitoring.listen set): told which workers run, it merges their metrics
        self.metrics = metrics
        self.processes: dict[int, Any] = {}
        #: workers being recycled (draining), by pid: their places already taken
        self.retiring: dict[int, Any] = {}
        self.restarts = 0
        #: workers recycled, by reason (server.max_worker_requests, server.max_worker_rss)
        self.recycles = dict.fromkeys(REASONS, 0)
        self._stopping = False
        self._stopped = None

    def argv(self, index: int) -> list[str]:
        args = [sys.executable, "-m", "mediaproxy.worker", "--index", str(index),
                "--of", str(self.count)]
        if self.config_path:
            args += ["--config", self.config_path]
        for endpoint in self.listen:
            args += ["--listen", endpoint]
        if self.metrics is not None:
            args += ["--metrics-socket", self.metrics.socket_path(index)]
        if self.host_layer is not None:
            args += ["--host-layer", self.host_layer.path]
        return args

    def startService(self):
        super().startService()
        if self.metrics is not None:
            self.metrics.open()
            self.reactor.addSystemEventTrigger("after", "shutdown", self.metrics.close)
        if self.host_layer is not None:
            self.reactor.addSystemEventTrigger("after", "shutdown", self.host_layer.close)
        for index in range(1, self.count):
            self._spawn(index)

    def _spawn(self, index: int):
        if self._stopping:
            return
        env = dict(os.environ)
        env.update(self.env)
        env["MEDIAPROXY_WORKER_PARENT"] = str(os.getpid())
        proto = _WorkerProtocol(self, index)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.processes[index] = self.reactor.spawnProcess(
                proto, sys.executable, self.argv(index), env=env,
                childFDs={0: "w", 1: "r", 2: "r", CONTROL_FD: theirs.fileno()})
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        adopt(self.reactor, ours, SupervisorEnd(self.ledger, proto.recycle))
        if self.metrics is not None:
            self.metrics.started(index)
        log.info("started worker {index} (pid {pid})", index=index,
                 pid=self.processes[index].pid)

    def _recycling(self, proto, reason: str) -> None:
        """Worker ``proto.index`` is being recycled (it drains, then exits): its place goes to
        a new worker at once, so as many keep accepting."""
        index = proto.index
        process = self.processes.pop(index, None)
        if process is None:
            return
        self.retiring[process.pid] = process
        self.recycles[reason] += 1
        if self.metrics is not None:
            # its last counters are kept; its socket path goes to the new worker
            self.metrics.ended(index, restarting=False)
            self.metrics.recycled(reason)
        log.info("worker {index} (pid {pid}) is being recycled (server.max_worker_{reason}); "
                 "starting its replacement", index=index, pid=process.pid, reason=reason)
        self._spawn(index)

    def _ended(self, proto, reason):
        index = proto.index
        if proto.retiring:
            self.retiring = {pid: p for pid, p in self.retiring.items()
                             if p is not proto.transport}
            if self._stopping:
                self._maybe_stopped()
            return
        self.processes.pop(index, None)
        if self.metrics is not None:
            self.metrics.ended(index, restarting=not self._stopping)
        if self._stopping:
            self._maybe_stopped()
            return
        self.restarts += 1
        log.warn("worker {index} ended ({why}); starting it again in {delay} s", index=index,
                 why=reason.getErrorMessage(), delay=RESTART_DELAY)
        self.reactor.callLater(RESTART_DELAY, self._spawn, index)

    def _alive(self) -> list:
        return [*self.processes.values(), *self.retiring.values()]

    def _maybe_stopped(self) -> None:
        if not self._alive() and self._stopped is not None and not self._stopped.called:
            self._stopped.callback(None)

    def stopService(self):
        super().stopService()
        from twisted.internet.defer import Deferred, succeed

        self._stopping = True
        if not self._alive():
            return succeed(None)
        self._stopped = Deferred()
        for process in self._alive():
            _signal(process, "TERM")

        def kill():
            for process in self._alive():
                _signal(process, "KILL")
        timer = self.reactor.callLater(self.drain_timeout + STOP_GRACE, kill)
        return self._stopped.addBoth(lambda r: timer.cancel() if timer.active() else None)


def _signal(process, name):
    try:
        process.signalProcess(name)
    except Exception:  # already gone
        pass


def die_with_parent() -> None:
    """Linux: ask the kernel to SIGTERM this process when its parent dies (kill -9 included)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    parent = os.environ.get("MEDIAPROXY_WORKER_PARENT")
    if parent and os.getppid() != int(parent):   # the parent died before prctl took effect
        os._exit(0)
