"""
The demo origin's page at ``/``: each sample's original beside variants the proxy makes of it
(the fit modes, a smart crop, the formats with ``fmt=auto``, an animation kept animated), each
with the size, bytes, content type and ``X-Cache`` of the response the browser got.

The page is served by the demo origin and reaches the browser through the proxy (a
pass-through), so its image URLs are same-origin and go through the proxy too. Why the figures
are true: a small inline script ``fetch()``es each URL once (``cache: "no-store"``, so every
load asks the proxy and ``X-Cache`` shows the proxy's cache, never the browser's), shows the very
bytes it received in the ``<img>`` (a blob URL) and writes what that response said under it:
``naturalWidth`` x ``naturalHeight`` after decoding, the body's size, ``Content-Type`` and
``X-Cache`` (same-origin, so the script may read every header). The image requests send the
``Accept`` a browser sends for an ``<img>`` (:data:`IMAGE_ACCEPT`), so ``fmt=auto`` negotiates
as it would for a page's images. Frames are counted with WebCodecs' ``ImageDecoder`` where the
browser has it.

No external assets: one inline style sheet and one inline script, so the demo works offline.
Each URL is built with :func:`mediaproxy.urlsign.build_url`, signed when the demo's
configuration has signing keys (the demo runs unsigned by default). When the placeholder plugin
(``plugins/mediaproxy-placeholder``) is loaded, each card shows the dominant colour and the
BlurHash of its ``fit=cover`` variant; without it ``?placeholder=`` is ignored and the card says
nothing (the page asks after its images: the probe is then that variant's own request).
"""

from __future__ import annotations

from html import escape

from .urlsign import build_url

MEDIA = "/media/uploads/"

#: The ``Accept`` the page's script sends for an image: what a browser sends for an ``<img>``.
IMAGE_ACCEPT = "image/avif,image/webp,image/apng,image/*,*/*;q=0.8"

#: The variants of a still image: (label, what it shows, parameters). No two name the same
#: transform (``fmt=auto`` is at its own width: at 240 px it would be the ``fmt=avif`` entry),
#: so on a first load every variant is made now (``X-Cache: MISS``).
STILL_VARIANTS: tuple[tuple[str, str, dict[str, object]], ...] = (
    ("fit=cover", "fills the 240x160 box, crops the rest", {"w": 240, "h": 160, "fit": "cover"}),
    ("fit=contain", "fits in the box, pads with bg",
     {"w": 240, "h": 160, "fit": "contain", "bg": "e8e8e8"}),
    ("fit=fill", "stretches to the box", {"w": 240, "h": 160, "fit": "fill"}),
    ("fit=inside", "fits within the box (the default)", {"w": 240, "h": 160, "fit": "inside"}),
    ("fit=outside", "covers the box, no crop", {"w": 240, "h": 160, "fit": "outside"}),
    ("pos=attention", "smart crop: the busiest part",
     {"w": 160, "h": 160, "fit": "cover", "pos": "attention"}),
    ("fmt=jpeg", "JPEG, width 240", {"w": 240, "fmt": "jpeg"}),
    ("fmt=webp", "WebP, width 240", {"w": 240, "fmt": "webp"}),
    ("fmt=avif", "AVIF, width 240", {"w": 240, "fmt": "avif"}),
    ("fmt=auto", "the best format the browser accepts", {"w": 200, "fmt": "auto"}),
)

#: The variants of an animation: every one stays animated.
ANIMATED_VARIANTS: tuple[tuple[str, str, dict[str, object]], ...] = (
    ("w=100", "resized, still an animated GIF", {"w": 100}),
    ("fit=cover", "cropped to 160x100, every frame", {"w": 160, "h": 100, "fit": "cover"}),
    ("fmt=webp", "an animated WebP", {"w": 100, "fmt": "webp"}),
    ("fmt=auto", "AVIF is chosen for stills: an animation becomes animated WebP",
     {"w": 120, "fmt": "auto"}),
)

#: The placeholders asked for (plugin present), each of the card's ``fit=cover`` variant, so
#: they stand for an image the card shows.
PLACEHOLDER_OF = "fit=cover"
PLACEHOLDER_KINDS = ("color", "blurhash")


