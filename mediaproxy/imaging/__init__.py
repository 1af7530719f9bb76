"""Decode, transform and encode images with Pillow (see :mod:`.rendering`)."""

from .rendering import *  # noqa: F401,F403
from .rendering import __all__  # noqa: F401
