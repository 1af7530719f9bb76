"""
The demo page (``mediaproxy demo``'s ``/``) in a real browser: Debian's Chromium
(tests/browser.py) loads it through a real proxy in front of the built-in demo origin, as
``mediaproxy demo`` runs them (here on free ports), and the test reads back what the page shows.

Every ``<img>`` must have decoded at the size its parameters give (the sizes below are worked
out by hand from the samples' sizes, not by the proxy's geometry code), and the figures shown
under it (size, frames, bytes, type, ``X-Cache``) must be those of the response: the test asks
the proxy for the same URL with the same ``Accept`` afterwards and compares. A first load makes
every variant (``MISS``), a reload finds each in the proxy's memory (``HIT-MEMORY``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from urllib.error import HTTPError
from urllib.request import urlopen

import pytest

from mediaproxy import Rejection, hookimpl
from mediaproxy.demo import DemoOrigin, make_samples
from mediaproxy.testing import decode, start_proxy
from mediaproxy.urlsign import build_url

from .processes import ROOT
from .redis_server import free_port

#: What the page's script sends for an image (as a browser does for an <img>): fmt=auto
#: negotiates AVIF with it, WebP for an animation.
IMAGE_ACCEPT = "image/avif,image/webp,image/apng,image/*,*/*;q=0.8"

#: (sample, label) -> (width, height, content type, frames): what each image must be. The
#: samples (mediaproxy/demo.py) are 1600x1200, 1200x1800 once its EXIF orientation 6 is
#: applied (stored 1800x1200), 800x800, 1200x400 and 200x200 (8 frames). Box 240x160: cover,
#: contain and fill give the box; inside scales by the smaller ratio, outside by the larger.
EXPECTED = {
    ("sample.jpg", "original"): (1600, 1200, "image/jpeg", 1),
    ("sample.jpg", "fit=cover"): (240, 160, "image/jpeg", 1),
    ("sample.jpg", "fit=contain"): (240, 160, "image/jpeg", 1),
    ("sample.jpg", "fit=fill"): (240, 160, "image/jpeg", 1),
    ("sample.jpg", "fit=inside"): (213, 160, "image/jpeg", 1),      # 1600 * 160/1200
    ("sample.jpg", "fit=outside"): (240, 180, "image/jpeg", 1),     # 1200 * 240/1600
    ("sample.jpg", "pos=attention"): (160, 160, "image/jpeg", 1),
    ("sample.jpg", "fmt=jpeg"): (240, 180, "image/jpeg", 1),
    ("sample.jpg", "fmt=webp"): (240, 180, "image/webp", 1),
    ("sample.jpg", "fmt=avif"): (240, 180, "image/avif", 1),
    ("sample.jpg", "fmt=auto"): (200, 150, "image/avif", 1),
    ("landscape.jpg", "original"): (1200, 1800, "image/jpeg", 1),  # the browser applies EXIF
    ("landscape.jpg", "fit=cover"): (240, 160, "image/jpeg", 1),
    ("landscape.jpg", "fit=contain"): (240, 160, "image/jpeg", 1),
    ("landscape.jpg", "fit=fill"): (240, 160, "image/jpeg", 1),
    ("landscape.jpg", "fit=inside"): (107, 160, "image/jpeg", 1),   # 1200 * 160/1800 = 106.7
    ("landscape.jpg", "fit=outside"): (240, 360, "image/jpeg", 1),
    ("landscape.jpg", "pos=attention"): (160, 160, "image/jpeg", 1),
    ("landscape.jpg", "fmt=jpeg"): (240, 360, "image/jpeg", 1),
    ("landscape.jpg", "fmt=webp"): (240, 360, "image/webp", 1),
    ("landscape.jpg", "fmt=avif"): (240, 360, "image/avif", 1),
    ("landscape.jpg", "fmt=auto"): (200, 300, "image/avif", 1),
    ("logo.png", "original"): (800, 800, "image/png", 1),
    ("logo.png", "fit=cover"): (240, 160, "image/png", 1),
    ("logo.png", "fit=contain"): (240, 160, "image/png", 1),
    ("logo.png", "fit=fill"): (240, 160, "image/png", 1),
    ("logo.png", "fit=inside"): (160, 160, "image/png", 1),
    ("logo.png", "fit=outside"): (240, 240, "image/png", 1),
    ("logo.png", "pos=attention"): (160, 160, "image/png", 1),
    ("logo.png", "fmt=jpeg"): (240, 240, "image/jpeg", 1),
    ("logo.png", "fmt=webp"): (240, 240, "image/webp", 1),
    ("logo.png", "fmt=avif"): (240, 240, "image/avif", 1),
    ("logo.png", "fmt=auto"): (200, 200, "image/avif", 1),
    ("banner.webp", "original"): (1200, 400, "image/webp", 1),
    ("banner.webp", "fit=cover"): (240, 160, "image/webp", 1),
    ("banner.webp", "fit=contain"): (240, 160, "image/webp", 1),
    ("banner.webp", "fit=fill"): (240, 160, "image/webp", 1),
    ("banner.webp", "fit=inside"): (240, 80, "image/webp", 1),
    ("banner.webp", "fit=outside"): (480, 160, "image/webp", 1),
    ("banner.webp", "pos=attention"): (160, 160, "image/webp", 1),
    ("banner.webp", "fmt=jpeg"): (240, 80, "image/jpeg", 1),
    ("banner.webp", "fmt=webp"): (240, 80, "image/webp", 1),
    ("banner.webp", "fmt=avif"): (240, 80, "image/avif", 1),
    ("banner.webp", "fmt=auto"): (200, 67, "image/avif", 1),        # 400 * 200/1200 = 66.7
    ("spinner.gif", "original"): (200, 200, "image/gif", 8),
    ("spinner.gif", "w=100"): (100, 100, "image/gif", 8),
    ("spinner.gif", "fit=cover"): (160, 100, "image/gif", 8),
    ("spinner.gif", "fmt=webp"): (100, 100, "image/webp", 8),
    ("spinner.gif", "fmt=auto"): (120, 120, "image/webp", 8),       # animated: WebP, not AVIF
}

#: Reads every figure (once the page's script is done): what it shows and its <img>.
READ_FIGURES = """() => {
    return Array.from(document.querySelectorAll("figure")).map(f => ({
        sample: f.closest(".card").id, label: f.querySelector("b").textContent,
        url: f.dataset.url, failed: f.classList.contains("failed"),
        naturalWidth: f.querySelector("img").naturalWidth,
        naturalHeight: f.querySelector("img").naturalHeight,
        dims: f.querySelector("dd.dims").textContent,
        bytes: f.querySelector("dd.bytes").textContent,
        type: f.querySelector("dd.type").textContent,
        cache: f.querySelector("dd.cache").textContent,
        shownUrl: f.querySelector("code.url").textContent}));
}"""

#: The card's placeholders line: whether it shows, and the text of each placeholder.
READ_PLACEHOLDERS = """() => Array.from(document.querySelectorAll(".card")).map(card => ({
    sample: card.id, hidden: card.querySelector(".placeholders").hidden,
    shown: Object.fromEntries(Array.from(card.querySelectorAll(".ph")).map(
        span => [span.dataset.kind, span.textContent]))}))"""

DIMS = re.compile(r"(\d+) × (\d+)(?: · (\d+) frames)?")


#: The page asks for all its variants at once. On a machine busy with other work the default
#: processing.queue_timeout (1 s) may shed some (503 overloaded: the proxy's designed answer to
#: an overload, tested elsewhere); what this module tests is the page, so its proxies wait.
PATIENT = {"processing": {"queue_timeout": 60.0}}


def demo_proxy(samples, signing_key=None, overrides=None, **options):
    """A proxy in front of the demo origin serving ``samples``, as ``mediaproxy demo`` runs."""
    return start_proxy(origin=DemoOrigin(samples, signing_key=signing_key),
                       overrides={**PATIENT, **(overrides or {})}, **options)


@pytest.fixture(scope="module")
def samples():
    """The demo's generated samples (pure data: made once for the module)."""
    return make_samples()


