"""
The test project served for real: Django's WSGI application on a free port of 127.0.0.1
(wsgiref, a thread per request, in daemon threads), recording every request it answers, so a
test can put a real proxy in front of it (``start_proxy(backend_port=site.port)``) and count
what reached the backend.
"""

from __future__ import annotations

import os
import threading
import traceback
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest

SETTINGS = "tests.django_project.settings"


def setup_django() -> None:
    """Configure Django with the test project's settings, once per process."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", SETTINGS)
    if os.environ["DJANGO_SETTINGS_MODULE"] != SETTINGS:
        raise RuntimeError(f"DJANGO_SETTINGS_MODULE is {os.environ['DJANGO_SETTINGS_MODULE']}")
    import django
    from django.apps import apps

    if not apps.ready:
        django.setup()


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    #: set by DjangoSite: where a request that failed in the server (not in a view: Django
    #: answers those with its 500 page) leaves its traceback
    errors: list[str]

    def handle_error(self, request, client_address):
        self.errors.append(traceback.format_exc())
        super().handle_error(request, client_address)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):   # the test output is not an access log
        pass


class DjangoSite:
    """The running site: ``port``, ``requests`` (each answered request as (decoded path,
    query)), ``errors`` (the traceback of each request the server itself failed, so a test
    that got no answer through the proxy can say why)."""

    def __init__(self):
        from django.core.wsgi import get_wsgi_application

        app = get_wsgi_application()
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()

        def recording(environ, start_response):
            with self._lock:
                # PEP 3333: PATH_INFO is the raw bytes read as latin-1
                path = environ.get("PATH_INFO", "").encode("latin-1").decode("utf-8", "replace")
                self.requests.append((path,
                                      environ.get("QUERY_STRING", "")))
            return app(environ, start_response)

        self._server = make_server("127.0.0.1", 0, recording, server_class=_Server,
                                   handler_class=_QuietHandler)
        self.errors: list[str] = []
        self._server.errors = self.errors
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def media_requests(self) -> list[str]:
        with self._lock:
            return [path for path, _ in self.requests if path.startswith("/media/")]

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


@pytest.fixture(scope="session")
def django_site():
    """The test project, served for the whole session."""
    setup_django()
    site = DjangoSite()
    yield site
    site.stop()
