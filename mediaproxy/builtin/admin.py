"""
The admin listener (``admin.listen``, default ``tcp:9109:interface=127.0.0.1``), started only
when ``admin.token`` is set: without a token nothing listens, so there is no admin surface to
attack. Every request needs ``Authorization: Bearer <admin.token>`` (compared in constant
time); the grooveshop call accepts ``x-internal-secret`` instead.

    GET  /admin/cache/stats                   layer and source-cache counters and sizes
    POST /admin/cache/purge                   {"source": "/media/uploads/a.jpg"} |
                                              {"tenant": "shop"} | {"all": true}
                                              (or the same as query parameters)
    POST /admin/cache/flush-tenant            grooveshop: {"tenantSchema": "shop"} (what its
                                              Django sends), {"tenant": "shop"} or ?tenant=shop
    GET  /admin/breakers                      every circuit breaker and its state
    POST /admin/breakers/reset                {"breaker": "images"} | {"all": true}
    GET  /admin/config                        the effective config, secrets redacted

then the calls plugins add with ``mediaproxy_admin_views`` (the alerts plugin's
``/admin/performance`` and ``/admin/alerts``), each ``(method, path) -> view(body)``.

The main port reserves no path: all of them belong to the backend.
"""

from __future__ import annotations

import hmac
import json
from urllib.parse import parse_qsl

from twisted.internet.defer import maybeDeferred
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from .. import hookimpl
from ..config import redacted
from ..http.listening import ListeningService, side_site
from ..logs import request_log
from ..cache.purge import PurgeScope, purge, source_caches
from ..http.requestinfo import correlation_id

MAX_BODY = 64 * 1024


def _same(given: str, expected: str) -> bool:
    return bool(expected) and hmac.compare_digest(given.encode(), expected.encode())


