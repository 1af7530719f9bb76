"""
The cache key over HTTP: URLs that mean the same transform share one entry (one origin fetch,
one render), URLs that do not are distinct entries; and the key is the documented, stable one.

The expected keys are rebuilt here from the recipe of mediaproxy.cache (``v1``, the normalised
path, each parameter's contribution in name order, the negotiated format; SHA-256; prefixed by
the tenant and a 20-hex-digit hash of the path), so a change to the key, which would silently
orphan every entry in a shared Redis or file cache on deploy, fails here.
"""

from __future__ import annotations

import hashlib

import pytest

from mediaproxy import hookimpl
from mediaproxy.models import ImageRequest
from mediaproxy.cache.purge import PurgeScope, purge
from mediaproxy.testing import call_in_reactor, wait_for

from mediaproxy.testing.images import decode, make_image, make_jpeg, make_png
from mediaproxy.testing import ImageOrigin, start_proxy

PHOTO = make_jpeg(400, 200)


def _origin():
    return ImageOrigin({path: (200, PHOTO, "image/jpeg", [])
                        for path in ("/media/uploads/a.jpg", "/media/uploads/b.jpg",
                                     "/media/shop_1/uploads/a.jpg", "/static/a.jpg")})


@pytest.fixture
def proxy(live_reactor):
    running = start_proxy(origin=_origin())
    yield running
    running.stop()


def transforms(running) -> int:
    return running.runtime.pm.get_plugin("mediaproxy.builtin.metrics.counters").count(
        "transform")


def fetch(running, path, **headers):
    status, response, body, _ = running.get(path, headers=headers)
    assert status == 200, body
    return response["x-cache"], response["etag"], body


# -- one entry for one meaning ---------------------------------------------------------------

SAME = [
    "/media/uploads/a.jpg?w=100&h=40&fit=cover",
    "/media/uploads/a.jpg?fit=cover&h=40&w=100",                 # another order
    "/media/uploads/a.jpg?width=100&height=40&fit=cover",        # aliases
    "/media/uploads/a.jpg?w=0100&h=40&fit=COVER",                # other spellings
    "/media/uploads/a.jpg?w=100&h=40&fit=cover&q=80&trim=0&enlarge=0&pos=center&bg=fff",
    "/media/uploads/a.jpg?w=100&h=40&fit=cover&position=middle&background=%23ffffffff"
    "&quality=80&enlarge=no",                                    # defaults, spelled out
    "/media/uploads/a.jpg?w=100&h=40&fit=cover&v=123&utm_source=x",   # unknown: ignored
    "/media/uploads/a.jpg?w=7&w=100&h=40&fit=cover",             # the last value wins
    "/media//uploads/./a.jpg?w=100&h=40&fit=cover",              # the same source path
]


def test_equivalent_urls_share_one_entry_one_fetch_one_render(proxy):
    urls = SAME
    first = fetch(proxy, urls[0])
    assert first[0] == "MISS"
    for url in urls[1:]:
        cache, etag, body = fetch(proxy, url)
        assert (cache, etag, body) == ("HIT-MEMORY", first[1], first[2]), url
    assert decode(first[2]).size == (100, 40)
    assert transforms(proxy) == 1
    assert sum(proxy.origin.hits.values()) == 1


def test_the_query_and_the_compat_route_share_one_entry(proxy):
    cache, etag, _ = fetch(proxy, "/media/uploads/a.jpg?w=100&h=40&fit=cover&pos=north"
                                  "&bg=ffffff&trim=0&q=80&fmt=webp&enlarge=1")
    assert cache == "MISS"
    assert fetch(proxy, "/media_stream-image/media/uploads/a.jpg/100/40/cover/top/ffffff/0/"
                        "80.webp")[:2] == ("HIT-MEMORY", etag)
    assert transforms(proxy) == 1


