"""The encoder settings chosen by measurement (docs/performance.md, "The cold path") reach the
encoder: JPEG output is baseline with optimised Huffman tables by default (one scan; smaller
than without the optimisation, with the very same pixels), progressive when
``processing.jpeg_progressive`` says so; WebP is written at ``processing.webp_method``."""

from __future__ import annotations

import pytest

from mediaproxy.builtin.transforms import transform_spec
from mediaproxy.config import load_config
from mediaproxy.imaging.encode import _encoder_options
from mediaproxy.imaging.scans import count_jpeg_scans
from mediaproxy.models import ImageRequest, TransformSpec
from mediaproxy.testing import ImageOrigin, start_proxy
from mediaproxy.testing.images import decode, encode, noise

SOURCE = encode(noise(240, 160), "JPEG", quality=95)
URL = "/media/uploads/n.jpg?w=120&fmt=jpeg"


def jpeg_from(overrides: dict) -> bytes:
    with start_proxy(origin=ImageOrigin({"/media/uploads/n.jpg": SOURCE}),
                     overrides=overrides) as proxy:
        status, headers, body, _ = proxy.get(URL)
    assert status == 200 and headers["content-type"] == "image/jpeg"
    return body


def test_jpeg_output_is_baseline_and_optimised_by_default(live_reactor):
    default = jpeg_from({})
    plain = jpeg_from({"processing": {"jpeg_optimize": False}})
    progressive = jpeg_from({"processing": {"jpeg_progressive": True}})
    assert count_jpeg_scans(default, 100, 1000)[0] == 1
    assert count_jpeg_scans(plain, 100, 1000)[0] == 1
    assert count_jpeg_scans(progressive, 100, 1000)[0] == 10   # libjpeg's colour script
    assert len(default) < len(plain)          # the optimised tables: fewer bytes ...
    assert decode(default).tobytes() == decode(plain).tobytes()   # ... the same pixels
    assert decode(default).size == (120, 80)


@pytest.mark.parametrize("fmt, options", [
    ("jpeg", {"quality": 80, "progressive": False, "optimize": True}),
    ("webp", {"quality": 80, "method": 2}),
    ("png", {"compress_level": 6}),
    ("avif", {"quality": 80, "speed": 8}),
])
def test_the_default_spec_gives_the_measured_encoder_options(fmt, options):
    assert _encoder_options(fmt, TransformSpec()) == options


def test_the_processing_settings_become_the_spec():
    config = load_config(environ={}, overrides={"processing": {
        "jpeg_progressive": True, "jpeg_optimize": False, "webp_method": 5}})
    request = ImageRequest(route="media", source_path="a.jpg", params={})
    spec = transform_spec(request, "jpeg", config)
    assert (spec.progressive, spec.jpeg_optimize, spec.webp_method) == (True, False, 5)
    default = transform_spec(request, "jpeg", load_config(environ={}, overrides={}))
    assert (default.progressive, default.jpeg_optimize, default.webp_method) == (False, True, 2)
