"""Encoder and resize options, measured: for each option of ``processing.*`` that trades CPU for
bytes or quality, the CPU milliseconds, the output bytes and the PSNR (dB, against a reference
resize) on the shared bench's corpus at the cold set's fit-in box (300x200), in this process.

    .venv/bin/python bench/encoder_options.py              # every table
    .venv/bin/python bench/encoder_options.py --only jpeg  # jpeg | webp | png | avif | resize

The reference is the source fully decoded and resized with LANCZOS in one step (no draft, no
reducing_gap): the best this pipeline can make. Encoder rows encode the same resized image
(mediaproxy's own resize, the defaults); their PSNR is the decoded output against the
reference. Resize rows time decode + resize (the encoder fixed: baseline JPEG q80) and compare
the resized pixels with the reference. CPU is ``time.process_time`` (this process only), the
best of ``--repeat`` (7) runs of ``--count`` (5) operations: the least disturbed by the rest
of a shared machine. Nothing touches the network.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import time
from pathlib import Path

from PIL import Image, ImageChops, ImageStat

CORPUS = Path(os.environ.get("BENCH_CORPUS", "/tmp/mediaproxy-bench/corpus"))
SOURCES = ["photo_4000.jpg", "photo_1920.jpg", "photo_800.jpg", "photo_1600.webp",
           "alpha_1200.png", "small.gif"]
BOX = (300, 200)


def best_ms(fn, repeat: int, count: int) -> float:
    best = math.inf
    for _ in range(repeat):
        started = time.process_time()
        for _ in range(count):
            fn()
        best = min(best, (time.process_time() - started) / count)
    return best * 1000


def fit(size, box=BOX):
    scale = min(box[0] / size[0], box[1] / size[1], 1.0)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def flat(image: Image.Image) -> Image.Image:
    """RGB on white (how the JPEG output shows an alpha source)."""
    if image.mode in ("RGBA", "LA", "P"):
        image = image.convert("RGBA")
        out = Image.new("RGB", image.size, (255, 255, 255))
        out.paste(image, mask=image.getchannel("A"))
        return out
    return image.convert("RGB")


def psnr(a: Image.Image, b: Image.Image) -> float:
    a, b = flat(a), flat(b)
    if a.size != b.size:
        b = b.resize(a.size, Image.Resampling.LANCZOS)
    mse = sum(ImageStat.Stat(ImageChops.difference(a, b)).sum2) / (3 * a.size[0] * a.size[1])
    return math.inf if mse == 0 else 10 * math.log10(255 ** 2 / mse)


def reference(name: str) -> Image.Image:
    with Image.open(CORPUS / name) as im:
        im.load()
        return im.resize(fit(im.size), Image.Resampling.LANCZOS)


def resized(data: bytes, draft_gap=1.0, reducing_gap=2.0,
            resample=Image.Resampling.LANCZOS) -> Image.Image:
    """Decode (JPEG at reduced scale, keeping ``draft_gap`` times the output) and resize."""
    with Image.open(io.BytesIO(data)) as im:
        out = fit(im.size)
        if im.format == "JPEG" and draft_gap:
            im.draft("RGB", (math.ceil(out[0] * draft_gap), math.ceil(out[1] * draft_gap)))
        im.load()
        source = im if im.mode in ("RGB", "RGBA", "L") else im.convert("RGBA")
        return source.resize(out, resample, reducing_gap=reducing_gap or None)


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    if fmt == "JPEG" and image.mode != "RGB":
        image = flat(image)
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


ENCODERS = {
    "jpeg": ("JPEG", [
        ("progressive (before)", {"quality": 80, "progressive": True, "optimize": False}),
        ("baseline", {"quality": 80, "progressive": False, "optimize": False}),
        ("baseline, optimize", {"quality": 80, "progressive": False, "optimize": True}),
        ("progressive, optimize", {"quality": 80, "progressive": True, "optimize": True}),
        ("baseline 4:4:4", {"quality": 80, "progressive": False, "subsampling": 0}),
    ]),
    "webp": ("WEBP", [(f"method {m}", {"quality": 80, "method": m}) for m in range(7)]),
    "png": ("PNG", [(f"compress_level {c}", {"compress_level": c}) for c in (1, 3, 6, 9)]),
    "avif": ("AVIF", [(f"speed {s}", {"quality": 80, "speed": s}) for s in (6, 8, 10)]),
}

RESIZES = [
    ("draft_gap 1, reducing_gap 2 (before)", {}),
    ("draft_gap 1, reducing_gap 3", {"reducing_gap": 3.0}),
    ("draft_gap 1, reducing_gap 1.5", {"reducing_gap": 1.5}),
    ("draft_gap 1, reducing_gap off", {"reducing_gap": 0}),
    ("draft_gap 2, reducing_gap 2", {"draft_gap": 2.0}),
    ("draft_gap 1, BICUBIC", {"resample": Image.Resampling.BICUBIC}),
    ("draft_gap 1, BILINEAR", {"resample": Image.Resampling.BILINEAR}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=[*ENCODERS, "resize"])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--count", type=int, default=5)
    args = parser.parse_args()
    datas = {name: (CORPUS / name).read_bytes() for name in SOURCES}
    refs = {name: reference(name) for name in SOURCES}
    images = {name: resized(data) for name, data in datas.items()}
    tables = [args.only] if args.only else [*ENCODERS, "resize"]
    for table in tables:
        print(f"\n{table}: CPU ms / bytes / PSNR dB, per source (300x200 fit-in)")
        print(f"{'option':<38}" + "".join(f"{n:>24}" for n in SOURCES))
        if table == "resize":
            for label, options in RESIZES:
                cells = ""
                for name, data in datas.items():
                    ms = best_ms(lambda: resized(data, **options), args.repeat, args.count)  # noqa: B023 -- called here, in this iteration
                    quality = psnr(refs[name], resized(data, **options))
                    cells += f"{ms:>9.2f} {'':>7} {quality:6.1f}"
                print(f"{label:<38}{cells}")
            continue
        fmt, rows = ENCODERS[table]
        for label, options in rows:
            cells = ""
            for name, image in images.items():
                try:
                    body = encode(image, fmt, **options)
                except (KeyError, OSError, ValueError) as e:   # an encoder Pillow lacks
                    cells += f"{'n/a: ' + type(e).__name__:>24}"
                    continue
                ms = best_ms(lambda: encode(image, fmt, **options), args.repeat, args.count)  # noqa: B023 -- called here
                with Image.open(io.BytesIO(body)) as out:
                    quality = psnr(refs[name], out)
                cells += f"{ms:>9.2f} {len(body):>7} {quality:6.1f}"
            print(f"{label:<38}{cells}")


if __name__ == "__main__":
    main()