def test_concurrent_equivalent_requests_render_once(proxy):
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda url: fetch(proxy, url), SAME[:6]))
    assert len({(etag, body) for _, etag, body in answers}) == 1
    assert transforms(proxy) == 1
    assert sum(proxy.origin.hits.values()) == 1


# -- distinct meanings, distinct entries -------------------------------------------------------

BASE = "/media/uploads/a.jpg?w=100&h=40"
DIFFERENT = [
    BASE, "/media/uploads/a.jpg?w=101&h=40", "/media/uploads/a.jpg?w=100&h=41",
    "/media/uploads/a.jpg?w=100", "/media/uploads/a.jpg?h=40",
    "/media/uploads/b.jpg?w=100&h=40", "/media/shop_1/uploads/a.jpg?w=100&h=40",
    "/static/a.jpg?w=100&h=40",
    BASE + "&q=81", BASE + "&q=79", BASE + "&trim=1", BASE + "&enlarge=1",
    BASE + "&fit=cover", BASE + "&fit=contain", BASE + "&fit=fill", BASE + "&fit=outside",
    BASE + "&fit=cover&pos=north", BASE + "&fit=cover&pos=entropy",
    BASE + "&fit=contain&bg=000", BASE + "&fit=contain&bg=ffffff00",
    BASE + "&fmt=png", BASE + "&fmt=webp", BASE + "&fmt=gif",
]


def test_different_transforms_are_different_entries(proxy):
    etags = []
    for url in DIFFERENT:
        cache, etag, _ = fetch(proxy, url)
        assert cache == "MISS", url
        etags.append(etag)
    assert transforms(proxy) == len(DIFFERENT)
    for url in DIFFERENT:                          # and each is found again under its key
        assert fetch(proxy, url)[0] == "HIT-MEMORY", url
    assert transforms(proxy) == len(DIFFERENT)


def test_no_format_and_the_explicit_format_it_resolves_to_share_one_entry(proxy):
    # fmt=jpeg and no fmt give the same bytes for a JPEG source: one render, one entry, in
    # either order (a PNG source would resolve to png: the key follows what the source is)
    assert fetch(proxy, BASE)[0] == "MISS"
    assert fetch(proxy, BASE + "&fmt=jpeg")[0] == "HIT-MEMORY"
    assert fetch(proxy, BASE + "&fmt=jpg")[0] == "HIT-MEMORY"
    assert fetch(proxy, "/media/uploads/b.jpg?w=77&fmt=jpeg")[0] == "MISS"
    # the other order, before this process knows what b.jpg resolves to: found once the
    # source is read, without a second render
    cache, _, body = fetch(proxy, "/media/uploads/b.jpg?w=77")
    assert cache == "HIT-MEMORY" and decode(body).format == "JPEG"
    assert fetch(proxy, "/media/uploads/b.jpg?w=77&fmt=auto", Accept="image/jpeg")[0] == \
        "HIT-MEMORY"
    assert transforms(proxy) == 2


def test_a_png_source_without_a_format_never_shares_the_jpeg_entry(live_reactor):
    png = make_image((120, 90), fmt="PNG", mode="RGBA")
    with start_proxy(origin=ImageOrigin(
            {"/media/uploads/p.png": (200, png, "image/png", [])})) as running:
        assert fetch(running, "/media/uploads/p.png?w=60&fmt=jpeg")[0] == "MISS"
        cache, _, body = fetch(running, "/media/uploads/p.png?w=60")
        assert cache == "MISS" and decode(body).format == "PNG"
        cache, _, body = fetch(running, "/media/uploads/p.png?w=60&fmt=png")
        assert cache == "HIT-MEMORY" and decode(body).format == "PNG"
        assert transforms(running) == 2


# -- the documented key ------------------------------------------------------------------------

def documented_key(tenant, path, parts):
    """``{tenant}:{sha256(path)[:20]}:{sha256(parts)}`` (the parts joined by newlines)."""
    source = hashlib.sha256(path.encode()).hexdigest()[:20]
    variant = hashlib.sha256("\n".join(parts).encode()).hexdigest()
    return f"{tenant}:{source}:{variant}"


