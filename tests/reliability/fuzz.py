"""
A fixed-budget fuzz run over the decode guard: ``imaging.probe`` then ``imaging.render`` of
every input, where anything but an image or an :class:`~mediaproxy.imaging.ImageError` is a
crash, and so is an input that takes more than 10 s (CPU budget) or 1 GiB (memory budget).

With atheris installed (``pip install atheris``; a wheel exists for CPython 3.11 on Linux
x86-64) the run is coverage-guided: libFuzzer mutates a seed corpus of real images (every
format, animations, progressive JPEGs, the reliability attacks scaled down) and keeps the
inputs that reach new code in Pillow's Python plugins and in mediaproxy.imaging. Without it,
the same target runs on the generated headers of tests/image_headers.py (hypothesis) for the
same time.

Every find is copied to tests/reliability/found/ (see its README); moved to
tests/reliability/crashes/ together with its fix, tests/test_fuzz_regressions.py replays it in
the normal suite forever.

Run alone: ``python -m tests.reliability.fuzz --seconds 60``.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import attrs

HERE = Path(__file__).resolve().parent
#: Finds that are fixed: replayed by tests/test_fuzz_regressions.py.
CRASHES = HERE / "crashes"
#: Finds awaiting their fix, where a run copies what it finds.
FOUND = HERE / "found"
ROOT = HERE.parents[1]

#: The transform every input gets: small, with small budgets, so each execution is cheap and a
#: slow one is the input's doing.
SPEC_FIELDS = dict(width=32, height=32, max_source_pixels=1_000_000, max_frames=16)


def target(data: bytes) -> None:
    """One execution: probe and render ``data``; an ImageError is a clean refusal, any other
    exception escapes (a crash)."""
    from mediaproxy import imaging
    from mediaproxy.models import TransformSpec

    try:
        imaging.probe(data)
    except imaging.ImageError:
        pass
    try:
        imaging.render(data, TransformSpec(**SPEC_FIELDS))
    except imaging.ImageError:
        pass


def seeds() -> dict[str, bytes]:
    """The seed corpus: one small valid file per format and shape."""
    from mediaproxy.testing.images import (make_animated, make_image, make_jpeg, make_png16,
                                           make_transparent_png)

    from . import inputs

    return {
        "baseline.jpg": make_image((40, 30), "JPEG"),
        "progressive.jpg": make_image((40, 30), "JPEG", progressive=True),
        "rotated.jpg": make_jpeg(40, 30, orientation=6),
        "rescan.jpg": inputs.rescan_jpeg(20, (64, 64)),
        "rgb.png": make_image((40, 30), "PNG"),
        "alpha.png": make_transparent_png(),
        "deep.png": make_png16(),
        "anim.gif": make_animated("GIF", 3),
        "flat.gif": inputs.flat_gif(3, (40, 30)),
        "lying.gif": inputs.lying_screen_gif(300, 200),
        "anim.webp": make_animated("WEBP", 3),
        "flat.webp": inputs.flat_webp(3, (40, 30)),
        "still.webp": make_image((40, 30), "WEBP"),
        "still.tiff": make_image((40, 30), "TIFF"),
        "still.bmp": make_image((40, 30), "BMP"),
    }


@attrs.define
class Found:
    figures: dict = attrs.Factory(dict)
    counts: Counter = attrs.Factory(Counter)
    problems: list = attrs.Factory(list)


def atheris_available() -> str:
    """``""`` when atheris imports, else the error (for the docs and the table)."""
    try:
        import atheris  # noqa: F401
        return ""
    except Exception as e:                        # ImportError, or a broken build
        return f"{type(e).__name__}: {e}"


def run(seconds: float, workdir: Path) -> Found:
    """Fuzz for ``seconds``; copy what it finds to :data:`FOUND`."""
    found = Found()
    workdir.mkdir(parents=True, exist_ok=True)
    missing = atheris_available()
    if missing:
        found.figures["engine"] = f"hypothesis (atheris unavailable: {missing})"
        return _run_hypothesis(seconds, found)
    corpus, artifacts = workdir / "corpus", workdir / "artifacts"
    corpus.mkdir(exist_ok=True)
    artifacts.mkdir(exist_ok=True)
    for name, data in seeds().items():
        (corpus / name).write_bytes(data)
    done = subprocess.run(
        [sys.executable, "-m", "tests.reliability.fuzz", "--engine", "atheris",
         f"-max_total_time={int(seconds)}", "-timeout=10", "-rss_limit_mb=1024",
         "-max_len=65536", f"-artifact_prefix={artifacts}/", str(corpus)],
        cwd=ROOT, capture_output=True, text=True, timeout=seconds + 120)
    log = done.stdout + done.stderr
    runs = re.findall(r"Done (\d+) runs in (\d+) second", log)
    cov = re.findall(r"cov: (\d+) ft: (\d+)", log)
    found.figures["engine"] = "atheris (libFuzzer)"
    found.figures["executions"] = runs[-1][0] if runs else "?"
    found.figures["coverage"] = f"cov {cov[-1][0]}, ft {cov[-1][1]}" if cov else "?"
    found.figures["corpus"] = str(sum(1 for _ in corpus.iterdir()))
    for crash in sorted(artifacts.iterdir()):
        kind = crash.name.split("-")[0]           # crash, timeout, oom, slow-unit, leak
        found.counts[kind] += 1
        keep = FOUND / f"{kind}-{hashlib.sha1(crash.read_bytes()).hexdigest()[:12]}"
        FOUND.mkdir(exist_ok=True)
        shutil.copyfile(crash, keep)
        found.problems.append(f"{kind}: {keep.relative_to(ROOT)}")
    if done.returncode and not found.problems:
        found.problems.append(f"the fuzzer exited {done.returncode}: {log[-500:]}")
    if not found.counts:
        found.counts["crashes"] = 0
    return found


def _run_hypothesis(seconds: float, found: Found) -> Found:
    from hypothesis import HealthCheck, given, settings

    from tests.image_headers import image_headers

    deadline = time.monotonic() + seconds
    executions = Counter()

    # Batches of examples until the time is up: one endless run would keep generating
    # examples past the deadline (hypothesis has no time budget of its own).
    @settings(max_examples=50, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(image_headers)
    def batch(generated):
        if time.monotonic() > deadline:
            return
        executions["n"] += 1
        target(generated[1])

    try:
        while time.monotonic() < deadline:
            batch()
    except Exception as e:                        # a crash: hypothesis shrank it for us
        found.problems.append(f"{type(e).__name__}: {e}")
        found.counts["crash"] += 1
    found.figures["executions"] = str(executions["n"])
    if not found.counts:
        found.counts["crashes"] = 0
    return found


def _atheris_main(argv: list[str]) -> None:
    import atheris

    with atheris.instrument_imports():
        import PIL.Image
        import PIL.GifImagePlugin, PIL.JpegImagePlugin, PIL.PngImagePlugin  # noqa: E401
        import PIL.WebPImagePlugin, PIL.TiffImagePlugin, PIL.BmpImagePlugin  # noqa: F401,E401
        import mediaproxy.imaging  # noqa: F401
    import warnings

    warnings.simplefilter("ignore")
    atheris.Setup([sys.argv[0], *argv], target)
    atheris.Fuzz()


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["--engine", "atheris"]:
        _atheris_main(argv[2:])
        return 0
    p = argparse.ArgumentParser(prog="python -m tests.reliability.fuzz")
    p.add_argument("--seconds", type=float, default=60)
    args = p.parse_args(argv)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="mp-fuzz-") as tmp:
        found = run(args.seconds, Path(tmp))
    print(found.figures, dict(found.counts), found.problems)
    return 1 if found.problems else 0


if __name__ == "__main__":
    sys.exit(main())
