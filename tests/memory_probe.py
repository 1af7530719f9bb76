"""The real peak memory of renders, measured in this separate process (run by
tests/test_imaging_memory.py): ``python tests/memory_probe.py < cases.pickle``.

tracemalloc is blind to Pillow's C allocations (and to libjpeg's, libwebp's, libavif's), so
the measure is the kernel's: each case runs in a fork of this process, which resets its
high-water mark (``/proc/self/clear_refs`` 5), reads ``VmRSS``, renders, and reports
``VmHWM`` minus that. A fork starts from this process's small heap, so one case's freed
memory is never reused by the next. Input: a pickled list of (name, data, spec) or (name,
data, spec, steps); output: one JSON line per case, ``[name, peak bytes, outcome]`` (the spec
is given as the keyword arguments of a :class:`~mediaproxy.models.TransformSpec`, the steps
as pickled :class:`~mediaproxy.models.TransformStep` objects, made before the fork: an
overlay they hold is the plugin's, not the render's) (the output's size and frames, or the
error's code).
"""

from __future__ import annotations

import json
import os
import pickle
import sys


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def _measure(render, data, spec) -> tuple[int, object]:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _status("VmRSS:")
    try:
        out = render(data, spec)
        outcome = [out.width, out.height, out.frames]
    except Exception as exc:   # the outcome is reported, whatever it is
        outcome = getattr(exc, "error", type(exc).__name__)
    return _status("VmHWM:") - base, outcome


def main() -> None:
    cases = pickle.load(sys.stdin.buffer)
    from mediaproxy.imaging import render
    from mediaproxy.models import TransformSpec
    from mediaproxy.testing.images import make_animated

    # load every codec before forking: their code is not part of a render's peak
    tiny = make_animated("GIF", 2, size=(8, 8))
    for fmt in ("jpeg", "png", "webp", "gif", "avif", "tiff"):
        render(tiny, TransformSpec(format=fmt))
    for name, data, fields, *more in cases:
        spec = TransformSpec(**fields)
        steps = more[0] if more else ()
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            code = 0
            try:
                peak, outcome = _measure(lambda d, s, steps=steps: render(d, s, steps), data, spec)
                os.write(write, json.dumps([name, peak, outcome]).encode())
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        os.close(write)
        answer = b""
        while chunk := os.read(read, 65536):
            answer += chunk
        os.close(read)
        os.waitpid(pid, 0)
        sys.stdout.write(answer.decode() + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
