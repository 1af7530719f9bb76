"""
The decode guard against generated headers (tests/image_headers.py: GIF, PNG, JPEG and WebP
built field by field, sizes and frame counts drawn from their whole range): ``probe`` and
``render`` answer an :class:`~mediaproxy.imaging.ImageError` or an image, never another
exception, never an output larger than asked, and never decode a source whose header declares
more pixels than the budget.

The oracle is the file format itself: the sizes the test wrote into the header, not what the
code under test reads from it. The same strategies feed the reliability suite's long fuzz run
(tests/reliability/fuzz.py); crashes it finds are replayed by tests/test_fuzz_regressions.py.
"""

from __future__ import annotations

import attrs
from hypothesis import HealthCheck, given, settings

from mediaproxy import imaging
from mediaproxy.imaging.errors import ImageTooLarge
from mediaproxy.models import TransformSpec
from mediaproxy.testing import decode

from .image_headers import gifs, image_headers, jpegs, pngs

#: Small budgets keep every example cheap: at most 64K pixels are ever decoded.
LIMIT = 256 * 256
SPEC = TransformSpec(width=16, height=16, max_source_pixels=LIMIT, max_frames=8)
FAST = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def probe_or_refusal(data: bytes):
    try:
        return imaging.probe(data)
    except imaging.ImageError:
        return None


def render_or_refusal(data: bytes, spec: TransformSpec = SPEC):
    try:
        return imaging.render(data, spec)
    except imaging.ImageError as e:
        return e


@FAST
@given(image_headers)
def test_probe_and_render_answer_an_image_or_an_image_error(generated):
    _, data, _ = generated
    probe_or_refusal(data)
    rendered = render_or_refusal(data)
    if not isinstance(rendered, imaging.ImageError):
        image = decode(rendered.body)
        assert image.size[0] <= 16 and image.size[1] <= 16


@FAST
@given(pngs())
def test_a_png_is_probed_at_the_size_its_ihdr_declares(generated):
    data, declared = generated
    info = probe_or_refusal(data)
    if info is not None:
        assert (info.width, info.height) == declared["size"]


@FAST
@given(pngs() | jpegs() | gifs())
def test_a_header_declaring_more_than_the_budget_is_never_decoded(generated):
    """The frame limit is lifted above any generated count, so the pixel budget is the only
    refusal that can come before decoding."""
    data, declared = generated
    width, height = declared["size"]
    info = probe_or_refusal(data)
    if info is not None and width * height > LIMIT:
        result = render_or_refusal(data, attrs.evolve(SPEC, max_frames=10_000))
        assert isinstance(result, ImageTooLarge), result