def load(browser_page, proxy):
    page = browser_page(viewport={"width": 1200, "height": 900})
    response = page.goto(proxy.url("/"), wait_until="load")
    assert response.status == 200
    return page, read_figures(page)


def read_figures(page) -> dict[tuple[str, str], dict]:
    page.wait_for_function("document.body.dataset.done === '1'", timeout=60_000)
    return {(f["sample"], f["label"]): f for f in page.evaluate(READ_FIGURES)}


def shown(figure) -> tuple[int, int, int]:
    """(width, height, frames) as the figure's text says them."""
    dims = DIMS.fullmatch(figure["dims"])
    assert dims, figure
    return (int(dims[1]), int(dims[2]), int(dims[3] or 1))


def bytes_text(size: int, original: int | None) -> str:
    """What the page must show for a body of ``size`` bytes (and the original's share)."""
    share = f" ({100 * size / original:.1f}% of the original)" if original else ""
    return f"{size:,} B{share}"


def frames(image) -> int:
    return getattr(image, "n_frames", 1)


def test_the_page_shows_each_sample_beside_its_variants_with_the_responses_figures(
        browser_page, live_reactor, samples):
    with demo_proxy(samples) as proxy:
        page, figures = load(browser_page, proxy)
        assert sorted(figures) == sorted(EXPECTED)
        originals = {name: len(body) for name, (body, _) in samples.items()}
        for key, (width, height, content_type, frame_count) in EXPECTED.items():
            figure = figures[key]
            assert not figure["failed"], (key, figure["dims"])
            # the <img> decoded the bytes it got, at the size its parameters give
            assert (figure["naturalWidth"], figure["naturalHeight"]) == (width, height), key
            assert figure["shownUrl"] == figure["url"], key
            # the figures shown are those of the response: ask the proxy again, same Accept
            again = proxy.get(figure["url"], headers={"Accept": IMAGE_ACCEPT})
            assert again.status == 200, key
            image = decode(again.body)
            if key[1] != "original":   # Pillow leaves the EXIF orientation to the reader
                assert image.size == (width, height), key
            assert shown(figure) == (width, height, frame_count), key
            assert frames(image) == frame_count, key
            original = None if key[1] == "original" else originals[key[0]]
            assert figure["bytes"] == bytes_text(len(again.body), original), key
            assert (figure["type"], again.headers["content-type"]) == (content_type,) * 2, key
            if key[1] == "original":   # passed through untouched: no X-Cache
                assert again.body == samples[key[0]][0], key
                assert "x-cache" not in again.headers, key
                assert figure["cache"] == "none: passed through", key
            else:                      # made for the page, found in memory by the test
                assert (figure["cache"], again.headers["x-cache"]) == ("MISS", "HIT-MEMORY"), key
        # without the placeholder plugin the cards say nothing of placeholders (the probes were
        # asked after the images: without the plugin one is the fit=cover variant's request)
        assert page.evaluate(READ_PLACEHOLDERS) == [
            {"sample": name, "hidden": True, "shown": {"color": "", "blurhash": ""}}
            for name in samples]
        page.reload(wait_until="load")
        reloaded = read_figures(page)
        assert sorted(reloaded) == sorted(EXPECTED)
        for key, figure in reloaded.items():
            assert (shown(figure), figure["bytes"], figure["type"]) == (
                shown(figures[key]), figures[key]["bytes"], figures[key]["type"]), key
            assert figure["cache"] == (figures[key]["cache"] if key[1] == "original"
                                       else "HIT-MEMORY"), key


