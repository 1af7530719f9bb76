"""
``{% load mediaproxy %}``: the template face of :mod:`mediaproxy.django.builder`.

* ``{% mediaproxy_url photo.image w=300 fmt="webp" %}``: one URL (``preset="thumb"`` too);
* ``{% mediaproxy_srcset photo.image "300,600,900" fit="cover" %}``: a ``srcset`` value;
* ``{% mediaproxy_picture photo.image "300,600" sizes="50vw" alt=photo.title %}``: a whole
  ``<picture>`` with AVIF and WebP sources (``MEDIAPROXY["FORMATS"]``) and an ``<img>``.

Each takes ``as NAME`` to store its result instead of writing it. Values are escaped for HTML
(``&`` between parameters becomes ``&amp;``, which the browser reads back as ``&``).
"""

from django import template

from ..builder import image_url, picture, srcset

register = template.Library()


@register.simple_tag
def mediaproxy_url(source, **params):
    return image_url(source, **params)


@register.simple_tag
def mediaproxy_srcset(source, widths, **params):
    return srcset(source, widths, **params)


@register.simple_tag
def mediaproxy_picture(source, widths, **params):
    return picture(source, widths, **params)
