"""A large downscale cut in two strips, the second on a helper thread
(:mod:`mediaproxy.imaging.strips`): which resizes are cut (exact boundaries), the output's
size and pixels against one Pillow call, the same bytes whether the helper is free or busy,
the memory estimate's extra rows, and the pipeline with ``parallel_resize``."""

from __future__ import annotations

import io

import pytest
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from mediaproxy.imaging import render, strips
from mediaproxy.imaging.budget import Work
from mediaproxy.models import TransformSpec

LANCZOS = Image.Resampling.LANCZOS


def photo_like(size=(1200, 900)) -> Image.Image:
    """Smooth gradients with hard-edged shapes, softened as a lens would: what a photograph
    gives a resampler (pixel noise is not: see the module's docstring)."""
    width, height = size
    image = Image.merge("RGB", (Image.linear_gradient("L").resize(size),
                                Image.radial_gradient("L").resize(size),
                                Image.linear_gradient("L").rotate(90).resize(size)))
    draw = ImageDraw.Draw(image)
    for i in range(30):
        x, y = (i * 97) % width, (i * 61) % height
        draw.ellipse((x, y, x + 40 + i * 5, y + 30 + i * 3),
                     fill=((i * 50) % 256, (i * 90) % 256, (i * 20) % 256))
    return image.filter(ImageFilter.GaussianBlur(1.5))


def largest_difference(a: Image.Image, b: Image.Image) -> int:
    return max(high for _, high in ImageChops.difference(a, b).getextrema())


# -- which resizes are cut -------------------------------------------------------------------

def test_outputs_from_min_strip_pixels_on_are_cut():
    assert strips.MIN_STRIP_PIXELS == 250_000
    assert strips.cuttable((500, 500), (0, 0, 1000, 1000), None)
    assert not strips.cuttable((500, 499), (0, 0, 1000, 998), None)


def test_a_scale_of_at_most_max_strip_scale_rows_per_row_is_cut():
    assert strips.MAX_STRIP_SCALE == 4.0
    assert strips.cuttable((1000, 500), (0, 0, 1000, 2000), None)
    assert not strips.cuttable((1000, 500), (0, 0, 1000, 2000.5), None)


def test_an_enlargement_on_either_axis_is_not_cut():
    assert strips.cuttable((1000, 500), (0, 0, 1000, 500), None)      # same size: a copy
    assert not strips.cuttable((1000, 500), (0, 0, 999.5, 600), None)
    assert not strips.cuttable((1000, 500), (0, 0, 1200, 499.5), None)


def test_a_resize_that_pillow_first_reduces_by_a_whole_factor_is_not_cut():
    # reducing_gap 2: a factor of int(scale / 2) on each axis; 2 reduces first
    assert strips.cuttable((600, 500), (0, 0, 2399, 1000), 2.0)          # 3.998 wide: 1
    assert not strips.cuttable((600, 500), (0, 0, 2400, 1000), 2.0)      # 4.0 wide: 2
    assert not strips.cuttable((600, 500), (0, 0, 600, 2000), 2.0)       # 4.0 high: 2
    assert strips.cuttable((600, 500), (0, 0, 2400, 1000), None)          # no gap: cut


def test_a_single_row_is_not_cut():
    assert not strips.cuttable((300_000, 1), (0, 0, 600_000, 2), None)


# -- the output ------------------------------------------------------------------------------

@pytest.mark.parametrize("size, box", [
    ((1000, 750), (0, 0, 1200, 900)),
    ((871, 653), (0, 0, 1200, 900)),                   # odd height: strips of 326 and 327
    ((700, 500), (13.25, 40.5, 1190.75, 880.125)),     # a cover crop's fractional box
])
def test_two_strips_are_the_size_asked_for_and_within_2_levels_of_one_resize(size, box):
    image = photo_like()
    whole = image.resize(size, LANCZOS, box=box, reducing_gap=2.0)
    cut = strips.resize(image, size, LANCZOS, box, 2.0, parallel=True)
    assert cut.size == size and cut.mode == "RGB"
    assert largest_difference(whole, cut) <= 2


def test_the_bytes_are_the_same_whether_the_helper_is_free_or_busy():
    """The cut does not depend on the load: one source and spec give one ETag."""
    image = photo_like()
    free = strips.resize(image, (1000, 750), LANCZOS, (0, 0, 1200, 900), 2.0, parallel=True)
    assert strips._free.acquire(timeout=10)           # the helper is busy (as if with another)
    try:
        busy = strips.resize(image, (1000, 750), LANCZOS, (0, 0, 1200, 900), 2.0,
                             parallel=True)
    finally:
        strips._free.release()
    assert busy.tobytes() == free.tobytes()


