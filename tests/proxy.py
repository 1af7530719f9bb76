"""Kept for tests written before the kit; import from mediaproxy.testing."""
from mediaproxy.testing import (  # noqa: F401
    ImageOrigin, RunningProxy as Running, make_image as image_bytes, start_origin, start_proxy)
