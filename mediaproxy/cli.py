"""
The ``mediaproxy`` console script.

    mediaproxy run [--config FILE] [--listen ENDPOINT ...]   serve (like twistd -n mediaproxy)
    mediaproxy demo [--port 8080] [--origin-port 8000]       proxy + built-in demo origin
                    [--interface 127.0.0.1]
    mediaproxy check-config [--config FILE] [--defaults]     print the effective config (secrets
                                                             redacted, notes on stderr) or errors
    mediaproxy sign URL [--config FILE] [--expires-in S]     print URL with its signature
    mediaproxy --version
"""

from __future__ import annotations

import argparse
import os
import sys

from . import __version__
from .config import (
    ConfigError, defaults_toml, environment_warnings, load_config, redacted, to_toml,
)


def serve(config, extra_services=(), shared_ports=False, config_path=None,
          banner: str | None = None, worker_env=None, recycle=None, exchange=None) -> int:
    """Run the proxy in this process until it is stopped (SIGTERM: gracefully, see
    :mod:`mediaproxy.lifecycle`). Every listener binds before the reactor runs: one that
    cannot ends the process (status 1, one line naming it). ``banner`` is printed once they
    all listen. ``worker_env``: environment variables for the other workers (the settings
    the command line overrode that a worker, reading only the file and the environment,
    would not see). ``recycle``, ``exchange``: see :func:`~mediaproxy.tap.build_service`."""
    from twisted.internet import reactor

    from .http.listening import CannotListen
    from .lifecycle import freeze_startup_objects
    from .logs import begin_logging
    from .tap import build_service

    begin_logging(config.monitoring.log_level, config.monitoring.log_format)
    top = build_service(config, reactor, config_path=config_path, extra_services=extra_services,
                        shared_ports=shared_ports, worker_env=worker_env, recycle=recycle,
                        exchange=exchange)
    try:
        top.privilegedStartService()   # binds every listener
    except CannotListen:
        return 1                       # its one line is logged
    if banner:
        print(banner, flush=True)
    reactor.callWhenRunning(top.startService)
    reactor.callWhenRunning(freeze_startup_objects)
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
    reactor.run()
    return 0


def cmd_run(args) -> int:
    overrides = {"server": {"listen": args.listen}} if args.listen else None
    try:
        config = load_config(args.config, overrides=overrides)
    except ConfigError as e:
        print(f"configuration error: {e}", file=sys.stderr)
        return 2
    from .workers import UnsupportedEndpoint

    try:
        return serve(config, config_path=args.config)
    except UnsupportedEndpoint as e:
        print(f"configuration error: server.workers: {e}", file=sys.stderr)
        return 2
    except ConfigError as e:   # found building the runtime: a [presets.NAME] value
        print(f"configuration error: {e}", file=sys.stderr)
        return 2


def cmd_demo(args) -> int:
    from twisted.web.server import Site

    from .demo import DemoOrigin
    from .http.listening import ListeningService
    from .urlsign import build_url

    overrides: dict[str, dict] = {
        "server": {"listen": [f"tcp:{args.port}:interface={args.interface}"]},
        "backend": {"url": f"http://127.0.0.1:{args.origin_port}"},
    }
    try:
        config = load_config(args.config, overrides=overrides)
    except ConfigError as e:
        print(f"configuration error: {e}", file=sys.stderr)
        return 2
    from twisted.internet import reactor

    # with signing keys configured, the demo page signs its image URLs with the first one
    key = config.signing.keys[0] if config.signing.keys else None
    origin = ListeningService(reactor, f"tcp:{args.origin_port}:interface=127.0.0.1",
                              Site(DemoOrigin(signing_key=key)), "demo origin")
    example = build_url("/media/uploads/sample.jpg",
                        {"w": 300, "h": 200, "fit": "cover", "fmt": "webp"},
                        base=f"http://127.0.0.1:{args.port}", key=key)
    banner = (f"demo origin on http://127.0.0.1:{args.origin_port}/ ; proxy on "
              f"http://{args.interface}:{args.port}/ (open it for the demo page)\n"
              f"try:  curl -o thumb.webp '{example}'")
    # the other workers (server.workers, auto by default) serve the same demo origin
    return serve(config, [origin], banner=banner,
                 worker_env={"MEDIAPROXY_BACKEND__URL": overrides["backend"]["url"]})


