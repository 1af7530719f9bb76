"""
The root resource: image requests go through the check chain, then the image protocol hook;
everything else is asked of ``mediaproxy_check_passthrough``, then streamed to the backend.
Also writes image responses: conditional requests (304), HEAD, the headers every image response
carries, and the JSON body of a refusal.
"""

from __future__ import annotations

from email.utils import parsedate_to_datetime

from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from .http import requestinfo
from .http.errors import CORRELATION_HEADER, write_error
from .http.sendbody import send_body
from .http.head import head_lines
from .inflight import method_label
from .logs import request_log
from .memo import Memo
from .models import ImageResponse, Rejection


def etag_matches(if_none_match: str, etag: str) -> bool:
    """Weak comparison (RFC 9110 13.1.2), as If-None-Match requires."""
    if if_none_match.strip() == "*":
        return True
    bare = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == bare for tag in if_none_match.split(","))


def not_modified_since(if_modified_since: str, last_modified: str | None) -> bool:
    if not last_modified:
        return False
    try:
        return parsedate_to_datetime(last_modified) <= parsedate_to_datetime(if_modified_since)
    except (TypeError, ValueError, IndexError):
        return False


def _raw(headers) -> list[tuple[bytes, bytes]]:
    return [(n.encode("latin-1"), v.encode("latin-1")) for n, v in headers]