#: Entries are stored under the format the render wrote: no fmt (the source's format) and an
#: fmt=auto token (avif~gif: AVIF for a still) resolve once the source is read.
KEYS = [
    ("/media/uploads/a.jpg?w=300", {}, "public", "/media/uploads/a.jpg",
     ["v1", "/media/uploads/a.jpg", "bg=ffffffff", "enlarge=0", "fit=inside", "h=0",
      "pos=centre", "q=80", "trim=0", "w=300", "format=jpeg"]),
    ("/media//uploads/./a.jpg?h=40&fit=cover&pos=top&bg=0008&q=50&trim=3&enlarge=1&fmt=webp",
     {}, "public", "/media/uploads/a.jpg",
     ["v1", "/media/uploads/a.jpg", "bg=00000088", "enlarge=1", "fit=cover", "h=40",
      "pos=north", "q=50", "trim=3", "w=0", "format=webp"]),
    ("/media/shop_1/uploads/a.jpg?w=10&fmt=auto", {"Accept": "image/avif"}, "shop_1",
     "/media/shop_1/uploads/a.jpg",
     ["v1", "/media/shop_1/uploads/a.jpg", "bg=ffffffff", "enlarge=0", "fit=inside", "h=0",
      "pos=centre", "q=80", "trim=0", "w=10", "format=avif"]),
    ("/media/shop_1/uploads/a.jpg?w=10&fmt=auto", {"Accept": "*/*"}, "shop_1",
     "/media/shop_1/uploads/a.jpg",
     ["v1", "/media/shop_1/uploads/a.jpg", "bg=ffffffff", "enlarge=0", "fit=inside", "h=0",
      "pos=centre", "q=80", "trim=0", "w=10", "format=jpeg"]),
]


@pytest.mark.parametrize("token, name", [(None, "source"), ("avif~webp", "avif~webp"),
                                         ("avif~gif", "avif~gif")])
def test_the_resolution_note_is_stored_under_its_documented_key(token, name):
    from mediaproxy.cache.keys import resolution_key
    request = ImageRequest(route="query", source_path="/media/shop_1/uploads/a.jpg",
                           params={}, tenant="shop_1")
    prefix = "shop_1:" + hashlib.sha256(b"/media/shop_1/uploads/a.jpg").hexdigest()[:20] + ":"
    digest = hashlib.sha256(f"v1\nresolved\n{name}".encode()).hexdigest()
    assert resolution_key(request, token) == prefix + digest


def test_the_resolution_note_reaches_other_nodes_and_goes_with_the_source(
        live_reactor, redis_server):
    overrides = {"cache": {"redis": {"url": redis_server.url}}}
    with start_proxy(origin=_origin(), overrides=overrides) as first, \
            start_proxy(origin=_origin(), overrides=overrides) as second:
        for node in (first, second):
            wait_for(lambda node=node: node.runtime.redis.healthy, 10, what="redis up")
        assert fetch(first, BASE)[0] == "MISS"
        # the other node has never seen this source: the note sends it to the jpeg entry
        assert fetch(second, BASE + "&fmt=jpeg")[0] == "HIT-REDIS"
        assert fetch(second, BASE + "&q=80")[0] == "HIT-MEMORY"
        assert sum(first.origin.hits.values()) + sum(second.origin.hits.values()) == 1
        from mediaproxy.cache.keys import resolution_key
        note = resolution_key(ImageRequest(route="query", source_path="/media/uploads/a.jpg",
                                           params={}, tenant="public"), None)
        assert redis_server.command("EXISTS", first.runtime.config.cache.redis.key_prefix
                                    + "r:" + note) in (1, b"1")