def cmd_check_config(args) -> int:
    if args.defaults:
        sys.stdout.write(defaults_toml())
        return 0
    from .manager import get_plugin_manager, loaded_plugins
    from .tap import collect_params

    try:
        config = load_config(args.config)   # loads the installed plugins: one may fail here
        pm = get_plugin_manager(config)
        if config.presets:   # each value parsed by its parameter's parser, as at start
            collect_params(pm, config)
    except ConfigError as e:
        print(f"configuration error: {e}", file=sys.stderr)
        return 2
    bad = endpoint_errors(config)
    if bad:
        for key, endpoint, why in bad:
            print(f"configuration error: {key}: {endpoint!r} is not a usable endpoint: {why}",
                  file=sys.stderr)
        return 2
    # the plugins as TOML comments, so that the output stays a config file
    print("# plugins loaded (name, version, from):")
    for name, version, where in loaded_plugins(pm):
        print(f"#   {name} {version} ({where})")
    print()
    # secrets (signing keys, tokens, Redis passwords) are marked in the schema, never printed
    sys.stdout.write(to_toml(redacted(config)))
    for note in config_notes(config):
        print(f"note: {note}", file=sys.stderr)
    for line in environment_warnings(config):
        print(f"warning: {line}", file=sys.stderr)
    return 0


def endpoint_errors(config) -> list[tuple[str, str, str]]:
    """(key, endpoint, why) for each endpoint string of ``config`` that Twisted's parser
    refuses (server.listen, monitoring.listen, admin.listen): checked without binding."""
    from .http.listening import endpoint_problem

    endpoints = [("server.listen", e) for e in config.server.listen]
    if config.monitoring.listen:
        endpoints.append(("monitoring.listen", config.monitoring.listen))
    if config.admin.listen:
        endpoints.append(("admin.listen", config.admin.listen))
    return [(key, e, why) for key, e in endpoints if (why := endpoint_problem(e)) is not None]


def config_notes(config) -> list[str]:
    """Rules of the running proxy that this config triggers, which the values alone do not
    show (the file layer's size limit per entry, its retention raised to cover stale serving)."""
    from .cache.files.layer import config_notes as file_notes
    from .cache.keys import stale_grace

    return file_notes(config.cache.file, stale_grace(config.cache))


def sign(url: str, config, expires_in: float | None = None, now: float | None = None) -> str:
    """``url`` signed with the first of ``signing.keys``, the way the proxy will check it:
    the URL is matched by the same plugins (so the route's decoding and the registered
    parameters are the server's). Raises ValueError when it cannot be signed."""
    import time
    from urllib.parse import parse_qsl, urlsplit

    from twisted.internet import reactor

    from .models import ImageRequest, RequestInfo
    from .tap import build_runtime

    if not config.signing.keys:
        raise ValueError("no signing key: set signing.keys (MEDIAPROXY_SIGNING__KEYS)")
    runtime = build_runtime(config, reactor)   # built, not started: nothing listens or connects
    parts = urlsplit(url)
    info = RequestInfo(method="GET", path=parts.path or "/",
                       query=parse_qsl(parts.query, keep_blank_values=True))
    match = runtime.pm.hook.mediaproxy_match_request(request=info, runtime=runtime)
    if not isinstance(match, ImageRequest):
        why = match.message if match is not None else "it is not an image transform URL " \
            "(it would pass through to the backend unsigned)"
        raise ValueError(f"cannot sign {url}: {why}")
    expires = None
    if expires_in:
        expires = int((time.time() if now is None else now) + expires_in)
    signed = runtime.pm.hook.mediaproxy_sign_url(url=url, image_request=match, expires=expires,
                                                 runtime=runtime)
    if signed is None:
        raise ValueError("no plugin signs URLs (is the signing plugin disabled?)")
    return signed


