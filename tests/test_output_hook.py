"""``mediaproxy_output``: a plugin answers with something other than the encoded image (here a
line of text naming what the encoder got), through the core's cache, pool and memory budget.
The plugin-level feature built on it is plugins/mediaproxy-placeholder."""

import attrs
import pytest

from mediaproxy import Output, Param, Rendered, hookimpl, parse_bool
from mediaproxy.testing import ImageOrigin, make_animated, make_image, start_proxy


def describe(image, spec, request, size):
    text = (f"{image.width}x{image.height} box={size[0]}x{size[1]} mode={image.mode} "
            f"fmt={spec.format}")
    return Rendered(text.encode(), "text/plain", "described", *size)


class Describe:
    """``?describe=1``: the still the pool rendered, at most 16 px on a side (``tiny``), and
    the layout box the core computed from the request's own spec."""

    def __init__(self, tiny=True):
        self.tiny = tiny

    @hookimpl
    def mediaproxy_params(self, config):
        return [Param("describe", parse_bool, False, key=lambda v: "1" if v else None)]

    @hookimpl
    def mediaproxy_output(self, image_request, spec):
        if not image_request.params.get("describe"):
            return None
        small = attrs.evolve(spec, width=16, height=16, fit="inside") if self.tiny else None
        return Output("describe", describe, spec=small)


FILES = {"/media/a.jpg": make_image((400, 300)), "/media/b.jpg": make_image((300, 200)),
         "/media/anim.gif": make_animated("GIF", count=3, size=(60, 40))}


@pytest.fixture(scope="module")
def proxy():
    with start_proxy(origin=ImageOrigin(FILES), plugins=[Describe()]) as running:
        yield running


def test_the_encoder_gets_the_tiny_still_and_the_layout_box_of_the_request(proxy):
    status, headers, body, _ = proxy.get("/media/a.jpg?describe=1&w=200&h=100&fit=cover")
    assert (status, headers["content-type"], headers["x-cache"]) == (200, "text/plain", "MISS")
    assert body == b"16x12 box=200x100 mode=RGB fmt=None"
    status, headers, again, _ = proxy.get("/media/a.jpg?describe=1&w=200&h=100&fit=cover")
    assert (headers["x-cache"], again) == ("HIT-MEMORY", body)
    assert proxy.origin.hits["/media/a.jpg"] == 1


def test_the_format_asked_reaches_the_encoder_and_the_key(proxy):
    body = proxy.get("/media/a.jpg?describe=1&fmt=webp").body
    assert body == b"16x12 box=400x300 mode=RGB fmt=webp"
    assert proxy.cache_key("/media/a.jpg?describe=1&fmt=webp") != proxy.cache_key(
        "/media/a.jpg?describe=1&fmt=png")


def test_an_animation_gives_its_first_frame_only(proxy):
    assert proxy.get("/media/anim.gif?describe=1").body == \
        b"16x11 box=60x40 mode=RGB fmt=None"


def test_without_the_output_the_image_is_encoded_as_ever(proxy):
    status, headers, body, _ = proxy.get("/media/a.jpg?w=100")
    assert (status, headers["content-type"]) == (200, "image/jpeg")


def test_the_budget_is_estimated_on_the_outputs_spec():
    """A 4000x3000 JPEG in transforms of at most 32 MiB: refused as an image, and as an output
    without a spec of its own (the full size), admitted with a 16 px one."""
    files = {"/media/big.jpg": make_image((4000, 3000), quality=50)}
    overrides = {"limits": {"max_transform_bytes": 32 * 1024 * 1024}}
    with start_proxy(origin=ImageOrigin(files), overrides=overrides,
                     plugins=[Describe(tiny=True)]) as running:
        assert running.json("/media/big.jpg?w=4000").data["error"] == "over_memory_budget"
        status, _, body, _ = running.get("/media/big.jpg?describe=1")
        assert (status, body) == (200, b"16x12 box=4000x3000 mode=RGB fmt=None")
    with start_proxy(origin=ImageOrigin(files), overrides=overrides,
                     plugins=[Describe(tiny=False)]) as running:
        status, _, data = running.json("/media/big.jpg?describe=1")
        assert (status, data["error"]) == (422, "over_memory_budget")


def test_an_output_is_never_offered_as_a_variant_of_its_source(proxy):
    """A shed request is offered the nearest cached size of its source: never a plugin's
    output (text here), only images."""
    variants = proxy.runtime.pm.get_plugin("mediaproxy.builtin.pipeline.instance").variants
    proxy.get("/media/b.jpg?describe=1&w=100")
    assert variants._sources.get(("public", "/media/b.jpg")) is None
    proxy.get("/media/b.jpg?w=100")
    assert len(variants._sources[("public", "/media/b.jpg")]) == 1
