"""
Per-request budgets inside the transform: CPU and time.

* **A JPEG's scans** are counted before decoding (every progressive scan walks every block
  of the image: a small file repeating one scan thousands of times costs minutes of CPU);
  more than ``limits.max_jpeg_scans`` is a 422 JSON ``too_many_scans``, answered without
  decoding (which is why these tests are fast: decoding the 5,000-scan file takes seconds).
* **The deadline** (``limits.transform_timeout``) stops the thread, not only the answer: the
  transform checks it between phases, frames and decode chunks. The tests drive it with a
  counting clock (``render(..., clock=...)``), never the wall clock.
"""

from __future__ import annotations

import json
import threading

import pytest

from mediaproxy import TransformStep, hookimpl
from mediaproxy.imaging import TooManyScans, TransformTimeout, render
from mediaproxy.imaging.scans import count_jpeg_scans
from mediaproxy.models import TransformSpec
from mediaproxy.testing import ImageOrigin, start_proxy
from mediaproxy.testing.images import decode, encode, make_animated, noise

from .imaging_attacks import (
    progressive_jpeg, scans_in, with_comments, with_repeated_scan,
)


# -- hand-built JPEGs ------------------------------------------------------------------------

BASE = progressive_jpeg()
BASE_SCANS = scans_in(BASE)


def test_the_hand_built_files_are_what_they_claim():
    assert BASE_SCANS == 10                           # libjpeg's progressive script
    assert len(ATTACK) < 100_000 and scans_in(ATTACK) == 5010
    assert scans_in(with_repeated_scan(BASE, 5)) == 15
    assert scans_in(encode(noise(64, 48), "JPEG")) == 1
    # libjpeg decodes the repeated scans (a warning, not an error)
    assert decode(with_repeated_scan(BASE, 5)).size == (64, 48)


@pytest.mark.parametrize("data, scans", [
    (BASE, BASE_SCANS),
    (encode(noise(64, 48), "JPEG"), 1),
    (with_repeated_scan(BASE, 90), BASE_SCANS + 90),
    (with_comments(BASE, 7), BASE_SCANS),
    (encode(noise(64, 48), "JPEG", restart_marker_blocks=1), 1),   # RSTn inside the scan
])
def test_count_jpeg_scans(data, scans):
    assert count_jpeg_scans(data, 10_000, 10_000)[0] == scans


def test_the_count_stops_past_the_limits():
    assert count_jpeg_scans(with_repeated_scan(BASE, 5000), 100, 10_000)[0] == 101
    assert count_jpeg_scans(with_comments(BASE, 5000), 100, 50)[1] == 51


def spec(**kw) -> TransformSpec:
    return TransformSpec(**{"width": 32, "format": "png", **kw})


def test_scans_up_to_the_limit_decode_one_more_is_refused():
    at_limit = with_repeated_scan(BASE, 20 - BASE_SCANS)
    assert decode(render(at_limit, spec(max_jpeg_scans=20)).body).size == (32, 24)
    with pytest.raises(TooManyScans) as refused:
        render(with_repeated_scan(BASE, 21 - BASE_SCANS), spec(max_jpeg_scans=20))
    assert (refused.value.status, refused.value.error, refused.value.message) == (
        422, "too_many_scans", "The JPEG has more than 20 scans; decoding it would cost too "
        "much.")


def test_too_many_marker_segments_are_refused():
    with pytest.raises(TooManyScans) as refused:
        render(with_comments(BASE, 1300), spec(max_jpeg_scans=100))
    assert (refused.value.error, refused.value.message) == (
        "too_many_segments", "The JPEG has more than 1224 marker segments.")
    assert decode(render(with_comments(BASE, 1000), spec()).body).size == (32, 24)


# -- over HTTP -------------------------------------------------------------------------------

#: 2000x1500 with 5,000 repeats of a refinement scan (93 KB): about 10 s of CPU to decode,
#: refused before.
ATTACK = with_repeated_scan(progressive_jpeg((2000, 1500), flat=True), 5000)


@pytest.fixture(scope="module")
def proxy(live_reactor):
    files = {"/media/scans.jpg": ATTACK, "/media/ok.jpg": progressive_jpeg((200, 150))}
    running = start_proxy(origin=ImageOrigin(
        {path: (200, body, "image/jpeg", []) for path, body in files.items()}))
    yield running
    running.stop()


def test_a_jpeg_with_thousands_of_scans_is_a_422_json_not_cached(proxy):
    for attempt in range(2):
        status, headers, body, _ = proxy.get("/media/scans.jpg?w=100")
        assert status == 422
        assert headers["content-type"].startswith("application/json")
        answer = json.loads(body)
        assert (answer["error"], answer["message"]) == (
            "too_many_scans", "The JPEG has more than 100 scans; decoding it would cost too "
            "much.")
        assert "x-placeholder" not in headers
    # the second answer is a refusal again, not a cached image
    assert proxy.get("/media/ok.jpg?w=100")[0] == 200


# -- the deadline ----------------------------------------------------------------------------

class Ticks:
    """A clock that reads 0 until :meth:`expire` is called, then 1000."""

    def __init__(self):
        self.now = 0.0
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.now

    def expire(self) -> None:
        self.now = 1000.0


def recorder(seen: list, order: int, expire_at: int | None = None, clock: Ticks | None = None):
    def apply(image, spec, request):
        seen.append(image.size)
        if expire_at is not None and len(seen) == expire_at:
            clock.expire()
        return image
    return TransformStep(f"recorder{order}", apply, order=order)


