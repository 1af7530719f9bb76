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
