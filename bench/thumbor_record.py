"""Record what a real thumbor 7.8 (PIL engine) answers for a table of URLs, into the fixture
tests/test_thumbor_compat.py compares mediaproxy's thumbor endpoint with (CI has no thumbor).

    .venv/bin/python bench/thumbor_record.py                  # rewrites the fixture
    .venv/bin/python bench/thumbor_record.py --check          # compares, writes nothing

Each case is thumbor's options part and a corpus file; thumbor gets
``/unsafe/<options>/127.0.0.1:18080/media/uploads/<file>`` (the shared bench's thumbor on
127.0.0.1:18090 in unsafe mode, loading from its nginx origin), mediaproxy
``/thumbor/unsafe/<options>/media/uploads/<file>``. Recorded per case: the status and, for a
200, the decoded width, height and format (Pillow's name, lower case). Recorded per file:
its size, mode, format and frame count, so the test can serve stand-ins of the same geometry
(the corpus, made with numpy, is not in the repository; none of the cases depends on the
pixels). Loopback only; one request per case, each with a 60 s timeout.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import sys
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "thumbor_answers.json"
CORPUS = Path("/tmp/mediaproxy-bench/corpus")
ORIGIN = "127.0.0.1:18080"
THUMBOR = ("127.0.0.1", 18090)

FILES = ("photo_800.jpg", "photo_1920.jpg", "photo_4000.jpg", "photo_1600.webp",
         "alpha_1200.png", "small.gif")

#: Options asked for every file: the geometry rules at small output sizes (crop mode, one
#: side, fit-in, full-fit-in, adaptive, flips, orig, alignment, no_upscale, fill).
EVERY_FILE = (
    "300x200", "200x300", "300x0", "0x200", "fit-in/300x200", "fit-in/0x200",
    "full-fit-in/300x200", "adaptive-fit-in/200x300", "-300x-200", "300x200/right/bottom",
    "300x200/filters:no_upscale()", "fit-in/300x200/filters:fill(red)", "origx200",
    "fit-in/-300x200", "300x200/filters:format(webp)", "300x200/filters:format(png)",
    "300x200/filters:format(jpeg)",
)
#: Options asked for the two small files only: enlarging, whole-size outputs, filters (the
#: same on a large file would only make the test slower).
SMALL_FILES = ("photo_800.jpg", "small.gif")
SOME_FILES = (
    "", "-0x-0", "1200x900", "1200x0", "0x900", "fit-in/1200x900", "full-fit-in/1200x900",
    "fit-in/1200x900/filters:upscale()", "fit-in/1200x900/filters:fill(ffffff)",
    "1200x900/filters:no_upscale()", "1200x300/filters:no_upscale()",
    "full-fit-in/1200x900/filters:no_upscale()", "300xorig", "origxorig",
    "10x20:410x320", "10x20:410x320/100x0", "700x200:900x900/50x50", "left/top/300x200",
    "smart/300x200", "300x200/smart", "fit-in/300x200/center/middle",
    "filters:format(webp)", "filters:format(avif)", "filters:format(gif)",
    "filters:format(png)", "filters:format(bmp)", "filters:quality(40)",
    "filters:quality(abc)", "fit-in/200x200/filters:rotate(90)",
    "300x200/filters:rotate(270)", "filters:rotate(45)", "filters:grayscale()",
    "filters:blur(2)", "filters:brightness(20):contrast(-10)", "filters:strip_icc()",
    "filters:strip_exif()", "filters:max_bytes(100000)", "filters:background_color(blue)",
    "filters:noise(10)", "filters:no_such_filter(1)", "300x200/filters:fill(nocolour)",
)
#: Never a huge size: thumbor enlarges without a bound (99999x0 ran it out of memory).


def cases() -> list[tuple[str, str]]:
    out = [(options, name) for name in FILES for options in EVERY_FILE]
    out += [(options, name) for name in SMALL_FILES for options in SOME_FILES]
    out += [("300x200", "missing.jpg")]
    return out


def thumbor_path(options: str, name: str) -> str:
    middle = f"{options}/" if options else ""
    return f"/unsafe/{middle}{ORIGIN}/media/uploads/{name}"


def ask(options: str, name: str) -> dict:
    conn = http.client.HTTPConnection(*THUMBOR, timeout=60)
    started = time.monotonic()
    try:
        conn.request("GET", thumbor_path(options, name))
        response = conn.getresponse()
        body = response.read()
    except TimeoutError:
        print(f"  {options or '-'} {name}: no answer in 60 s", flush=True)
        return {"options": options, "file": name, "status": "timeout"}
    finally:
        conn.close()
    print(f"  {options or '-'} {name}: {response.status} in "
          f"{time.monotonic() - started:.1f} s", flush=True)
    answer: dict = {"options": options, "file": name, "status": response.status}
    if response.status == 200:
        image = Image.open(io.BytesIO(body))
        answer.update(width=image.width, height=image.height, format=image.format.lower())
    return answer


def describe(name: str) -> dict:
    image = Image.open(CORPUS / name)
    return {"width": image.width, "height": image.height, "mode": image.mode,
            "format": image.format.lower(), "frames": getattr(image, "n_frames", 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the fixture only")
    args = parser.parse_args()
    conn = http.client.HTTPConnection(*THUMBOR, timeout=10)
    conn.request("GET", thumbor_path("1x1", FILES[0]))   # thumbor names itself here
    server = conn.getresponse().getheader("Server", "")
    conn.close()
    record = {
        "recorded_by": "bench/thumbor_record.py",
        "server": server,
        "thumbor_url": "http://%s:%d/unsafe/<options>/%s/media/uploads/<file>" % (
            *THUMBOR, ORIGIN),
        "files": {name: describe(name) for name in FILES},
        "answers": [ask(options, name) for options, name in cases()],
    }
    text = json.dumps(record, indent=1) + "\n"
    if args.check:
        same = FIXTURE.exists() and json.loads(FIXTURE.read_text()) == record
        print("fixture up to date" if same else "fixture differs from thumbor's answers")
        return 0 if same else 1
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    FIXTURE.write_text(text)
    print(f"{len(record['answers'])} answers from {server} -> {FIXTURE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
