"""A large resize on two cores: the output's rows cut into two horizontal strips, each
resized from its share of the input, the second on a helper thread when it is free.

Pillow's resample runs on one thread (it releases the GIL while it works, so two threads do
run it in parallel), and it is half the CPU of a render whose output is large: a srcset's
1440x1080 from a 2000x1500 shrink-on-load decode takes 50 ms of LANCZOS (40 of bicubic)
on one core against 10 ms of JPEG encoding. A request served alone on an otherwise idle
machine (the larger sizes of one page's ``srcset``, asked for one after another) waits for
that resize while another core idles; cut in two, it waits for about half of it.

The strips: each is ``image.resize((width, rows), filter, box=...)`` with the box's vertical
extent the strip's rows times the whole resize's scale. Pillow's filter support is clipped to
the whole input, not to the box, so a strip's edge rows read the input rows beyond its box as
the whole resize does. The result is a resize with the same filter and geometry (the size
is exact), not always the same bytes as one ``resize`` call: the filter centres'
floating-point arithmetic may differ in the last bits, and Pillow picks the order of its
two passes by their cost for each call, and the intermediate pass clips its overshoot to
0..255. On photographs the pixels are within 2 levels of one call's; on pixel noise single
pixels differ by tens of levels (tests/test_imaging_strips.py). A cuttable resize is always cut the same way, whether
the helper is free or not (busy: the calling thread resizes both strips; free but not yet
started on the second strip when the first is done, as on a machine whose cores are all
taken: the calling thread takes it back), so one source and spec always give the same bytes
(one ETag), whatever the load, and a render never waits for a helper that has not started.

Bounded: one helper thread per process, taken without waiting. The threads that resample at
once are at most the transform pool's plus one, and a render's CPU is the same (the strips'
extra input rows are two filter supports). Memory: the strips' horizontal passes together
read the box's rows plus :data:`CUT_ROWS`, then the strips (one output's pixels) are pasted
onto the output; the memory estimate counts both (:mod:`.budget`). Only a downscale whose
Pillow resize would not first ``reduce`` by a whole factor is cut (that reduction is aligned
to the whole box), of at most :data:`MAX_STRIP_SCALE`, and only outputs of at least
:data:`MIN_STRIP_PIXELS` (below it, handing a strip over costs more than it saves).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait

from PIL import Image

#: The smallest output (width x height) cut into strips: about 5 ms of LANCZOS on one core.
MIN_STRIP_PIXELS = 250_000
#: The largest vertical scale (input rows per output row) cut into strips: beyond it Pillow's
#: reducing gap usually reduces first, and the rows read twice at a cut (the filter's support,
#: 3 x scale on each side for LANCZOS) are bounded by :data:`CUT_ROWS`.
MAX_STRIP_SCALE = 4.0
#: Input rows a cut adds to the horizontal passes: LANCZOS's support (3 x scale; bicubic's is
#: 2 x scale) on both sides of it, at :data:`MAX_STRIP_SCALE`, rounded up.
CUT_ROWS = 2 * 3 * int(MAX_STRIP_SCALE) + 2

_lock = threading.Lock()
_helper: ThreadPoolExecutor | None = None
#: Free while the helper thread is idle (taken without waiting).
_free = threading.Semaphore(1)


def _forget_helper() -> None:
    """In a forked child: the parent's helper thread does not exist there; make a new one
    at first use (the workers are started with exec, not fork; a plugin or test may fork)."""
    global _helper, _free
    _helper, _free = None, threading.Semaphore(1)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_helper)


def _pool() -> ThreadPoolExecutor:
    """The process's helper thread (made at first use)."""
    global _helper
    with _lock:
        if _helper is None:
            _helper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mediaproxy-strip")
        return _helper


def cuttable(size: tuple[int, int], box: tuple[float, float, float, float],
             reducing_gap: float | None) -> bool:
    """Whether a resize of ``box`` to ``size`` is cut into strips: large enough, a downscale
    on both axes of at most :data:`MAX_STRIP_SCALE` rows per row, and no whole-factor
    reduction first (Pillow's ``reducing_gap`` rule)."""
    width, height = size
    box_width, box_height = box[2] - box[0], box[3] - box[1]
    if width * height < MIN_STRIP_PIXELS or height < 2:
        return False
    if box_width < width or box_height < height or box_height > MAX_STRIP_SCALE * height:
        return False
    if reducing_gap is not None and (int(box_width / width / reducing_gap) > 1
                                     or int(box_height / height / reducing_gap) > 1):
        return False
    return True


def resize(image: Image.Image, size: tuple[int, int], resample: int,
           box: tuple[float, float, float, float], reducing_gap: float | None,
           parallel: bool = False) -> Image.Image:
    """``image.resize(size, resample, box=box, reducing_gap=reducing_gap)``; with
    ``parallel`` and when :func:`cuttable`, in two strips, the second on the helper thread
    when it is free (else on this one)."""
    if not parallel or not cuttable(size, box, reducing_gap):
        return image.resize(size, resample, box=box, reducing_gap=reducing_gap)
    width, height = size
    cut = height // 2
    middle = box[1] + cut * (box[3] - box[1]) / height
    top_box = (box[0], box[1], box[2], middle)
    bottom_box = (box[0], middle, box[2], box[3])
    bottom_size = (width, height - cut)
    free, future = _free, None
    if free.acquire(blocking=False):
        try:
            future = _pool().submit(_strip, image, bottom_size, resample, bottom_box,
                                    _niceness())
        except BaseException:
            free.release()
            raise
        future.add_done_callback(lambda _: free.release())
    try:
        top = image.resize((width, cut), resample, box=top_box)
    except BaseException:
        if future is not None and not future.cancel():
            wait([future])               # the helper's strip ends before the error goes up
        raise
    if future is not None and future.cancel():
        future = None                    # not started yet (a loaded machine): take it back
    bottom = future.result() if future is not None else \
        image.resize(bottom_size, resample, box=bottom_box)
    out = Image.new(image.mode, size, None)         # no fill: both strips cover it
    out.paste(top, (0, 0))
    out.paste(bottom, (0, cut))
    return out


def _strip(image: Image.Image, size: tuple[int, int], resample: int,
           box: tuple[float, float, float, float], niceness: int | None) -> Image.Image:
    """One strip, on a helper thread running at the caller's niceness (the transform pool's
    threads are nicer than the reactor's: a helper must not be less nice than they are)."""
    if niceness is not None:
        tid = threading.get_native_id()
        if os.getpriority(os.PRIO_PROCESS, tid) < niceness:
            try:
                os.setpriority(os.PRIO_PROCESS, tid, niceness)
            except OSError:                # not allowed: the strip runs anyway
                pass
    return image.resize(size, resample, box=box)


def _niceness() -> int | None:
    """The calling thread's niceness (``None`` where threads have none of their own)."""
    if not hasattr(os, "getpriority") or not hasattr(threading, "get_native_id"):
        return None
    try:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    except OSError:
        return None
