"""Starting a real proxy (and a real image origin) on free loopback ports for end-to-end tests."""

from __future__ import annotations

import http.client
import io
import json
from collections import Counter

import attrs
from PIL import Image
from twisted.web.resource import Resource
from twisted.web.server import Site

from mediaproxy.config import load_config
from mediaproxy.tap import compose
from mediaproxy.testing import call_in_reactor, reactor_thread


class ImageOrigin(Resource):
    """A backend serving images from a dict (path -> (status, body, content type, headers)),
    counting every GET per path, like Django's media server would be hit."""

    isLeaf = True

    def __init__(self, files=None):
        super().__init__()
        self.files = dict(files or {})
        self.hits = Counter()
        self.headers_seen = {}

    def render_GET(self, request):
        self.record(request)
        return self.respond(request)

    def record(self, request):
        path = request.path.decode("latin-1")
        self.hits[path] += 1
        self.headers_seen[path] = {k.decode().lower(): [v.decode("latin-1") for v in vs]
                                   for k, vs in request.requestHeaders.getAllRawHeaders()}

    def respond(self, request) -> bytes:
        path = request.path.decode("latin-1")
        if path not in self.files:
            request.setResponseCode(404)
            return b"not found"
        status, body, ctype, headers = self.files[path]
        etag = dict(headers).get("ETag")
        if etag and request.getHeader(b"if-none-match") == etag.encode():
            request.setResponseCode(304)
            request.setHeader(b"ETag", etag.encode())
            return b""
        request.setResponseCode(status)
        if ctype:
            request.setHeader(b"Content-Type", ctype.encode())
        for name, value in headers:
            request.setHeader(name.encode(), value.encode())
        return body

    render_HEAD = render_GET


def image_bytes(size=(400, 300), fmt="JPEG", color=(200, 30, 30), mode="RGB", **save) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, fmt, **save)
    return buf.getvalue()


@attrs.define
class Running:
    runtime: object
    port: object
    services: list
    origin_port: object = None
    origin: object = None

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def portnum(self) -> int:
        return self.port.getHost().port

    def request(self, method, path, headers=None, body=None, timeout=30):
        conn = http.client.HTTPConnection(self.host, self.portnum, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            data = response.read()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, data, \
                response.msg
        finally:
            conn.close()

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def json(self, path, **kw):
        status, headers, body, _ = self.get(path, **kw)
        return status, headers, json.loads(body)

    def stop(self):
        def stop():
            from twisted.internet.defer import DeferredList, maybeDeferred
            ds = [maybeDeferred(self.port.stopListening)]
            if self.origin_port is not None:
                ds.append(maybeDeferred(self.origin_port.stopListening))
            for svc in reversed(self.services):
                ds.append(maybeDeferred(svc.stopService))
            return DeferredList(ds)
        call_in_reactor(stop, timeout=20)


def start_origin(resource):
    reactor = reactor_thread()
    return call_in_reactor(reactor.listenTCP, 0, Site(resource), interface="127.0.0.1")


def start_proxy(backend_port=None, environ=None, overrides=None, extra_plugins=(),
                load_entrypoints=False, origin=None) -> Running:
    """A proxy on 127.0.0.1:<free port> in front of ``origin`` (an ImageOrigin started here) or
    ``backend_port``; config from ``overrides`` (a dict like the TOML) and ``environ``."""
    reactor = reactor_thread()
    origin_port = None
    if origin is not None:
        origin_port = start_origin(origin)
        backend_port = origin_port.getHost().port
    data = {"backend": {"url": f"http://127.0.0.1:{backend_port}"}}
    for section, values in (overrides or {}).items():
        data.setdefault(section, {}).update(values)
    config = load_config(environ=environ or {}, overrides=data)

    def build():
        runtime, site, services = compose(config, reactor, extra_plugins=extra_plugins,
                                          load_entrypoints=load_entrypoints)
        for svc in services:
            svc.startService()
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        return runtime, port, services

    runtime, port, services = call_in_reactor(build)
    return Running(runtime, port, services, origin_port, origin)