@pytest.mark.parametrize("url, headers, tenant, path, parts", KEYS)
def test_the_entry_is_stored_under_the_documented_key(proxy, url, headers, tenant, path,
                                                      parts):
    cache, etag, body = fetch(proxy, url, **headers)
    key = documented_key(tenant, path, parts)
    hit = call_in_reactor(lambda: proxy.runtime.cache.get(key))
    assert hit is not None, key
    entry, layer = hit
    assert (layer, entry.etag, entry.body) == ("memory", etag, body)


def test_the_default_quality_is_part_of_the_key(live_reactor):
    running = start_proxy(origin=_origin(), overrides={"processing": {"default_quality": 60}})
    try:
        fetch(running, "/media/uploads/a.jpg?w=300")
        key = documented_key("public", "/media/uploads/a.jpg", [
            "v1", "/media/uploads/a.jpg", "bg=ffffffff", "enlarge=0", "fit=inside", "h=0",
            "pos=centre", "q=60", "trim=0", "w=300", "format=jpeg"])
        assert call_in_reactor(lambda: running.runtime.cache.get(key)) is not None
        # and a URL naming q=60 is the same entry
        assert fetch(running, "/media/uploads/a.jpg?w=300&q=60")[0] == "HIT-MEMORY"
    finally:
        running.stop()


def test_a_purge_of_a_source_in_any_spelling_removes_its_variants_only(proxy):
    for url in ("/media/uploads/a.jpg?w=10", "/media/uploads/a.jpg?w=20",
                "/media/uploads/b.jpg?w=10"):
        fetch(proxy, url)
    counts = call_in_reactor(lambda: purge(proxy.runtime,
                                           PurgeScope.source("/media//uploads/./a.jpg")))
    assert counts["memory"] == 2
    assert fetch(proxy, "/media/uploads/a.jpg?w=10")[0] == "MISS"
    assert fetch(proxy, "/media/uploads/b.jpg?w=10")[0] == "HIT-MEMORY"


# -- fresh and stale -------------------------------------------------------------------------------

@pytest.mark.parametrize("age, expected", [
    (90, "HIT-MEMORY"),        # within the memory TTL (100 s)
    (150, "STALE"),            # past it, within stale_while_revalidate (100 + 200 s)
    (290, "STALE"),
    (400, "MISS"),             # past both: made again
])
def test_fresh_and_stale_follow_the_memory_ttl_and_stale_while_revalidate(live_reactor, age,
                                                                          expected):
    running = start_proxy(origin=_origin(), overrides={"cache": {
        "memory": {"ttl": 100}, "stale_while_revalidate": 200, "stale_if_error": 0}})
    try:
        url = "/media/uploads/a.jpg?w=50"
        assert fetch(running, url)[0] == "MISS"
        running.age(url, age)
        assert fetch(running, url)[0] == expected
    finally:
        running.stop()


class SlashRoute:
    """A route plugin serving ``/dir/{name}`` from the backend's ``/media/{name}`` as it is,
    trailing slash included (a backend may serve an image at a directory URL)."""

    @hookimpl
    def mediaproxy_match_request(self, request, runtime):
        if not request.path.startswith("/dir/"):
            return None
        source = "/media/" + request.path.removeprefix("/dir/")
        return ImageRequest(route="dir", source_path=source, params={"w": 10})


def test_a_trailing_slash_is_part_of_the_source(live_reactor):
    origin = ImageOrigin({"/media/x": (200, make_jpeg(40, 20), "image/jpeg", []),
                          "/media/x/": (200, make_png(40, 20), "image/png", [])})
    running = start_proxy(origin=origin, plugins=[SlashRoute()])
    try:
        plain = running.get("/dir/x")
        slash = running.get("/dir/x/")
        assert (plain[0], plain[1]["content-type"], plain[1]["x-cache"]) == (
            200, "image/jpeg", "MISS")
        assert (slash[0], slash[1]["content-type"], slash[1]["x-cache"]) == (
            200, "image/png", "MISS")
        assert running.get("/dir/x/")[1]["x-cache"] == "HIT-MEMORY"
        assert dict(origin.hits) == {"/media/x": 1, "/media/x/": 1}
        # purging one leaves the other
        counts = call_in_reactor(lambda: purge(running.runtime, PurgeScope.source("/media/x/")))
        assert counts["memory"] == 1
        assert running.get("/dir/x")[1]["x-cache"] == "HIT-MEMORY"
        assert running.get("/dir/x/")[1]["x-cache"] == "MISS"
    finally:
        running.stop()


