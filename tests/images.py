"""Kept for tests written before the kit; import from mediaproxy.testing."""
from mediaproxy.testing.images import *  # noqa: F401,F403
