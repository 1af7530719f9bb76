"""
The memory budget of one transform: :func:`mediaproxy.imaging.estimate_bytes` is known before
decoding, is an upper bound of what the render really allocates, and refuses (422 JSON
``over_memory_budget``) the files that used to take gigabytes.

The real peaks are measured by the kernel in a separate process (tests/memory_probe.py: one
fork per case, ``VmHWM`` after resetting it), since tracemalloc does not see Pillow's C
allocations. Sources are noise (the worst case for every encoder) where the encoder matters.
"""

from __future__ import annotations

import io
import json
import pickle
import random
import subprocess
import sys
from pathlib import Path

import attrs
import pytest
from PIL import Image

from mediaproxy.imaging import ImageTooLarge, OverMemoryBudget, estimate_bytes, render
from mediaproxy.imaging.frames import canvas_size
from mediaproxy.models import TransformSpec, TransformStep
from mediaproxy.testing import ImageOrigin, start_proxy
from mediaproxy.testing.images import encode, make_jpeg, noise

from .imaging_attacks import _gif_image_blocks as _image_blocks, flat_animation, lying_gif

PROBE = Path(__file__).resolve().parent / "memory_probe.py"
MiB = 1024 * 1024


# -- the files -------------------------------------------------------------------------------

def animation(fmt: str, count: int, size) -> bytes:
    """``count`` frames of noise (each different); a GIF's are palette noise (nothing to
    quantise when writing the source)."""
    if fmt == "GIF":
        rng = random.Random(7)
        frames = []
        for _ in range(count):
            frame = Image.frombytes("P", size, rng.randbytes(size[0] * size[1]))
            frame.putpalette(bytes(rng.randbytes(768)))
            frames.append(frame)
    else:
        frames = [noise(*size, seed=i) for i in range(count)]
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=80, loop=0)


#: The three files of the report, as measured on main: the 24-frame GIF at w=6000&enlarge=1
#: took 3.1 GB (fmt=gif) / 7.3 GB (fmt=webp); the lying GIF 660 MB; the 24-frame WebP at
#: w=5000&enlarge=1 1.6 GB, a 500 with fmt=webp.
ATTACKS = {
    "/media/enlarged.gif": flat_animation("GIF", 24, (400, 300)),
    "/media/lying.gif": lying_gif(),
    "/media/enlarged.webp": flat_animation("WEBP", 24, (400, 300)),
}


def test_the_attack_files_are_what_they_claim():
    gif = Image.open(io.BytesIO(ATTACKS["/media/enlarged.gif"]))
    assert (gif.size, gif.n_frames) == ((400, 300), 24)
    assert len(ATTACKS["/media/enlarged.gif"]) < 20_000
    lying = Image.open(io.BytesIO(ATTACKS["/media/lying.gif"]))
    assert (lying.size, lying.n_frames) == ((100, 100), 2)    # the header's word
    assert len(ATTACKS["/media/lying.gif"]) < 40_000
    assert canvas_size(ATTACKS["/media/lying.gif"], "gif", 100, 100) == (8000, 6000)
    webp = Image.open(io.BytesIO(ATTACKS["/media/enlarged.webp"]))
    assert (webp.size, webp.n_frames) == ((400, 300), 24)


# -- the estimate is an upper bound ----------------------------------------------------------

def spec(**kw) -> TransformSpec:
    return TransformSpec(**{"max_transform_bytes": 2**40, **kw})


STILL = encode(noise(1000, 700), "PNG", compress_level=0)
STILL_JPEG = make_jpeg(1000, 700, image=noise(1000, 700), quality=90)
ROTATED_JPEG = make_jpeg(700, 1000, orientation=6, image=noise(700, 1000), quality=90)
ALPHA = encode(noise(900, 600).convert("RGBA"), "PNG", compress_level=0)
SMALL_ALPHA = encode(noise(500, 400).convert("RGBA"), "PNG", compress_level=0)
PALETTE = encode(noise(900, 600).convert("P"), "PNG", transparency=0, compress_level=0)
GREY16 = encode(noise(1000, 800).convert("L").convert("I;16"), "PNG", compress_level=0)
SMALL = encode(noise(600, 400), "PNG", compress_level=0)   # GIF output: quantising is slow
GIF = animation("GIF", 8, (300, 200))
SMALL_GIF = animation("GIF", 3, (150, 100))
SMALL_WEBP = animation("WEBP", 3, (150, 100))
WEBP = animation("WEBP", 6, (300, 200))
APNG = animation("PNG", 6, (300, 200))