def test_a_strip_the_helper_has_not_started_is_taken_back_with_the_same_bytes():
    """The helper is free (its semaphore) but its thread is still on other work when the
    first strip is done, as on a machine whose cores are all taken: the render does not wait
    for it, resizes the second strip itself, and the bytes are the same."""
    import threading

    image = photo_like()
    free = strips.resize(image, (1000, 750), LANCZOS, (0, 0, 1200, 900), 2.0, parallel=True)
    release = threading.Event()
    blocker = strips._pool().submit(release.wait, 60)     # the helper thread is occupied
    try:
        taken_back = strips.resize(image, (1000, 750), LANCZOS, (0, 0, 1200, 900), 2.0,
                                   parallel=True)
        assert not blocker.done()                          # it never ran the strip
    finally:
        release.set()
    assert blocker.result(60) is True
    assert taken_back.tobytes() == free.tobytes()
    assert strips._free.acquire(timeout=10)                # the cancelled strip freed it
    strips._free.release()


def test_without_parallel_or_below_the_threshold_it_is_one_pillow_resize():
    image = photo_like()
    for size, parallel in (((1000, 750), False), ((400, 300), True)):
        one = image.resize(size, LANCZOS, box=(0, 0, 1200, 900), reducing_gap=2.0)
        got = strips.resize(image, size, LANCZOS, (0, 0, 1200, 900), 2.0, parallel=parallel)
        assert got.tobytes() == one.tobytes(), (size, parallel)


# -- the memory estimate ---------------------------------------------------------------------

def test_a_cut_resize_is_estimated_with_cut_rows_more_of_the_horizontal_pass():
    """(A converted JPEG: the resize is the peak of this render.)"""
    work = Work(canvas=(2000, 1500), decoded=(2000, 1500), frames=1, output=(1440, 1080),
                fmt="jpeg", conversions=1)
    cut = Work(canvas=(2000, 1500), decoded=(2000, 1500), frames=1, output=(1440, 1080),
               fmt="jpeg", conversions=1, strips=2)
    assert strips.CUT_ROWS == 26
    assert cut.bytes() - work.bytes() == 4 * 1440 * strips.CUT_ROWS


# -- through the pipeline --------------------------------------------------------------------

def test_a_render_with_parallel_resize_has_the_geometry_and_nearly_the_pixels_of_one_without():
    buffer = io.BytesIO()
    photo_like((1600, 1200)).save(buffer, "JPEG", quality=90)
    data = buffer.getvalue()
    spec = TransformSpec(width=1100, height=1100, format="png")      # 1100x825 from 1600x1200
    one = render(data, spec)
    two = render(data, TransformSpec(width=1100, height=1100, format="png",
                                     parallel_resize=True))
    with Image.open(io.BytesIO(one.body)) as a, Image.open(io.BytesIO(two.body)) as b:
        assert a.size == b.size == (1100, 825)
        assert largest_difference(a.convert("RGB"), b.convert("RGB")) <= 2


def test_the_helper_runs_at_least_as_nice_as_the_thread_that_handed_it_a_strip():
    """The transform pool's threads are nicer than the reactor's (processing.thread_niceness):
    the helper must not resample at a higher priority than they do."""
    import os
    import threading

    image, done = photo_like(), []

    def pool_thread():
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + 3)
        strips.resize(image, (1000, 750), LANCZOS, (0, 0, 1200, 900), 2.0, parallel=True)
        done.append(os.getpriority(os.PRIO_PROCESS, tid))

    thread = threading.Thread(target=pool_thread)
    thread.start()
    thread.join(60)
    helpers = list(strips._pool()._threads)
    assert len(done) == 1 and len(helpers) == 1
    assert os.getpriority(os.PRIO_PROCESS, helpers[0].native_id) >= done[0]


def test_a_forked_child_gets_a_helper_of_its_own():
    """The parent's helper thread does not exist in a fork: a child that resized through it
    would wait for ever. (The proxy's workers are exec'd, not forked; a plugin may fork.)"""
    import os
    import signal

    image = photo_like()
    strips.resize(image, (1000, 750), LANCZOS, (0, 0, 1200, 900), 2.0, parallel=True)
    pid = os.fork()
    if pid == 0:                                           # the child: 0 if the strips end
        signal.alarm(60)
        try:
            out = strips.resize(image, (1000, 750), LANCZOS, (0, 0, 1200, 900), 2.0,
                                parallel=True)
            os._exit(0 if out.size == (1000, 750) else 2)
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
