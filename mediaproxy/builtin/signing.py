"""
Signed URLs: an HMAC-SHA256 over a canonical form of the request, carried as the ``sig`` query
parameter on every route (the query scheme and the compat routes alike).

The canonical form, the signature and the URL signing live in :mod:`mediaproxy.urlsign` (pure,
standard library only), the one implementation the proxy and the applications building URLs
(:mod:`mediaproxy.django`) share; its docstring describes the form. This module adds what only
the proxy knows: each route's path decoding (once for the query scheme, up to three times for
the compat routes), the registered parameter names (the signed ones), and the verification.

A signature is compared in constant time (:func:`hmac.compare_digest`) with the signature of
every configured key (``signing.keys``; the first one signs, all verify, for rotation).

With at least one key configured every image request must carry a valid signature unless its
route is listed in ``signing.exempt_routes``: there is no "unsafe" path segment or other back
door. Refusals are 403 ``signature_required``, ``invalid_signature`` or ``signature_expired``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

import attrs

from .. import hookimpl, urlsign
from ..cache.headers import shorten_cache_control
from ..models import Rejection, RequestInfo
from ..runtime import Runtime
from ..urlsign import (  # noqa: F401 (the names this module always offered)
    EXPIRES_PARAM, MAX_EXPIRES_DIGITS as _MAX_EXPIRES_DIGITS, SIG_PARAM, VERSION, SigningError,
    signature,
)
from ..urlsign import decode_path, decode_repeatedly


def _decoder(route: str):
    return decode_repeatedly if route == "compat" else decode_path


def decoded_path(route: str, raw_path: str) -> str:
    """The path as ``route`` decodes it. Raises :class:`SigningError`."""
    try:
        return _decoder(route)(raw_path)
    except (ValueError, UnicodeDecodeError):
        raise SigningError("the path is not valid percent-encoded UTF-8") from None


def canonical(route: str, raw_path: str, query, known: frozenset[str],
              expires: str | None) -> bytes:
    """The canonical form of a request on ``route`` (:func:`mediaproxy.urlsign.canonical`)."""
    return urlsign.canonical(decoded_path(route, raw_path), query, known, expires)


def sign_url(url: str, route: str, known: frozenset[str], key: str,
             expires: int | None = None) -> str:
    """``url`` (a path with query, or an absolute URL) with ``sig`` (and ``expires``) added;
    an existing ``sig`` is replaced, every other parameter kept in order."""
    return urlsign.sign_url(url, key, known=known, expires=expires, decode=_decoder(route))


@attrs.define(eq=False)
class Signer:
    """The signing plugin instance: the keys as ready HMAC states, the known parameter names."""

    runtime: Runtime
    keys: tuple = ()
    exempt: frozenset = frozenset()
    known: frozenset = frozenset()

    def __attrs_post_init__(self) -> None:
        self.refresh()

    def refresh(self) -> None:
        config = self.runtime.config.signing
        self.keys = tuple(hmac.new(k.encode("utf-8"), digestmod=hashlib.sha256)
                          for k in config.keys)
        self.exempt = frozenset(config.exempt_routes)
        self.known = frozenset(spelling for name, param in self.runtime.params.items()
                               for spelling in (name, *param.aliases))

    def verify(self, route: str, request: RequestInfo, now: float) -> Rejection | None:
        """None when ``request`` carries a valid, unexpired signature; else the refusal."""
        return verify(self.keys, self.known, route, request, now)

    @hookimpl
    def mediaproxy_check_request(self, image_request, request, runtime):
        if not self.keys or image_request.signed or image_request.route in self.exempt:
            return None
        return self.verify(image_request.route, request, runtime.reactor.seconds())

    @hookimpl
    def mediaproxy_response_headers(self, image_request, response, request, runtime):
        """An answer to a URL that expires is kept by browsers and CDNs until then at most:
        its Cache-Control's max-age lowered to the seconds left and ``immutable`` dropped (the
        configured one says a year; a CDN would serve the image long after the URL died)."""
        if response is None or not self.keys or image_request is None \
                or image_request.signed or image_request.route in self.exempt:
            return None
        for name, value in request.query:
            if name == EXPIRES_PARAM and value.isascii() and value.isdigit():
                left = int(value) - int(runtime.reactor.seconds())
                for header, given in response.headers:
                    if header == "Cache-Control":
                        return [("Cache-Control", shorten_cache_control(given, max(0, left)))]
                return None
        return None

    @hookimpl
    def mediaproxy_config_reloaded(self, runtime, old, new):
        self.refresh()


def signature_first(rejection: Rejection, route: str, request: RequestInfo,
                    runtime) -> Rejection:
    """What to answer a request ``route`` refused while parsing it (a tampered preset name, a
    bad value): with signatures required on the route, a missing, wrong or expired signature
    first (403), as the check chain would, so an unsigned client learns nothing about the
    presets or the limits; the route's own refusal once the signature holds."""
    config = runtime.config.signing
    if not config.keys or route in config.exempt_routes:
        return rejection
    keys = tuple(hmac.new(k.encode("utf-8"), digestmod=hashlib.sha256) for k in config.keys)
    known = frozenset(spelling for name, param in runtime.params.items()
                      for spelling in (name, *param.aliases))
    return verify(keys, known, route, request, runtime.reactor.seconds()) or rejection


