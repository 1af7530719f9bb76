"""
thumbor's ``watermark(imageUrl,x,y,alpha[,w_ratio[,h_ratio]])`` filter on the core's thumbor
endpoint (hook ``mediaproxy_thumbor_filters``), mapped onto this plugin's parameters, so a
thumbor URL and its query twin share one cache entry:

* ``imageUrl``: ``host[:port]/path`` or ``http(s)://host/path`` on a host of
  ``ssrf.allowed_hosts`` (thumbor's HTTP loader reads ``host/path`` over http), else a path
  on the backend (``media/logo.png``) -> ``wm``;
* ``x``, ``y``: thumbor's offsets (``N``, ``-N``, ``Np``, ``-Np``, ``center``) -> ``wm_x``,
  ``wm_y`` (``repeat``, thumbor's tiling, is not supported: a 400);
* ``alpha``: transparency in percent, 0 opaque .. 100 invisible -> ``wm_opacity = 100 - alpha``;
* ``w_ratio``, ``h_ratio``: the most of the image's width and height, in percent, the
  watermark may take (``none``: free) -> ``wm_scale``, ``wm_scale_h``.
"""

from __future__ import annotations

from mediaproxy import parse_int

from .geometry import parse_axis
from .params import host_allowed, parse_ref


def _ratio(raw: str, what: str) -> int:
    raw = raw.strip().lower()
    if raw == "none":
        return 0
    return parse_int(raw, 0, 100, what)


def overlay_ref(url: str, hosts: tuple[str, ...]) -> str:
    """thumbor's watermark ``imageUrl`` as a ``wm`` value."""
    url = url.strip()
    if "://" in url:
        return parse_ref(url, hosts)
    first = url.lstrip("/").split("/", 1)[0].lower()
    if hosts and host_allowed(first.rsplit(":", 1)[0] if ":" in first else first, hosts):
        return parse_ref("http://" + url.lstrip("/"), hosts)
    return parse_ref("/" + url.lstrip("/"), hosts)


def watermark_filter_for(config):
    """The filter for ``config`` (its ``ssrf.allowed_hosts``)."""
    hosts = tuple(config.ssrf.allowed_hosts)

    def watermark(args: tuple, params: dict) -> None:
        if not 4 <= len(args) <= 6 or any(a.strip() == "" for a in args):
            raise ValueError("watermark() takes 4 to 6 arguments: "
                             "imageUrl, x, y, alpha[, w_ratio[, h_ratio]]")
        if "repeat" in (args[1].strip().lower(), args[2].strip().lower()):
            raise ValueError("repeat (tiling) is not supported")
        params["wm"] = overlay_ref(args[0], hosts)
        params["wm_x"] = parse_axis(args[1], "x")
        params["wm_y"] = parse_axis(args[2], "y")
        params["wm_opacity"] = 100 - parse_int(args[3], 0, 100, "alpha")
        params["wm_scale"] = _ratio(args[4], "w_ratio") if len(args) > 4 else 0
        params["wm_scale_h"] = _ratio(args[5], "h_ratio") if len(args) > 5 else 0

    return watermark
