"""
Fetching original images from the backend for the image pipeline.

:class:`SourceFetcher` GETs one path from the configured backend over the Upstream's agent (and
so its keep-alive pool) and returns a :class:`~mediaproxy.models.SourceImage`, or fails with a
:class:`~mediaproxy.models.SourceError` carrying the status the client should see.

What it defends against, all while the body streams in (nothing trusts Content-Length, the
extension or Content-Type):

* **size**: ``max_bytes`` overall, and a smaller limit per format (``limits.
  max_source_bytes_by_format``) as soon as the first bytes name the format;
* **format**: the magic bytes (:func:`sniff_format`) must name an accepted format
  (``limits.source_formats``); HTML, SVG, text or random bytes are refused with 422 after at
  most :data:`SNIFF_LIMIT` bytes, and the connection is dropped;
* **time**: no response headers within ``backend.header_timeout``, a body stalled for
  ``backend.idle_timeout``, or a whole download longer than ``backend.source_timeout`` (a
  slow-loris origin trickling bytes) is a 504;
* **a failing backend**: connection errors and 502/503/504 are retried (``backend.retries``,
  exponential backoff with full jitter; a source fetch is a bodiless GET and nothing has been
  sent to the client yet): at most ``1 + backend.retries`` requests per fetch, and none once
  the breaker has opened. The image circuit breaker (``backend.image_breaker``) counts
  connection errors, timeouts and 5xx, never a 4xx; while it is open a fetch fails at once with
  503 ``circuit_open`` and the pipeline answers with the stale copy or the placeholder. A 5xx
  or an unreachable backend is then remembered only briefly (``cache.negative_error_ttl``, in
  :mod:`mediaproxy.builtin.sourcecache`), so images work again about a second after the backend;
* **pile-ups**: at most ``backend.max_concurrent`` fetches are in flight; more fail at once
  with 503 ``backend_busy``.

Admission, retries, what the breaker counts and the header timeout are
:mod:`mediaproxy.http.policy`'s, the same for the pass-through (with this fetcher's own breaker,
limit and definition of a failure); this module keeps what is its own: collecting a bounded
body, sniffing it, the source deadline, and the SourceError each outcome becomes.

It uses the plain :class:`twisted.web.client.Agent`, not treq: a source fetch needs no cookie
jar (a jar would carry one client's session to another), no redirect following and no buffering,
which are treq's conveniences and would all have to be switched off, while the byte limit and the
idle timeout need a body protocol of our own anyway.
"""

from __future__ import annotations

from typing import Any, Mapping
from urllib.parse import quote

import attrs
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (PotentialDataLoss, ResponseDone, ResponseFailed,
                                ResponseNeverReceived)
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH

from .breaker import CircuitBreaker, ConcurrencyLimit, RetryPolicy
from ..config import BackendConfig, parse_size_map
from ..logs import Throttle
from .errors import CORRELATION_HEADER
from ..models import SourceError, SourceImage
from .policy import (
    ANSWERED, CANCELLED, CONNECTION, SOURCE_FAILURES, TIMEOUT, BackendPolicy, failure_kind,
)
from .upstream import backend_origin

_log = Logger(namespace="mediaproxy.fetch")
#: A slow or broken backend fails every fetch: one warning of a kind per 10 s, the rest at debug.
_warnings = Throttle(10.0)

#: What a backend path keeps unencoded besides letters, digits and ``_.-~``: Django's choice
#: for storage URLs (``filepath_to_uri``), so ``a%2Bb.jpg``, ``p(1).jpg`` and ``it's.jpg``
#: reach the backend as Django wrote them.
BACKEND_PATH_SAFE = "/~!*()'"
#: Most bytes of an error page read (and dropped) so the keep-alive connection can be reused.
ERROR_BODY_LIMIT = 64 * 1024

#: Bytes that identify every accepted format.
SNIFF_BYTES = 12
#: Most bytes looked at before a source that is not an image is refused.
SNIFF_LIMIT = 256

_HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm",
                          b"hevs"})