GRID = [
    ("png as jpeg", STILL, spec(format="jpeg")),
    ("png as png", STILL, spec(format="png", png_compress_level=1)),
    ("png as webp", STILL, spec(format="webp")),
    ("png as gif", SMALL, spec(format="gif")),
    ("png as tiff", STILL, spec(format="tiff")),
    ("png as avif, smaller", STILL, spec(width=500, format="avif")),
    ("png enlarged", STILL, spec(width=2000, enlarge=True, format="jpeg")),
    ("png fill stretched", STILL, spec(width=2500, height=300, fit="fill", enlarge=True,
                                       format="jpeg")),
    ("png contain padded", STILL, spec(width=1400, height=1400, fit="contain", enlarge=True,
                                       format="png", png_compress_level=1)),
    ("png cover", STILL, spec(width=900, height=900, fit="cover", format="webp")),
    ("jpeg as is", STILL_JPEG, spec()),
    ("jpeg shrunk on load", STILL_JPEG, spec(width=300, format="png")),
    ("jpeg rotated", ROTATED_JPEG, spec(format="webp")),
    ("rgba as jpeg", ALPHA, spec(format="jpeg")),
    ("rgba as gif", SMALL_ALPHA, spec(format="gif")),
    ("palette as webp", PALETTE, spec(format="webp")),
    ("16-bit grey as png", GREY16, spec(format="png")),
    ("gif as gif, enlarged", SMALL_GIF, spec(width=300, enlarge=True)),
    ("gif as webp", GIF, spec(width=450, enlarge=True, format="webp")),
    ("gif as png", GIF, spec(width=450, enlarge=True, format="png", png_compress_level=1)),
    ("webp as webp, enlarged", WEBP, spec(width=600, enlarge=True)),
    ("webp as gif", SMALL_WEBP, spec(width=150, format="gif")),
    ("apng as apng", APNG, spec(width=600, enlarge=True, png_compress_level=1)),
    ("animation as avif", GIF, spec(width=600, enlarge=True, format="avif")),
]


def probe(cases) -> dict[str, tuple[int, object]]:
    """The real peaks of ``cases`` (name, data, spec[, steps]), measured by
    tests/memory_probe.py."""
    plain = [(name, data, attrs.asdict(case, filter=lambda a, _: a.name != "extra"), *steps)
             for name, data, case, *steps in cases]
    done = subprocess.run([sys.executable, str(PROBE)], input=pickle.dumps(plain),
                          capture_output=True, timeout=300, check=True,
                          cwd=PROBE.parent.parent)
    answers = [json.loads(line) for line in done.stdout.decode().splitlines()]
    return {name: (peak, outcome) for name, peak, outcome in answers}


