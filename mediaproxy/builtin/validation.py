"""
Validation, first in the check chain: bounds the parsed parameters cannot check one by one
(the output pixel budget), and the source path (length, allowed prefixes, traversal).
"""

from __future__ import annotations

from .. import hookimpl
from ..models import Rejection
from .routing import unsafe_path_reason

MAX_PATH_LENGTH = 1024


@hookimpl(tryfirst=True)
def mediaproxy_check_request(image_request, request, runtime):
    limits = runtime.config.limits
    path = image_request.source_path
    if len(path.encode("utf-8")) > MAX_PATH_LENGTH:
        return Rejection(400, "invalid_path", f"the path is longer than {MAX_PATH_LENGTH} bytes",
                         parameter="path")
    reason = unsafe_path_reason(path)
    if reason:
        return Rejection(400, "invalid_path", reason, parameter="path")
    if not any(path.startswith(prefix) for prefix in runtime.config.routes.prefixes):
        return Rejection(404, "not_found", "no image route serves this path", parameter="path")
    width = image_request.params.get("w") or 0
    height = image_request.params.get("h") or 0
    if width > limits.max_width:
        return Rejection(400, "invalid_parameter", f"width must be at most {limits.max_width}",
                         parameter="w")
    if height > limits.max_height:
        return Rejection(400, "invalid_parameter",
                         f"height must be at most {limits.max_height}", parameter="h")
    if width * height > limits.max_output_pixels:
        return Rejection(400, "invalid_parameter",
                         f"width x height must be at most {limits.max_output_pixels} pixels",
                         parameter="w")
    return None