def test_with_the_placeholder_plugin_a_card_shows_the_colour_and_blurhash_of_its_cover_variant(
        browser_page, live_reactor, samples):
    import mediaproxy_placeholder

    with demo_proxy({"spinner.gif": samples["spinner.gif"]},
                    plugins=[mediaproxy_placeholder]) as proxy:
        page, figures = load(browser_page, proxy)
        assert [f["failed"] for f in figures.values()] == [False] * 5
        [card] = page.evaluate(READ_PLACEHOLDERS)
        answers = {kind: proxy.json(f"/media/uploads/spinner.gif?w=160&h=100&fit=cover"
                                    f"&placeholder={kind}",
                                    headers={"Accept": "application/json"})
                   for kind in ("color", "blurhash")}
        assert [a.status for a in answers.values()] == [200, 200]
        assert card == {"sample": "spinner.gif", "hidden": False, "shown": {
            "color": "color " + answers["color"].data["color"],
            "blurhash": "blurhash " + answers["blurhash"].data["blurhash"]}}


def test_without_x_cache_the_variants_say_why_there_is_none(browser_page, live_reactor, samples):
    with demo_proxy({"spinner.gif": samples["spinner.gif"]},
                    overrides={"cache": {"x_cache_header": False}}) as proxy:
        _, figures = load(browser_page, proxy)
        assert {label: figure["cache"] for (_, label), figure in figures.items()} == {
            "original": "none: passed through",
            **{label: "none (cache.x_cache_header off, or not through the proxy?)"
               for label in ("w=100", "fit=cover", "fmt=webp", "fmt=auto")}}


