"""mediaproxy's thumbor endpoint against a real thumbor 7.8 (PIL engine): the status, output
size and format thumbor answered for each URL (recorded by bench/thumbor_record.py into
tests/fixtures/thumbor_answers.json: CI has no thumbor) must be ours, except the differences
listed in ``DIFFERENCES``, each documented in docs/thumbor.md.

The origin serves stand-ins of the recorded corpus files (same size, mode, format and frame
count; the corpus itself is made with numpy and is not in the repository): no recorded case
depends on the pixels (trim, which does, is tested in tests/test_effects.py)."""

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from mediaproxy.testing import decode, start_proxy
from mediaproxy.testing.images import encode

RECORD = json.loads((Path(__file__).parent / "fixtures" / "thumbor_answers.json").read_text())

#: (options, file) -> (what we answer, why), for every case where we differ from thumbor
#: (docs/thumbor.md, "What differs").
INVALID = "a known filter with invalid arguments is a 400 naming it (thumbor ignores it, " \
    "or fails with a 500 for a colour it cannot parse)"
GIF = "thumbor leaves a GIF's format and its post-transform filters alone (format, fill, " \
    "upscale, rotate); here a GIF is an image like any other"
DIFFERENCES = {}
for _file in ("photo_800.jpg", "small.gif"):
    for _options in ("filters:format(bmp)", "filters:quality(abc)", "filters:rotate(45)",
                     "300x200/filters:fill(nocolour)"):
        DIFFERENCES[(_options, _file)] = ({"status": 400}, INVALID)
for _options, _answer in [
        ("fit-in/300x200/filters:fill(red)", (300, 200, "gif")),
        ("300x200/filters:format(webp)", (300, 200, "webp")),
        ("300x200/filters:format(png)", (300, 200, "png")),
        ("300x200/filters:format(jpeg)", (300, 200, "jpeg")),
        ("fit-in/1200x900/filters:upscale()", (1200, 900, "gif")),
        ("fit-in/1200x900/filters:fill(ffffff)", (1200, 900, "gif")),
        ("filters:format(webp)", (400, 300, "webp")),
        ("filters:format(avif)", (400, 300, "avif")),
        ("filters:format(png)", (400, 300, "png")),
        ("fit-in/200x200/filters:rotate(90)", (150, 200, "gif")),
        ("300x200/filters:rotate(270)", (200, 300, "gif"))]:
    DIFFERENCES[(_options, "small.gif")] = (
        dict(zip(("status", "width", "height", "format"), (200, *_answer))), GIF)


def stand_in(info: dict) -> bytes:
    """A file of the recorded corpus file's size, mode and format (one frame)."""
    assert info["frames"] == 1
    image = Image.new(info["mode"], (info["width"], info["height"]))
    if info["mode"] == "RGBA":
        image.putpixel((0, 0), (0, 0, 0, 255))    # some alpha, as the corpus has
    options = {"method": 0} if info["format"] == "webp" else {}     # the fastest encoder
    return encode(image, info["format"].upper(), **options)


def ours(proxy, options: str, name: str) -> dict:
    middle = f"{options}/" if options else ""
    response = proxy.get(f"/thumbor/unsafe/{middle}media/uploads/{name}")
    answer = {"status": response.status}
    if response.status == 200:
        image = decode(response.body)
        answer.update(width=image.width, height=image.height, format=image.format.lower())
    return answer


@pytest.fixture(scope="module")
def proxy(live_reactor):
    files = {f"/media/uploads/{name}": stand_in(info) for name, info in RECORD["files"].items()}
    with start_proxy(files=files, overrides={"thumbor": {"allow_unsafe": True}}) as running:
        yield running


def test_the_record_is_thumbor_78():
    assert RECORD["server"] == "Thumbor/7.8.0"
    assert len(RECORD["answers"]) == len({(a["options"], a["file"]) for a in RECORD["answers"]})


def test_same_status_size_and_format_as_thumbor(proxy):
    def compare(answer):
        case = (answer["options"], answer["file"])
        thumbors = {k: v for k, v in answer.items() if k not in ("options", "file")}
        expected = DIFFERENCES[case][0] if case in DIFFERENCES else thumbors
        got = ours(proxy, *case)
        return None if got == expected else (
            f"{case}: thumbor {thumbors}, expected {expected}, got {got}")

    # four clients at once (the proxy renders in its pool): a bounded list of requests
    with ThreadPoolExecutor(4) as pool:
        mismatches = [m for m in pool.map(compare, RECORD["answers"]) if m]
    assert mismatches == []


def test_every_difference_is_a_recorded_case():
    recorded = {(a["options"], a["file"]): a for a in RECORD["answers"]}
    for case, (ours_, why) in DIFFERENCES.items():
        theirs = {k: v for k, v in recorded[case].items() if k not in ("options", "file")}
        assert theirs != ours_, f"{case} is no difference any more ({why})"
