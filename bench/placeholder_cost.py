"""What a placeholder (plugins/mediaproxy-placeholder) costs to make, beside a ``w=300`` JPEG of
the same source: the CPU time of one render in this process (``time.process_time``, the median
of ``N`` renders: little disturbed by other processes), cold (the source decoded for it) and
with a decoded copy at hand (another size of the source rendered just before, the decoded-image
cache's case). No HTTP: the render alone, as the pool runs it.

    .venv/bin/python bench/placeholder_cost.py [N] [CORPUS_DIR]

``CORPUS_DIR`` (default ``/tmp/mediaproxy-bench/corpus``) holds photo_4000.jpg, photo_1920.jpg
and alpha_1200.png; every loop is bounded by ``N`` (default 6).
"""

import statistics
import sys
import time
from pathlib import Path

import attrs

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "plugins" / "mediaproxy-placeholder"))

import mediaproxy_placeholder as plugin  # noqa: E402
from mediaproxy import ImageRequest, TransformSpec, imaging  # noqa: E402
from mediaproxy.imaging.decoded import DecodedCache  # noqa: E402

KINDS = ("blurhash", "thumbhash", "color", "lqip")
SOURCES = ("photo_4000.jpg", "photo_1920.jpg", "alpha_1200.png")


def cpu_ms(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.process_time()
        fn()
        times.append(time.process_time() - started)
    return statistics.median(times) * 1000


def renderer(data: bytes, label: str, cache=None):
    base = TransformSpec()
    if label == "w=300 jpeg":
        spec = attrs.evolve(base, width=300, format="jpeg")
        return lambda: imaging.render(data, spec, cache=cache)
    request = ImageRequest(route="query", source_path="/x", params={"placeholder": label})
    output = plugin.mediaproxy_output(request, base)
    return lambda: imaging.render(data, base, (), request, cache=cache, output=output)


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 6
    corpus = Path(sys.argv[2] if len(sys.argv) > 2 else "/tmp/mediaproxy-bench/corpus")
    for name in SOURCES:
        data = (corpus / name).read_bytes()
        for label in ("w=300 jpeg", *KINDS):
            cold = cpu_ms(renderer(data, label), runs)
            cache = DecodedCache(64 * 1024 * 1024)
            imaging.render(data, TransformSpec(width=800, format="jpeg"), cache=cache)
            warm = cpu_ms(renderer(data, label, cache), runs)
            print(f"{name:16} {label:11} cold {cold:6.1f} ms CPU   "
                  f"decoded copy at hand {warm:6.1f} ms CPU", flush=True)


if __name__ == "__main__":
    main()
