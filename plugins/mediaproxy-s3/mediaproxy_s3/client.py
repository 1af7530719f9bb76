"""
A small non-blocking S3 client: each request is signed with botocore's AWS Signature V4 signer
(``S3SigV4Auth``: the same code every AWS SDK for Python signs with) and sent with treq on the
reactor, through its own bounded pool of persistent connections.

Why treq + the signer rather than a full client (boto3/botocore) in the thread pool: the
thread pool is the transform pool, sized for Pillow work; a blocking client would hold one of
its threads for each store round trip (up to ``timeout`` seconds when the store hangs), so a
slow store would stall image rendering. Signing is a few HMACs and the SHA-256 of the body;
bodies above ``offload_bytes`` are signed in the pool (hashing a large body never holds the
reactor).

Bounded by design:

* every operation (connect, request, whole body) has a deadline: ``timeout`` (the Deferred is
  cancelled, which aborts the connection);
* a body is read only up to ``max_bytes`` (a larger one aborts the connection);
* at most ``max_connections`` requests in flight (so as many connections), and at most
  ``WAITING_PER_CONNECTION`` times as many waiting for one; past that a call fails at once
  (:class:`StoreBusy`: the layer is skipped for that request, the breaker does not count it);
* a breaker, the core's (:class:`mediaproxy.CircuitBreaker`, the backend client's): after
  ``failures_to_open`` consecutive failures every call fails at once (:class:`StoreUnavailable`)
  for about ``retry_after`` seconds (the end of the period of the clock, as the core's breakers
  do), then one call probes the store: a success closes it, a failure opens it again. So a
  store that is down costs the requests nothing but a skipped layer. A 404 or any other answer
  from a working store is not a failure; a call refused as busy, or an object too large, is no
  verdict either way.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any
from urllib.parse import quote, urlencode

import attrs
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from treq.client import HTTPClient
from twisted.internet.defer import Deferred, DeferredSemaphore, inlineCallbacks, maybeDeferred
from twisted.internet.protocol import Protocol
from twisted.internet.threads import deferToThreadPool
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss

from mediaproxy import CircuitBreaker


class StoreError(Exception):
    """The store failed an operation (unreachable, timed out, or answered an error)."""


class StoreUnavailable(StoreError):
    """Not even tried: the breaker is open after consecutive failures."""


class TooLarge(Exception):
    """The object is larger than the client reads."""


class StoreBusy(Exception):
    """Too many calls already wait for a connection: not tried (nor counted as a failure)."""


#: Calls that may wait for a free connection, per connection.
WAITING_PER_CONNECTION = 4


@attrs.frozen
class Answer:
    status: int
    headers: dict        #: lower-case name -> the last value
    body: bytes


class _Body(Protocol):
    """Collects a response body up to ``limit`` bytes; past it, or when its Deferred is
    cancelled, the connection is aborted."""

    def __init__(self, limit: int):
        self.limit = limit
        self.parts: list[bytes] = []
        self.size = 0
        self.done = Deferred(lambda d: self._abort())

    def _abort(self):
        if self.transport is not None:
            self.transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            self._abort()
            if not self.done.called:
                self.done.errback(TooLarge(f"body over {self.limit} bytes"))
            return
        self.parts.append(data)

    def connectionLost(self, reason) -> None:
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self.parts))
        else:
            self.done.errback(reason)


@attrs.define(eq=False)
class S3Client:
    endpoint: str
    bucket: str
    region: str
    access_key: str
    secret_key: str
    reactor: Any
    timeout: float = 2.0
    connect_timeout: float = 1.0
    max_connections: int = 16
    failures_to_open: int = 3
    retry_after: float = 5.0
    threadpool: Any = None
    offload_bytes: int = 256 * 1024
    breaker: CircuitBreaker = attrs.field(init=False)
    _pool: Any = None
    _http: Any = None
    _auth: Any = None
    _slots: Any = None

    def __attrs_post_init__(self):
        self.endpoint = self.endpoint.rstrip("/")
        self._pool = HTTPConnectionPool(self.reactor, persistent=True)
        self._pool.maxPersistentPerHost = self.max_connections
        # A pooled connection the store closed while idle fails the next request on it before
        # any answer: Twisted retries such an idempotent request once on a new connection
        # (else every idle period would cost a spurious failure, counted by the breaker).
        self._pool.retryAutomatically = True
        agent = Agent(self.reactor, connectTimeout=self.connect_timeout, pool=self._pool)
        self._http = HTTPClient(agent)
        self._slots = DeferredSemaphore(self.max_connections)
        self._auth = S3SigV4Auth(Credentials(self.access_key, self.secret_key), "s3",
                                 self.region)
        # Only consecutive failures open it: a store is one dependency answering every call
        # alike, so no failure ratio over a window (min_calls out of reach turns it off).
        self.breaker = CircuitBreaker(self.reactor, "s3", open_for=self.retry_after,
                                      consecutive_failures=self.failures_to_open,
                                      min_calls=2**62)

    # -- the breaker --------------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        """Every call is tried (the breaker is closed): false while it is open or probing."""
        return self.breaker.state == "closed"

    def _succeeded(self, result):
        self.breaker.success()
        return result

    def _failed(self, failure):
        if failure.check(TooLarge, StoreBusy):
            self.breaker.release()  # the store works: the object is not ours, or we are busy
            return failure
        self.breaker.failure()
        if failure.check(StoreError):
            return failure
        raise StoreError(f"{failure.type.__name__}: {failure.getErrorMessage()}")

    # -- requests -----------------------------------------------------------------------------

    def url(self, key: str = "", query: dict | None = None) -> str:
        url = f"{self.endpoint}/{quote(self.bucket)}"
        if key:
            url += "/" + quote(key, safe="/")
        if query:
            url += "?" + urlencode(sorted(query.items()), quote_via=quote, safe="")
        return url

    def _sign(self, method: str, url: str, headers: dict, body: bytes) -> dict:
        request = AWSRequest(method=method, url=url, headers=headers, data=body)
        self._auth.add_auth(request)
        return {k: v for k, v in request.headers.items()}

    def request(self, method: str, key: str = "", query: dict | None = None,
                headers: dict | None = None, body: bytes = b"", max_bytes: int = 1 << 20,
                ok: tuple = (200, 204)) -> Deferred:
        """Send one signed request; fire with an :class:`Answer` whose status is in ``ok`` or
        404, else fail with :class:`StoreError` (counted by the breaker)."""
        if not self.breaker.allow():
            return maybeDeferred(self._refuse)
        if len(self._slots.waiting) >= WAITING_PER_CONNECTION * self.max_connections:
            return maybeDeferred(self._busy).addErrback(self._failed)
        d = self._slots.run(self._send, method, self.url(key, query), dict(headers or {}),
                            body, max_bytes, ok)
        d.addTimeout(self.timeout, self.reactor)     # the wait for a connection included
        return d.addCallbacks(self._succeeded, self._failed)

    def _busy(self):
        raise StoreBusy(f"{len(self._slots.waiting)} calls wait for a connection already")

    def _refuse(self):
        raise StoreUnavailable(f"the store failed {self.failures_to_open} times in a row; "
                               f"skipped for {self.breaker.retry_after()} s, until it is probed")

    @inlineCallbacks
    def _send(self, method, url, headers, body, max_bytes, ok):
        if len(body) > self.offload_bytes and self.threadpool is not None:
            signed = yield deferToThreadPool(self.reactor, self.threadpool, self._sign,
                                             method, url, headers, body)
        else:
            signed = self._sign(method, url, headers, body)
        response = yield self._http.request(
            method, url, headers={k: [v] for k, v in signed.items()},
            data=body if body else None)
        length = response.length if isinstance(response.length, int) else None
        if length is not None and length > max_bytes:
            refused = _Body(0)                       # aborts the connection at once
            refused.done.addErrback(lambda _: None)
            response.deliverBody(refused)
            raise TooLarge(f"{length} bytes")
        collector = _Body(max_bytes)
        response.deliverBody(collector)
        data = yield collector.done
        headers_out = {name.decode().lower(): values[-1].decode("latin-1")
                       for name, values in response.headers.getAllRawHeaders()}
        if response.code not in ok and response.code != 404:
            raise StoreError(f"{method} answered {response.code}: {data[:200]!r}")
        return Answer(response.code, headers_out, data)

    # -- the operations the layer uses ---------------------------------------------------------

    def get(self, key: str, max_bytes: int) -> Deferred:
        return self.request("GET", key, max_bytes=max_bytes)

    def put(self, key: str, body: bytes, metadata: dict[str, str]) -> Deferred:
        headers = {"Content-Type": "application/octet-stream"}
        headers.update({f"x-amz-meta-{name}": value for name, value in metadata.items()})
        return self.request("PUT", key, headers=headers, body=body)

    def delete(self, key: str) -> Deferred:
        return self.request("DELETE", key)

    def list_page(self, prefix: str, token: str | None) -> Deferred:
        query = {"list-type": "2", "prefix": prefix, "max-keys": "1000"}
        if token:
            query["continuation-token"] = token
        return self.request("GET", query=query, max_bytes=4 << 20)

    def delete_many(self, keys: list[str]) -> Deferred:
        """One DeleteObjects call (at most 1000 keys), quiet mode."""
        from xml.sax.saxutils import escape
        body = ("<Delete><Quiet>true</Quiet>" + "".join(
            f"<Object><Key>{escape(k)}</Key></Object>" for k in keys) + "</Delete>").encode()
        md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
        return self.request("POST", query={"delete": ""}, body=body,
                            headers={"Content-MD5": md5, "Content-Type": "application/xml"},
                            max_bytes=4 << 20)

    def close(self) -> Deferred:
        return self._pool.closeCachedConnections()
