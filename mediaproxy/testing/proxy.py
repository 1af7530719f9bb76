"""
A real proxy on loopback for end-to-end tests: :func:`start_proxy` builds it the way
``mediaproxy run`` does (:func:`mediaproxy.tap.compose`: the built-in plugins, yours, the
services), listens on 127.0.0.1 and a free port, in front of an :class:`ImageOrigin` serving
the files you give, and returns a :class:`RunningProxy` to send requests with (plain
``http.client`` from the test thread) and to stop::

    with start_proxy(files={"/media/a.jpg": make_image((400, 300))}) as proxy:
        response = proxy.get("/media/a.jpg?w=100&fmt=webp")
        assert_image(response.body, size=(100, 75), format="WEBP")
"""

from __future__ import annotations

import http.client
import json
from typing import Any, NamedTuple

import attrs

from .origin import ImageOrigin, Served, start_origin
from .reactor import call_in_reactor, reactor_thread

LOOPBACK = "127.0.0.1"


class Response(NamedTuple):
    """What :meth:`RunningProxy.request` got; unpacks as ``status, headers, body, message``."""

    status: int
    #: Header names in lower case -> value (the last one of a repeated header).
    headers: dict[str, str]
    body: bytes
    #: The :class:`http.client.HTTPMessage`, for repeated headers (``get_all("vary")``).
    message: Any


class JsonResponse(NamedTuple):
    """What :meth:`RunningProxy.json` got; unpacks as ``status, headers, data``."""

    status: int
    headers: dict[str, str]
    data: Any


