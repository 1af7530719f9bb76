"""
A built-in demo origin: a tiny stand-in for a Django media server, serving generated sample
images under ``/media/uploads/`` and a page at ``/`` that shows them through the proxy
(:mod:`mediaproxy.demopage`: each original beside its variants, with their figures).
``mediaproxy demo`` runs it behind the proxy so ``curl`` works on a fresh machine.
"""

from __future__ import annotations

import hashlib
import io
import math
from email.utils import formatdate

from twisted.web.resource import Resource

from .demopage import render_page

SAMPLES = ("sample.jpg", "landscape.jpg", "logo.png", "banner.webp", "spinner.gif")


def _photo(width: int, height: int):
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)
    for y in range(0, height, 4):  # a sky-to-ground gradient
        t = y / height
        draw.rectangle([0, y, width, y + 4],
                       fill=(int(70 + 120 * t), int(130 + 60 * t), int(220 - 150 * t)))
    for i in range(12):  # a few "objects" with detail
        cx = int(width * (0.1 + 0.8 * ((i * 37) % 100) / 100))
        cy = int(height * (0.3 + 0.6 * ((i * 53) % 100) / 100))
        r = int(min(width, height) * (0.03 + 0.02 * (i % 4)))
        draw.ellipse([cx - r, cy - r, cx + r, cy + r],
                     fill=(200 - i * 10, 60 + i * 12, 90 + (i * 29) % 150))
    for x in range(0, width, max(width // 40, 1)):
        draw.line([x, int(height * 0.65 + 20 * math.sin(x / 50)), x, height], fill=(60, 90, 40))
    return image


def make_samples() -> dict[str, tuple[bytes, str]]:
    """Generate the sample images: name -> (bytes, content type)."""
    from PIL import Image, ImageDraw

    out = {}
    buf = io.BytesIO()
    _photo(1600, 1200).save(buf, "JPEG", quality=88)
    out["sample.jpg"] = (buf.getvalue(), "image/jpeg")

    buf = io.BytesIO()  # stored rotated, with EXIF orientation 6: shows auto-orient at work
    photo = _photo(1200, 1800).rotate(90, expand=True)
    exif = Image.Exif()
    exif[0x0112] = 6
    photo.save(buf, "JPEG", quality=85, exif=exif)
    out["landscape.jpg"] = (buf.getvalue(), "image/jpeg")

    logo = Image.new("RGBA", (800, 800), (0, 0, 0, 0))
    draw = ImageDraw.Draw(logo)
    draw.ellipse([80, 80, 720, 720], fill=(220, 40, 90, 255))
    draw.rectangle([300, 250, 500, 550], fill=(255, 255, 255, 200))
    buf = io.BytesIO()
    logo.save(buf, "PNG")
    out["logo.png"] = (buf.getvalue(), "image/png")

    buf = io.BytesIO()
    _photo(1200, 400).save(buf, "WEBP", quality=85)
    out["banner.webp"] = (buf.getvalue(), "image/webp")

    frames = []
    for i in range(8):
        frame = Image.new("RGB", (200, 200), (255, 255, 255))
        d = ImageDraw.Draw(frame)
        angle = i * math.pi / 4
        x, y = 100 + 60 * math.cos(angle), 100 + 60 * math.sin(angle)
        d.ellipse([x - 20, y - 20, x + 20, y + 20], fill=(30, 120, 200))
        frames.append(frame)
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    out["spinner.gif"] = (buf.getvalue(), "image/gif")
    return out


class DemoOrigin(Resource):
    """Serves ``/media/uploads/<sample>``, ``/`` (HTML) and ``/api/health`` (JSON)."""

    isLeaf = True

    def __init__(self, samples: dict[str, tuple[bytes, str]] | None = None,
                 signing_key: str | None = None):
        super().__init__()
        self.samples = samples if samples is not None else make_samples()
        #: signs the page's image URLs when the proxy in front checks signatures
        self.signing_key = signing_key
        self.started = formatdate(usegmt=True)

    def render_GET(self, request):
        path = request.path.decode("latin-1")
        if path.startswith("/media/uploads/") and path[len("/media/uploads/"):] in self.samples:
            body, ctype = self.samples[path[len("/media/uploads/"):]]
            etag = '"' + hashlib.sha1(body).hexdigest()[:16] + '"'
            request.setHeader(b"Content-Type", ctype.encode())
            request.setHeader(b"ETag", etag.encode())
            request.setHeader(b"Last-Modified", self.started.encode())
            if request.getHeader(b"if-none-match") == etag.encode():
                request.setResponseCode(304)
                return b""
            return body
        if path == "/api/health":
            request.setHeader(b"Content-Type", b"application/json")
            return b'{"status": "ok"}'
        if path == "/":
            host = (request.getHeader(b"host") or b"127.0.0.1:8080").decode("latin-1")
            request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
            request.setHeader(b"Cache-Control", b"no-cache")
            return render_page(self.samples, host, self.signing_key).encode()
        request.setResponseCode(404)
        request.setHeader(b"Content-Type", b"text/plain")
        return b"not found\n"

    def render_HEAD(self, request):
        # the GET's status and headers, no body (twisted.web warns on every HEAD that returns
        # one: the health check's, each few seconds)
        self.render_GET(request)
        return b""
