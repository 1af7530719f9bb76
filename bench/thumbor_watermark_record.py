"""Record where a real thumbor 7.8 (PIL engine) draws its ``watermark()`` filter, into the
fixture tests/test_plugin_watermark.py compares the watermark plugin's thumbor filter with
(CI has no thumbor).

    .venv/bin/python bench/thumbor_watermark_record.py           # rewrites the fixture
    .venv/bin/python bench/thumbor_watermark_record.py --check   # compares, writes nothing

The overlay is an opaque photo of the shared bench's corpus (photo_800.jpg, 800x600), drawn
with alpha 0 over photo_1920.jpg (1920x1080): the region it covers is then exactly the pixels
that differ from the same URL without the filter, whatever the photos hold. Recorded per case:
the output's size and that region's box (left, top, right, bottom), so the test can repeat
every case with solid stand-ins of the same geometry. thumbor on 127.0.0.1:18090 in unsafe
mode loads both from the nginx origin on 127.0.0.1:18080. Loopback only; two requests per
case, each with a 60 s timeout.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import sys
from pathlib import Path

from PIL import Image, ImageChops

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "thumbor_watermark.json"
ORIGIN = "127.0.0.1:18080"
THUMBOR = ("127.0.0.1", 18090)
SOURCE, SOURCE_SIZE = "photo_1920.jpg", (1920, 1080)
OVERLAY, OVERLAY_SIZE = "photo_800.jpg", (800, 600)
#: Differences at most this (of 255, any channel) are the JPEG encoder's, not the overlay.
THRESHOLD = 48

#: (thumbor options before the filter, the filter's arguments after the overlay's URL)
CASES = (
    ("300x200", "10,10,0,20"),
    ("300x200", "-10,-10,0,20"),
    ("300x200", "center,center,0,30"),
    ("300x200", "10p,-20p,0,25"),
    ("300x200", "-0,0,0,none,25"),
    ("300x200", "20,20,0,10,10"),
    ("fit-in/400x400", "-15,center,0,50"),
    ("600x0", "5p,5p,0,40,none"),
    ("fit-in/500x300", "0,-0,0,30,30"),
)


def _get(path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(*THUMBOR, timeout=60)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def url(options: str, args: str | None) -> str:
    filters = f"filters:watermark({ORIGIN}/media/uploads/{OVERLAY},{args})/" if args else ""
    return f"/unsafe/{options}/{filters}{ORIGIN}/media/uploads/{SOURCE}"


def box_of(plain: bytes, marked: bytes) -> tuple[list[int], list[int]]:
    a = Image.open(io.BytesIO(plain)).convert("RGB")
    b = Image.open(io.BytesIO(marked)).convert("RGB")
    diff = ImageChops.difference(a, b).convert("L").point(lambda v: 255 if v > THRESHOLD else 0)
    return list(b.size), list(diff.getbbox() or (0, 0, 0, 0))


def record() -> list[dict]:
    out = []
    for options, args in CASES:
        status_plain, plain = _get(url(options, None))
        status, marked = _get(url(options, args))
        if status != 200 or status_plain != 200:
            raise SystemExit(f"thumbor answered {status_plain}/{status} for {options} {args}")
        size, box = box_of(plain, marked)
        out.append({"options": options, "args": args, "size": size, "box": box})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare, write nothing")
    ns = parser.parse_args()
    cases = record()
    document = {"thumbor": "7.8 (PIL engine)", "source": [SOURCE, *SOURCE_SIZE],
                "overlay": [OVERLAY, *OVERLAY_SIZE], "threshold": THRESHOLD, "cases": cases}
    if ns.check:
        old = json.loads(FIXTURE.read_text())
        same = old["cases"] == cases
        print("same as the fixture" if same else "differs from the fixture")
        return 0 if same else 1
    FIXTURE.write_text(json.dumps(document, indent=1) + "\n")
    print(f"{len(cases)} cases -> {FIXTURE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
