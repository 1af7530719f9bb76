"""What a watermark (plugins/mediaproxy-watermark) adds to a render: CPU seconds of
``mediaproxy.imaging.render`` on one thread, with and without the plugin's step, in paired
rounds (alternating, so load on the machine falls on all alike). The overlay is decoded once
before the rounds (as the plugin keeps it decoded); the scaled and faded overlay is shared by
the renders (``draw.DRAWN``) or, for the "anew" cases, made again for each render (the first
render of a size).

    .venv/bin/python bench/watermark_cost.py [--rounds 15] [--width 800]

Sources: the shared bench's corpus photo_1920.jpg and alpha_1200.png as the overlay when
/tmp/mediaproxy-bench/corpus exists, else generated stand-ins of the same geometry.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "plugins" / "mediaproxy-watermark"))

from mediaproxy.imaging import render  # noqa: E402
from mediaproxy.models import TransformSpec, TransformStep  # noqa: E402
from mediaproxy_watermark import draw  # noqa: E402
from mediaproxy_watermark.draw import DrawnCache, Layout, Stamp, prepare  # noqa: E402

CORPUS = Path("/tmp/mediaproxy-bench/corpus")


def _file(name: str, size, mode: str, fmt: str) -> bytes:
    path = CORPUS / name
    if path.is_file():
        return path.read_bytes()
    out = io.BytesIO()
    Image.effect_noise(size, 60).convert(mode).save(out, fmt)
    return out.getvalue()


def cpu(fn) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--width", type=int, default=800)
    ns = parser.parse_args()
    source = _file("photo_1920.jpg", (1920, 1080), "RGB", "JPEG")
    overlay = prepare(_file("alpha_1200.png", (1200, 1200), "RGBA", "PNG"))
    spec = TransformSpec(width=ns.width, format="jpeg")
    shared, cold = draw.DRAWN, DrawnCache(0)

    def marked(stamp_args, keep=True):
        def run():
            draw.DRAWN = shared if keep else cold     # cold: the overlay scaled anew
            render(source, spec, [TransformStep("watermark", Stamp(**stamp_args), 700)])
        return run

    image = {"layout": Layout(width_pct=25, opacity=70), "overlay": overlay}
    text = {"layout": Layout(), "text": "(c) Grooveshop 2026"}
    cases = {
        "plain": lambda: render(source, spec),
        "image wm_scale=25": marked(image),
        "image, scaled anew": marked(image, keep=False),
        "text": marked(text),
        "text, drawn anew": marked(text, keep=False),
    }
    for fn in cases.values():
        fn()                                   # warm: fonts, codecs
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(max(1, min(ns.rounds, 200))):
        for name, fn in cases.items():
            times[name].append(cpu(fn))
    base = statistics.median(times["plain"])
    what = ("photo_1920.jpg" if (CORPUS / "photo_1920.jpg").is_file()
            else "a 1920x1080 stand-in")
    print(f"render of {what} at w={ns.width}, {ns.rounds} paired rounds, median CPU:")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:20s} {median * 1000:7.2f} ms  ({(median / base - 1) * 100:+5.1f} %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
