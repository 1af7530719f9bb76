"""libavif's threads inside the transform pool: AVIF encodes of an 800 px image (q60, speed 8)
from two Python threads at once, as two pool threads do under a cold load, with libavif's
default thread count (the host's cores) and with one; then one encode at a time, at 800 and
1920 px. Figures in docs/performance.md ("Encoder and resize options").

    .venv/bin/python bench/avif_threads.py /tmp/mediaproxy-bench/corpus/photo_1920.jpg
"""

import io
import sys
import threading
import time

from PIL import Image
src = Image.open(sys.argv[1])
src.load()
img = src.convert("RGB").resize((800, int(800 * src.height / src.width)),
                                  Image.Resampling.BICUBIC)
N = 24


def run(max_threads):
    opts = {"quality": 60, "speed": 8}
    if max_threads:
        opts["max_threads"] = max_threads

    def work():
        for _ in range(N):
            img.save(io.BytesIO(), "AVIF", **opts)
    w, c = time.perf_counter(), time.process_time()
    ts = [threading.Thread(target=work) for _ in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return time.perf_counter() - w, time.process_time() - c


for rnd in range(3):
    for mt in (0, 1):
        wall, cpu = run(mt)
        print("two at once: max_threads", mt or "default", "round", rnd, "encodes/s",
              round(2 * N / wall, 1), "CPU ms/encode", round(1000 * cpu / (2 * N), 1))
for width in (800, 1920):
    alone = src.convert("RGB").resize((width, int(width * src.height / src.width)),
                                      Image.Resampling.BICUBIC)
    for rnd in range(2):
        for mt in (0, 1):
            opts = {"quality": 60, "speed": 8, **({"max_threads": mt} if mt else {})}
            w, c = time.perf_counter(), time.process_time()
            for _ in range(10):
                alone.save(io.BytesIO(), "AVIF", **opts)
            print("alone:", width, "px, max_threads", mt or "default", "wall ms",
                  round(100 * (time.perf_counter() - w), 1), "CPU ms",
                  round(100 * (time.process_time() - c), 1))