_AVIF_BRANDS = frozenset({b"avif", b"avis", b"mif1", b"msf1"})
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def sniff_format(head: bytes) -> str | None:
    """The source format the first bytes of ``head`` announce (``jpeg``, ``png``, ``webp``,
    ``gif``, ``avif``, ``heif``, ``tiff``, ``bmp``), or ``None``. Twelve bytes suffice; the
    generic ISO-BMFF brands ``mif1``/``msf1`` count as ``avif``, which Pillow opens them as."""
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "webp"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _AVIF_BRANDS:
            return "avif"
        if brand in _HEIF_BRANDS:
            return "heif"
        return None
    if head.startswith(_TIFF_MAGIC):
        return "tiff"
    if head.startswith(b"BM"):
        return "bmp"
    return None


def _looks_like_svg(head: bytes) -> bool:
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return text.startswith((b"<svg", b"<?xml", b"<!doctype svg")) and b"<svg" in text


@attrs.frozen
class SourcePolicy:
    """Which formats a source may have and how many bytes each may take."""

    max_bytes: int
    formats: frozenset[str] | None = None           #: None: no sniffing at all
    format_limits: Mapping[str, int] = attrs.field(factory=dict)

    @classmethod
    def from_limits(cls, limits) -> "SourcePolicy":
        """From :class:`~mediaproxy.config.LimitsConfig`."""
        return cls(max_bytes=limits.max_source_bytes, formats=frozenset(limits.source_formats),
                   format_limits=parse_size_map(limits.max_source_bytes_by_format))

    def refusal(self, fmt: str | None, head: bytes) -> SourceError | None:
        """Why a source whose first bytes are ``head`` (sniffed as ``fmt``) is refused."""
        if fmt is None:
            if not head:
                return SourceError(422, "unsupported_image", "The source is empty.")
            if _looks_like_svg(head):
                return SourceError(422, "unsupported_format", "SVG images are not supported.")
            return SourceError(422, "unsupported_image",
                               "The source is not an image in a supported format.")
        if self.formats is not None and fmt not in self.formats:
            return SourceError(422, "unsupported_format",
                               f"{fmt.upper()} images are not accepted.")
        return None

    def limit_for(self, fmt: str | None) -> int:
        return min(self.max_bytes, self.format_limits.get(fmt, self.max_bytes))  # type: ignore[arg-type]  # None: the default


class _Drop(Protocol):
    """Receives a body we will not read: drop the connection at once."""

    #: the TCP transport (also a push producer, with abortConnection): Twisted types it ITransport | None
    transport: Any

    def connectionMade(self) -> None:
        self.transport.stopProducing()


class _TooLarge(Exception):
    def __init__(self, limit: int):
        super().__init__(limit)
        self.limit = limit


class _Stalled(Exception):
    pass


class _Refused(Exception):
    def __init__(self, error: SourceError):
        super().__init__(error.message)
        self.error = error


