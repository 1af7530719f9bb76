"""
Fetching originals from the configured backend (the only host a source is ever read from).
Registered ``trylast``: a plugin serving sources from elsewhere (S3, a local directory) answers
first for the requests it knows.
"""

from __future__ import annotations

from .. import hookimpl
from ..logs import request_log


@hookimpl(trylast=True)
def mediaproxy_fetch_source(image_request, request, runtime):
    cid = request.correlation_id
    return runtime.fetcher.fetch(image_request.source_path, cid,
                                 request_log(cid, "mediaproxy.fetch"),
                                 headers=dict(image_request.validators) or None)