def cmd_sign(args) -> int:
    try:
        config = load_config(args.config)
        print(sign(args.url, config, args.expires_in))
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def cmd_warm(args) -> int:
    """GET every URL of the file through a running proxy, one at a time."""
    import http.client
    from urllib.parse import urlsplit

    base = urlsplit(args.proxy)
    failures = done = 0
    with open(args.urls_file, encoding="utf-8") as f:
        lines = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    conn = None
    for line in lines:
        target = urlsplit(line)
        path = (target.path or "/") + (f"?{target.query}" if target.query else "")
        for attempt in range(2):   # one reconnect if the keep-alive connection was closed
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(base.hostname, base.port or 80,
                                                      timeout=args.timeout)
                conn.request("GET", path, headers={"Accept": args.accept})
                response = conn.getresponse()
                response.read()
                status, cache = response.status, response.getheader("X-Cache", "-")
                break
            except (OSError, http.client.HTTPException) as e:
                conn = None
                status, cache = 0, type(e).__name__
        done += 1
        failures += status != 200
        print(f"{status} {cache:<10} {path}", flush=True)
    print(f"warmed {done - failures} of {done}", file=sys.stderr)
    return 1 if failures else 0


def cmd_purge(args) -> int:
    """Purge through the admin listener of a running proxy, or the shared layers directly."""
    from .cache.purge import PurgeScope

    try:
        if args.source:
            scope = PurgeScope.source(args.source)
        elif args.tenant:
            scope = PurgeScope.tenant(args.tenant)
        else:
            scope = PurgeScope.everything()
    except ValueError as e:
        print(f"purge: {e}", file=sys.stderr)
        return 2
    if args.admin:
        return _purge_via_admin(args, scope)
    try:
        # This process only talks to the shared layers: it never listens (no monitoring
        # listener, no admin listener; the main ports are never bound outside serve()).
        config = load_config(args.config, overrides={"monitoring": {"listen": ""},
                                                     "admin": {"token": ""}})
    except ConfigError as e:
        print(f"configuration error: {e}", file=sys.stderr)
        return 2
    return _purge_direct(config, scope)


