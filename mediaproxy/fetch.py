"""
Fetching original images from the backend for the image pipeline.

:class:`SourceFetcher` GETs one path from the configured backend over the Upstream's agent (and
so its keep-alive pool) and returns a :class:`~mediaproxy.models.SourceImage`, or fails with a
:class:`~mediaproxy.models.SourceError` carrying the status the client should see. The size
limit is enforced while the body streams in, whatever Content-Length claims.

It uses the plain :class:`twisted.web.client.Agent`, not treq: a source fetch needs no cookie
jar (a jar would carry one client's session to another), no redirect following and no buffering,
which are treq's conveniences and would all have to be switched off, while the byte limit and the
idle timeout need a body protocol of our own anyway.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import attrs
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectError, ConnectingCancelledError, DNSLookupError
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import PotentialDataLoss, ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH

from .config import BackendConfig
from .errors import CORRELATION_HEADER
from .models import SourceError, SourceImage
from .upstream import backend_origin

#: Most bytes of an error page read (and dropped) so the keep-alive connection can be reused.
ERROR_BODY_LIMIT = 64 * 1024


class _Drop(Protocol):
    """Receives a body we will not read: drop the connection at once."""

    def connectionMade(self) -> None:
        self.transport.stopProducing()


class _TooLarge(Exception):
    pass


class _Stalled(Exception):
    pass


class _Collector(Protocol):
    """Collects a response body up to ``limit`` bytes; fails with :class:`_TooLarge` (and
    drops the connection) past it, with :class:`_Stalled` when no data comes for
    ``idle_timeout`` seconds."""

    def __init__(self, reactor, limit: int, idle_timeout: float):
        self._reactor = reactor
        self._limit = limit
        self._idle_timeout = idle_timeout
        self._chunks: list[bytes] = []
        self._size = 0
        self._timer = None
        self._failure: Failure | None = None
        self.finished: Deferred[bytes] = Deferred(lambda d: self._cancel())

    def connectionMade(self) -> None:
        self._timer = self._reactor.callLater(self._idle_timeout, self._stalled)

    def dataReceived(self, data: bytes) -> None:
        if self._failure is not None:
            return
        self._size += len(data)
        if self._size > self._limit:
            self._give_up(_TooLarge(self._size))
            return
        self._chunks.append(data)
        if self._timer is not None and self._timer.active():
            self._timer.reset(self._idle_timeout)

    def _stalled(self) -> None:
        self._timer = None
        self._give_up(_Stalled())

    def _give_up(self, error: Exception) -> None:
        self._failure = Failure(error)
        self._chunks = []
        self.transport.stopProducing()

    def _cancel(self) -> None:
        # The fetch was cancelled (the finished Deferred fails with CancelledError).
        if self._failure is None and self.transport is not None:
            self._give_up(CancelledError())

    def connectionLost(self, reason=None) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self.finished.called:
            return
        if self._failure is not None:
            self.finished.errback(self._failure)
        elif reason is None or reason.check(ResponseDone, PotentialDataLoss):
            self.finished.callback(b"".join(self._chunks))
        else:
            self.finished.errback(reason)


def _header(response, name: bytes) -> str | None:
    values = response.headers.getRawHeaders(name)
    return values[0].decode("latin-1") if values else None


@attrs.define(eq=False)
class SourceFetcher:
    """Fetches originals from the backend. Share the Upstream's agent: ``SourceFetcher(reactor,
    config.backend, config.limits.max_source_bytes, upstream.agent)``."""

    reactor: Any
    backend: BackendConfig
    max_bytes: int
    agent: Any
    _origin: bytes = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._origin = backend_origin(self.backend)[0].encode("ascii")

    def url_for(self, path: str) -> bytes:
        """The backend URL of a decoded path: UTF-8, percent-encoded, '/' kept as separator (so
        a '?', '#' or '%' in a file name stays part of the name)."""
        return self._origin + quote(path.encode("utf-8"), safe="/").encode("ascii")

    def fetch(self, path: str, correlation_id: str, log,
              headers: dict | None = None) -> Deferred[SourceImage]:
        """GET the decoded backend ``path``; fire with a SourceImage or fail with SourceError
        (404 source_not_found, 413 source_too_large, 502 backend_error/backend_unavailable,
        504 backend_timeout). ``headers`` are extra request headers (str or bytes)."""
        return _Fetch(self, path, correlation_id, log, headers).start()


class _Fetch:
    def __init__(self, fetcher: SourceFetcher, path: str, correlation_id: str, log,
                 headers: dict | None):
        self.fetcher = fetcher
        self.reactor = fetcher.reactor
        self.path = path
        self.correlation_id = correlation_id
        self.log = log
        self.extra = headers or {}
        self.started = self.reactor.seconds()
        self.timed_out = False
        self.timer = None

    def _ms(self) -> float:
        return (self.reactor.seconds() - self.started) * 1000

    def _headers(self) -> Headers:
        out = Headers()
        for name, value in self.extra.items():
            name = name.encode("latin-1") if isinstance(name, str) else name
            value = value.encode("latin-1") if isinstance(value, str) else value
            out.addRawHeader(name, value)
        if not out.hasHeader(b"accept"):
            out.setRawHeaders(b"Accept", [b"image/*"])
        out.setRawHeaders(CORRELATION_HEADER, [self.correlation_id.encode("latin-1")])
        return out

    def start(self) -> Deferred[SourceImage]:
        self.log.debug("fetching source {path}", path=self.path,
                       correlation_id=self.correlation_id)
        try:
            d = self.fetcher.agent.request(b"GET", self.fetcher.url_for(self.path),
                                           self._headers(), None)
        except Exception:
            d = Deferred()
            d.errback(Failure())
        self.timer = self.reactor.callLater(self.fetcher.backend.header_timeout,
                                            self._header_timeout, d)
        d.addBoth(self._stop_timer)
        d.addCallback(self._got_response)
        d.addErrback(self._map_failure)
        d.addBoth(self._log_end)
        return d

    def _header_timeout(self, d: Deferred) -> None:
        self.timer = None
        self.timed_out = True
        d.cancel()

    def _stop_timer(self, result):
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        return result

    def _collect(self, response, limit: int) -> Deferred[bytes]:
        collector = _Collector(self.reactor, limit, self.fetcher.backend.idle_timeout)
        response.deliverBody(collector)
        return collector.finished

    def _got_response(self, response):
        code = response.code
        max_bytes = self.fetcher.max_bytes
        if code == 200:
            if response.length is not UNKNOWN_LENGTH and response.length > max_bytes:
                response.deliverBody(_Drop())
                raise SourceError(413, "source_too_large",
                                  f"The source is larger than {max_bytes} bytes.")
            d = self._collect(response, max_bytes)
            d.addCallback(lambda body: SourceImage(
                body=body,
                content_type=_header(response, b"content-type"),
                etag=_header(response, b"etag"),
                last_modified=_header(response, b"last-modified"),
            ))
            return d
        error = self._status_error(code)
        # Read a short error page so the connection goes back to the pool; then fail.
        d = self._collect(response, ERROR_BODY_LIMIT)
        d.addBoth(lambda _: Failure(error))
        return d

    @staticmethod
    def _status_error(code: int) -> SourceError:
        if code in (404, 410):
            return SourceError(404, "source_not_found", "The source image does not exist.")
        if 400 <= code < 500:
            # Forbidden, bad request, ...: nothing the client of the proxy can fix; to it the
            # source is simply not available.
            return SourceError(404, "source_not_found",
                               f"The source image is not available (backend status {code}).")
        return SourceError(502, "backend_error", f"The backend answered {code}.")

    def _map_failure(self, failure: Failure):
        if failure.check(SourceError):
            return failure
        if failure.check(_TooLarge):
            raise SourceError(413, "source_too_large",
                              f"The source is larger than {self.fetcher.max_bytes} bytes.")
        if failure.check(_Stalled):
            raise SourceError(504, "backend_timeout", "The backend stopped sending the source.")
        if self.timed_out:
            raise SourceError(504, "backend_timeout", "The backend did not answer in time.")
        if failure.check(ConnectError, ConnectingCancelledError, DNSLookupError):
            raise SourceError(502, "backend_unavailable", "The backend could not be reached.")
        if failure.check(CancelledError):
            return failure
        self.log.warn("source fetch of {path} failed: {why}", path=self.path,
                      why=f"{failure.type.__name__}: {failure.getErrorMessage()}",
                      correlation_id=self.correlation_id)
        raise SourceError(502, "backend_error", "The backend connection failed.")

    def _log_end(self, result):
        if isinstance(result, Failure):
            error = result.value
            self.log.info("fetch of source {path} failed: {status} {error} in {ms:.1f} ms",
                          path=self.path, status=getattr(error, "status", None),
                          error=getattr(error, "error", result.type.__name__), ms=self._ms(),
                          correlation_id=self.correlation_id)
        else:
            self.log.info("fetched source {path}: {bytes} bytes in {ms:.1f} ms",
                          path=self.path, bytes=len(result.body), ms=self._ms(),
                          correlation_id=self.correlation_id)
        return result
