"""A worker process started by :class:`mediaproxy.workers.WorkerSupervisor` (not run by hand):
``python -m mediaproxy.worker --index N --of COUNT [--config FILE] --listen ENDPOINT ...
[--metrics-socket PATH] [--host-layer DIR]``.

It runs its share of the host's budgets, the same as the supervisor's
(:func:`mediaproxy.workerbudget.per_worker` of COUNT workers).

Its log lines go to the supervisor as JSON objects (the supervisor writes them in the configured
format); with ``--metrics-socket`` its monitoring listener (``/metrics`` of its own registry) is
on that UNIX socket, in the supervisor's private directory, for the supervisor's scrapes alone.
"""

from __future__ import annotations

import argparse
import os
import sys

from .config import ConfigError, load_config
from .workers import die_with_parent


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="mediaproxy.worker")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--of", type=int, default=1, help="how many workers share the host")
    parser.add_argument("--config", default=None)
    parser.add_argument("--listen", action="append", default=[])
    parser.add_argument("--metrics-socket", default=None)
    parser.add_argument("--host-layer", default=None,
                        help="the supervisor's host layer directory (mediaproxy.hostlayer)")
    args = parser.parse_args(argv)
    die_with_parent()
    # Worker 0 (the supervisor) alone runs the side listeners (metrics, health, admin): the
    # others would only fail to bind the same ports.
    overrides: dict[str, dict] = {"server": {"workers": 1}, "monitoring": {"listen": "", "log_format": "json"},
                 "admin": {"token": ""}}
    if args.metrics_socket:
        overrides["monitoring"]["listen"] = metrics_endpoint(args.metrics_socket)
    if args.listen:
        overrides["server"]["listen"] = args.listen
    try:
        config = load_config(args.config, overrides=overrides)
    except ConfigError as e:
        print(f"configuration error: {e}", file=sys.stderr)
        return 2
    from twisted.internet import reactor

    from .cli import serve
    from .hostlayer import with_host_layer
    from .workerbudget import per_worker
    from .workercontrol import worker_end

    if args.host_layer:
        config = with_host_layer(config, args.host_layer)
    channel = worker_end(reactor)

    def recycle(reason: str) -> None:
        """Being recycled (:mod:`mediaproxy.recycling`): tell the supervisor, which starts
        the replacement at once, then stop gracefully, as on SIGTERM (drain, exit)."""
        if channel is not None:
            channel.recycle(reason)
        reactor.stop()

    return serve(per_worker(config, args.of), shared_ports=True, recycle=recycle,
                 exchange=channel)


def metrics_endpoint(path: str) -> str:
    """The UNIX endpoint string of the private metrics socket at ``path`` (a stale socket of a
    previous worker with the same index is removed first: the directory is the supervisor's
    alone)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    escaped = path.replace("\\", "\\\\").replace(":", "\\:")
    return f"unix:{escaped}:mode=600"


if __name__ == "__main__":
    sys.exit(main())
