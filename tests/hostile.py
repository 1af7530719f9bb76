"""
A hostile corpus, built here from scratch (nothing is downloaded), and an origin that serves
it the way a compromised or broken backend would: lying headers, endless chunked bodies,
bytes trickled one at a time.

Each :class:`Case` names the path to ask for, what the proxy must answer (status and error
code, see docs/security.md "Hostile inputs") and how long that may take at most.
"""

from __future__ import annotations

import random
import struct
import zlib
from typing import Any

import attrs
from PIL import Image
from twisted.internet.interfaces import IPushProducer
from twisted.web import server
from twisted.web.resource import Resource
from zope.interface import implementer

from mediaproxy.testing.images import encode, make_image, noise

MiB = 1024 * 1024


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def pixel_bomb_png(width: int = 30_000, height: int = 30_000) -> bytes:
    """A valid 1-bit greyscale PNG of ``width`` x ``height`` zeros: ~900 megapixels in about
    100 KiB (the rows are compressed as they are made, never held whole)."""
    row = b"\x00" * (1 + (width + 7) // 8)
    deflate = zlib.compressobj(9)
    parts = [deflate.compress(row * 1000) for _ in range(height // 1000)]
    parts.append(deflate.compress(row * (height % 1000)))
    parts.append(deflate.flush())
    return (b"\x89PNG\r\n\x1a\n"
            + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b""))


def noisy_jpeg(size=(800, 600), seed: int = 7) -> bytes:
    """A JPEG of random noise (no long runs, so truncating it really loses pixels)."""
    return encode(noise(*size, seed=seed), "JPEG", quality=90)


def small_jpeg(size=(64, 64)) -> bytes:
    return make_image(size, "JPEG", (10, 120, 200))


def lying_sof_jpeg(width: int, height: int) -> bytes:
    """A 64x64 JPEG whose SOF header claims ``width`` x ``height``."""
    data = bytearray(small_jpeg())
    at = data.index(b"\xff\xc0")          # baseline SOF0: FFC0 len(2) precision(1) h(2) w(2)
    struct.pack_into(">HH", data, at + 5, height, width)
    return bytes(data)


def many_frames_gif(frames: int = 3000) -> bytes:
    """An animated 2x2 GIF of ``frames`` alternating frames (Pillow would merge equal ones)."""
    palette = [0, 0, 0, 255, 255, 255] + [0] * 762
    images = []
    for i in range(frames):
        image = Image.new("P", (2, 2), i % 2)
        image.putpalette(palette)
        images.append(image)
    return encode(images[0], "GIF", save_all=True, append_images=images[1:], duration=10,
                  loop=0)


def small_gif() -> bytes:
    return make_image((32, 32), "GIF", (200, 10, 10))


def padded_jpeg(total: int = 40 * 1000 * 1000) -> bytes:
    """A valid small JPEG followed by zeros up to ``total`` bytes (decoders stop at EOI)."""
    head = small_jpeg()
    return head + b"\x00" * (total - len(head))


def jpeg_with_html_comment() -> bytes:
    """A JPEG/HTML polyglot: a COM segment carrying a script right after SOI."""
    payload = b"<html><script>alert(document.domain)</script></html>"
    data = small_jpeg()
    return data[:2] + b"\xff\xfe" + struct.pack(">H", len(payload) + 2) + payload + data[2:]


SVG_WITH_SCRIPT = (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" '
                   b'width="100" height="100" onload="alert(1)"><script>'
                   b'fetch("http://169.254.169.254/latest/meta-data/")</script>'
                   b'<rect width="100" height="100"/></svg>')
HTML = (b"<!DOCTYPE html><html><head><title>Server Error</title></head><body><h1>500</h1>"
        b"<p>Traceback (most recent call last): ...</p></body></html>")


def random_bytes(n: int = 8192, seed: int = 1234) -> bytes:
    data = random.Random(seed).randbytes(n)
    return b"\x13" + data[1:]   # no magic number starts with 0x13


@attrs.frozen
class Case:
    name: str
    path: str
    status: int
    error: str


@implementer(IPushProducer)
class _Endless:
    """Writes ``head`` then zeros, chunked, as fast as the reader takes them, up to ``limit``
    bytes (a bound for the test, far past every size limit), until the client goes away."""

    def __init__(self, reactor, request, head: bytes, limit: int, counters: dict):
        self.reactor, self.request, self.limit = reactor, request, limit
        self.block = head + b"\x00" * (64 * 1024 - len(head))
        self.zeros = b"\x00" * len(self.block)
        self.sent = 0
        self.paused = self.stopped = False
        self.counters = counters

    def start(self) -> None:
        self.request.registerProducer(self, True)
        self.request.notifyFinish().addErrback(lambda _: self.stopProducing())
        self.reactor.callLater(0, self._run)

    def _run(self) -> None:
        for _ in range(16):
            if self.paused or self.stopped:
                return
            if self.sent >= self.limit:
                self.stopped = True
                self.request.unregisterProducer()
                self.request.finish()
                return
            self.request.write(self.block)
            self.sent += len(self.block)
            self.counters["chunked_sent"] = self.sent
            self.block = self.zeros
        self.reactor.callLater(0, self._run)

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        if self.paused and not self.stopped:
            self.paused = False
            self.reactor.callLater(0, self._run)

    def stopProducing(self) -> None:
        self.stopped = True


class HostileOrigin(Resource):
    """Serves the corpus under ``/media/hostile/`` with whatever Content-Type a careless
    backend would send, plus two endpoints that misbehave over time:

    ``/media/hostile/chunked.jpg``  JPEG magic then zeros, chunked (no Content-Length), far
                                    past every limit;
    ``/media/hostile/slowloris.jpg`` headers at once, then one byte every ``trickle`` seconds.
    """

    isLeaf = True

    def __init__(self, reactor, files: dict[str, tuple[bytes, str]], trickle: float = 0.1):
        super().__init__()
        self.reactor = reactor
        self.files = files
        self.trickle = trickle
        self.counters: dict[str, Any] = {"chunked_sent": 0, "trickled": 0}

    def render_GET(self, request):
        name = request.path.decode("latin-1").rsplit("/", 1)[-1]
        if name == "chunked.jpg":
            request.setHeader(b"Content-Type", b"image/jpeg")
            _Endless(self.reactor, request, small_jpeg()[:64], 512 * MiB, self.counters).start()
            return server.NOT_DONE_YET
        if name == "slowloris.jpg":
            request.setHeader(b"Content-Type", b"image/jpeg")
            request.setHeader(b"Content-Length", b"1000000")
            self._trickle(request, small_jpeg())
            return server.NOT_DONE_YET
        if name not in self.files:
            request.setResponseCode(404)
            return b"not found"
        body, ctype = self.files[name]
        request.setHeader(b"Content-Type", ctype.encode())
        return body

    def _trickle(self, request, data: bytes) -> None:
        state = {"at": 0, "call": None, "gone": False}

        def gone(_):
            state["gone"] = True
            if state["call"] is not None and state["call"].active():
                state["call"].cancel()

        def step():
            if state["gone"] or state["at"] >= len(data):
                return
            request.write(data[state["at"]:state["at"] + 1])
            state["at"] += 1
            self.counters["trickled"] = state["at"]
            state["call"] = self.reactor.callLater(self.trickle, step)

        request.notifyFinish().addErrback(gone)
        step()


def corpus() -> tuple[dict[str, tuple[bytes, str]], list[Case]]:
    """The files a HostileOrigin serves and the cases to ask the proxy for."""
    files = {
        "bomb.png": (pixel_bomb_png(), "image/png"),
        "lying-sof-huge.jpg": (lying_sof_jpeg(60_000, 60_000), "image/jpeg"),
        "lying-sof.jpg": (lying_sof_jpeg(5000, 5000), "image/jpeg"),
        "truncated.jpg": (noisy_jpeg()[:20_000], "image/jpeg"),
        "empty.jpg": (b"", "image/jpeg"),
        "page.jpg": (HTML, "image/jpeg"),
        "script.svg": (SVG_WITH_SCRIPT, "image/svg+xml"),
        "svg-as.jpg": (SVG_WITH_SCRIPT, "image/jpeg"),
        "random.jpg": (random_bytes(), "image/jpeg"),
        "frames.gif": (many_frames_gif(), "image/gif"),
        "padded.jpg": (padded_jpeg(), "image/jpeg"),
        "polyglot.gif": (small_gif() + b"<html><script>alert(1)</script></html>", "image/gif"),
        "polyglot.jpg": (jpeg_with_html_comment(), "text/html"),
    }
    q = "?w=200&h=200"
    cases = [
        Case("pixel-bomb PNG 30000x30000", f"/media/hostile/bomb.png{q}", 422,
             "image_too_large"),
        Case("JPEG whose SOF claims 60000x60000", f"/media/hostile/lying-sof-huge.jpg{q}", 422,
             "image_too_large"),
        # Within the pixel budget: libjpeg would pad the missing rows with grey; 693 bytes
        # cannot hold 390625 blocks of at least a bit each, so it is refused as corrupt.
        Case("JPEG whose SOF claims 5000x5000", f"/media/hostile/lying-sof.jpg{q}", 422,
             "corrupt_image"),
        Case("truncated JPEG", f"/media/hostile/truncated.jpg{q}", 422, "corrupt_image"),
        Case("empty file", f"/media/hostile/empty.jpg{q}", 422, "unsupported_image"),
        Case("HTML served as .jpg", f"/media/hostile/page.jpg{q}", 422, "unsupported_image"),
        Case("SVG with script", f"/media/hostile/script.svg{q}", 422, "unsupported_format"),
        Case("SVG served as .jpg", f"/media/hostile/svg-as.jpg{q}", 422, "unsupported_format"),
        Case("random bytes", f"/media/hostile/random.jpg{q}", 422, "unsupported_image"),
        Case("GIF with 3000 frames", f"/media/hostile/frames.gif{q}", 422, "too_many_frames"),
        Case("40 MB padded JPEG", f"/media/hostile/padded.jpg{q}", 413, "source_too_large"),
        Case("chunked, no Content-Length, over the limit", f"/media/hostile/chunked.jpg{q}",
             413, "source_too_large"),
        Case("slow-loris origin", f"/media/hostile/slowloris.jpg{q}", 504, "backend_timeout"),
        Case("GIF + HTML polyglot", f"/media/hostile/polyglot.gif{q}", 200, ""),
        Case("JPEG + HTML polyglot (COM segment)", f"/media/hostile/polyglot.jpg{q}", 200, ""),
    ]
    return files, cases