class _Collector(Protocol):
    """Collects a response body up to ``limit`` bytes; fails with :class:`_TooLarge` (and
    drops the connection) past it, with :class:`_Stalled` when no data comes for
    ``idle_timeout`` seconds. With a ``policy`` the first bytes are sniffed: a refused format
    fails with :class:`_Refused`, an accepted one may lower the limit."""

    #: the TCP transport (also a push producer, with abortConnection): Twisted types it ITransport | None
    transport: Any

    def __init__(self, reactor, limit: int, idle_timeout: float,
                 policy: SourcePolicy | None = None, declared: int | None = None):
        self._reactor = reactor
        self._limit = limit
        self._declared = declared
        self._idle_timeout = idle_timeout
        self._policy = policy if policy is not None and policy.formats is not None else None
        self._head = b""
        self._sniffed = self._policy is None
        self._chunks: list[bytes] = []
        self._size = 0
        self._timer = None
        self._failure: Failure | None = None
        self.format: str | None = None
        self.finished: Deferred[bytes] = Deferred(lambda d: self._cancel())

    def connectionMade(self) -> None:
        self._timer = self._reactor.callLater(self._idle_timeout, self._stalled)

    def dataReceived(self, data: bytes) -> None:
        if self._failure is not None:
            return
        self._size += len(data)
        if not self._sniffed:
            self._head += data[:SNIFF_LIMIT - len(self._head)]
            if not self._sniff(final=False):
                return
        if self._size > self._limit:
            self._give_up(_TooLarge(self._limit))
            return
        self._chunks.append(data)
        if self._timer is not None and self._timer.active():
            self._timer.reset(self._idle_timeout)

    def _sniff(self, final: bool) -> bool:
        """Decide the format once enough bytes are here; False when the body is refused."""
        fmt = sniff_format(self._head) if len(self._head) >= SNIFF_BYTES or final else None
        if fmt is None and not final and len(self._head) < SNIFF_LIMIT:
            return True   # not enough bytes to tell yet
        self._sniffed = True
        self.format = fmt
        refusal = self._policy.refusal(fmt, self._head)  # type: ignore[union-attr]  # sniffed only with a policy
        if refusal is not None:
            self._give_up(_Refused(refusal))
            return False
        self._limit = min(self._limit, self._policy.limit_for(fmt))  # type: ignore[union-attr]
        if self._declared is not None and self._declared > self._limit:
            self._give_up(_TooLarge(self._limit))   # Content-Length says it will not fit
            return False
        return True

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
        complete = reason is None or reason.check(ResponseDone, PotentialDataLoss)
        if self._failure is None and complete and not self._sniffed:
            self._sniff(final=True)
        if self._failure is not None:
            self.finished.errback(self._failure)
        elif complete:
            self.finished.callback(b"".join(self._chunks))
        else:
            self.finished.errback(reason)


def _header(response, name: bytes) -> str | None:
    values = response.headers.getRawHeaders(name)
    return values[0].decode("latin-1") if values else None


