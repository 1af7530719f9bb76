"""ThumbHash against Evan Wallace's reference encoder: the library this plugin uses (``thash``,
a port) and the plugin's own path (a Pillow image in, base64 out) must give the reference's
bytes. ``reference/thumbhash_reference.json`` was written by ``reference/thumbhash_vectors.mjs``
running js/thumbhash.js of github.com/evanw/thumbhash (commit a652ce6) under node on the
images :func:`image` makes (the same formula in both languages; the SHA-256 of each image's
RGBA bytes is recorded to prove they are the same pixels)."""

import base64
import hashlib
import json
import math
from pathlib import Path

import pytest
import thash
from mediaproxy import TransformSpec
from mediaproxy_placeholder.encoders import thumbhash_of
from PIL import Image

VECTORS = json.loads((Path(__file__).parent / "reference" / "thumbhash_reference.json")
                     .read_text())["vectors"]


def image(w: int, h: int, alpha: bool, seed: int) -> bytes:
    out = bytearray()
    for y in range(h):
        for x in range(w):
            out += bytes(((x * 255 // max(1, w - 1) + seed * 37) % 256,
                          (y * 255 // max(1, h - 1) + seed * 11) % 256,
                          int(127.5 + 127.5 * math.sin((x + 2 * y + seed) / 3.0)),
                          (x * 7 + y * 13 + seed) % 256 if alpha else 255))
    return bytes(out)


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: f"{v['width']}x{v['height']}"
                         f"{'a' if v['alpha'] else ''}")
def test_the_library_gives_the_reference_bytes(vector):
    rgba = image(vector["width"], vector["height"], vector["alpha"], vector["seed"])
    assert hashlib.sha256(rgba).hexdigest() == vector["rgba_sha256"]   # the same pixels
    digest = thash.rgba_to_thumb_hash(vector["width"], vector["height"], list(rgba))
    assert base64.b64encode(bytes(digest)).decode() == vector["thumbhash"]


@pytest.mark.parametrize("vector", [v for v in VECTORS if max(v["width"], v["height"]) <= 32],
                         ids=lambda v: f"{v['width']}x{v['height']}")
def test_the_plugin_gives_the_reference_string_for_an_image_at_its_size(vector):
    # at most 32 px (the plugin's hash size), the image is hashed as it is
    size = (vector["width"], vector["height"])
    picture = Image.frombytes("RGBA", size, image(*size, vector["alpha"], vector["seed"]))
    assert thumbhash_of(picture, TransformSpec()) == vector["thumbhash"]