# -- property: one key per meaning, checked against an oracle written here ---------------------
#
# The oracle knows what a request means without mediaproxy's parsers: the canonical transform
# and the *resolved* output format (an explicit format, or fmt=auto resolved by Accept to avif,
# webp or the source's own format, which is all that absent fmt means too). Requests are spelled
# every way the query scheme accepts (aliases, case, leading zeros, colour forms, position
# synonyms, parameter order, explicit defaults, unknown parameters) and keyed by the real route
# and negotiation. Equal meanings must give one key, different meanings different keys.
#
# Not covered, by design: fmt=auto resolved to the source's format and an explicit format equal
# to it (jpeg for a JPEG) give the same bytes, but the source's format is known only after the
# fetch, while the key is needed before it: they are two entries ("format=source" vs
# "format=jpeg"; test_an_explicit_format_and_the_source_format_are_distinct_entries).

from hypothesis import given, settings, strategies as st  # noqa: E402

from mediaproxy.imaging.negotiation import negotiate_format  # noqa: E402
from mediaproxy.models import RequestInfo  # noqa: E402
from mediaproxy.testing import make_runtime  # noqa: E402
from mediaproxy.cache.keys import cache_key  # noqa: E402

KEY_RUNTIME = make_runtime()

#: Accept header -> what fmt=auto resolves to (RFC 9110 q-values; wildcards pick neither).
ACCEPTS = {
    None: "source", "*/*": "source", "image/*": "source", "image/png,*/*;q=0.8": "source",
    "image/avif,image/webp,*/*": "avif~webp", "image/webp,image/avif": "avif~webp",
    "image/avif;q=0,image/webp": "webp", "image/webp,*/*;q=0.8": "webp",
    "image/avif;q=0, image/webp;q=0": "source", "image/AVIF": "avif~gif",
}
FORMAT_SPELLINGS = {"jpeg": ["jpeg", "jpg", "JPG"], "png": ["png", "PNG"], "webp": ["webp"],
                    "avif": ["avif"], "gif": ["gif"], "tiff": ["tiff", "tif"]}
POSITION_SPELLINGS = {
    "centre": ["centre", "center", "middle", "CENTER"], "north": ["north", "top"],
    "south": ["south", "bottom"], "east": ["east", "right"], "west": ["west", "left"],
    "northeast": ["northeast", "top-right", "right-top"],
    "northwest": ["northwest", "top-left", "left-top"],
    "southeast": ["southeast", "bottom-right", "right-bottom"],
    "southwest": ["southwest", "bottom-left", "left-bottom"],
    "entropy": ["entropy"], "attention": ["attention"],
}
FITS = ["cover", "contain", "fill", "inside", "outside"]
SOURCES = ["/media/uploads/a.jpg", "/media/uploads/b.png", "/media/shop_1/uploads/a.jpg",
           "/static/a.jpg"]


