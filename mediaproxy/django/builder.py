"""
The URL builders behind the template tags: ``image_url``, ``srcset`` and ``picture``, reading
the ``MEDIAPROXY`` setting on every call (cheap, and ``override_settings`` works), signing with
:func:`mediaproxy.urlsign.build_url` when a key is set.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from ..urlsign import build_url

#: The ``type`` of a ``<source>`` per format token of the proxy's ``fmt``.
MIME_TYPES = {"avif": "image/avif", "webp": "image/webp", "jpeg": "image/jpeg",
              "png": "image/png", "gif": "image/gif"}
#: The keywords of :func:`picture` that are attributes of the ``<img>``, not transforms.
IMG_ATTRIBUTES = ("alt", "class", "id", "title", "loading", "decoding")
_KEYS = frozenset({"URL", "KEY", "PRESETS", "FORMATS"})


@dataclass(frozen=True)
class Settings:
    """``settings.MEDIAPROXY``, checked. ``presets`` maps a name to its parameters, or to None
    for a preset the proxy defines (sent as ``preset=NAME``)."""

    url: str = ""
    key: str | None = None
    presets: Mapping[str, Mapping[str, object] | None] | None = None
    formats: tuple[str, ...] = ("avif", "webp")

    @classmethod
    def from_django(cls) -> "Settings":
        from django.conf import settings

        raw = getattr(settings, "MEDIAPROXY", None) or {}
        unknown = sorted(set(raw) - _KEYS)
        if unknown:
            raise ImproperlyConfigured(f"MEDIAPROXY has unknown keys {unknown}; "
                                       f"known: {sorted(_KEYS)}")
        presets = raw.get("PRESETS")
        if presets is None:
            table = None
        elif isinstance(presets, Mapping):
            table = {str(name): (dict(params) if params is not None else None)
                     for name, params in presets.items()}
        elif isinstance(presets, (list, tuple, set, frozenset)):
            table = dict.fromkeys(map(str, presets))
        else:
            raise ImproperlyConfigured("MEDIAPROXY['PRESETS'] is a dict (name -> parameters) "
                                       "or a list of the proxy's preset names")
        return cls(url=raw.get("URL") or "", key=raw.get("KEY") or None, presets=table,
                   formats=_formats(raw.get("FORMATS", cls.formats)))


def source_path(source) -> str:
    """The backend path of ``source``: a ``FieldFile`` (anything with ``.url``), a path
    starting with ``/``, an absolute URL (its path), or a storage name."""
    if isinstance(source, str):
        if not source:
            raise ValueError("an empty image source")
        if source.startswith("/") and not source.startswith("//"):
            return source
        if "://" in source or source.startswith("//"):
            return urlsplit(source).path or "/"
        from django.core.files.storage import default_storage

        return urlsplit(default_storage.url(source)).path
    if hasattr(source, "url"):
        if not getattr(source, "name", True):
            raise ValueError("the file field has no file")
        return urlsplit(source.url).path
    raise TypeError(f"an image source is a FieldFile, a path or a URL, not {type(source).__name__}")


def image_url(source, *, preset: str | None = None, expires: int | None = None,
              **params) -> str:
    """The proxy URL of ``source`` transformed by ``params`` (``w=300, fmt="webp"``) and
    ``preset``, signed when ``MEDIAPROXY["KEY"]`` is set (``expires``: Unix seconds)."""
    conf = Settings.from_django()
    return build_url(source_path(source), _parameters(conf, preset, params),
                     base=conf.url, key=conf.key, expires=expires)


def srcset(source, widths, *, preset: str | None = None, **params) -> str:
    """A ``srcset`` value: one candidate per width (``url 300w, url 600w``)."""
    if "w" in params or "width" in params:
        raise TypeError("srcset() takes widths=, not w=")
    conf = Settings.from_django()
    path = source_path(source)
    base = _parameters(conf, preset, params)
    return ", ".join(
        f"{build_url(path, {**base, 'w': w}, base=conf.url, key=conf.key)} {w}w"
        for w in _widths(widths))


def picture(source, widths, *, sizes: str | None = None, formats=None,
            preset: str | None = None, **params) -> SafeString:
    """A ``<picture>``: one ``<source>`` per format of ``formats`` (default
    ``MEDIAPROXY["FORMATS"]``, best first) and an ``<img>`` fallback in the format ``params``
    ask for (the original's when none), each with a srcset over ``widths``. ``alt``, ``class``,
    ``id``, ``title``, ``loading`` (default ``lazy``) and ``decoding`` go on the ``<img>``."""
    img = {"alt": "", "loading": "lazy"}
    for name in IMG_ATTRIBUTES:
        if name in params:
            img[name] = params.pop(name)
    conf = Settings.from_django()
    chosen = conf.formats if formats is None else _formats(formats)
    size_attr = format_html(' sizes="{}"', sizes) if sizes else ""
    sources = format_html_join(
        "", '<source type="{}" srcset="{}"{}>',
        ((MIME_TYPES[fmt], srcset(source, widths, preset=preset, **{**params, "fmt": fmt}),
          size_attr) for fmt in chosen))
    largest = max(_widths(widths))
    attributes = format_html_join("", ' {}="{}"', sorted(img.items()))
    return format_html(
        '<picture>{}<img src="{}" srcset="{}"{}{}></picture>', sources,
        image_url(source, preset=preset, **{**params, "w": largest}),
        srcset(source, widths, preset=preset, **params), size_attr, attributes)


def _parameters(conf: Settings, preset: str | None, params: dict) -> dict:
    if preset is None:
        return dict(params)
    if conf.presets is None or preset not in conf.presets:
        known = sorted(conf.presets or ())
        raise ValueError(f"unknown mediaproxy preset {preset!r}; MEDIAPROXY['PRESETS'] "
                         f"names {known}")
    expansion = conf.presets[preset]
    if expansion is None:
        return {"preset": preset, **params}
    return {**expansion, **params}


def _widths(widths) -> list[int]:
    items = widths.split(",") if isinstance(widths, str) else widths
    if not isinstance(items, Iterable):   # one width: {% mediaproxy_srcset img 300 %}
        items = [items]
    out = []
    for item in items:
        text = str(item).strip()
        if not text.isdigit() or int(text) < 1:
            raise ValueError(f"a srcset width is a positive whole number of pixels, not {item!r}")
        out.append(int(text))
    if not out:
        raise ValueError("a srcset needs at least one width")
    return out


def _formats(formats) -> tuple[str, ...]:
    items = formats.split(",") if isinstance(formats, str) else formats
    out = tuple(str(f).strip().lower() for f in items if str(f).strip())
    wrong = [f for f in out if f not in MIME_TYPES]
    if wrong:
        raise ImproperlyConfigured(f"mediaproxy formats {wrong} are not among "
                                   f"{sorted(MIME_TYPES)}")
    return out


__all__ = ["MIME_TYPES", "Settings", "image_url", "picture", "source_path", "srcset"]
