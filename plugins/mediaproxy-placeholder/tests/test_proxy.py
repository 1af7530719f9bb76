"""The plugin in a real proxy (``mediaproxy.testing``: real sockets, a real origin, real images),
loaded through its ``mediaproxy`` entry point as an installed plugin is: what each kind
answers, text or JSON by Accept, caching (a second request is a hit: no backend fetch, no
render), the decoded-image cache reused, the memory budget, a bad value, and the plugin
disabled by name."""

import io
import re

import pytest
from mediaproxy.testing import ImageOrigin, make_animated, make_image, start_proxy
from PIL import Image

BASE83 = re.compile(r"^[0-9A-Za-z#$%*+,\-.:;=?@\[\]^_{|}~]{28}$")
JPEG = make_image((400, 300), colour=(250, 20, 20))


def split(left=(250, 20, 20), right=(20, 20, 250), size=(400, 300), at=300) -> bytes:
    """A PNG (lossless: the colours are exact): ``left`` up to x=``at``, ``right`` after."""
    image = Image.new("RGB", size, right)
    image.paste(Image.new("RGB", (at, size[1]), left), (0, 0))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def big_jpeg() -> bytes:
    image = Image.new("RGB", (4000, 3000), (30, 140, 60))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=60)
    return out.getvalue()


def hex_of(body: bytes, at=(8, 8)) -> bytes:
    """The colour of a solid image's pixel as decoded by Pillow (the oracle for a JPEG, whose
    decoded colour may differ from the one it was made with by a unit)."""
    r, g, b = Image.open(io.BytesIO(body)).convert("RGB").getpixel(at)
    return b"#%02x%02x%02x" % (r, g, b)


FILES = {
    "/media/a.jpg": JPEG,
    "/media/split.png": split(),
    "/media/alpha.png": make_image((300, 400), "PNG", (10, 200, 30, 0), mode="RGBA"),
    "/media/anim.gif": make_animated("GIF", count=3, size=(60, 40)),
}


@pytest.fixture(scope="module")
def proxy():
    with start_proxy(origin=ImageOrigin(FILES), load_entrypoints=True) as running:
        yield running


def test_blurhash_as_text_then_a_hit_without_the_backend_or_a_render(proxy):
    path = "/media/a.jpg?placeholder=blurhash&w=120"
    status, headers, body, _ = proxy.get(path)
    assert status == 200
    assert headers["content-type"] == "text/plain; charset=utf-8"
    assert headers["vary"] == "Accept" and headers["x-cache"] == "MISS"
    assert BASE83.match(body.decode())
    fetched = proxy.origin.hits["/media/a.jpg"]
    status, headers, again, _ = proxy.get(path)
    assert (status, headers["x-cache"], again) == (200, "HIT-MEMORY", body)
    assert headers["vary"] == "Accept"
    assert proxy.origin.hits["/media/a.jpg"] == fetched


def test_json_when_accept_prefers_it_with_the_layout_box(proxy):
    path = "/media/a.jpg?placeholder=blurhash&w=200&h=100&fit=cover"
    status, headers, data = proxy.json(path, headers={"Accept": "application/json"})
    assert status == 200 and headers["content-type"] == "application/json"
    assert set(data) == {"blurhash", "width", "height"}
    assert (data["width"], data["height"]) == (200, 100)
    assert BASE83.match(data["blurhash"])
    status, headers, text, _ = proxy.get(path, headers={"Accept": "text/plain"})
    assert text.decode() == data["blurhash"] and headers["content-type"].startswith("text/plain")
    assert headers["x-cache"] == "MISS"               # an entry of its own
    assert proxy.cache_key(path, "application/json") != proxy.cache_key(path, "text/plain")
    assert proxy.get(path, headers={"Accept": "application/json"}).headers["x-cache"] == \
        "HIT-MEMORY"
    status, _, data = proxy.json("/media/split.png?placeholder=color",
                                 headers={"Accept": "application/json"})
    assert data == {"color": "#fa1414", "width": 400, "height": 300}


def test_the_placeholder_is_of_the_variant_the_other_parameters_ask_for(proxy):
    # the split image is red on its left three quarters, blue on the rest
    assert proxy.get("/media/split.png?placeholder=color").body == b"#fa1414"
    crop = proxy.get("/media/split.png?placeholder=colour&w=100&h=300&fit=cover&pos=east")
    assert crop.body == b"#1414fa"
    assert proxy.cache_key("/media/split.png?placeholder=colour") == proxy.cache_key(
        "/media/split.png?placeholder=color")