def verify(keys: tuple, known: frozenset[str], route: str, request: RequestInfo,
           now: float) -> Rejection | None:
    """None when ``request`` carries a valid, unexpired signature by one of ``keys`` (HMAC
    states) over the parameters named ``known``; else the refusal."""
    given = [value for name, value in request.query if name == SIG_PARAM]
    if not given:
        return _refuse("signature_required", "this URL must be signed", SIG_PARAM)
    if len(given) > 1:
        return _refuse("invalid_signature", "the URL carries more than one signature",
                       SIG_PARAM)
    expires = [value for name, value in request.query if name == EXPIRES_PARAM]
    if len(expires) > 1:
        return _refuse("invalid_signature", "the URL carries more than one expiry",
                       EXPIRES_PARAM)
    expiry = expires[0] if expires else None
    if expiry is not None and not (expiry.isascii() and expiry.isdigit()
                                   and len(expiry) <= _MAX_EXPIRES_DIGITS):
        return _refuse("invalid_signature", "the expiry is not a Unix time",
                       EXPIRES_PARAM)
    try:
        message = canonical(route, request.path, request.query, known, expiry)
    except SigningError as e:
        return Rejection(400, "invalid_path", str(e), parameter="path")
    candidate = given[0].encode("utf-8", "surrogatepass")
    valid = False
    for state in keys:
        mac = state.copy()
        mac.update(message)
        expected = base64.urlsafe_b64encode(mac.digest()).rstrip(b"=")
        valid |= hmac.compare_digest(expected, candidate)
    if not valid:
        return _refuse("invalid_signature", "the signature does not match this URL",
                       SIG_PARAM)
    if expiry is not None and int(expiry) <= now:
        return _refuse("signature_expired", "this signed URL has expired", EXPIRES_PARAM)
    return None


@hookimpl(trylast=True)
def mediaproxy_sign_url(url, image_request, expires, runtime):
    keys = runtime.config.signing.keys
    if not keys:
        raise ValueError("no signing key: set signing.keys (MEDIAPROXY_SIGNING__KEYS)")
    return sign_url(url, image_request.route, runtime.param_names, keys[0], expires)


def _refuse(error: str, message: str, parameter: str) -> Rejection:
    return Rejection(403, error, message, parameter=parameter)


@hookimpl
def mediaproxy_configure(runtime):
    runtime.pm.register(Signer(runtime), "mediaproxy.builtin.signing.instance")
