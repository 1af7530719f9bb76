"""
The gallery of the Django test project in a real browser: Debian's Chromium (tests/browser.py)
loads the page through a real proxy in front of the Django app served for real, and the test
reads back what the browser did: which ``<picture>`` source and srcset candidate it chose
(``currentSrc``), the ``Accept`` header it sent (recorded at the proxy by a small plugin), the
content type it got, and that every image decoded at the expected width (``naturalWidth``).

Chromium's choice is deterministic: ``sizes="400px"`` over candidates of 200, 400 and 800 px
asks for 400 px at a device pixel ratio of 1 and 800 px at 2, and the first ``<source>`` whose
type it decodes (AVIF) wins over WebP and the ``<img>`` fallback.
"""

from __future__ import annotations

import threading

import pytest

from mediaproxy import hookimpl
from mediaproxy.testing import start_proxy

#: What Debian's Chromium (156) sends for an image: JPEG XL first since it came back in 145.
CHROMIUM_IMAGE_ACCEPT = ("image/jxl,image/avif,image/webp,image/apng,image/svg+xml,image/*,"
                         "*/*;q=0.8")

#: Each <img> of the page: id -> (the URL it shows, relative to the proxy, its width, type).
AT_1X = {
    "landscape": ("/media/uploads/landscape.jpg?fmt=avif&w=400", 400, "image/avif"),
    "landscape-thumb": ("/media/uploads/landscape.jpg?w=150&h=150&fit=cover", 150,
                        "image/jpeg"),
    "landscape-auto": ("/media/uploads/landscape.jpg?w=120&fmt=auto", 120, "image/avif"),
    "logo": ("/media/uploads/logo.png?fmt=avif&w=400", 400, "image/avif"),
    "logo-thumb": ("/media/uploads/logo.png?w=150&h=150&fit=cover", 150, "image/png"),
    "logo-auto": ("/media/uploads/logo.png?w=120&fmt=auto", 120, "image/avif"),
    "spaced": ("/media/uploads/summer%20caf%C3%A9.jpg?fmt=avif&w=400", 400, "image/avif"),
    "spaced-thumb": ("/media/uploads/summer%20caf%C3%A9.jpg?w=150&h=150&fit=cover", 150,
                     "image/jpeg"),
    "spaced-auto": ("/media/uploads/summer%20caf%C3%A9.jpg?w=120&fmt=auto", 120,
                    "image/avif"),
    "by-path": ("/media/uploads/landscape.jpg?w=80", 80, "image/jpeg"),
    "by-name": ("/media/uploads/landscape.jpg?w=64&fmt=png", 64, "image/png"),
}

#: Waits for every image to decode (``decode()`` rejects for a broken one), then reads them.
READ_IMAGES = """async () => Promise.all(Array.from(document.images).map(
    img => img.decode().then(() => true, () => false).then(decoded => ({
        id: img.id, currentSrc: img.currentSrc, decoded: decoded,
        naturalWidth: img.naturalWidth}))))"""


class AcceptRecorder:
    """A proxy plugin that records each image request's path, query and Accept header."""

    def __init__(self):
        self.seen: list[tuple[str, str | None]] = []
        self._lock = threading.Lock()

    @hookimpl
    def mediaproxy_check_request(self, image_request, request, runtime):
        with self._lock:
            query = "&".join(f"{n}={v}" for n, v in request.query)
            self.seen.append((f"{request.path}?{query}", request.header("accept")))
        return None


@pytest.fixture
def gallery_proxy(live_reactor, django_site):
    recorder = AcceptRecorder()
    with start_proxy(backend_port=django_site.port, plugins=[recorder]) as proxy:
        yield proxy, recorder


def load_gallery(browser_page, proxy, scale: int):
    page = browser_page(viewport={"width": 1000, "height": 3000}, device_scale_factor=scale)
    content_types: dict[str, str] = {}
    page.on("response", lambda r: content_types.__setitem__(r.url, r.headers.get(
        "content-type")))
    response = page.goto(proxy.url("/gallery/"), wait_until="load")
    assert response.status == 200
    images = {image["id"]: image for image in page.evaluate(READ_IMAGES)}
    return images, content_types


def test_chromium_picks_the_avif_source_at_the_width_it_needs(browser_page, gallery_proxy):
    proxy, recorder = gallery_proxy
    images, content_types = load_gallery(browser_page, proxy, scale=1)
    assert sorted(images) == sorted(AT_1X)
    for name, (url, width, content_type) in AT_1X.items():
        image = images[name]
        assert image["currentSrc"] == proxy.url(url), name
        assert (image["decoded"], image["naturalWidth"]) == (True, width), name
        assert content_types[proxy.url(url)] == content_type, name
    # every image the browser asked for reached the proxy once, with Chromium's image Accept
    assert sorted(path for path, _ in recorder.seen) == sorted(url for url, _, _ in AT_1X.values())
    assert {accept for _, accept in recorder.seen} == {CHROMIUM_IMAGE_ACCEPT}


def test_at_twice_the_pixel_density_it_picks_the_800_px_candidate(browser_page, gallery_proxy):
    proxy, _ = gallery_proxy
    images, content_types = load_gallery(browser_page, proxy, scale=2)
    for name in ("landscape", "logo", "spaced"):
        url = AT_1X[name][0].replace("w=400", "w=800")
        assert images[name]["currentSrc"] == proxy.url(url)
        # the 800 px candidate at density 2: 400 CSS pixels, read from its "800w" descriptor
        assert (images[name]["decoded"], images[name]["naturalWidth"]) == (True, 400)
        assert content_types[proxy.url(url)] == "image/avif"