def test_thumbhash_is_base64(proxy):
    import base64

    status, headers, body, _ = proxy.get("/media/alpha.png?placeholder=thumbhash")
    assert status == 200 and headers["content-type"] == "text/plain; charset=utf-8"
    digest = base64.b64decode(body, validate=True)
    assert digest[2] & 0x80                  # the header's "has alpha" bit (the spec's bit 23)


def test_lqip_is_a_tiny_blurred_image_in_the_requested_format(proxy):
    status, headers, body, _ = proxy.get("/media/a.jpg?placeholder=lqip")
    image = Image.open(io.BytesIO(body))
    assert (status, headers["content-type"], image.format, image.size) == (
        200, "image/jpeg", "JPEG", (24, 18))
    assert "vary" not in headers
    status, headers, body, _ = proxy.get("/media/a.jpg?placeholder=lqip&fmt=webp&w=100&h=100"
                                         "&fit=cover")
    image = Image.open(io.BytesIO(body))
    assert (headers["content-type"], image.format, image.size) == ("image/webp", "WEBP",
                                                                   (24, 24))
    status, headers, body, _ = proxy.get("/media/alpha.png?placeholder=lqip")
    image = Image.open(io.BytesIO(body))
    assert (image.format, image.mode, image.size) == ("PNG", "RGBA", (18, 24))


def test_an_animation_gives_its_first_frame(proxy):
    status, headers, body, _ = proxy.get("/media/anim.gif?placeholder=color")
    assert (status, body) == (200, b"#ff0000")


def test_a_bad_kind_is_a_400_naming_the_parameter(proxy):
    status, headers, data = proxy.json("/media/a.jpg?placeholder=sparkles")
    assert status == 400
    assert (data["error"], data["parameter"]) == ("invalid_parameter", "placeholder")
    assert data["message"] == "placeholder must be one of blurhash, color, lqip, thumbhash"


def test_the_decoded_source_is_reused_and_the_budget_is_the_tiny_render():
    """A 4000x3000 JPEG: with transforms limited to 32 MiB each, the full-size image (about
    245 MiB by the estimate) is refused before decoding, its placeholder is not (about 19 MiB:
    decoded at 1/4, the decoded cache's first decode of a large source being one step finer
    than the 1/8 a 32 px render needs); the next kind of the same source is made from the
    decoded copy the first one left."""
    files = {"/media/big.jpg": big_jpeg()}
    overrides = {"limits": {"max_transform_bytes": 32 * 1024 * 1024},
                 "processing": {"decoded_cache_bytes": 16_000_000}}
    with start_proxy(origin=ImageOrigin(files), overrides=overrides,
                     load_entrypoints=True) as running:
        status, _, data = running.json("/media/big.jpg?w=4000")
        assert (status, data["error"]) == (422, "over_memory_budget")
        decoded = running.runtime.decoded
        status, _, body, _ = running.get("/media/big.jpg?placeholder=color")
        assert (status, body) == (200, hex_of(files["/media/big.jpg"]))
        misses, hits = decoded.misses, decoded.hits
        status, _, data = running.json("/media/big.jpg?placeholder=blurhash",
                                       headers={"Accept": "application/json"})
        assert (status, data["width"], data["height"]) == (200, 4000, 3000)
        assert (decoded.misses, decoded.hits) == (misses, hits + 1)
        assert running.origin.hits["/media/big.jpg"] == 1


def test_disabled_by_name_the_parameter_is_ignored():
    with start_proxy(origin=ImageOrigin({"/media/a.jpg": JPEG}), load_entrypoints=True,
                     overrides={"plugins": {"disabled": ["placeholder"]}}) as running:
        names = {name for name, plugin in running.runtime.pm.list_name_plugin() if plugin}
        assert "placeholder" not in names
        status, headers, body, _ = running.get("/media/a.jpg?placeholder=blurhash")
        assert (status, body) == (200, JPEG)          # no image parameter: passed through
        assert "x-cache" not in headers
        status, headers, body, _ = running.get("/media/a.jpg?placeholder=blurhash&w=50")
        image = Image.open(io.BytesIO(body))
        assert (status, headers["content-type"], image.size) == (200, "image/jpeg", (50, 38))
        assert running.cache_key("/media/a.jpg?placeholder=blurhash&w=50") == \
            running.cache_key("/media/a.jpg?w=50")


def test_installed_it_is_loaded_by_its_entry_point(proxy):
    plugins = dict(proxy.runtime.pm.list_name_plugin())
    assert plugins["placeholder"].__name__ == "mediaproxy_placeholder"
    assert "placeholder" in proxy.runtime.param_names