def test_the_estimate_is_an_upper_bound_of_the_real_peak():
    measured = probe(GRID)
    assert sorted(measured) == sorted(name for name, _, _ in GRID)
    report = []
    for name, data, case in GRID:
        peak, outcome = measured[name]
        assert isinstance(outcome, list), (name, outcome)         # rendered
        estimate = estimate_bytes(data, case)
        report.append((name, peak // MiB, estimate // MiB))
        assert peak <= estimate, (name, peak, estimate)
    # and not so loose as to be useless: within 8 times the peak (plus the fixed part)
    assert all(estimate <= 8 * peak + 16 for _, peak, estimate in report), report


def test_a_steps_declared_memory_is_counted_on_the_size_it_works_on():
    """A step before the resize works on the decoded image, one after it on the output: the
    largest declared memory of each side is added on that size (a downscale: the resize's
    peak is the estimate's, so the growth is exact)."""
    data = encode(noise(2000, 1500), "PNG", compress_level=0)
    small = spec(width=100, format="png")
    base = estimate_bytes(data, small)
    before = [TransformStep("a", lambda image, *_: image, order=100, memory=10),
              TransformStep("b", lambda image, *_: image, order=200, memory=3)]
    after = [TransformStep("c", lambda image, *_: image, order=700, memory=10)]
    assert estimate_bytes(data, small, steps=before) - base == 10 * 2000 * 1500
    assert estimate_bytes(data, small, steps=after) - base == 10 * 100 * 75
    assert estimate_bytes(data, small, steps=before + after) - base == 10 * 2000 * 1500
    assert estimate_bytes(data, small, steps=[TransformStep("d", lambda i, *_: i)]) == base
    # and the budget refuses on it, before decoding
    with pytest.raises(OverMemoryBudget):
        estimate_bytes(data, spec(width=100, format="png", max_transform_bytes=base + 1),
                       enforce=True, steps=after)


def test_the_estimate_decodes_nothing():
    """The estimate of a 50 MP JPEG (whose decode would take 200 MB) reads its header."""
    big = make_jpeg(8160, 6120, quality=30)
    measured = probe([("estimate", big, spec(width=1920))])   # a render, as a comparison
    assert measured["estimate"][1] == [1920, 1440, 1]
    assert estimate_bytes(big, spec(max_output_pixels=10**8)) > 600 * MiB   # a full decode


# -- the attacks -----------------------------------------------------------------------------

@pytest.mark.parametrize("path, query, message", [
    ("/media/enlarged.gif", "w=6000&enlarge=1",
     "The transform would need about 7433 MiB of memory (400x300 x 24 frames decoded, "
     "6000x4500 GIF out); at most 1024 MiB are allowed."),
    ("/media/enlarged.gif", "w=6000&enlarge=1&fmt=webp",
     "The transform would need about 6300 MiB of memory (400x300 x 24 frames decoded, "
     "6000x4500 WEBP out); at most 1024 MiB are allowed."),
    ("/media/lying.gif", "w=50",
     "The transform would need about 1298 MiB of memory (8000x6000 x 2 frames decoded, "
     "50x38 GIF out); at most 1024 MiB are allowed."),
    ("/media/enlarged.webp", "w=5000&enlarge=1",
     "The transform would need about 4380 MiB of memory (400x300 x 24 frames decoded, "
     "5000x3750 WEBP out); at most 1024 MiB are allowed."),
    ("/media/enlarged.webp", "w=5000&enlarge=1&fmt=webp",
     "The transform would need about 4380 MiB of memory (400x300 x 24 frames decoded, "
     "5000x3750 WEBP out); at most 1024 MiB are allowed."),
])
def test_the_attacks_are_a_422_json_before_the_memory_is_taken(live_reactor, path, query,
                                                                 message):
    files = {p: (200, body, "image/gif", []) for p, body in ATTACKS.items()}
    # the process budget pinned (its default follows the machine's memory), so the budget a
    # request gets, and the message that names it, is limits.max_transform_bytes
    with start_proxy(origin=ImageOrigin(files),
                     overrides={"limits": {"transform_memory": 2 * 1024 * MiB}}) as running:
        for _ in range(2):                     # the refusal is never cached
            answer = running.json(f"{path}?{query}")
            assert answer.status == 422
            assert answer.data["error"] == "over_memory_budget"
            assert answer.data["message"] == message
            assert "x-placeholder" not in answer.headers
        if path != "/media/lying.gif":                     # a sane request is served
            assert running.get(f"{path}?w=100")[0] == 200


def test_the_attacks_take_no_memory():
    """Rendered in the probe, each attack is refused with a peak of a few MiB."""
    measured = probe([
        ("gif", ATTACKS["/media/enlarged.gif"], TransformSpec(width=6000, enlarge=True)),
        ("gif as webp", ATTACKS["/media/enlarged.gif"],
         TransformSpec(width=6000, enlarge=True, format="webp")),
        ("lying", ATTACKS["/media/lying.gif"], TransformSpec(width=50)),
        ("webp", ATTACKS["/media/enlarged.webp"], TransformSpec(width=5000, enlarge=True)),
    ])
    for name, (peak, outcome) in measured.items():
        assert outcome == "over_memory_budget", name
        assert peak < 16 * MiB, (name, peak)


def test_the_pixel_budget_counts_the_real_canvas_not_the_header():
    """With a memory budget large enough, the lying GIF meets the pixel budget: counted on
    the canvas its frames need (8000x6000), not on its header's 100x100."""
    with pytest.raises(ImageTooLarge) as refused:
        render(ATTACKS["/media/lying.gif"], spec(width=50))
    assert (refused.value.status, refused.value.error, refused.value.message) == (
        422, "image_too_large", "The image is too large (8000x6000 pixels x 2 frames).")


def test_stray_bytes_do_not_hide_a_frame():
    """Pillow skips a stray byte between GIF blocks; so does the structure walk."""
    data = ATTACKS["/media/lying.gif"]
    (_, _), (second, _) = _image_blocks(data)[0]
    control = data.rindex(b"\x21\xf9", 0, second)
    stray = data[:control] + b"\x00\x07" + data[control:]
    assert Image.open(io.BytesIO(stray)).n_frames == 2
    assert canvas_size(stray, "gif", 100, 100) == (8000, 6000)
    with pytest.raises(OverMemoryBudget):
        render(stray, TransformSpec(width=50))


def test_a_frame_larger_than_its_admission_is_refused_at_seek():
    """The backstop behind the estimate: each frame's real size is checked at ``seek()``,
    before it is loaded. The structure walk and Pillow agree on every file built here, so the
    admitted canvas is narrowed by hand (a fault no real file produces on demand)."""
    from mediaproxy.imaging.budget import Work
    from mediaproxy.imaging.rendering import _Pipeline
    pipeline = _Pipeline.build(TransformSpec(), (), None)
    pipeline.work = Work(canvas=(100, 100), decoded=(100, 100), frames=2, output=(50, 50),
                         fmt="gif")
    pipeline.check_frame((100, 100), 0)
    with pytest.raises(OverMemoryBudget) as refused:
        pipeline.check_frame((8000, 6000), 1)
    assert refused.value.message == ("Frame 2 is 8000x6000, larger than the 100x100 the "
                                     "file announced.")


def test_a_normal_animation_and_a_50_mp_photo_fit_the_default_budget():
    default = TransformSpec().max_transform_bytes
    assert estimate_bytes(flat_animation("GIF", 100, (480, 270)),
                          TransformSpec(width=480)) < default
    photo = make_jpeg(8160, 6120, quality=30)
    for case in (TransformSpec(width=1920), TransformSpec(width=7680, height=4320, fit="cover"),
                 TransformSpec(width=3000, format="avif"),
                 TransformSpec(width=4000, format="webp")):
        assert estimate_bytes(photo, case) < default, case
    with pytest.raises(OverMemoryBudget):
        render(photo, TransformSpec(width=7680, height=4320, fit="cover", format="avif"))
