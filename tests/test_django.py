"""
mediaproxy.django against the real test project (tests/django_project): the template tags'
exact output, then the gallery page served by Django for real (wsgiref on a free port) behind
a real proxy, every image URL the page holds fetched through that proxy and decoded, unsigned
and signed (the signatures made on the Django side with mediaproxy.urlsign, checked by the
proxy's signing plugin: one implementation, two processes' worth of use).

The expected signatures in the exact-output tests come from ``mac`` below, written from the
documented canonical form, not from the module. The expected geometry of each fetched image is
worked out here from the original's size and the URL's parameters (the gallery's widths divide
the originals exactly).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
from html.parser import HTMLParser
from types import SimpleNamespace
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from tests.django_project.serve import setup_django

setup_django()

from django.core.exceptions import ImproperlyConfigured  # noqa: E402
from django.template import Context, Template  # noqa: E402
from django.test import override_settings  # noqa: E402

from mediaproxy.django import image_url, picture, source_path, srcset  # noqa: E402
from mediaproxy.django.builder import Settings  # noqa: E402
from mediaproxy.testing import assert_image, start_proxy  # noqa: E402
from tests.django_project.gallery.models import Photo  # noqa: E402

KEY = "dj-0123456789abcdef0123456789abcdef"
THUMB = {"w": 150, "h": 150, "fit": "cover"}
#: The originals in tests/django_project/media/uploads: backend path -> (width, height, format)
ORIGINALS = {
    "/media/uploads/landscape.jpg": (1600, 1000, "JPEG"),
    "/media/uploads/logo.png": (800, 800, "PNG"),
    "/media/uploads/summer%20caf%C3%A9.jpg": (1200, 900, "JPEG"),
}
FORMAT_OF = {"avif": "AVIF", "webp": "WEBP", "png": "PNG", "jpeg": "JPEG"}


def mac(key: str, message: str) -> str:
    digest = hmac.new(key.encode(), message.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def render(text: str, **context) -> str:
    return Template("{% load mediaproxy %}" + text).render(Context(context))


def photo(name: str = "uploads/landscape.jpg") -> Photo:
    return Photo(slug="p", title="P", image=name)


# -- what the tags write ---------------------------------------------------------------------

def test_the_url_tag_takes_a_field_file_a_path_a_url_or_a_storage_name():
    assert render('{% mediaproxy_url p.image w=300 fmt="webp" %}', p=photo()) == \
        "/media/uploads/landscape.jpg?w=300&amp;fmt=webp"
    assert render('{% mediaproxy_url "/media/a b.jpg" w=1 %}') == "/media/a%20b.jpg?w=1"
    assert render('{% mediaproxy_url "https://cdn.example/media/x.jpg" h=2 %}') == \
        "/media/x.jpg?h=2"
    assert render('{% mediaproxy_url "uploads/summer café.jpg" w=3 %}') == \
        "/media/uploads/summer%20caf%C3%A9.jpg?w=3"
    assert render('{% mediaproxy_url p.image w=4 as u %}[{{ u|safe }}]', p=photo()) == \
        "[/media/uploads/landscape.jpg?w=4]"


def test_the_proxy_origin_prefixes_every_url():
    with override_settings(MEDIAPROXY={"URL": "https://img.example/"}):
        assert image_url(photo().image, w=5) == "https://img.example/media/uploads/landscape.jpg?w=5"


def test_a_preset_expands_on_the_django_side_and_explicit_parameters_win():
    assert image_url(photo().image, preset="thumb") == \
        "/media/uploads/landscape.jpg?w=150&h=150&fit=cover"
    assert image_url(photo().image, preset="thumb", h=100, fmt="webp") == \
        "/media/uploads/landscape.jpg?w=150&h=100&fit=cover&fmt=webp"


def test_a_preset_the_proxy_defines_is_sent_by_name():
    with override_settings(MEDIAPROXY={"PRESETS": ["card", "hero"]}):
        assert image_url(photo().image, preset="card") == "/media/uploads/landscape.jpg?preset=card"
        assert image_url(photo().image, preset="hero", w=10) == \
            "/media/uploads/landscape.jpg?preset=hero&w=10"
        with pytest.raises(ValueError, match=r"unknown mediaproxy preset 'thumb'; "
                                             r"MEDIAPROXY\['PRESETS'\] names \['card', 'hero'\]"):
            image_url(photo().image, preset="thumb")
    with override_settings(MEDIAPROXY={}):
        with pytest.raises(ValueError, match=r"names \[\]"):
            image_url(photo().image, preset="card")


def test_the_srcset_tag_writes_one_candidate_per_width():
    assert srcset(photo().image, "200, 400", fmt="webp") == (
        "/media/uploads/landscape.jpg?fmt=webp&w=200 200w, "
        "/media/uploads/landscape.jpg?fmt=webp&w=400 400w")
    assert render('{% mediaproxy_srcset p.image "100" preset="thumb" %}', p=photo()) == \
        "/media/uploads/landscape.jpg?w=100&amp;h=150&amp;fit=cover 100w"
    assert srcset(photo().image, [300]) == "/media/uploads/landscape.jpg?w=300 300w"
    with pytest.raises(TypeError, match="widths=, not w="):
        srcset(photo().image, "1", w=2)
    assert srcset(photo().image, 1) == "/media/uploads/landscape.jpg?w=1 1w"   # the least
    assert render('{% mediaproxy_srcset "/m/a.jpg" 300 %}') == "/m/a.jpg?w=300 300w"
    for bad in ("", "0", "1,x", "-5", "2.5", None, [0]):
        with pytest.raises(ValueError):
            srcset(photo().image, bad)


def test_the_options_are_keyword_only_and_the_settings_frozen():
    with pytest.raises(TypeError):
        image_url(photo().image, "thumb")
    with pytest.raises(TypeError):
        srcset(photo().image, [1], "thumb")
    with pytest.raises(TypeError):
        picture(photo().image, [1], "50vw")
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().url = "https://elsewhere.example"


def test_the_picture_tag_writes_avif_and_webp_sources_and_an_img_fallback():
    html = render('{% mediaproxy_picture p.image "200,400" sizes="50vw" alt=title '
                  'class="hero" %}', p=photo(), title="A <b>")
    u = "/media/uploads/landscape.jpg"
    assert html == (
        f'<picture><source type="image/avif" srcset="{u}?fmt=avif&amp;w=200 200w, '
        f'{u}?fmt=avif&amp;w=400 400w" sizes="50vw">'
        f'<source type="image/webp" srcset="{u}?fmt=webp&amp;w=200 200w, '
        f'{u}?fmt=webp&amp;w=400 400w" sizes="50vw">'
        f'<img src="{u}?w=400" srcset="{u}?w=200 200w, {u}?w=400 400w" sizes="50vw" '
        f'alt="A &lt;b&gt;" class="hero" loading="lazy"></picture>')
    assert picture(photo().image, [10], formats="webp") == (
        f'<picture><source type="image/webp" srcset="{u}?fmt=webp&amp;w=10 10w">'
        f'<img src="{u}?w=10" srcset="{u}?w=10 10w" alt="" loading="lazy"></picture>')
    with pytest.raises(ImproperlyConfigured, match=r"formats \['bmp'\]"):
        picture(photo().image, [10], formats="bmp")


def test_with_a_key_every_url_is_signed_as_the_proxy_checks():
    with override_settings(MEDIAPROXY={"KEY": KEY}):
        assert image_url(photo().image, w=300) == (
            "/media/uploads/landscape.jpg?w=300&sig="
            + mac(KEY, "MP1\n/media/uploads/landscape.jpg\nw=300\n"))
        assert image_url("/media/é.jpg", w=1, expires=1_700_000_000) == (
            "/media/%C3%A9.jpg?w=1&expires=1700000000&sig="
            + mac(KEY, "MP1\n/media/%C3%A9.jpg\nw=1\n1700000000"))
        assert srcset(photo().image, "8") == (
            "/media/uploads/landscape.jpg?w=8&sig="
            + mac(KEY, "MP1\n/media/uploads/landscape.jpg\nw=8\n") + " 8w")


def test_bad_settings_and_sources_are_clear_errors():
    with override_settings(MEDIAPROXY={"url": "x"}):
        with pytest.raises(ImproperlyConfigured, match=r"unknown keys \['url'\]"):
            image_url(photo().image)
    with override_settings(MEDIAPROXY={"PRESETS": "thumb"}):
        with pytest.raises(ImproperlyConfigured, match="PRESETS"):
            image_url(photo().image)
    # anything with a url is a file (a storage's own file class may have no name)
    assert source_path(SimpleNamespace(url="https://s3.example/media/x%20y.jpg")) == \
        "/media/x%20y.jpg"
    with pytest.raises(ValueError, match="no file"):
        source_path(Photo().image)
    with pytest.raises(ValueError, match="empty"):
        source_path("")
    with pytest.raises(TypeError, match="not int"):
        source_path(3)


# -- the page behind a real proxy ------------------------------------------------------------

class ImageURLs(HTMLParser):
    """Every image URL of a page: ``<img src>``, and each candidate of any ``srcset``."""

    def __init__(self):
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.urls.append(attrs["src"])
        for candidate in (attrs.get("srcset") or "").split(","):
            if candidate.strip():
                self.urls.append(candidate.split()[0])


@pytest.fixture
def proxy_warnings():
    """The warnings and errors logged while the test runs, formatted: what a test reports when
    the page did not come through (the proxy's reason for a 502 is in its log, not its body)."""
    seen: list[str] = []

    def keep(event):
        if event.get("log_level") in (LogLevel.warn, LogLevel.error, LogLevel.critical):
            seen.append(formatEvent(event))

    globalLogPublisher.addObserver(keep)
    yield seen
    globalLogPublisher.removeObserver(keep)


def page_urls(proxy, site, warnings) -> list[str]:
    response = proxy.get("/gallery/")
    assert response.status == 200, (response.body, warnings, site.errors)
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    parser = ImageURLs()
    parser.feed(response.body.decode("utf-8"))
    return parser.urls


def expected(url: str) -> tuple[tuple[int, int], str]:
    """The size and format of ``url``'s answer, from its original and its parameters."""
    parts = urlsplit(url)
    width, height, fmt = ORIGINALS[parts.path]
    params = dict(parse_qsl(parts.query))
    w = int(params["w"])
    size = (w, int(params["h"])) if params.get("fit") == "cover" else (w, height * w // width)
    return size, FORMAT_OF.get(params.get("fmt"), fmt)


# 3 photos x (3 avif + 3 webp + img src + 3 img srcset + thumb + auto) + 2 by path and name
PAGE_IMAGES = 3 * 12 + 2


def check_every_image(proxy, urls):
    for url in urls:
        response = proxy.get(url)
        assert response.status == 200, (url, response.body[:200])
        size, fmt = expected(url)
        assert_image(response.body, size=size, format=fmt)


def test_the_gallery_through_the_proxy_unsigned(live_reactor, django_site,
                                                 proxy_warnings):
    with start_proxy(backend_port=django_site.port) as proxy:
        urls = page_urls(proxy, django_site, proxy_warnings)
        assert len(urls) == PAGE_IMAGES
        assert "/media/uploads/landscape.jpg?w=150&h=150&fit=cover" in urls
        assert "/media/uploads/landscape.jpg?w=80" in urls
        assert "/media/uploads/landscape.jpg?w=64&fmt=png" in urls
        assert not [u for u in urls if "sig=" in u]
        before = len(django_site.media_requests())
        check_every_image(proxy, urls)
        # the backend saw the originals only, never a transform
        fetched = django_site.media_requests()[before:]
        assert set(fetched) == {"/media/uploads/landscape.jpg", "/media/uploads/logo.png",
                                "/media/uploads/summer café.jpg"}


def test_the_gallery_through_a_signing_proxy(live_reactor, django_site,
                                              proxy_warnings):
    signed = {"URL": "", "KEY": KEY, "PRESETS": {"thumb": THUMB}}
    with start_proxy(backend_port=django_site.port,
                     overrides={"signing": {"keys": [KEY]}}) as proxy, \
            override_settings(MEDIAPROXY=signed):
        urls = page_urls(proxy, django_site, proxy_warnings)
        assert len(urls) == PAGE_IMAGES
        assert all("&sig=" in u for u in urls)
        check_every_image(proxy, urls)
        url = urls[0]
        path, query = url.split("?")
        pairs = parse_qsl(query)
        unsigned = f"{path}?{urlencode([p for p in pairs if p[0] != 'sig'])}"
        assert proxy.json(unsigned).data["error"] == "signature_required"
        altered = f"{path}?{urlencode([(n, '7' if n == 'w' else v) for n, v in pairs])}"
        response = proxy.get(altered)
        assert (response.status, json.loads(response.body)["error"]) == \
            (403, "invalid_signature")