def variants_of(content_type: str) -> tuple[tuple[str, str, dict[str, object]], ...]:
    """The variants shown for a sample of ``content_type``: GIF samples are the animated ones."""
    return ANIMATED_VARIANTS if content_type == "image/gif" else STILL_VARIANTS


def image_urls(name: str, content_type: str, key: str | None = None) -> list[tuple[str, str, str]]:
    """(label, caption, same-origin URL) of each image of the sample's card, the original first
    (no parameter: passed through untouched, never signed), then its variants (signed with
    ``key`` when one is given)."""
    path = MEDIA + name
    urls = [("original", "as the origin serves it, passed through", build_url(path))]
    for label, caption, params in variants_of(content_type):
        urls.append((label, caption, build_url(path, params, key=key)))
    return urls


def placeholder_urls(name: str, content_type: str,
                     key: str | None = None) -> list[tuple[str, str]]:
    """(kind, URL) of the placeholders a card asks for, signed with ``key`` when given."""
    [params] = [p for label, _, p in variants_of(content_type) if label == PLACEHOLDER_OF]
    return [(kind, build_url(MEDIA + name, {**params, "placeholder": kind}, key=key))
            for kind in PLACEHOLDER_KINDS]


def render_page(samples: dict[str, tuple[bytes, str]], host: str, key: str | None = None) -> str:
    """The page for ``samples`` (name -> (bytes, content type)), ``host`` as the browser named
    the proxy (for the ``curl`` line)."""
    cards = [_card(name, ctype, key) for name, (_, ctype) in samples.items()]
    example = build_url(MEDIA + "sample.jpg", {"w": 300, "h": 200, "fit": "cover",
                                               "fmt": "webp"}, key=key)
    return (_PAGE.replace("{css}", _CSS).replace("{script}", _SCRIPT)
            .replace("{accept}", IMAGE_ACCEPT)
            .replace("{curl}", escape(f"curl -sI 'http://{host}{example}'"))
            .replace("{cards}", "\n".join(cards)))