@attrs.define(eq=False)
class SourceFetcher:
    """Fetches originals from the backend. Share the Upstream's agent: ``SourceFetcher(reactor,
    config.backend, config.limits.max_source_bytes, upstream.agent)``, or
    :meth:`from_config`. :meth:`set_limits` applies ``limits`` (formats, per-format sizes).
    ``breaker``, ``retry`` and ``limit`` are the parts of its
    :class:`~mediaproxy.http.policy.BackendPolicy` (``backend_policy``), built from
    ``backend`` unless given."""

    reactor: Any
    backend: BackendConfig
    max_bytes: int
    agent: Any
    policy: SourcePolicy | None = None
    breaker: CircuitBreaker | None = None
    retry: RetryPolicy | None = None
    limit: ConcurrencyLimit | None = None
    backend_policy: BackendPolicy = attrs.field(init=False)
    _origin: bytes = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._origin = backend_origin(self.backend)[0].encode("ascii")
        if self.policy is None:
            self.policy = SourcePolicy(self.max_bytes)
        backend_policy = self.backend_policy = BackendPolicy.from_config(
            self.reactor, self.backend, self.backend.image_breaker, SOURCE_FAILURES,
            name="images", log=_log, breaker=self.breaker, retry=self.retry, limit=self.limit,
            purpose="source")
        self.breaker = backend_policy.breaker
        self.retry = backend_policy.retry
        self.limit = backend_policy.limit

    @classmethod
    def from_config(cls, reactor, config, agent) -> "SourceFetcher":
        """The fetcher for a whole :class:`~mediaproxy.config.Config`."""
        return cls(reactor, config.backend, config.limits.max_source_bytes, agent,
                   policy=SourcePolicy.from_limits(config.limits))

    def set_limits(self, limits) -> None:
        """Apply :class:`~mediaproxy.config.LimitsConfig` (at start and on a config reload)."""
        self.policy = SourcePolicy.from_limits(limits)
        self.max_bytes = self.policy.max_bytes

    def url_for(self, path: str) -> bytes:
        """The backend URL of a decoded path, spelt the way Django spells a storage name in a
        URL (``django.utils.encoding.filepath_to_uri``): UTF-8, percent-encoded, ``/`` kept as
        separator and ``~!*()'`` as they are (so a '?', '#' or '%' in a file name stays part of
        the name, and the URL a Django storage gave the client is the URL the backend sees)."""
        return self._origin + quote(path.encode("utf-8"), safe=BACKEND_PATH_SAFE).encode("ascii")

    def fetch(self, path: str, correlation_id: str, log,
              headers: dict | None = None) -> Deferred[SourceImage]:
        """GET the decoded backend ``path``; fire with a SourceImage or fail with SourceError
        (404 source_not_found, 413 source_too_large, 422 unsupported_image/unsupported_format,
        502 backend_error/backend_unavailable, 503 circuit_open/backend_busy, 504
        backend_timeout). ``headers`` are extra request headers (str or bytes)."""
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
        self.call = fetcher.backend_policy.call()
        self.current: Deferred | None = None
        self.status: int | None = None   # of the attempt's response, once it came
        self.deadline_timer = None
        self.timed_out = False
        self.deadline_passed = False
        self.done: Deferred[SourceImage] = Deferred(self._cancel)

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

    # -- the whole fetch -------------------------------------------------------------------

    def start(self) -> Deferred[SourceImage]:
        self.log.debug("fetching source {path}", path=self.path,
                       correlation_id=self.correlation_id)
        self.done.addBoth(self._log_end)
        if self.call.admit() is not None:
            self._finish(Failure(SourceError(503, "backend_busy",
                                             "The image backend is busy; retry shortly.")))
            return self.done
        self.deadline_timer = self.reactor.callLater(self.fetcher.backend.source_timeout,
                                                     self._deadline)
        self._attempt()
        return self.done

    def _finish(self, result) -> None:
        timer, self.deadline_timer = self.deadline_timer, None
        if timer is not None and timer.active():
            timer.cancel()
        self.call.release()
        if not self.done.called:
            if isinstance(result, Failure):
                self.done.errback(result)
            else:
                self.done.callback(result)

    def _cancel(self, _d) -> None:
        # The caller gave up: stop the attempt under way; its outcome is not counted.
        current = self.current
        self.current = None
        if current is not None:
            self.call.record(CANCELLED)
            current.cancel()
        self._finish(Failure(CancelledError()))

    def _deadline(self) -> None:
        self.deadline_timer = None
        self.deadline_passed = True
        _warnings.warn(self.log, ("deadline",),
                       "source {path} not fetched within {seconds} s; giving up",
                       path=self.path, seconds=self.fetcher.backend.source_timeout,
                       correlation_id=self.correlation_id)
        current, self.current = self.current, None
        if current is not None:
            self.call.record(TIMEOUT)
            current.cancel()
        self._finish(Failure(SourceError(504, "backend_timeout",
                                         "The backend did not deliver the source in time.")))

    # -- one attempt -----------------------------------------------------------------------

    def _attempt(self) -> None:
        fetcher = self.fetcher
        if self.call.attempt() is not None:
            self._finish(Failure(SourceError(
                503, "circuit_open", "The image backend is failing; try again shortly.")))
            return
        self.timed_out = False
        self.status = None
        try:
            d = fetcher.agent.request(b"GET", fetcher.url_for(self.path), self._headers(), None)
        except Exception:
            d = Deferred()
            d.errback(Failure())
        self.current = d
        self.call.start_header_timer(self._header_timeout, d)
        d.addBoth(self._stop_header_timer)
        d.addCallback(self._got_response)
        d.addErrback(self._classify)
        d.addBoth(self._attempt_done, d)

    def _header_timeout(self, d: Deferred) -> None:
        self.timed_out = True
        d.cancel()

    def _stop_header_timer(self, result):
        self.call.stop_header_timer()
        return result

    def _attempt_done(self, outcome, d: Deferred) -> None:
        if self.current is not d:   # cancelled or past the deadline: already settled
            return
        self.current = None
        if not isinstance(outcome, tuple):
            self.call.record(ANSWERED, self.status)
            self._finish(outcome)
            return
        error, kind, status = outcome
        self.call.record(kind, status)
        delay = self.call.retry_delay(kind, status)
        if delay is not None:
            self.log.debug("source {path}: {error} on attempt {attempt}; retrying in "
                           "{delay:.3f} s", path=self.path, error=error.error,
                           attempt=self.call.attempts, delay=delay,
                           correlation_id=self.correlation_id)
            self.call.retry_later(delay, self._attempt)
            return
        self._finish(Failure(error))

    def _collect(self, response, limit: int, policy=None) -> Deferred[bytes]:
        declared = response.length if response.length is not UNKNOWN_LENGTH else None
        collector = _Collector(self.reactor, limit, self.fetcher.backend.idle_timeout, policy,
                               declared)
        response.deliverBody(collector)
        return collector.finished

    def _got_response(self, response):
        code = self.status = response.code
        policy = self.fetcher.policy
        max_bytes = policy.max_bytes
        if code == 200:
            if response.length is not UNKNOWN_LENGTH and response.length > max_bytes:
                response.deliverBody(_Drop())
                raise _TooLarge(max_bytes)
            d = self._collect(response, max_bytes, policy)
            d.addCallback(lambda body: SourceImage(
                body=body,
                content_type=_header(response, b"content-type"),
                etag=_header(response, b"etag"),
                last_modified=_header(response, b"last-modified"),
            ))
            return d
        if code == 304:
            # Revalidation (the pipeline sent If-None-Match / If-Modified-Since): the copy the
            # caller holds is still good.
            d = self._collect(response, ERROR_BODY_LIMIT)
            d.addCallback(lambda _: SourceImage(
                body=b"", etag=_header(response, b"etag"),
                last_modified=_header(response, b"last-modified"), not_modified=True))
            return d
        error = self._status_error(code)
        # Read a short error page so the connection goes back to the pool; then fail.
        d = self._collect(response, ERROR_BODY_LIMIT)
        d.addBoth(lambda _: Failure(_Status(code, error)))
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

    def _classify(self, failure: Failure):
        """A failed attempt -> (SourceError, outcome kind, status) for the policy: an answer
        refused here (an error status, too large, not an image) is still the backend answering,
        a stalled body a timeout."""
        if failure.check(_Status):
            status = failure.value
            return status.error, ANSWERED, status.code
        if failure.check(_TooLarge):
            return (SourceError(413, "source_too_large",
                                f"The source is larger than {failure.value.limit} bytes."),
                    ANSWERED, self.status)
        if failure.check(_Refused):
            return failure.value.error, ANSWERED, self.status
        if failure.check(_Stalled):
            return (SourceError(504, "backend_timeout",
                                "The backend stopped sending the source."), TIMEOUT, None)
        kind = failure_kind(failure, self.timed_out)
        if kind == TIMEOUT:
            return (SourceError(504, "backend_timeout", "The backend did not answer in time."),
                    kind, None)
        if kind == CONNECTION:
            if failure.check(ResponseFailed) and not failure.check(ResponseNeverReceived):
                return (SourceError(502, "backend_error", "The backend connection broke before "
                                    "the answer was whole."), kind, None)
            return (SourceError(502, "backend_unavailable", "The backend could not be reached."),
                    kind, None)
        if kind == CANCELLED:
            return SourceError(502, "backend_error", "The fetch was cancelled."), kind, None
        _warnings.warn(self.log, ("failed", failure.type.__name__),
                       "source fetch of {path} failed: {why}", path=self.path,
                       why=f"{failure.type.__name__}: {failure.getErrorMessage()}",
                       correlation_id=self.correlation_id)
        return SourceError(502, "backend_error", "The backend connection failed."), kind, None

    def _log_end(self, result):
        if isinstance(result, Failure):
            error = result.value
            # a missing original is routine (the access line says 404), trouble is not
            (self.log.debug if getattr(error, "status", None) == 404 else self.log.info)(
                "fetch of source {path} failed: {status} {error} after {attempts} "
                "attempt(s) in {ms:.1f} ms", path=self.path,
                status=getattr(error, "status", None),
                error=getattr(error, "error", result.type.__name__), ms=self._ms(),
                attempts=self.call.attempts, correlation_id=self.correlation_id)
        else:
            self.log.debug("fetched source {path}: {bytes} bytes in {ms:.1f} ms",
                           path=self.path, bytes=len(result.body), ms=self._ms(),
                           correlation_id=self.correlation_id)
        return result


class _Status(Exception):
    """The backend answered a status other than 200."""

    def __init__(self, code: int, error: SourceError):
        super().__init__(code)
        self.code = code
        self.error = error
