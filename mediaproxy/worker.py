"""A worker process started by :class:`mediaproxy.workers.WorkerSupervisor` (not run by hand):
``python -m mediaproxy.worker --index N [--config FILE] --listen ENDPOINT ...``."""

from __future__ import annotations

import argparse
import sys

from .config import ConfigError, load_config
from .workers import die_with_parent


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="mediaproxy.worker")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--config", default=None)
    parser.add_argument("--listen", action="append", default=[])
    args = parser.parse_args(argv)
    die_with_parent()
    # Worker 0 (the supervisor) alone runs the side listeners (metrics, health, admin): the
    # others would only fail to bind the same ports.
    overrides = {"server": {"workers": 1}, "monitoring": {"listen": ""},
                 "admin": {"token": ""}}
    if args.listen:
        overrides["server"]["listen"] = args.listen
    try:
        config = load_config(args.config, overrides=overrides)
    except ConfigError as e:
        print(f"configuration error: {e}", file=sys.stderr)
        return 2
    from .cli import serve
    return serve(config, shared_ports=True)


if __name__ == "__main__":
    sys.exit(main())