def _purge_via_admin(args, scope) -> int:
    import json
    import urllib.error
    import urllib.request

    body = {"source": {"source": scope.value}, "tenant": {"tenant": scope.value},
            "all": {"all": True}}[scope.kind]
    request = urllib.request.Request(
        args.admin.rstrip("/") + "/admin/cache/purge", data=json.dumps(body).encode(),
        method="POST", headers={"Authorization": f"Bearer {args.token or ''}",
                                "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            print(response.read().decode().strip())
            return 0
    except urllib.error.HTTPError as e:
        print(f"purge: {e.code} {e.read().decode(errors='replace').strip()}", file=sys.stderr)
    except OSError as e:
        print(f"purge: cannot reach {args.admin}: {e}", file=sys.stderr)
    return 1


def _purge_direct(config, scope) -> int:
    """No running proxy to ask: purge the shared layers (Redis, file) and tell every node."""
    import json

    from twisted.internet import defer

    from .logs import begin_logging
    from .cache.purge import purge_local
    from .http.listening import ListeningService
    from .tap import compose

    begin_logging("warn", config.monitoring.log_format, sys.stderr, follow=False)
    result = {}

    @defer.inlineCallbacks
    def main(reactor):
        runtime, _, services = compose(config, reactor)
        # a plugin's listener is left out as well: this command talks, it does not serve
        services = [svc for svc in services if not isinstance(svc, ListeningService)]
        for svc in services:
            svc.startService()
        try:
            client = runtime.redis
            if client is not None:
                if not (yield client.when_up(10)):
                    print("purge: Redis is not reachable", file=sys.stderr)
                    result["code"] = 1
                    return
                yield runtime.purge_feed.announce(scope)
            counts = yield purge_local(runtime, scope,
                                       layers=[l.name for l in runtime.cache.layers
                                               if l.name != "memory"])
            print(json.dumps({"purged": counts, "scope": {"kind": scope.kind,
                                                          "value": scope.value}}))
            result["code"] = 0
        finally:
            for svc in reversed(services):
                yield defer.maybeDeferred(svc.stopService)

    from twisted.internet import reactor as global_reactor

    done = main(global_reactor)
    done.addBoth(lambda _: global_reactor.stop())
    global_reactor.run()
    return result.get("code", 1)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mediaproxy", description="Image edge proxy.")
    p.add_argument("--version", action="version", version=f"mediaproxy {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="serve (the same as twistd -n mediaproxy)")
    run.add_argument("--config", "-c", default=os.environ.get("MEDIAPROXY_CONFIG"))
    run.add_argument("--listen", "-l", action="append", default=[])
    run.set_defaults(func=cmd_run)

    demo = sub.add_parser("demo", help="serve in front of a built-in demo origin")
    demo.add_argument("--config", "-c", default=None,
                      help="a config file for the rest of the settings (its listen and "
                           "backend are replaced by the options below)")
    demo.add_argument("--port", type=int, default=8080,
                      help="the proxy's port (default 8080; the demo page is at /)")
    demo.add_argument("--interface", default="127.0.0.1",
                      help="the proxy's address (default 127.0.0.1; 0.0.0.0: every interface)")
    demo.add_argument("--origin-port", type=int, default=8000,
                      help="the built-in demo origin's port, on 127.0.0.1 (default 8000)")
    demo.set_defaults(func=cmd_demo)

    check = sub.add_parser("check-config", help="print the effective config, or its errors")
    check.add_argument("--config", "-c", default=os.environ.get("MEDIAPROXY_CONFIG"))
    check.add_argument("--defaults", action="store_true",
                       help="print every key with its default and help (conf/mediaproxy.toml)")
    check.set_defaults(func=cmd_check_config)

    warm = sub.add_parser("warm", help="pre-render a list of image URLs through a proxy")
    warm.add_argument("urls_file", help="one URL or path (/media/a.jpg?w=300) per line")
    warm.add_argument("--proxy", default="http://127.0.0.1:8080")
    warm.add_argument("--accept", default="image/avif,image/webp,*/*",
                      help="Accept header sent (fmt=auto variants depend on it)")
    warm.add_argument("--timeout", type=float, default=60.0)
    warm.set_defaults(func=cmd_warm)

    purge = sub.add_parser("purge", help="purge one source, one tenant or everything")
    what = purge.add_mutually_exclusive_group(required=True)
    what.add_argument("--source", help="backend path of the original, e.g. /media/uploads/a.jpg")
    what.add_argument("--tenant")
    what.add_argument("--all", action="store_true")
    purge.add_argument("--config", "-c", default=os.environ.get("MEDIAPROXY_CONFIG"))
    purge.add_argument("--admin", help="URL of a running proxy's admin listener "
                       "(http://127.0.0.1:9109); without it the shared layers are purged "
                       "directly and running nodes told through Redis")
    purge.add_argument("--token", default=os.environ.get("MEDIAPROXY_ADMIN__TOKEN"))
    purge.set_defaults(func=cmd_purge)

    signer = sub.add_parser("sign", help="print a transform URL with its signature (sig=)")
    signer.add_argument("url", help="a path with query (/media/a.jpg?w=300) or a full URL")
    signer.add_argument("--config", "-c", default=os.environ.get("MEDIAPROXY_CONFIG"))
    signer.add_argument("--expires-in", type=float, default=None, metavar="SECONDS",
                        help="add expires= (now + SECONDS); the URL is refused after it")
    signer.set_defaults(func=cmd_sign)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
