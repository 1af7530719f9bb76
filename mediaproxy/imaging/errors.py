"""The errors of :mod:`mediaproxy.imaging`: an image that cannot be served, each kind with
the HTTP status and the snake_case error code the client sees."""

from __future__ import annotations


class ImageError(Exception):
    """An image that cannot be served.

    ``status`` is the HTTP status to answer, ``error`` a short snake_case code and
    ``message`` a sentence for the client (never a path or an internal detail).
    """

    status = 422
    error = "unsupported_image"

    def __init__(self, message: str, *, status: int | None = None, error: str | None = None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if error is not None:
            self.error = error

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status}, {self.error!r}, {self.message!r})"



class UnsupportedImage(ImageError):
    """The bytes are not an image Pillow recognises (empty, text, random data)."""

    error = "unsupported_image"



class CorruptImage(ImageError):
    """A recognised image whose data is truncated or damaged."""

    error = "corrupt_image"



class UnsupportedFormat(ImageError):
    """A source in a format outside the allow-list (422), or an output format that cannot be
    written (400)."""

    error = "unsupported_format"



class ImageTooLarge(ImageError):
    """More source pixels (width x height x frames) than allowed."""

    error = "image_too_large"



class TooManyFrames(ImageError):
    """An animation with more frames than allowed."""

    error = "too_many_frames"



class InvalidTransform(ImageError):
    """A transform parameter mediaproxy.imaging does not know (a caller's bug, or a plugin's)."""

    status = 400
    error = "invalid_transform"



class OutputTooLarge(ImageError):
    """The output is larger than its format can hold (e.g. WebP is limited to 16383 px)."""

    error = "output_too_large"


class BudgetExceeded(ImageError):
    """The work a transform would take is over a per-request budget, known before the work
    is done (CPU: a JPEG's scans; memory: :func:`~mediaproxy.imaging.estimate_bytes`).

    The pipeline answers these with a short JSON 4xx (a :class:`~mediaproxy.models.Rejection`)
    rather than a placeholder image, and never caches them: the client learns why, and the
    same request with other parameters (a smaller size) may pass.
    """

    error = "over_budget"


class TooManyScans(BudgetExceeded):
    """A JPEG with more scans (or marker segments) than allowed: every progressive scan walks
    every block of the image, so the decode's CPU grows with their count, unbounded by the
    file's size."""

    error = "too_many_scans"


class OverMemoryBudget(BudgetExceeded):
    """The memory a transform would allocate (decoded frames, working copies, output frames,
    encoder buffers) is over ``limits.max_transform_bytes``."""

    error = "over_memory_budget"


class TransformTimeout(ImageError):
    """The transform passed its deadline (``limits.transform_timeout``) and stopped: the
    thread is free again. Answered 503 ``transform_timeout`` with ``Retry-After``."""

    status = 503
    error = "transform_timeout"
