"""
The test kit for mediaproxy and its plugins: what the project's own tests use, public and
installed with the package (guide: ``docs/plugin_hooks.md``, "Testing your plugin").

End to end, over real sockets on loopback:

* :func:`start_proxy` starts a real proxy, configured like ``mediaproxy run`` with your
  plugins and settings, in front of an :class:`ImageOrigin` serving the files you give, and
  returns a :class:`RunningProxy` (``get``, ``request``, ``json``, ``url``, ``runtime``,
  ``origin``, ``stop``; a context manager);
* :class:`ImageOrigin` / :func:`start_origin`: the origin alone; it counts hits, records
  request headers per path and can hold answers until released; :class:`DroppingSite` serves
  it and drops every connection at once, as a backend process that dies;
* :func:`wait_for` polls until something is true.

Images: :func:`make_image` and the specialised makers (:func:`make_jpeg` with an EXIF
orientation, :func:`make_transparent_png`, :func:`make_animated` GIF or WebP, ... all in
:mod:`mediaproxy.testing.images`); :func:`decode` and :func:`assert_image` to check a body.

Without sockets: :func:`make_runtime` builds a complete runtime on a memory reactor for tests
that call plugin code directly. Underneath all of it: :func:`reactor_thread` runs the global
reactor in a daemon thread and :func:`call_in_reactor` calls into it from the test thread.
"""

from .images import (
    assert_image, decode, make_animated, make_image, make_jpeg, make_png, make_transparent_png,
)
from .origin import DroppingSite, File, ImageOrigin, start_origin
from .proxy import JsonResponse, Response, RunningProxy, start_proxy
from .reactor import call_in_reactor, reactor_thread, stop_reactor_thread
from .runtime import make_runtime
from .wait import wait_for

__all__ = [
    "DroppingSite", "File", "ImageOrigin", "JsonResponse", "Response", "RunningProxy", "assert_image",
    "call_in_reactor", "decode", "make_animated", "make_image", "make_jpeg", "make_png",
    "make_runtime", "make_transparent_png", "reactor_thread", "start_origin", "start_proxy",
    "stop_reactor_thread", "wait_for",
]