class Refuser:
    """Refuses some image requests with 503 overloaded and ``Retry-After: 0``, as a full
    transform queue does: the first ``times`` requests for each URL of ``urls``. (A fake
    fault: the real shedding cannot be made to hit one chosen request.)"""

    def __init__(self, urls: dict[str, int]):
        self.left = dict(urls)
        self.seen = {url: 0 for url in urls}

    @hookimpl
    def mediaproxy_check_request(self, image_request, request, runtime):
        url = request.path + "?" + "&".join(f"{n}={v}" for n, v in request.query)
        if url not in self.left:
            return None
        self.seen[url] += 1
        if self.left[url] == 0:
            return None
        self.left[url] -= 1
        return Rejection(503, "overloaded", "the server is busy; retry shortly",
                         headers=[("Retry-After", "0")])


def test_a_refused_image_is_asked_again_after_its_retry_after_twice_at_most(
        browser_page, live_reactor, samples):
    once, always = "/media/uploads/spinner.gif?w=100", "/media/uploads/spinner.gif?w=100&fmt=webp"
    refuser = Refuser({once: 1, always: 99})
    with demo_proxy({"spinner.gif": samples["spinner.gif"]}, plugins=[refuser]) as proxy:
        _, figures = load(browser_page, proxy)
        assert refuser.seen == {once: 2, always: 3}     # the first ask and two more at most
        assert (figures["spinner.gif", "w=100"]["failed"],
                figures["spinner.gif", "w=100"]["cache"]) == (False, "MISS (after 503)")
        refused = figures["spinner.gif", "fmt=webp"]
        assert refused["failed"]
        assert refused["dims"].startswith('failed: 503 {"error":"overloaded"'), refused["dims"]
        assert [f["failed"] for (_, label), f in figures.items() if label != "fmt=webp"] == [
            False] * 4


KEY = "demo-page-signing-key-0123456789"


def test_with_signing_keys_the_page_signs_its_urls_and_every_image_loads(
        browser_page, live_reactor, samples):
    with demo_proxy({"spinner.gif": samples["spinner.gif"]}, signing_key=KEY,
                    overrides={"signing": {"keys": [KEY]}}) as proxy:
        _, figures = load(browser_page, proxy)
        assert sorted(label for _, label in figures) == [
            "fit=cover", "fmt=auto", "fmt=webp", "original", "w=100"]
        for (_, label), figure in figures.items():
            assert not figure["failed"], (label, figure["dims"])
            assert ("&sig=" in figure["url"]) == (label != "original"), figure["url"]
            width, height, _, frame_count = EXPECTED["spinner.gif", label]
            assert shown(figure) == (width, height, frame_count), label
        # signatures are checked: the cover crop's URL without its sig is refused
        unsigned = figures["spinner.gif", "fit=cover"]["url"].split("&sig=")[0]
        assert proxy.get(unsigned, headers={"Accept": IMAGE_ACCEPT}).status == 403


def test_mediaproxy_demo_signs_its_page_and_its_curl_line_with_the_first_signing_key():
    port, origin_port = free_port(), free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MEDIAPROXY_")}
    environ.update(PYTHONPATH=str(ROOT), MEDIAPROXY_SERVER__WORKERS="1",
                   MEDIAPROXY_SIGNING__KEYS=f"{KEY},another-key-0123456789abcdef")
    proc = subprocess.Popen([sys.executable, "-m", "mediaproxy", "demo", "--port", str(port),
                             "--origin-port", str(origin_port)], cwd=ROOT, env=environ,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in proc.stdout:        # the banner comes once every listener is bound
            lines.append(line)
            if line.startswith("try:"):
                break
        curl = re.fullmatch(r"try:  curl -o thumb.webp '(.+)'\n", lines[-1])
        assert curl, lines
        # signed with the first key (every key verifies; the first is the one that signs)
        assert curl[1] == build_url("/media/uploads/sample.jpg",
                                    {"w": 300, "h": 200, "fit": "cover", "fmt": "webp"},
                                    base=f"http://127.0.0.1:{port}", key=KEY)
        with urlopen(curl[1], timeout=30) as answer:
            assert (answer.status, answer.headers["content-type"]) == (200, "image/webp")
        with urlopen(f"http://127.0.0.1:{port}/", timeout=30) as answer:
            page = answer.read().decode()
        cover = re.search(r'data-url="(/media/uploads/sample\.jpg\?w=240&amp;h=160&amp;'
                          r'fit=cover&amp;sig=[^"]+)"', page)
        assert cover, page[:2000]
        signed = f"http://127.0.0.1:{port}" + cover[1].replace("&amp;", "&")
        with urlopen(signed, timeout=30) as answer:
            assert answer.status == 200
        with pytest.raises(HTTPError) as refused:   # signatures are checked
            urlopen(signed.split("&sig=")[0], timeout=30)
        assert refused.value.code == 403
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