class AdminResource(Resource):
    isLeaf = True

    def __init__(self, runtime):
        super().__init__()
        self.runtime = runtime
        self.views = plugin_views(runtime)

    def render(self, request):
        cid = correlation_id((request.getHeader(b"x-correlation-id") or b"").decode("latin-1")
                             or None)
        log = request_log(cid, "mediaproxy.admin")
        if not self._authorised(request):
            log.warn("admin request refused: bad or missing credentials from {peer}",
                     peer=getattr(request.getClientAddress(), "host", "?"))
            request.setHeader(b"WWW-Authenticate", b'Bearer realm="mediaproxy-admin"')
            return self._json(request, 401, {"error": "unauthorized",
                                             "message": "a valid admin token is required",
                                             "correlation_id": cid})
        path, method = request.path.decode("latin-1"), request.method
        if method == b"GET" and path == "/admin/cache/stats":
            return self._json(request, 200, self._stats())
        if method == b"POST" and path in ("/admin/cache/purge", "/admin/cache/flush-tenant"):
            try:
                scope = self._scope(request, path)
            except ValueError as e:
                return self._json(request, 400, {"error": "invalid_request", "message": str(e),
                                                 "correlation_id": cid})
            d = purge(self.runtime, scope)

            def done(counts):
                body = {"purged": counts, "scope": {"kind": scope.kind, "value": scope.value},
                        "correlation_id": cid}
                if path.endswith("flush-tenant"):
                    body.update(success=True, tenant=scope.value)
                self._json(request, 200, body, finish=True)

            def failed(failure):
                log.failure("purge failed", failure)
                self._json(request, 500, {"error": "internal_error",
                                          "message": "the purge failed", "correlation_id": cid},
                           finish=True)

            d.addCallbacks(done, failed)
            return NOT_DONE_YET
        if method == b"GET" and path == "/admin/breakers":
            return self._json(request, 200, {"breakers": self._breakers()})
        if method == b"POST" and path == "/admin/breakers/reset":
            return self._json(request, *self._reset(request, cid, log))
        if method == b"GET" and path == "/admin/config":
            return self._json(request, 200, {"config": redacted(self.runtime.config).to_dict()})
        view = self.views.get((method.decode("latin-1"), path))
        if view is not None:
            return self._view(request, view, cid, log)
        return self._json(request, 404, {"error": "not_found", "message": "no such admin call",
                                         "correlation_id": cid})

    def _breakers(self) -> dict:
        return {name: {"state": b.state, "enabled": b.enabled}
                for name, b in sorted(self.runtime.breakers().items())}

    def _reset(self, request, cid, log):
        try:
            body = self._body(request)
        except ValueError as e:
            return 400, {"error": "invalid_request", "message": str(e), "correlation_id": cid}
        breakers = self.runtime.breakers()
        if body.get("all") in (True, "1", "true"):
            names = sorted(breakers)
        elif isinstance(body.get("breaker"), str) and body["breaker"] in breakers:
            names = [body["breaker"]]
        else:
            given = body.get("breaker")
            message = (f"no breaker {given!r} (known: {', '.join(sorted(breakers))})"
                       if given is not None else 'name a breaker ({"breaker": "images"}) or '
                       'all ({"all": true})')
            return 400, {"error": "invalid_request", "message": message,
                         "parameter": "breaker", "correlation_id": cid}
        for name in names:
            before = breakers[name].state
            breakers[name].reset()
            log.warn("breaker {breaker} reset by an admin call (was {before})", breaker=name,
                     before=before)
        return 200, {"reset": names, "breakers": self._breakers(), "correlation_id": cid}

    def _view(self, request, view, cid, log):
        try:
            body = self._body(request)
        except ValueError as e:
            return self._json(request, 400, {"error": "invalid_request", "message": str(e),
                                             "correlation_id": cid})

        def done(answer):
            status, payload = answer
            self._json(request, status, payload, finish=True)

        def failed(failure):
            log.failure("admin view {path} failed", failure, path=request.path)
            self._json(request, 500, {"error": "internal_error",
                                      "message": "the admin call failed",
                                      "correlation_id": cid}, finish=True)

        # a view that raises, or answers something else than (status, body), is a 500
        maybeDeferred(view, body).addCallback(done).addErrback(failed)
        return NOT_DONE_YET

    def _body(self, request) -> dict:
        """The query parameters and the JSON object of the body (ValueError: not one)."""
        data: dict = dict(parse_qsl(request.uri.partition(b"?")[2].decode("latin-1")))
        raw = request.content.read(MAX_BODY + 1) if request.content is not None else b""
        if len(raw) > MAX_BODY:
            raise ValueError("the request body is too large")
        if raw.strip():
            try:
                body = json.loads(raw)
            except ValueError:
                raise ValueError("the body must be JSON") from None
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
            data.update(body)
        return data

    def _authorised(self, request) -> bool:
        conf = self.runtime.config.admin
        auth = (request.getHeader(b"authorization") or b"").decode("latin-1")
        if auth.lower().startswith("bearer ") and _same(auth[7:].strip(), conf.token):
            return True
        secret = request.getHeader(b"x-internal-secret")
        if secret is not None:
            expected = conf.internal_secret or conf.token
            return _same(secret.decode("latin-1"), expected)
        return False

    def _scope(self, request, path) -> PurgeScope:
        data = {k: v for k, v in self._body(request).items() if isinstance(v, (str, bool))}
        # grooveshop's Django sends {"tenantSchema": ...} (tenant/media_flush.py)
        tenant = data.get("tenant") or data.get("tenantSchema") or data.get("tenantId")
        if path.endswith("flush-tenant"):
            if not tenant:
                raise ValueError("tenant is required")
            return PurgeScope.tenant(str(tenant))
        if data.get("source"):
            return PurgeScope.source(str(data["source"]))
        if tenant:
            return PurgeScope.tenant(str(tenant))
        if data.get("all") in (True, "1", "true"):
            return PurgeScope.everything()
        raise ValueError("name a source, a tenant, or all")

    def _stats(self) -> dict:
        rt = self.runtime
        return {"layers": rt.cache.stats(),
                "sources": [cache.stats() for cache in source_caches(rt)],
                "transform_queue": rt.pending_transforms}

    @staticmethod
    def _json(request, status, body, finish=False):
        data = json.dumps(body, default=str).encode() + b"\n"
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-store")
        if finish:
            request.write(data)
            request.finish()
            return None
        return data


#: The admin listener's own calls: a plugin's view may not take one of these.
OWN_CALLS = frozenset({("GET", "/admin/cache/stats"), ("POST", "/admin/cache/purge"),
                       ("POST", "/admin/cache/flush-tenant"), ("GET", "/admin/breakers"),
                       ("POST", "/admin/breakers/reset"), ("GET", "/admin/config")})


def plugin_views(runtime) -> dict:
    """Every plugin's ``mediaproxy_admin_views``, merged; a call claimed twice (or one of the
    listener's own) is an error at start."""
    views: dict = {}
    for found in runtime.pm.hook.mediaproxy_admin_views(runtime=runtime):
        for (method, path), view in (found or {}).items():
            call = (method.upper(), path)
            if call in views or call in OWN_CALLS:
                raise ValueError(f"the admin call {method} {path} is claimed twice")
            views[call] = view
    return views


@hookimpl
def mediaproxy_services(runtime):
    services = []
    conf = runtime.config.admin
    if conf.token:
        services.append(ListeningService(runtime.reactor, conf.listen,
                                         side_site(AdminResource(runtime),
                                                   runtime.config.server.server_header),
                                         "admin"))
    else:
        runtime.log.info("no admin.token: the admin listener is off")
    return services
