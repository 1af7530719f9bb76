"""
mediaproxy for Django templates and views: image URLs for the proxy in front of the site, built
and signed the way the proxy checks them (:mod:`mediaproxy.urlsign`, the one implementation).

Install ``mediaproxy[django]``, add ``"mediaproxy.django"`` to ``INSTALLED_APPS`` (for the
template tags: ``{% load mediaproxy %}``) and configure it with one setting::

    MEDIAPROXY = {
        "URL": "",                 # the proxy's origin ("https://img.example.com"); "" = this site
        "KEY": "…",                # signing.keys[0] of the proxy; None = unsigned URLs
        "PRESETS": {"thumb": {"w": 300, "h": 300, "fit": "cover"}},   # or ["thumb", "card"]
        "FORMATS": ["avif", "webp"],   # the <picture> sources, best first
    }

A source is an ``ImageField`` value (any object with ``.url``: ``FieldFile``), a backend path
(``"/media/uploads/a.jpg"``), an absolute URL (its path is used: the proxy fetches from its own
backend), or a storage name (``"uploads/a.jpg"``, resolved with ``default_storage.url``).

Presets: a dict maps each name to its parameters, expanded here (any proxy understands the
URL); a list names presets the proxy defines (``[presets.NAME]``), sent as ``preset=NAME``. An
explicit parameter overrides the preset's. A name not in ``PRESETS`` is an error at render time,
not a broken image later.

This package imports Django and the standard library only: never Twisted, never Pillow.
"""

from __future__ import annotations

from .builder import image_url, picture, source_path, srcset

__all__ = ["image_url", "picture", "source_path", "srcset"]