class ProxyResource(Resource):
    isLeaf = True

    def __init__(self, runtime):
        super().__init__()
        self.runtime = runtime
        #: the header pairs of an image response -> their ready lines (:meth:`_write_image`)
        self._heads = Memo(256)

    def render(self, request):
        rt = self.runtime
        info = requestinfo.from_request(request, rt.config.server.trusted_proxies,
                                        rt.config.monitoring.request_id_headers)
        log = request_log(info.correlation_id)
        # for the connection's own lines (deadlines, buffer limits) about this request
        request.mediaproxy_correlation_id = info.correlation_id
        try:
            match = rt.call_first("mediaproxy_match_request", request=info, runtime=rt)
        except Exception:
            log.failure("a match_request hook raised for {path}", path=info.path)
            match = Rejection(500, "internal_error", "the request could not be handled")
        if match is None:
            self._track(request, info, "passthrough", "")
            rt.emit("passthrough", correlation_id=info.correlation_id, method=info.method)
            refused = rt.call_first("mediaproxy_check_passthrough", request=info, runtime=rt)
            if refused is not None:
                log.info("{method} {path} refused: {error}", method=info.method,
                         path=info.path, error=refused.error)
                write_error(request, refused.status, refused.error, refused.message,
                            info.correlation_id, refused.parameter, _raw(refused.headers))
                return NOT_DONE_YET
            requestinfo.align_id_headers(request, info, rt.config.monitoring.request_id_headers)
            rt.upstream.proxy(request, info, log)
            return NOT_DONE_YET
        if isinstance(match, Rejection):
            self._track(request, info, "image", "")
            self._refuse(request, info, match, None, log)
            return NOT_DONE_YET
        waiting = self._track(request, info, "image", match.route)
        rt.emit("image.request", correlation_id=info.correlation_id, route=match.route)
        log.debug("{method} {path} -> image request ({route})", method=info.method,
                  path=info.path, route=match.route)
        # The check chain (validation, signatures, rate limits) runs here, in the core, so a
        # plugin that takes over the image protocol below cannot skip it.
        try:
            rejection = rt.call_first("mediaproxy_check_request", image_request=match,
                                      request=info, runtime=rt)
        except Exception:
            log.failure("a check_request hook raised for {path}", path=info.path)
            rejection = Rejection(500, "internal_error", "the request could not be handled")
        if rejection is not None:
            self._refuse(request, info, rejection, match, log)
            return NOT_DONE_YET
        try:
            result = rt.call_first("mediaproxy_handle_image", image_request=match,
                                   request=info, runtime=rt)
        except Exception:
            self._internal_error(Failure(), request, info, log)
            return NOT_DONE_YET
        if not isinstance(result, Deferred):
            self._write_now(result, request, info, match, log)
            return NOT_DONE_YET
        if result.called and not result.paused:
            # fired already (the pipeline's memory hit does, before it returns): answered
            # here, without chaining callbacks
            outcome = result.result
            if not isinstance(outcome, Failure):
                result.result = None   # consumed
                self._write_now(outcome, request, info, match, log)
                return NOT_DONE_YET
        # A client that goes away cancels its wait: a transform nobody waits for any more
        # leaves the memory budget's queue instead of holding a place it will not use.
        waiting.append(result)
        result.addCallback(self._write, request, info, match, log)
        result.addErrback(self._internal_error, request, info, log)
        return NOT_DONE_YET

    def _track(self, request, info, kind: str, route: str) -> list:
        """Count the request in flight, and send its one ``request`` event when it ends
        (:mod:`mediaproxy.inflight`). Returns a list the caller may put the Deferred of the
        request's answer in: it is cancelled when the client goes away first (one end
        callback per request does both: ``StreamingRequest.when_done``, else ``notifyFinish``)."""
        rt = self.runtime
        started = rt.reactor.seconds()
        rt.inflight.start(kind)
        waiting: list = []

        def ended(result):
            rt.inflight.end(kind)
            aborted = result is not None   # notifyFinish fails when the client went away
            body = getattr(request, "body", None)   # a streaming request's RequestBody
            rt.emit("request", rt.reactor.seconds() - started, info.correlation_id,
                    kind=kind, method=method_label(info.method), status=request.code,
                    bytes=request.sentLength, cache=getattr(request, "mediaproxy_cache", ""),
                    route=route, aborted=aborted, path=info.path, client=info.client_ip,
                    bytes_in=body.received if body is not None else 0)
            if aborted:
                for d in waiting:
                    d.cancel()

        when_done = getattr(request, "when_done", None)
        if when_done is not None:
            when_done(ended)
        else:   # a request of another kind (a test's)
            request.notifyFinish().addBoth(ended)
        return waiting

    def _refuse(self, request, info, rejection, image_request, log):
        self.runtime.emit("rejection", correlation_id=info.correlation_id,
                          error=rejection.error, parameter=rejection.parameter or "")
        log.info("refused: {error} ({parameter})", error=rejection.error,
                 parameter=rejection.parameter)
        self._write_rejection(request, info, rejection, image_request, log)

    def _internal_error(self, failure, request, info, log):
        if failure.check(CancelledError) and request._disconnected:
            log.debug("the client went away before its image was ready")
            return
        log.failure("image request failed for {path}", failure, path=info.path)
        if not request.finished and not request._disconnected and not request.startedWriting:
            write_error(request, 500, "internal_error", "the image could not be produced",
                        info.correlation_id)

    def _write_now(self, result, request, info, image_request, log):
        try:
            self._write(result, request, info, image_request, log)
        except Exception:
            self._internal_error(Failure(), request, info, log)

    def _write(self, result, request, info, image_request, log):
        if request._disconnected or request.finished:
            return
        if isinstance(result, Rejection):
            self._write_rejection(request, info, result, image_request, log)
            return
        self._write_image(request, info, image_request, result, log)

    def _extra_headers(self, image_request, response, info):
        rt = self.runtime
        for headers in rt.call_all("mediaproxy_response_headers", image_request=image_request,
                                   response=response, request=info, runtime=rt):
            yield from headers or ()

    def _write_rejection(self, request, info, rejection, image_request, log):
        headers = list(rejection.headers)
        headers += list(self._extra_headers(image_request, None, info))
        write_error(request, rejection.status, rejection.error, rejection.message,
                    info.correlation_id, rejection.parameter, _raw(headers))

    def _write_image(self, request, info, image_request, response: ImageResponse, log):
        rt = self.runtime
        status = response.status
        headers = [("Content-Type", response.content_type),
                   ("X-Content-Type-Options", "nosniff")]
        if response.etag:
            headers.append(("ETag", response.etag))
        if response.last_modified:
            headers.append(("Last-Modified", response.last_modified))
        headers += response.headers
        request.mediaproxy_cache = response.cache_status
        if rt.config.cache.x_cache_header:
            headers.append(("X-Cache", response.cache_status))
        extra = list(self._extra_headers(image_request, response, info))
        if any(name == "Cache-Control" for name, _ in extra):   # a plugin's replaces ours
            headers = [pair for pair in headers if pair[0] != "Cache-Control"]
        headers += extra
        body = response.body
        if status == 200 and self._not_modified(info, response):
            status, body = 304, b""
            headers = [(n, v) for n, v in headers if n.lower() not in ("content-type",)]
        request.setResponseCode(status)
        # The block of these headers is made once per distinct set (a popular image's hits
        # all carry the same): a pure function of the pairs.
        key = tuple(headers)
        block = self._heads.get(key)
        if block is None:
            block = head_lines(headers)
            self._heads.put(key, block)
        add_head = getattr(request, "add_head", None)
        if add_head is not None:
            add_head(block + b"X-Correlation-Id: " + info.correlation_id.encode() + b"\r\n")
        else:   # a request of another kind (a test's): through its responseHeaders
            for name, value in headers:
                request.responseHeaders.addRawHeader(name.encode("latin-1"),
                                                     value.encode("latin-1"))
            request.setHeader(CORRELATION_HEADER, info.correlation_id.encode())
        if status != 304:
            request.setHeader(b"Content-Length", b"%d" % len(response.body))
        log.debug("{status} {content_type} {size} bytes ({cache})", status=status,
                  content_type=response.content_type, size=len(body), cache=response.cache_status)
        send_body(request, body if request.method != b"HEAD" else b"")

    @staticmethod
    def _not_modified(info, response) -> bool:
        inm = info.header("if-none-match")
        if inm is not None:
            return bool(response.etag) and etag_matches(inm, response.etag)
        ims = info.header("if-modified-since")
        return ims is not None and not_modified_since(ims, response.last_modified)