@st.composite
def meanings(draw):
    """(source, {param: canonical value}, ("explicit", fmt) | ("auto",) | ("absent",))."""
    rgba = draw(st.sampled_from([(255, 255, 255, 255), (0, 0, 0, 0), (0, 0, 0, 255),
                                 (17, 34, 51, 255), (18, 52, 86, 120)]))
    fmt = draw(st.one_of(st.tuples(st.just("explicit"), st.sampled_from(sorted(FORMAT_SPELLINGS))),
                         st.just(("auto",)), st.just(("absent",))))
    return (draw(st.sampled_from(SOURCES)), {
        "w": draw(st.sampled_from([0, 1, 100, 101])), "h": draw(st.sampled_from([0, 40])),
        "fit": draw(st.sampled_from(FITS)), "pos": draw(st.sampled_from(sorted(POSITION_SPELLINGS))),
        "bg": rgba, "q": draw(st.sampled_from([80, 50, 81])),
        "enlarge": draw(st.booleans()), "trim": draw(st.sampled_from([0, 3]))}, fmt)


def _colour_spellings(rgba):
    r, g, b, a = rgba
    full = "%02x%02x%02x%02x" % rgba
    out = [full, "#" + full.upper()]
    if a == 255:
        out += [full[:6], "#" + full[:6]]
        if all(c % 17 == 0 for c in (r, g, b)):
            out.append("".join("%x" % (c // 17) for c in (r, g, b)))
    if rgba == (0, 0, 0, 0):
        out.append("transparent")
    return out


DEFAULTS = {"w": 0, "h": 0, "fit": "inside", "pos": "centre", "bg": (255, 255, 255, 255),
            "q": 80, "enlarge": False, "trim": 0}
NAMES = {"w": ["w", "width"], "h": ["h", "height"], "fit": ["fit"],
         "pos": ["pos", "position", "gravity"], "bg": ["bg", "background"],
         "q": ["q", "quality"], "enlarge": ["enlarge"], "trim": ["trim"]}


@st.composite
def spellings(draw, meaning):
    """One request (path, query pairs, Accept) for ``meaning``, spelled at random."""
    source, params, fmt = meaning
    pairs = []
    for name, value in params.items():
        if value == DEFAULTS[name] and draw(st.booleans()):
            continue                       # a default may be left out
        if name in ("w", "h", "q", "trim"):
            text = draw(st.sampled_from([str(value), "0" + str(value)]))
        elif name == "fit":
            text = draw(st.sampled_from([value, value.upper()]))
        elif name == "pos":
            text = draw(st.sampled_from(POSITION_SPELLINGS[value]))
        elif name == "bg":
            text = draw(st.sampled_from(_colour_spellings(value)))
        else:
            text = draw(st.sampled_from(["1", "true", "yes"] if value else ["0", "false", "no"]))
        pairs.append((draw(st.sampled_from(NAMES[name])), text))
    accept = draw(st.sampled_from(sorted(ACCEPTS, key=str)))
    if fmt[0] == "explicit":
        pairs.append((draw(st.sampled_from(["fmt", "format"])),
                      draw(st.sampled_from(FORMAT_SPELLINGS[fmt[1]]))))
    elif fmt[0] == "auto":
        pairs.append(("fmt", draw(st.sampled_from(["auto", "AUTO"]))))
    if draw(st.booleans()):
        pairs.append(("v", "123"))          # unknown: not part of the meaning
    if not pairs or all(name == "v" for name, _ in pairs):
        pairs.append(("w", str(params["w"])))
    pairs = draw(st.permutations(pairs))
    path = draw(st.sampled_from([source, source.replace("/uploads/", "//uploads/./")]))
    return path, pairs, accept


def resolved(meaning, accept):
    """The oracle: what the output is, whatever the spelling, as far as the request alone
    says (the key looked up first): an explicit format, or the token of what only the source
    decides (``source``; AVIF for a still, a WebP or GIF animation for an animation). Once
    the source is read these share the explicit format's entry (tested over HTTP above)."""
    source, params, fmt = meaning
    out = fmt[1] if fmt[0] == "explicit" else ACCEPTS[accept] if fmt[0] == "auto" else "source"
    return source, tuple(sorted(params.items())), out


def key_of(path, pairs, accept):
    rt = KEY_RUNTIME
    match = rt.pm.hook.mediaproxy_match_request(
        request=RequestInfo(method="GET", path=path, query=pairs), runtime=rt)
    assert isinstance(match, ImageRequest), (path, pairs, match)
    fmt, _ = negotiate_format(match.params.get("fmt"), accept)
    return cache_key(match, rt.params, fmt)


@settings(max_examples=80, deadline=None)
@given(st.data(), meanings(), meanings())
def test_one_key_per_meaning_against_an_oracle(data, first, second):
    a = data.draw(spellings(first))
    b = data.draw(spellings(first))
    c = data.draw(spellings(second))
    # two spellings of one request: one key when their resolved outputs agree (fmt=auto may
    # resolve differently under two Accept headers)
    assert (key_of(*a) == key_of(*b)) == (resolved(first, a[2]) == resolved(first, b[2])), (a, b)
    # two requests: one key exactly when they mean the same output
    assert (key_of(*a) == key_of(*c)) == (resolved(first, a[2]) == resolved(second, c[2])), \
        (a, c)


def test_auto_resolved_by_accept_shares_the_explicit_formats_entry(proxy):
    # one render for fmt=auto that Accept resolves to webp and for fmt=webp, in either order
    assert fetch(proxy, BASE + "&fmt=auto", Accept="image/webp,*/*")[0] == "MISS"
    assert fetch(proxy, BASE + "&fmt=webp")[0] == "HIT-MEMORY"
    assert fetch(proxy, BASE + "&fmt=avif")[0] == "MISS"
    _, headers, _, _ = proxy.get(BASE + "&fmt=auto", headers={"Accept": "image/avif"})
    assert (headers["x-cache"], headers["vary"]) == ("HIT-MEMORY", "Accept")
    assert transforms(proxy) == 2


# -- a plugin layer's fresh lifetime -----------------------------------------------------------

class _Layer:
    """A layer as the cache sees one: a name, and maybe a declared fresh lifetime."""

    def __init__(self, name, **declared):
        self.name = name
        self.__dict__.update(declared)


def test_a_plugin_layer_declares_its_fresh_lifetime():
    from mediaproxy.cache.keys import fresh_lifetime, is_fresh
    from mediaproxy.config import load_config
    from mediaproxy.models import CacheEntry

    cache = load_config(environ={}, overrides={"cache": {
        "memory": {"ttl": 11.0}, "redis": {"ttl": 22.0}, "file": {"ttl": 33.0}}}).cache
    layers = (_Layer("s3", fresh_ttl=60.0), _Layer("quiet"), _Layer("memory", fresh_ttl=5.0))
    # the built-in layers' lifetimes are their settings, whatever a layer object says
    assert [fresh_lifetime(n, cache, layers) for n in ("memory", "redis", "file")] == [
        11.0, 22.0, 33.0]
    assert fresh_lifetime("s3", cache, layers) == 60.0
    assert fresh_lifetime("quiet", cache, layers) == float("inf")
    assert fresh_lifetime("quiet", cache, layers, unknown=0.0) == 0.0
    assert fresh_lifetime("absent", cache, layers) == float("inf")
    assert fresh_lifetime("absent", cache, layers, unknown=0.0) == 0.0
    assert fresh_lifetime("s3", cache) == float("inf")      # no layers given: not known
    entry = CacheEntry(b"x", "image/png", created_at=1000.0, etag="", last_modified="")
    assert is_fresh(entry, "s3", cache, now=1060.0, layers=layers)
    assert not is_fresh(entry, "s3", cache, now=1060.001, layers=layers)
    assert is_fresh(entry, "quiet", cache, now=10 ** 9, layers=layers)


def test_keep_stale_tells_the_layers_that_ask_for_it():
    from mediaproxy.cache.layered import LayeredCache

    asks, silent = _Layer("s3", order=40, stale_grace=0.0), _Layer("other", order=50)
    LayeredCache([asks, silent]).keep_stale(86400.0)
    assert asks.stale_grace == 86400.0
    assert not hasattr(silent, "stale_grace")