def test_a_deadline_already_past_stops_before_decoding():
    seen = []
    with pytest.raises(TransformTimeout) as stopped:
        render(BASE, spec(deadline=0.0), steps=[recorder(seen, 1)], clock=Ticks())
    assert (stopped.value.status, stopped.value.error, stopped.value.message) == (
        503, "transform_timeout", "The image took too long to process (before decoding).")
    assert seen == []


@pytest.mark.parametrize("fmt", ["gif", "webp", "png"])
def test_an_animation_stops_at_the_next_frame_once_its_deadline_passes(fmt):
    clock = Ticks()
    before, after = [], []
    source = make_animated("GIF", 40, size=(30, 20))
    with pytest.raises(TransformTimeout) as stopped:
        render(source, spec(deadline=1.0, format=fmt),
               steps=[recorder(before, 1, expire_at=3, clock=clock), recorder(after, 600)],
               clock=clock)
    # frame 3 passed the deadline inside its first step: its resize never started
    assert stopped.value.message == "The image took too long to process (resizing)."
    assert (len(before), len(after)) == (3, 2)


def test_the_encode_of_an_animation_checks_the_deadline_between_frames():
    clock = Ticks()
    after = []
    source = make_animated("GIF", 10, size=(30, 20))
    with pytest.raises(TransformTimeout) as stopped:
        render(source, spec(deadline=1.0, format="gif"),
               steps=[recorder(after, 600, expire_at=10, clock=clock)], clock=clock)
    assert stopped.value.message == "The image took too long to process (encoding)."
    assert len(after) == 10


class ReadCounter:
    """A clock that passes the deadline after ``reads`` readings."""

    def __init__(self, reads: int):
        self.left = reads

    def __call__(self) -> float:
        self.left -= 1
        return 0.0 if self.left >= 0 else 1000.0


@pytest.mark.parametrize("fmt", ["webp", "avif"])
def test_the_webp_and_avif_writers_check_the_deadline_as_they_reach_each_frame(fmt):
    """Pillow's WebP and AVIF writers take the frames as a list at once, then seek to each:
    the deadline is read there too, not only before the writer starts."""
    from mediaproxy.imaging.budget import Deadline
    from mediaproxy.imaging.encode import _encode, _prepare_frames

    frames = [noise(30, 20, seed) for seed in range(1, 7)]
    preparing = Deadline(None)
    _prepare_frames(frames, fmt, (255, 255, 255), preparing)
    before = preparing.checks + 1       # the frames' preparation, then once as it starts
    counted = Deadline(None)
    body = _encode(frames, fmt, spec(format=fmt), durations=[100] * 6, deadline=counted).body
    assert getattr(decode(body), "n_frames", 1) == 6
    assert counted.checks >= before + len(frames) - 1      # at least once per added frame
    # the deadline passes just after the writer started: it stops at the next frame
    with pytest.raises(TransformTimeout) as stopped:
        _encode(frames, fmt, spec(format=fmt), durations=[100] * 6,
                deadline=Deadline(1.0, ReadCounter(before)))
    assert stopped.value.message == "The image took too long to process (encoding)."


def test_a_decode_stops_between_chunks():
    """A 2000x1500 noise PNG is ~9 MB: the decoder reads it in 16 KiB chunks, checking the
    deadline before each; the clock passes it a few chunks in."""
    data = encode(noise(2000, 1500), "PNG", compress_level=0)
    with pytest.raises(TransformTimeout) as stopped:
        render(data, spec(deadline=1.0), clock=ReadCounter(20))
    assert stopped.value.message == "The image took too long to process (decoding)."


class Stuck:
    """A step (order 1) that holds the thread until released, and one after the resize
    (order 600) that counts the frames that got that far."""

    def __init__(self):
        self.entered = threading.Event()
        self.release = threading.Event()
        self.finished = 0

    def hold(self, image, spec, request):
        self.entered.set()
        self.release.wait(30)
        return image

    def count(self, image, spec, request):
        self.finished += 1
        return image

    @hookimpl
    def mediaproxy_transform_steps(self, image_request, spec):
        if image_request.params.get("w") == 77:
            return [TransformStep("stuck", self.hold, order=1),
                    TransformStep("count", self.count, order=600)]
        return None


def test_a_transform_past_its_deadline_stops_and_frees_its_thread(live_reactor):
    """One thread: the 503 arrives while a step holds it; released, the transform meets its
    deadline at the next check and the thread serves the next request."""
    stuck = Stuck()
    files = {"/media/anim.gif": (200, make_animated("GIF", 20, size=(30, 20)), "image/gif", [])}
    running = start_proxy(origin=ImageOrigin(files), plugins=[stuck], overrides={
        "limits": {"transform_timeout": 0.2}, "processing": {"threads": 1}})
    try:
        status, headers, body, _ = running.get("/media/anim.gif?w=77")
        assert status == 503 and json.loads(body)["error"] == "transform_timeout"
        assert headers["retry-after"] == "5"
        assert stuck.entered.is_set()
        stuck.release.set()
        status, _, body, _ = running.get("/media/anim.gif?w=20")
        assert status == 200 and decode(body).n_frames == 20
        assert stuck.finished == 0          # no frame of the abandoned transform went on
    finally:
        stuck.release.set()
        running.stop()
