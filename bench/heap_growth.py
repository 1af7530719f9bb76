"""What glibc malloc's options do to a transform process's heap: the RSS that a cold load leaves
behind and the CPU per transform, with each option, in fresh interpreters, in turns.

    .venv/bin/python bench/heap_growth.py                       # every option, 3 rounds
    .venv/bin/python bench/heap_growth.py --rounds 5 --transforms 2000 default trim1s

One run: a fresh interpreter sets the option, then 2 threads (a worker's pool on this 2-core
machine) render ``photo_1920.jpg`` from the shared bench's corpus to a (300+i)x(200+i) JPEG
like the bench's load scenario (a copy of the source bytes as a fetch would make, draft,
LANCZOS thumbnail, save), keeping every result (as the memory layer does) and the last three
decoded sources (as the decoded-image cache does), with the proxy's own mmap threshold
(``mediaproxy.admission.return_freed_images_to_the_os``, 4 MiB). It prints the RSS growth
over the run's start (the results alone are about 20 MiB of it), the RSS peak, and the CPU per
transform (``time.process_time``: every thread). The options:

* ``default``: glibc's defaults beside the proxy's 4 MiB mmap threshold (what runs today);
* ``arena1``, ``arena2``: ``mallopt(M_ARENA_MAX, n)`` before the threads start (as
  ``MALLOC_ARENA_MAX=n`` would): the pool threads share n arenas instead of one each;
* ``trim1s``: ``malloc_trim(0)`` after a transform when the last trim is a second old;
* ``trimeach``: ``malloc_trim(0)`` after every transform;
* ``mmap256``, ``mmap1024``: the mmap threshold at 256 KiB or 1 MiB instead of 4 MiB, so a
  decoded source and the resized copy are mapped and unmapped on their own.

Pillow's own block cache is not an option here: ``PIL.Image.core.get_blocks_max()`` is 0 by
default (no freed block is kept), so there is nothing to lower. In process, no proxy and no
network: the figures isolate the allocator from the rest of a shared machine's noise (the CPU
still shares its cores); they are medians of the rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = Path(os.environ.get("BENCH_CORPUS", "/tmp/mediaproxy-bench/corpus"))
OPTIONS = ["default", "arena1", "arena2", "trim1s", "trimeach", "mmap256", "mmap1024"]

_RUN = r"""
import ctypes, io, json, sys, threading, time
from concurrent.futures import ThreadPoolExecutor
from PIL import Image
from mediaproxy.admission import return_freed_images_to_the_os

option, count, source = sys.argv[1], int(sys.argv[2]), sys.argv[3]
return_freed_images_to_the_os()
libc = ctypes.CDLL("libc.so.6")
if option.startswith("arena"):
    libc.mallopt(-8, int(option[5:]))             # M_ARENA_MAX
if option.startswith("mmap"):
    libc.mallopt(-3, int(option[4:]) * 1024)      # M_MMAP_THRESHOLD
interval = {"trim1s": 1.0, "trimeach": 0.0}.get(option)
trims, last, trim_lock = [], [None], threading.Lock()

def trim():
    now = time.monotonic()
    if last[0] is not None and now - last[0] < interval or not trim_lock.acquire(False):
        return
    try:
        t = time.perf_counter()
        libc.malloc_trim(0)
        trims.append(time.perf_counter() - t)
        last[0] = time.monotonic()
    finally:
        trim_lock.release()

src = open(source, "rb").read()
results, decoded, lock = [], [], threading.Lock()

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024

def work(i):
    body = bytes(bytearray(src))
    box = (300 + i % 100, 200 + i % 100)
    im = Image.open(io.BytesIO(body))
    im.draft("RGB", box)
    im.load()
    with lock:
        decoded.append(im)
        del decoded[:-3]
    out = im.copy()
    out.thumbnail(box, Image.LANCZOS)
    buf = io.BytesIO()
    out.save(buf, "JPEG", quality=80)
    with lock:
        results.append(buf.getvalue())
    if interval is not None:
        trim()

start, cpu, peak = rss(), time.process_time(), 0.0
with ThreadPoolExecutor(2) as pool:
    for k, _ in enumerate(pool.map(work, range(count))):
        if k % 25 == 0:
            peak = max(peak, rss())
peak = max(peak, rss())
trims.sort()
print(json.dumps({"growth": rss() - start, "peak": peak, "start": start,
                  "results": sum(map(len, results)) / 2**20,
                  "cpu_ms": 1000 * (time.process_time() - cpu) / count, "trims": len(trims),
                  "trim_median_us": 1e6 * trims[len(trims) // 2] if trims else None}))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("options", nargs="*", help=f"some of {', '.join(OPTIONS)} (default: all)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--transforms", type=int, default=1500)
    args = parser.parse_args()
    args.options = args.options or OPTIONS
    unknown = set(args.options) - set(OPTIONS)
    if unknown:
        parser.error(f"unknown option(s) {', '.join(sorted(unknown))}: choose from {OPTIONS}")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("MALLOC_ARENA_MAX", None)
    rows: dict[str, list[dict]] = {o: [] for o in args.options}
    for n in range(args.rounds):
        for option in (args.options if n % 2 == 0 else args.options[::-1]):
            out = subprocess.run(
                [sys.executable, "-c", _RUN, option, str(args.transforms),
                 str(CORPUS / "photo_1920.jpg")], env=env, capture_output=True, text=True,
                check=True, timeout=600).stdout
            rows[option].append(json.loads(out))
    print(f"{args.transforms} transforms of photo_1920.jpg on 2 threads, median of "
          f"{args.rounds} rounds (every result kept: "
          f"{rows[args.options[0]][0]['results']:.1f} MiB)")
    print(f"  {'option':9} {'RSS growth':>11} {'peak RSS':>9} {'CPU/transform':>14}  trims")
    for option, runs in rows.items():
        med = {k: statistics.median(r[k] for r in runs) for k in ("growth", "peak", "cpu_ms")}
        trim = ""
        if runs[0]["trims"]:
            trim = (f"{statistics.median(r['trims'] for r in runs):.0f}, median "
                    f"{statistics.median(r['trim_median_us'] for r in runs):.0f} us each")
        print(f"  {option:9} {med['growth']:8.1f} MiB {med['peak']:6.1f} MiB "
              f"{med['cpu_ms']:10.2f} ms  {trim}")


if __name__ == "__main__":
    main()
