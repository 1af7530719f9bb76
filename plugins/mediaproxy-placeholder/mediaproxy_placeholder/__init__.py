"""
mediaproxy-placeholder: low-quality image placeholders for lazy loading.

``?placeholder=blurhash|thumbhash|color|lqip`` on any image URL of the proxy answers, for the
image that URL would give without it (its crop, its fit, its steps):

* ``blurhash``, ``thumbhash``, ``color`` (``colour`` is accepted): the BlurHash string, the
  ThumbHash in base64 or the dominant colour ``#rrggbb``, as ``text/plain``, or as JSON
  ``{"blurhash": "...", "width": W, "height": H}`` when the client's ``Accept`` prefers
  ``application/json`` (W x H: the size of the image itself, for the layout box);
* ``lqip``: a tiny blurred image (24 px on its longer side, quality 40 at most), WebP when
  ``fmt`` is (or ``fmt=auto`` and the client accepts it), else JPEG (PNG for ``fmt=png``, or
  a transparent source without ``fmt``).

The answer is cached like any variant (the kind, and text or JSON, are in the cache key). The
source is rendered at a tiny size (:mod:`mediaproxy_placeholder.encoders`) through the core's
``mediaproxy_output`` hook: decoded at its shrink-on-load scale, or taken from the decoded-image
cache when another size of it was just rendered, in the thread pool, under the memory budget.

Disable it without uninstalling: ``MEDIAPROXY_PLUGINS__DISABLED=placeholder``; the parameter
is then unknown, ignored, and left out of the cache key.
"""

from __future__ import annotations

import functools

import attrs
from mediaproxy import ImageRequest, Output, Param, hookimpl, parse_choice

from .accept import wants_json
from .encoders import HASH_SIDE, LQIP_SIDE, TEXT_KINDS, encode

__all__ = ["tiny_spec", "wants_json"]

KINDS = {"blurhash": "blurhash", "thumbhash": "thumbhash", "color": "color",
         "colour": "color", "lqip": "lqip"}
#: The suffix of a text kind's parameter value when the client asked for JSON.
AS_JSON = ".json"
#: How many (route answer -> JSON answer) pairs the match wrapper remembers.
MEMO_LIMIT = 1024


@hookimpl
def mediaproxy_params(config):
    return [Param("placeholder", parse_choice(KINDS, "placeholder"), None,
                  key=lambda value: value,
                  help="blurhash, thumbhash, color: the hash or dominant colour of the image "
                       "as text (JSON by Accept); lqip: a tiny blurred image.")]


_memo: dict[int, tuple[ImageRequest, ImageRequest]] = {}


@hookimpl(wrapper=True)
def mediaproxy_match_request(request, runtime):
    """A text kind asked for with an ``Accept`` preferring JSON becomes ``KIND.json``: so the
    cache key tells the two apart (the pipeline's key is made from the parameters)."""
    found = yield
    if found.__class__ is not ImageRequest:
        return found
    kind = found.params.get("placeholder")
    if kind not in TEXT_KINDS or not wants_json(request.header("accept")):
        return found
    known = _memo.get(id(found))
    if known is not None and known[0] is found:     # the route's memo gives the same object
        return known[1]
    evolved = found.with_params(placeholder=kind + AS_JSON)
    if len(_memo) >= MEMO_LIMIT:
        _memo.clear()
    _memo[id(found)] = (found, evolved)             # holds ``found``: its id stays its own
    return evolved


@hookimpl
def mediaproxy_response_headers(image_request, response, request, runtime):
    """``Vary: Accept`` on a text kind (its body is text or JSON by ``Accept``), unless
    ``fmt=auto`` has put it there already."""
    if image_request is None:
        return []
    kind = image_request.params.get("placeholder")
    if kind is None or kind == "lqip" or image_request.params.get("fmt") == "auto":
        return []
    return [("Vary", "Accept")]


@hookimpl
def mediaproxy_output(image_request, spec):
    value = image_request.params.get("placeholder")
    if value is None:
        return None
    kind, _, as_json = value.partition(".")
    side = LQIP_SIDE if kind == "lqip" else HASH_SIDE
    return Output(kind, functools.partial(encode, kind, bool(as_json)),
                  spec=tiny_spec(spec, side))


def tiny_spec(spec, side: int):
    """``spec`` rendered at most ``side`` pixels on its longer side, with the same layout: a
    box of the same aspect ratio (both sides asked), the one side asked capped at ``side``, or
    ``side`` x ``side`` inside (neither). Never enlarged. The format is kept (the pipeline's
    cache key resolution relies on it)."""
    width, height, fit = spec.width, spec.height, spec.fit
    if width and height:
        k = min(1.0, side / max(width, height))
        width, height = max(1, round(width * k)), max(1, round(height * k))
    elif width or height:
        width, height = min(width, side), min(height, side)
    else:
        width, height, fit = side, side, "inside"
    return attrs.evolve(spec, width=width, height=height, fit=fit, enlarge=False)
