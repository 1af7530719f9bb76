"""
The one shape of every error the proxy itself answers: a short JSON body
``{"error", "message", "status", "parameter", "correlation_id"}`` with ``Cache-Control: no-store``.
Messages are for clients: never a traceback, a file path or a backend address.
"""

from __future__ import annotations

import json
from http import HTTPStatus

from twisted.web import http

CORRELATION_HEADER = b"X-Correlation-ID"


def error_body(status: int, error: str, message: str, correlation_id: str,
               parameter: str | None = None) -> bytes:
    return json.dumps({
        "error": error, "message": message, "status": status, "parameter": parameter,
        "correlation_id": correlation_id,
    }, separators=(",", ":")).encode() + b"\n"


def write_error(request, status: int, error: str, message: str, correlation_id: str,
                parameter: str | None = None, headers=()) -> None:
    """Answer ``request`` (a twisted.web request not yet written to) with an error and finish it."""
    body = error_body(status, error, message, correlation_id, parameter)
    request.setResponseCode(status)
    for name, value in headers:
        request.setHeader(name, value)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Content-Length", str(len(body)).encode())
    request.setHeader(b"Cache-Control", b"no-store")
    request.setHeader(b"X-Content-Type-Options", b"nosniff")
    request.setHeader(CORRELATION_HEADER, correlation_id.encode())
    if request.method != b"HEAD":
        request.write(body)
    request.finish()


def reason_phrase(code: int) -> bytes | None:
    """The reason phrase of ``code`` for the status line where Twisted knows none (it sends
    ``Unknown Status`` for 422, 429, 431, ...): the one of :class:`http.HTTPStatus`."""
    if code in http.RESPONSES:
        return None
    try:
        return HTTPStatus(code).phrase.encode("ascii")
    except ValueError:
        return None