def _card(name: str, content_type: str, key: str | None) -> str:
    figures = []
    for label, caption, url in image_urls(name, content_type, key):
        kind = "original" if label == "original" else "variant"
        figures.append(
            f'<figure class="{kind}" data-url="{escape(url)}">'
            f'<div class="frame"><img alt="{escape(name)} {escape(label)}"></div>'
            f'<figcaption><b>{escape(label)}</b> <span class="why">{escape(caption)}</span>'
            '<dl><dt>size</dt><dd class="dims">…</dd><dt>bytes</dt><dd class="bytes">…</dd>'
            '<dt>type</dt><dd class="type">…</dd><dt>X-Cache</dt><dd class="cache">…</dd></dl>'
            f'<code class="url" title="click to copy">{escape(url)}</code></figcaption></figure>')
    placeholders = "".join(f'<span class="ph" data-kind="{kind}" data-url="{escape(url)}">'
                           '</span>' for kind, url in placeholder_urls(name, content_type, key))
    return (f'<section class="card" id="{escape(name)}"><h2>{escape(name)} '
            f'<small>{escape(content_type)}</small></h2>'
            f'<p class="placeholders" hidden>placeholders of {PLACEHOLDER_OF}: {placeholders}</p>'
            f'<div class="row">{"".join(figures)}</div></section>')


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>mediaproxy demo</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<style>{css}</style></head>
<body>
<header><h1>mediaproxy demo</h1>
<p>Each card is one sample of the demo origin: first the <b>original</b> (no parameters: passed
through untouched), then <b>variants</b> mediaproxy makes of it. Under each image: its size in
pixels, its bytes, its content type and <code>X-Cache</code>, read from the response this page
received (fetched with <code>Accept: {accept}</code>, as a browser asks for images, and never
from the browser's cache). Images larger than their frame are shown scaled down; the size is
the real one. Click a URL to copy it; from a shell:</p>
<pre>{curl}</pre>
<dl class="legend"><dt>X-Cache</dt><dd><code>MISS</code>: made now ·
<code>HIT-MEMORY</code>, <code>HIT-FILE</code>: from the proxy's cache (reload the page; FILE
when another worker process made it) · <code>NEAREST</code>: the proxy was busy and answered
another size of the same image it had · <code>(after 503)</code>: asked again after the proxy
said it was busy (<code>Retry-After</code>)</dd></dl>
<p class="grammar">The URL grammar: <code>w</code>, <code>h</code> (pixels),
<code>fit</code> (<code>cover</code> | <code>contain</code> | <code>fill</code> |
<code>inside</code> | <code>outside</code>), <code>pos</code> (<code>centre</code>,
<code>north</code>… or <code>entropy</code> | <code>attention</code>), <code>bg</code>,
<code>q</code> (1-100), <code>fmt</code> (<code>jpeg</code> | <code>png</code> |
<code>webp</code> | <code>avif</code> | <code>gif</code> | <code>auto</code>): the user's guide
(docs/user-guide.md, section 3) has them all.</p>
<p id="status">loading…</p></header>
<main>
{cards}
</main>
<script>{script}</script>
</body></html>
"""

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f4f5f7;color:#222}
header{padding:16px 24px;background:#fff;border-bottom:1px solid #ddd}
h1{margin:0 0 8px;font-size:22px} header p{max-width:70em;margin:6px 0}
pre{background:#222;color:#eee;padding:8px 12px;border-radius:4px;overflow-x:auto}
main{padding:8px 24px 32px}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;margin:16px 0;padding:12px 16px}
.card h2{margin:0 0 8px;font-size:17px} .card h2 small{color:#777;font-weight:normal}
.row{display:grid;grid-template-columns:repeat(auto-fill,minmax(250px,1fr));gap:12px}
figure{margin:0;border:1px solid #e4e4e4;border-radius:4px;padding:8px;background:#fafafa}
figure.original{background:#eef4ff;border-color:#b9cff5}
.frame{height:200px;display:flex;align-items:center;justify-content:center;overflow:hidden;
 background:repeating-conic-gradient(#ddd 0 25%,#fff 0 50%) 0 0/16px 16px}
.frame img{max-width:100%;max-height:200px}
figcaption .why{color:#666;font-size:12px}
dl{display:grid;grid-template-columns:auto 1fr;gap:0 8px;margin:6px 0;font-size:13px}
dt{color:#777} dd{margin:0;font-variant-numeric:tabular-nums}
dd.cache.MISS{color:#b35900;font-weight:bold} dd.cache.HIT{color:#17803d;font-weight:bold}
dd.cache.NEAREST,dd.cache.STALE{color:#8a2be2;font-weight:bold}
.legend{display:block;font-size:13px;margin:6px 0} .legend dt{display:inline;font-weight:bold}
.legend dd{display:inline;margin-left:6px}
code.url{display:block;font-size:11px;word-break:break-all;background:#fff;border:1px solid #e4e4e4;
 padding:3px 4px;cursor:copy;user-select:all}
figure.failed{background:#fff0f0;border-color:#e99}
.placeholders{font-size:13px;color:#555}
.ph{margin-left:8px;font-family:monospace} .swatch{display:inline-block;width:14px;height:14px;
 vertical-align:middle;border:1px solid #999;margin-right:4px}
"""

