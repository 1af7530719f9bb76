"""Decode once, render many (:mod:`mediaproxy.imaging.decoded`).

* **Fidelity.** A render from the cache is byte-identical to a fresh render when the entry is
  at the render's own shrink-on-load scale (every size asked in ascending order), and within a
  stated tolerance when the entry is finer and reduced (descending order): the decoder's
  scaled IDCT and ``reduce()``'s box average differ a little at hard edges. Measured on these
  pictures (hard lines, gradients): mean absolute difference at most 2.6 levels of 255 (the
  bounds below leave a margin: 3.0 for lossless PNG output, 3.5 after a lossy encoder).
* **The bound.** The cache's bytes never pass its capacity, against an LRU oracle written here.
* **Threads.** One decode per source: a thread that needs a source another is decoding waits
  for that decode and reuses it.
* **Through the proxy.** The eight boxes of a srcset of one 12 MP JPEG: right geometry, one
  backend fetch, two decodes (counted by the cache's own series).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageChops, ImageDraw

from mediaproxy.imaging import estimate, render
from mediaproxy.imaging.budget import Deadline
from mediaproxy.imaging.decoded import (
    Decoded, DecodedCache, _remaining, first_decode_finer, image_bytes,
)
from mediaproxy.imaging.errors import TooManyScans, TransformTimeout
from mediaproxy.models import TransformSpec, TransformStep
from mediaproxy.runtime import DECODED_CACHE_CAP, decoded_cache_bytes as capacity
from mediaproxy.testing import ImageOrigin, assert_image, start_proxy, wait_for
from mediaproxy.testing.images import (
    adobe_rgb_profile, cmyk_profile, decode, encode, make_animated, make_jpeg,
)


def picture(width: int, height: int) -> Image.Image:
    """Gradients, hard diagonal lines and a block: what resampling differences show on."""
    ramp = Image.linear_gradient("L").resize((width, height))
    image = Image.merge("RGB", (ramp, Image.radial_gradient("L").resize((width, height)),
                                ramp.transpose(Image.Transpose.FLIP_LEFT_RIGHT)))
    draw = ImageDraw.Draw(image)
    for x in range(0, width, 37):
        draw.line((x, 0, width - x, height), fill=(255, 255, 0), width=3)
    draw.rectangle((width // 10, height // 10, width // 3, height // 3), fill=(0, 0, 200))
    return image


PICTURE = picture(600, 450)
SOURCES = {
    "jpeg": make_jpeg(600, 450, image=PICTURE),
    "exif-rotated": make_jpeg(600, 450, orientation=6, image=PICTURE),
    "cmyk-icc": make_jpeg(600, 450, cmyk=True, icc=cmyk_profile(), image=PICTURE),
    "adobe-rgb-icc": make_jpeg(600, 450, icc=adobe_rgb_profile(), image=PICTURE),
    "png": encode(PICTURE.convert("RGBA"), "PNG"),
}
#: at draft_gap 1 a 600x450 JPEG decodes at 1/8, 1/4, 1/2 and 1/1 for these
SIZES = [(60, 60), (120, 90), (240, 180), (480, 360)]
#: (source, fit, output format): every source, every kind of encoder, every fit
CASES = [(source, fit, fmt) for source in SOURCES
         for fit, fmt in (("inside", "png"), ("cover", "jpeg"), ("contain", "webp"))] + [
    ("jpeg", "fill", "png"), ("jpeg", "outside", "jpeg")]
TOLERANCE = {"png": 3.0, "jpeg": 3.5, "webp": 3.5}
#: decodes of a JPEG for SIZES in ascending order, one per distinct shrink-on-load scale:
#: inside and contain fit 60x45 (1/8), 120x90 (1/4), 240x180 (1/2), 480x360 (1/1); cover,
#: outside and fill need 80x60 or 60x60 of the first box, 1/4 like the second
ASCENDING_DECODES = {"inside": 4, "contain": 4, "cover": 3, "outside": 3, "fill": 3}


def spec(size, fit="inside", fmt="png", **more) -> TransformSpec:
    return TransformSpec(width=size[0], height=size[1], fit=fit, format=fmt, **more)


def mean_difference(a: bytes, b: bytes) -> float:
    one, two = decode(a).convert("RGB"), decode(b).convert("RGB")
    assert one.size == two.size
    histogram = ImageChops.difference(one, two).histogram()
    return sum(index % 256 * count for index, count in enumerate(histogram)) / (
        3 * one.width * one.height)


@pytest.mark.parametrize("source,fit,fmt", CASES)
def test_renders_from_the_cache_equal_fresh_ones(source, fit, fmt):
    data = SOURCES[source]
    fresh = {size: render(data, spec(size, fit, fmt)).body for size in SIZES}
    ascending = DecodedCache(1 << 30)
    for size in SIZES:           # each entry at the render's own scale: the same bytes
        assert render(data, spec(size, fit, fmt), cache=ascending).body == fresh[size]
    descending = DecodedCache(1 << 30)
    for size in SIZES[::-1]:     # smaller sizes reduce the finer entry
        body = render(data, spec(size, fit, fmt), cache=descending).body
        assert_image(body, decode(fresh[size]).size)
        assert mean_difference(body, fresh[size]) <= TOLERANCE[fmt]
    # the first (largest) decode serves the rest; a PNG has no shrink-on-load
    assert (descending.misses, descending.hits) == (1, 3)
    decodes = 1 if source == "png" else ASCENDING_DECODES[fit]
    assert (ascending.misses, ascending.hits) == (decodes, 4 - decodes)


def test_a_repeated_render_is_a_hit_with_the_same_bytes():
    data, cache = SOURCES["cmyk-icc"], DecodedCache(1 << 30)
    first = render(data, spec((300, 200), "cover", "jpeg"), cache=cache)
    again = render(data, spec((300, 200), "cover", "jpeg"), cache=cache)
    assert first.body == again.body == render(data, spec((300, 200), "cover", "jpeg")).body
    assert (cache.hits, cache.misses, len(cache)) == (1, 1, 1)


def test_plugin_steps_and_the_encoder_never_change_a_cached_image():
    """A step that draws on its image in place, before the resize and after a no-op one (no
    size: the output is the decoded image itself): the entry keeps its pixels."""
    def scribble(image, spec, request):
        ImageDraw.Draw(image).rectangle((0, 0, 20, 20), fill=(0, 255, 0))
        return image

    data, cache = SOURCES["png"], DecodedCache(1 << 30)
    render(data, spec((0, 0)), cache=cache)
    entry = cache.find(data)
    pixels = entry.image.tobytes()
    for order in (100, 600):
        render(data, spec((0, 0)), [TransformStep("scribble", scribble, order)], cache=cache)
        assert cache.find(data) is entry and entry.image.tobytes() == pixels
    clean = render(data, spec((0, 0)), cache=cache)
    assert decode(clean.body).convert("RGB").getpixel((5, 5)) == PICTURE.getpixel((5, 5))


def test_animations_are_not_cached():
    data, cache = make_animated("GIF", count=3), DecodedCache(1 << 30)
    render(data, spec((30, 20), fmt="gif"), cache=cache)
    assert (len(cache), cache.hits, cache.misses) == (0, 0, 0)


def test_a_large_source_is_first_decoded_one_step_finer_and_counted_so():
    assert first_decode_finer(8_000_000) == 1 and first_decode_finer(7_999_999) == 0
    large = make_jpeg(4000, 2000)                  # 8 MP exactly
    small = make_jpeg(3999, 2000)
    box, cache = spec((400, 200), fmt="jpeg"), DecodedCache(1 << 30)
    assert estimate(large, box, cache=cache).bytes > estimate(large, box).bytes
    assert estimate(small, box, cache=cache).bytes == estimate(small, box).bytes
    assert estimate(large, box, cache=DecodedCache(0)).bytes == estimate(large, box).bytes
    render(large, box, cache=cache)                # needs 1/8: decodes 1/4
    assert (cache.find(large).scale, cache.find(large).image.size) == (4, (1000, 500))
    render(small, box, cache=cache)
    assert cache.find(small).scale == 8
    # a source seen before decodes at the scale it needs (1/2 here), not finer
    render(large, spec((1200, 600), fmt="jpeg"), cache=cache)
    assert cache.find(large).scale == 2 and cache.misses == 3


def test_an_entry_keeps_the_scan_counts_and_a_render_of_its_source_uses_them():
    """The JPEG scan walk (a few ms over a large file's entropy-coded data) is made once per
    source held: a render of a source held checks the entry's counts, not the file again.
    Shown with an entry whose counts say too many scans: the render refuses, though the file
    has one scan; a source not held is walked."""
    data, cache = SOURCES["jpeg"], DecodedCache(1 << 30)
    render(data, spec((300, 200), fmt="jpeg"), cache=cache)
    entry = cache.find(data)
    assert entry.scans == (1, 9)                   # one scan; APP0, DQT x2, SOF, DHT x4, SOS
    too_many = attrs.evolve(entry, scans=(101, 9))  # over max_jpeg_scans (100)
    cache.put(data, too_many)
    with pytest.raises(TooManyScans):
        render(data, spec((300, 200), fmt="jpeg"), cache=cache)
    with pytest.raises(TooManyScans):
        estimate(data, spec((300, 200), fmt="jpeg"), cache=cache)
    assert render(data, spec((300, 200), fmt="jpeg"), cache=DecodedCache(1 << 30)).body
    cache.put(data, attrs.evolve(entry, scans=(100, 9)))            # at the limit: served
    assert render(data, spec((300, 200), fmt="jpeg"), cache=cache).body
    png = SOURCES["png"]
    render(png, spec((300, 200)), cache=cache)
    assert cache.find(png).scans is None           # not a JPEG: nothing to count


# -- capacity and the bound -----------------------------------------------------------------

def test_the_capacity_comes_out_of_the_transform_budget():
    assert capacity(0, 1000) == 250
    assert capacity(0, 4 * DECODED_CACHE_CAP) == DECODED_CACHE_CAP
    assert capacity(0, 4 * DECODED_CACHE_CAP + 4) == DECODED_CACHE_CAP
    assert capacity(0, 4 * DECODED_CACHE_CAP - 4) == DECODED_CACHE_CAP - 1
    assert capacity(-1, 1000) == 0
    assert capacity(1, 1000) == 1
    assert capacity(500, 1000) == 500
    assert capacity(501, 1000) == 500
    from mediaproxy.testing import make_runtime

    mib = 1024 * 1024
    for setting, cache in ((0, mib // 4), (-1, 0)):
        runtime = make_runtime({"limits": {"transform_memory": mib},
                                "processing": {"decoded_cache_bytes": setting}})
        assert runtime.decoded.capacity == cache
        assert runtime.admission.capacity == mib - cache
        assert runtime.decoded.enabled is (cache > 0)


def test_an_entry_gives_its_pixels_at_its_scale_or_reduced_to_a_coarser_one():
    entry = Decoded(Image.new("RGB", (101, 75)), None, 2, (202, 150))
    assert entry.at(2) is entry.image
    assert entry.at(4).size == (51, 38) and entry.at(16).size == (13, 10)


def test_an_empty_or_negative_capacity_is_off_and_one_byte_is_on():
    assert (DecodedCache(-5).capacity, DecodedCache(-5).enabled) == (0, False)
    assert (DecodedCache(0).enabled, DecodedCache(1).enabled) == (False, True)
    fresh = DecodedCache(10)
    assert (fresh.hits, fresh.misses, fresh.evictions, fresh.bytes, len(fresh)) == (0,) * 5


def test_the_wait_lasts_until_the_deadline_or_for_ever_without_one():
    assert _remaining(None) == -1 and _remaining(Deadline(None)) == -1
    assert _remaining(Deadline(5.0, lambda: 3.0)) == 2.0
    assert _remaining(Deadline(5.0, lambda: 6.0)) == 0.0


def test_an_entry_larger_than_the_capacity_is_not_kept():
    image = Image.new("L", (10, 10))
    data = b"x" * 20
    cache = DecodedCache(image_bytes(image) + len(data) - 1)
    assert cache.put(data, Decoded(image, None, 1, (10, 10))) is False
    assert (len(cache), cache.bytes) == (0, 0)
    cache = DecodedCache(image_bytes(image) + len(data))
    assert cache.put(data, Decoded(image, None, 1, (10, 10))) is True
    assert cache.bytes == cache.capacity == 120


def test_equal_keys_of_different_bytes_never_share_an_entry():
    """Two sources whose (length, hash) collide (forced here: a subclass with a fixed hash)
    are told apart by their bytes."""
    class Colliding(bytes):
        def __hash__(self):
            return 7

    one, two = Colliding(b"a" * 8), Colliding(b"b" * 8)
    cache = DecodedCache(1 << 20)
    cache.put(one, Decoded(Image.new("L", (2, 2)), None, 1, (2, 2)))
    assert cache.get(two, 1) is None and cache.find(two) is None
    assert cache.get(Colliding(b"a" * 8), 1) is not None       # equal bytes, another object


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 400), st.lists(st.tuples(
    st.sampled_from(["put", "put", "get"]), st.integers(0, 5), st.integers(1, 12),
    st.sampled_from(["L", "RGB"]), st.sampled_from([1, 2, 4, 8])), max_size=40))
def test_the_bytes_never_pass_the_capacity_and_the_lru_agrees_with_an_oracle(limit, ops):
    sources = [bytes([n]) * (n + 1) for n in range(6)]
    cache = DecodedCache(limit)
    oracle: OrderedDict[int, tuple[int, int]] = OrderedDict()     # source -> (bytes, scale)
    evictions = 0
    for op, n, side, mode, scale in ops:
        data = sources[n]
        if op == "put":
            size = side * side * (1 if mode == "L" else 4) + len(data)
            kept = cache.put(data, Decoded(Image.new(mode, (side, side)), None, scale, (1, 1)))
            assert kept is (size <= limit)
            if kept:
                oracle.pop(n, None)
                oracle[n] = (size, scale)
                while sum(b for b, _ in oracle.values()) > limit:
                    oracle.popitem(last=False)
                    evictions += 1
        else:
            found = cache.get(data, 8)
            assert (found is not None) is (n in oracle)
            if found is not None:
                oracle.move_to_end(n)
        assert cache.bytes <= limit
        assert cache.bytes == sum(b for b, _ in oracle.values())
        assert cache.evictions == evictions
        assert [cache.find(sources[k]).scale for k in oracle] == [s for _, s in oracle.values()]
        assert len(cache) == len(oracle)


# -- threads ----------------------------------------------------------------------------------

def test_threads_needing_one_source_decode_it_once():
    data, cache = SOURCES["jpeg"], DecodedCache(1 << 30)
    barrier, outputs = threading.Barrier(6), []

    def one():
        barrier.wait(10)
        outputs.append(render(data, spec((200, 150)), cache=cache).body)

    threads = [threading.Thread(target=one) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(set(outputs)) == 1 and len(outputs) == 6
    assert (cache.misses, cache.hits) == (1, 5)


def test_a_thread_waits_for_another_threads_decode_and_reuses_it():
    data, cache = SOURCES["jpeg"], DecodedCache(1 << 30)
    other = DecodedCache(1 << 30)
    render(data, spec((200, 150)), cache=other)
    results = []
    with cache.exclusive(data):                    # this thread is "decoding"
        waiter = threading.Thread(
            target=lambda: results.append(render(data, spec((200, 150)), cache=cache)))
        waiter.start()
        key = cache.key(data)
        wait_for(lambda: cache._flights[key].users == 2, 10, "the second render waiting")
        assert (cache.hits, cache.misses) == (0, 0)
        cache.put(data, other.find(data))
    waiter.join(30)
    assert (cache.hits, cache.misses) == (1, 0)
    assert results[0].body == render(data, spec((200, 150))).body
    assert cache._flights == {}


def test_the_wait_for_another_decode_ends_at_the_deadline():
    data, cache = SOURCES["jpeg"], DecodedCache(1 << 30)
    passed = Deadline(at=5.0, clock=lambda: 6.0)
    failures = []

    def wait():
        try:
            with cache.exclusive(data, passed):
                pass
        except TransformTimeout as exc:
            failures.append(exc)

    with cache.exclusive(data):
        waiter = threading.Thread(target=wait)
        waiter.start()
        waiter.join(30)
        assert len(failures) == 1
        # in this thread too: a wait that gives up leaves the holder's lock in place
        with pytest.raises(TransformTimeout):
            with cache.exclusive(data, passed):
                pass
        assert cache._flights[cache.key(data)].users == 1
    assert cache._flights == {}
    with cache.exclusive(data, passed):            # free: taken at once, deadline or not
        pass


# -- through the proxy ------------------------------------------------------------------------

SRCSET = [(320, 240), (480, 360), (640, 480), (800, 600), (960, 720), (1120, 840),
          (1280, 960), (1440, 1080)]


def test_a_srcset_of_a_large_jpeg_is_fetched_once_and_decoded_twice():
    from mediaproxy.builtin.decoded import DecodedCacheCollector

    big = make_jpeg(4000, 3000, quality=75)
    origin = ImageOrigin({"/media/big.jpg": big})
    with start_proxy(origin=origin) as proxy:
        for w, h in SRCSET:
            status, _, body, _ = proxy.get(f"/media/big.jpg?w={w}&h={h}&fit=inside&fmt=jpeg")
            assert status == 200
            assert_image(body, (w, h), "JPEG")     # 4:3 boxes of a 4:3 source
        assert origin.hits["/media/big.jpg"] == 1
        cache = proxy.runtime.decoded
        # 320 wants 1/8, a new large source decodes 1/4: 480..960 reuse it; 1120 wants 1/2
        assert (cache.misses, cache.hits, len(cache)) == (2, 6, 1)
        assert cache.find(big).scale == 2
        families = {f.name: f for f in DecodedCacheCollector(proxy.runtime).collect()}
        lookups = {s.labels["result"]: s.value
                   for s in families["mediaproxy_decoded_cache_lookups"].samples
                   if s.name.endswith("_total")}
        assert lookups == {"hit": 6, "miss": 2}
        assert families["mediaproxy_decoded_cache_bytes"].samples[0].value == cache.bytes > 0
