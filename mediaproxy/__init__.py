"""mediaproxy: an image edge proxy in front of your backend, built on Twisted and pluggy."""

import pluggy

from .models import (
    CacheEntry, Event, HealthStatus, ImageRequest, ImageResponse, Param, Rejection, Rendered,
    RequestInfo, SourceError, SourceImage, TransformSpec, TransformStep,
)

__version__ = "0.1.0"

#: Mark a function or method as a mediaproxy hook implementation.
hookimpl = pluggy.HookimplMarker("mediaproxy")

__all__ = [
    "__version__", "hookimpl", "CacheEntry", "Event", "HealthStatus", "ImageRequest",
    "ImageResponse", "Param", "Rejection", "Rendered", "RequestInfo", "SourceError",
    "SourceImage", "TransformSpec", "TransformStep",
]
