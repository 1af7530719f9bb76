"""
What a production of the image pipeline (:mod:`.pipeline`) can come to besides a new entry, a
placeholder or a refusal, and how a background job judges it.
"""

from __future__ import annotations

import attrs

from ..jobs import Permanent
from ..models import CacheEntry, ImageResponse, Rejection

#: Source failures that justify serving a stale copy (the backend is down or slow, not the
#: image gone: a 404 is an answer, and the placeholder says so).
STALE_IF_ERROR_STATUSES = (500, 502, 503, 504)


@attrs.frozen
class Stale:
    """A production that failed, answered with the stale copy it was refreshing."""

    entry: CacheEntry


@attrs.frozen
class Found:
    """A production that found, once the source was known, the result already stored under the
    key of the format it resolves to (``fmt=auto`` or no ``fmt`` answered as an explicit
    format was before): a hit in ``layer``."""

    entry: CacheEntry
    layer: str


@attrs.frozen
class Collapsed:
    """The result of another request's production, as a waiter gets it (Cache-Status
    ``collapsed``): a waiter of :meth:`ImagePipeline._coalesced` in this process, or a request
    whose lock lookup found what another process or node had just stored."""

    result: object


def collapsed(result):
    return result if isinstance(result, Collapsed) else Collapsed(result)


def job_result(result):
    """A background render's result, as its job sees it: a 503 (the queue was busy) or a
    stale copy (the backend failed) is worth a retry; another refusal or a placeholder is
    not."""
    if isinstance(result, Collapsed):
        result = result.result
    if isinstance(result, Stale) or (isinstance(result, Rejection) and result.status == 503):
        raise RuntimeError(f"not rendered: {getattr(result, 'error', 'backend failed')}")
    if isinstance(result, Rejection):
        raise Permanent(result.error)
    if isinstance(result, ImageResponse):
        if result.status in STALE_IF_ERROR_STATUSES:
            raise RuntimeError(f"source unavailable ({result.status})")
        raise Permanent(f"placeholder {result.status}")
    return result


def overloaded(e) -> Rejection:
    """The 503 a shed request gets (``e``: the :class:`~mediaproxy.admission.Overloaded`
    that refused it), with its honest ``Retry-After``."""
    return Rejection(503, "overloaded", "the server is busy; retry shortly",
                     headers=[("Retry-After", str(e.retry_after))])
