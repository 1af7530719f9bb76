"""
The plugin's query parameters: parsers (``ValueError`` with the message the client sees, in a
400 naming the parameter) and their cache-key contributions (``None`` at a default: a URL
without a watermark keeps the key it had before the plugin was installed).
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from mediaproxy import Param, parse_choice, parse_int

from .draw import MAX_TEXT
from .geometry import POSITIONS, parse_axis

#: The longest overlay reference (a backend path or an absolute URL), in characters.
MAX_REF = 512
#: The widest margin, in pixels.
MAX_MARGIN = 1000
DEFAULTS = {"wm_pos": "se", "wm_margin": 10, "wm_opacity": 100, "wm_scale": 0,
            "wm_scale_h": 0}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_POS_NAMES = {**{name: name for name in POSITIONS},
              "center": "c", "centre": "c", "north": "n", "south": "s", "east": "e",
              "west": "w", "northwest": "nw", "northeast": "ne", "southwest": "sw",
              "southeast": "se"}


def host_allowed(host: str, allowed: tuple[str, ...]) -> bool:
    """``host`` is one of ``allowed`` (``ssrf.allowed_hosts``: exact, or ``*.domain`` for
    its subdomains). An empty list allows no host here: an overlay from anywhere must be
    named."""
    for item in allowed:
        if host == item or (item.startswith("*.") and host.endswith(item[1:])):
            return True
    return False


def parse_ref(raw: str, allowed_hosts: tuple[str, ...]) -> str:
    """An overlay: a backend path (``/media/logo.png``) or an ``http(s)://`` URL on a host of
    ``ssrf.allowed_hosts``, canonical (the host lower-case, the default port dropped)."""
    if not raw:
        raise ValueError("wm must be a path on the backend (/media/logo.png) or an "
                         "http(s) URL on a host of ssrf.allowed_hosts")
    if len(raw) > MAX_REF:
        raise ValueError(f"wm must be at most {MAX_REF} characters")
    if _CONTROL.search(raw) or "\\" in raw:
        raise ValueError("wm contains a forbidden character")
    if "://" in raw:
        parts = urlsplit(raw)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("wm must be an http or https URL")
        if parts.username is not None or parts.password is not None:
            raise ValueError("wm must not carry credentials")
        host = parts.hostname
        if not host_allowed(host, allowed_hosts):
            raise ValueError(f"the host {host[:64]!r} of wm is not in ssrf.allowed_hosts")
        try:
            port = parts.port
        except ValueError:
            raise ValueError("wm has an invalid port") from None
        default = 443 if parts.scheme == "https" else 80
        netloc = host if port in (None, default) else f"{host}:{port}"
        if parts.query or parts.fragment:
            raise ValueError("wm must not have a query or a fragment")
        path = parts.path or "/"
        _check_path(path)
        return f"{parts.scheme}://{netloc}{path}"
    _check_path(raw)
    return raw


def _check_path(path: str) -> None:
    if not path.startswith("/") or path.startswith("//"):
        raise ValueError("wm must be a path on the backend starting with / "
                         "(/media/logo.png) or an http(s) URL")
    if any(segment.split(";", 1)[0] in ("..", ".") for segment in path.split("/")):
        raise ValueError("wm must not contain '.' or '..' segments")


def parse_text(raw: str) -> str:
    if not raw.strip():
        raise ValueError("wm_text must not be empty")
    if len(raw) > MAX_TEXT:
        raise ValueError(f"wm_text must be at most {MAX_TEXT} characters")
    if _CONTROL.search(raw):
        raise ValueError("wm_text must not contain control characters")
    return raw


def _unless(default):
    """The key of a parameter: left out at ``default``."""
    return lambda value: None if value == default else str(value)


def params(config) -> list[Param]:
    hosts = tuple(config.ssrf.allowed_hosts)
    return [
        Param("wm", lambda raw: parse_ref(raw, hosts), None, key=_unless(None),
              help="The watermark image: a path on the backend, or an http(s) URL on a host "
                   "of ssrf.allowed_hosts."),
        Param("wm_text", parse_text, None, key=_unless(None),
              help=f"A text watermark (at most {MAX_TEXT} characters), white with an outline."),
        Param("wm_pos", parse_choice(_POS_NAMES, "wm_pos"), DEFAULTS["wm_pos"],
              key=_unless(DEFAULTS["wm_pos"]),
              help="Where the watermark goes: nw n ne w c e sw s se (default se)."),
        Param("wm_margin", lambda raw: parse_int(raw, 0, MAX_MARGIN, "wm_margin"),
              DEFAULTS["wm_margin"], key=_unless(DEFAULTS["wm_margin"]),
              help="Pixels between the watermark and the edges it is placed against."),
        Param("wm_opacity", lambda raw: parse_int(raw, 0, 100, "wm_opacity"),
              DEFAULTS["wm_opacity"], key=_unless(DEFAULTS["wm_opacity"]),
              help="The watermark's opacity in percent, 0-100 (default 100: as drawn)."),
        Param("wm_scale", lambda raw: parse_int(raw, 0, 100, "wm_scale"),
              DEFAULTS["wm_scale"], key=_unless(DEFAULTS["wm_scale"]),
              help="The watermark's width in percent of the output's width (0: its own)."),
        Param("wm_scale_h", lambda raw: parse_int(raw, 0, 100, "wm_scale_h"),
              DEFAULTS["wm_scale_h"], key=_unless(DEFAULTS["wm_scale_h"]),
              help="At most this percent of the output's height (0: free)."),
        Param("wm_x", lambda raw: parse_axis(raw, "wm_x"), None, key=_unless(None),
              help="thumbor's x: N px from the left, -N from the right, Np percent, center "
                   "(replaces wm_pos horizontally)."),
        Param("wm_y", lambda raw: parse_axis(raw, "wm_y"), None, key=_unless(None),
              help="thumbor's y: N px from the top, -N from the bottom, Np percent, center "
                   "(replaces wm_pos vertically)."),
    ]