_SCRIPT = r"""
const ACCEPT = "{accept}";
const ANIMATED = ["image/gif", "image/webp", "image/avif", "image/png"];

async function frameCount(blob, type) {
  if (!ANIMATED.includes(type) || typeof ImageDecoder === "undefined") return null;
  try {
    if (!(await ImageDecoder.isTypeSupported(type))) return null;
    const decoder = new ImageDecoder({data: await blob.arrayBuffer(), type: type});
    await decoder.tracks.ready;   // the track is known once the header is read
    await decoder.completed;      // its frame count once all of it is
    const frames = decoder.tracks.selectedTrack.frameCount;
    decoder.close();
    return frames;
  } catch (e) { return null; }
}

function put(figure, field, text, cls) {
  const dd = figure.querySelector("dd." + field);
  dd.textContent = text;
  if (cls) dd.classList.add(cls);
}

// An image refused for now (503 overloaded: the transform queue is full, or 429: a rate
// limit) is asked again after its Retry-After (at most 5 s), at most RETRIES times, as a
// well-behaved client does; the figure then says so.
const RETRIES = 2;
const AGAIN = [429, 503];

async function fetchImage(url) {
  const refused = [];
  for (;;) {
    const response = await fetch(url, {headers: {Accept: ACCEPT}, cache: "no-store"});
    if (!AGAIN.includes(response.status) || refused.length >= RETRIES) return [response, refused];
    refused.push(response.status);
    await response.arrayBuffer();
    const given = Number(response.headers.get("retry-after") ?? "1");
    const wait = Number.isFinite(given) ? Math.min(Math.max(given, 0), 5) : 1;
    await new Promise(resolve => setTimeout(resolve, wait * 1000));
  }
}

async function show(figure, originalBytes) {
  const url = figure.dataset.url;
  try {
    const [response, refused] = await fetchImage(url);
    const blob = await response.blob();
    const type = response.headers.get("content-type") || "";
    if (response.status !== 200) {
      const text = await blob.text();
      throw new Error(response.status + " " + text.slice(0, 200));
    }
    const img = figure.querySelector("img");
    img.src = URL.createObjectURL(blob);
    await img.decode();
    const frames = await frameCount(blob, type);
    put(figure, "dims", img.naturalWidth + " × " + img.naturalHeight +
        (frames > 1 ? " · " + frames + " frames" : ""));
    let bytes = blob.size.toLocaleString("en-US") + " B";
    if (originalBytes) {
      bytes += " (" + (100 * blob.size / originalBytes).toFixed(1) + "% of the original)";
    }
    put(figure, "bytes", bytes);
    put(figure, "type", type);
    const cache = response.headers.get("x-cache");
    // no X-Cache on a variant: cache.x_cache_header is off, or this page was opened on the
    // origin, not through the proxy
    const none = figure.classList.contains("original") ? "none: passed through" :
      "none (cache.x_cache_header off, or not through the proxy?)";
    const after = refused.length ? " (after " + refused.join(", ") + ")" : "";
    put(figure, "cache", (cache || none) + after, cache ? cache.split("-")[0] : "");
    return blob.size;
  } catch (error) {
    figure.classList.add("failed");
    put(figure, "dims", "failed: " + error.message);
    return null;
  } finally {
    figure.dataset.done = "1";
  }
}

async function placeholders(card) {
  const spans = Array.from(card.querySelectorAll(".ph"));
  const found = await Promise.all(spans.map(async span => {
    try {
      const response = await fetch(span.dataset.url, {headers: {Accept: "application/json"}});
      const type = response.headers.get("content-type") || "";
      if (response.status !== 200 || !type.startsWith("application/json")) return false;
      const value = (await response.json())[span.dataset.kind];
      if (typeof value !== "string") return false;
      span.textContent = span.dataset.kind + " " + value;
      if (span.dataset.kind === "color") {
        const swatch = document.createElement("span");
        swatch.className = "swatch";
        swatch.style.background = value;
        span.prepend(swatch);
      }
      return true;
    } catch (e) { return false; }
  }));
  if (found.some(Boolean)) card.querySelector(".placeholders").hidden = false;
}

async function showCard(card) {
  const [original, ...variants] = card.querySelectorAll("figure");
  const originalBytes = await show(original, null);
  await Promise.all(variants.map(figure => show(figure, originalBytes)));
  // after the images: without the plugin a placeholder URL is the cover crop's image request,
  // which must not race the cover variant (its X-Cache would depend on who came first)
  await placeholders(card);
}

document.querySelectorAll("code.url").forEach(code => code.addEventListener("click", () => {
  if (navigator.clipboard) navigator.clipboard.writeText(code.textContent).catch(() => {});
}));

Promise.all(Array.from(document.querySelectorAll(".card")).map(showCard)).then(() => {
  const failed = document.querySelectorAll("figure.failed").length;
  const status = document.getElementById("status");
  status.textContent = failed ? failed + " image(s) failed: see the red cards" :
    document.querySelectorAll("figure").length + " images, all loaded";
  document.body.dataset.done = "1";
});
"""