@attrs.define(eq=False)
class RunningProxy:
    """A proxy started by :func:`start_proxy`. ``runtime`` is its
    :class:`~mediaproxy.runtime.Runtime` (config, plugin manager, cache, events), ``origin``
    the resource it fetches from (``None`` with ``backend_port``), ``services`` its started
    services; ``listening`` and ``origin_listening`` are the listening ports."""

    runtime: Any
    listening: Any
    services: list
    origin: Any = None
    origin_listening: Any = None
    host: str = LOOPBACK
    _stopped: bool = False

    @property
    def port(self) -> int:
        return self.listening.getHost().port

    def url(self, path: str = "/") -> str:
        """The absolute URL of ``path`` on this proxy, for clients other than :meth:`get`."""
        return f"http://{self.host}:{self.port}{path}"

    def request(self, method: str, path: str, headers: dict | None = None,
                body: bytes | None = None, timeout: float = 30) -> Response:
        """Send one request on a fresh connection and read the whole answer."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            data = response.read()
            return Response(response.status, {k.lower(): v for k, v in response.getheaders()},
                            data, response.msg)
        finally:
            conn.close()

    def get(self, path: str, **kw) -> Response:
        return self.request("GET", path, **kw)

    def json(self, path: str, **kw) -> JsonResponse:
        """GET ``path`` and parse the body as JSON (error bodies, admin and stats answers)."""
        status, headers, body, _ = self.get(path, **kw)
        return JsonResponse(status, headers, json.loads(body))


    def cache_key(self, path: str, accept: str | None = None) -> str:
        """The cache key the proxy derives for ``path`` (with query), as the routes match it
        and ``Accept`` negotiates its format."""
        from urllib.parse import parse_qsl

        from ..cache.keys import cache_key
        from ..imaging.negotiation import negotiate_format
        from ..models import RequestInfo

        rt = self.runtime
        raw, _, query = path.partition("?")
        headers = [("accept", accept)] if accept is not None else []   # routes may read it
        match = rt.pm.hook.mediaproxy_match_request(
            request=RequestInfo(method="GET", path=raw, query=parse_qsl(query),
                                headers=headers), runtime=rt)
        pipeline = rt.pm.get_plugin("mediaproxy.builtin.pipeline.instance")
        if pipeline is not None:     # the key it looks up (it knows what sources resolve to)
            return call_in_reactor(lambda: pipeline.key_for(match, accept))[0]
        fmt, _ = negotiate_format(match.params.get("fmt"), accept)
        return cache_key(match, rt.params, fmt)

    def age(self, path: str, seconds: float) -> None:
        """Make the cached result of ``path`` look ``seconds`` older in every layer, instead
        of waiting (freshness, stale-while-revalidate, stale-if-error)."""
        key = self.cache_key(path)
        rt = self.runtime

        def rewrite():
            def got(hit):
                entry, _ = hit
                return rt.cache.set(key, attrs.evolve(entry,
                                                      created_at=entry.created_at - seconds))
            return rt.cache.get(key).addCallback(got)

        call_in_reactor(rewrite)
    def stop(self, timeout: float = 20) -> None:
        """Stop listening (proxy and origin) and stop the services; a second call does
        nothing."""
        if self._stopped:
            return
        self._stopped = True

        def stop():
            from twisted.internet.defer import DeferredList, maybeDeferred
            ds = [maybeDeferred(self.listening.stopListening)]
            if self.origin_listening is not None:
                ds.append(maybeDeferred(self.origin_listening.stopListening))
            for svc in reversed(self.services):
                ds.append(maybeDeferred(svc.stopService))
            return DeferredList(ds)
        call_in_reactor(stop, timeout=timeout)

    def __enter__(self) -> "RunningProxy":
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def start_proxy(files: dict[str, Served] | None = None, *, origin: Any = None,
                overrides: dict | None = None, plugins=(), environ: dict | None = None,
                load_entrypoints: bool = False, backend_port: int | None = None) -> RunningProxy:
    """Start a proxy on 127.0.0.1 and a free port, from the test thread, and return it.

    Its backend is one of: ``files`` (served by a new :class:`ImageOrigin`, see it for the
    forms a file takes), ``origin`` (an :class:`ImageOrigin` or any twisted.web resource,
    started here), or ``backend_port`` (something already listening on 127.0.0.1); the origin
    started here stops with the proxy. ``plugins`` are plugin objects or modules registered
    after the built-ins; ``load_entrypoints`` also loads the installed ones. Configuration
    comes from ``overrides`` (a dict shaped like the TOML file,
    ``{"limits": {"max_width": 1000}}``) and ``environ`` (``MEDIAPROXY_*`` variables), nothing
    else: not the process environment, not a config file. One default differs from the
    daemon's: ``monitoring.health_backend_probe`` is off (set it in ``overrides`` to test it).
    """
    from ..config import load_config
    from ..tap import compose

    if files is not None:
        if origin is not None:
            raise TypeError("start_proxy() takes files= or origin=, not both")
        origin = ImageOrigin(files)
    reactor = reactor_thread()
    origin_listening = None
    if origin is not None:
        origin_listening = start_origin(origin)
        backend_port = origin_listening.getHost().port
    data: dict = {}
    if backend_port is not None:
        data["backend"] = {"url": f"http://{LOOPBACK}:{backend_port}"}
    if "MEDIAPROXY_MONITORING__HEALTH_BACKEND_PROBE" not in (environ or {}):
        # The health snapshot's backend probe (a HEAD every few seconds) is off unless a test
        # turns it on: the origin sees only the requests the test makes, and counts them.
        data["monitoring"] = {"health_backend_probe": ""}
    for section, values in (overrides or {}).items():
        data.setdefault(section, {}).update(values)

    def build(config):
        from twisted.internet.defer import maybeDeferred
        runtime, site, services = compose(config, reactor,
                                          extra_plugins=list(plugins),
                                          load_entrypoints=load_entrypoints)
        started = []
        try:
            for svc in services:
                svc.startService()
                started.append(svc)
            listening = reactor.listenTCP(0, site, interface=LOOPBACK)
        except BaseException:
            for svc in reversed(started):     # best effort: the first error is the one to see
                maybeDeferred(svc.stopService).addErrback(lambda _: None)
            raise
        return runtime, listening, services

    try:
        config = load_config(environ=environ or {}, overrides=data, plugins=plugins,
                             load_entrypoints=load_entrypoints)
        runtime, listening, services = call_in_reactor(build, config)
    except BaseException:
        if origin_listening is not None:
            call_in_reactor(origin_listening.stopListening)
        raise
    return RunningProxy(runtime, listening, services, origin, origin_listening)
