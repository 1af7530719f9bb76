"""
The ``mediaproxy`` console script.

    mediaproxy run [--config FILE] [--listen ENDPOINT ...]   serve (like twistd -n mediaproxy)
    mediaproxy demo [--port 8080] [--origin-port 8000]       proxy + built-in demo origin
    mediaproxy check-config [--config FILE] [--defaults]     print the effective config or errors
    mediaproxy --version
"""

from __future__ import annotations

import argparse
import os
import sys

from . import __version__
from .config import ConfigError, defaults_toml, load_config, to_toml


def _serve(config, extra_services=()) -> int:
    from twisted.application import service, strports
    from twisted.internet import reactor

    from .logs import begin_logging
    from .tap import compose

    begin_logging(config.monitoring.log_level, config.monitoring.log_format)
    runtime, site, services = compose(config, reactor)
    top = service.MultiService()
    services[0].setServiceParent(top)
    for svc in extra_services:
        svc.setServiceParent(top)
    for endpoint in config.server.listen:
        strports.service(endpoint, site).setServiceParent(top)
    for svc in services[1:]:
        svc.setServiceParent(top)
    reactor.callWhenRunning(top.startService)
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
    runtime.log.info("mediaproxy {version} on {listen}, backend {backend}",
                     version=__version__, listen=", ".join(config.server.listen),
                     backend=config.backend.url)
    reactor.run()
    return 0


def cmd_run(args) -> int:
    overrides = {"server": {"listen": args.listen}} if args.listen else None
    try:
        config = load_config(args.config, overrides=overrides)
    except ConfigError as e:
        print(f"configuration error: {e}", file=sys.stderr)
        return 2
    return _serve(config)


def cmd_demo(args) -> int:
    from twisted.application import strports
    from twisted.web.server import Site

    from .demo import DemoOrigin

    overrides = {
        "server": {"listen": [f"tcp:{args.port}:interface={args.interface}"]},
        "backend": {"url": f"http://127.0.0.1:{args.origin_port}"},
    }
    try:
        config = load_config(args.config, overrides=overrides)
    except ConfigError as e:
        print(f"configuration error: {e}", file=sys.stderr)
        return 2
    origin = strports.service(f"tcp:{args.origin_port}:interface=127.0.0.1", Site(DemoOrigin()))
    print(f"demo origin on http://127.0.0.1:{args.origin_port}/ ; proxy on "
          f"http://{args.interface}:{args.port}/\ntry:  curl -o thumb.webp "
          f"'http://127.0.0.1:{args.port}/media/uploads/sample.jpg?w=300&h=200&fit=cover&fmt=webp'",
          flush=True)
    return _serve(config, [origin])


def cmd_check_config(args) -> int:
    if args.defaults:
        sys.stdout.write(defaults_toml())
        return 0
    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(f"configuration error: {e}", file=sys.stderr)
        return 2
    sys.stdout.write(to_toml(config))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mediaproxy", description="Image edge proxy.")
    p.add_argument("--version", action="version", version=f"mediaproxy {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="serve (the same as twistd -n mediaproxy)")
    run.add_argument("--config", "-c", default=os.environ.get("MEDIAPROXY_CONFIG"))
    run.add_argument("--listen", "-l", action="append", default=[])
    run.set_defaults(func=cmd_run)

    demo = sub.add_parser("demo", help="serve in front of a built-in demo origin")
    demo.add_argument("--config", "-c", default=None)
    demo.add_argument("--port", type=int, default=8080)
    demo.add_argument("--interface", default="127.0.0.1")
    demo.add_argument("--origin-port", type=int, default=8000)
    demo.set_defaults(func=cmd_demo)

    check = sub.add_parser("check-config", help="print the effective config, or its errors")
    check.add_argument("--config", "-c", default=os.environ.get("MEDIAPROXY_CONFIG"))
    check.add_argument("--defaults", action="store_true",
                       help="print every key with its default and help (conf/mediaproxy.toml)")
    check.set_defaults(func=cmd_check_config)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
