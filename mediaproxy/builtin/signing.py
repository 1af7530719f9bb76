"""
Signed URLs: an HMAC-SHA256 over a canonical form of the request, carried as the ``sig`` query
parameter on every route (the query scheme and the compat routes alike).

The canonical form (version ``MP1``) is four lines joined by ``\\n``::

    MP1
    <the path after the decoding the route does, re-quoted: quote(path, safe="/")>
    <the known query parameters as sent, sorted: quote(name)=quote(value) joined by "&">
    <the value of ``expires``, or nothing>

* the **path** is decoded the way the route decodes it (once for the query scheme, up to three
  times for the compat routes), so what is signed is what is fetched, however the client spelt
  it; quoting it again makes the line unambiguous;
* the **known parameters** are those some plugin registered (by name or alias), each pair as
  sent, repeats included, sorted by name then value: adding, repeating or changing any of them
  breaks the signature, while unknown parameters (ignored by the routes, ``?v=123`` cache
  busters) are not signed;
* ``sig`` is taken out **by exact parameter name** from the parsed pairs, never by editing the
  URL text; more than one ``sig`` is refused;
* ``expires`` (Unix seconds, optional) is signed; past it the URL is refused.

The signature is ``base64url(HMAC-SHA256(key, canonical))`` without padding (43 characters),
compared in constant time (:func:`hmac.compare_digest`) with the signature of every configured
key (``signing.keys``; the first one signs, all verify, for rotation).

With at least one key configured every image request must carry a valid signature unless its
route is listed in ``signing.exempt_routes``: there is no "unsafe" path segment or other back
door. Refusals are 403 ``signature_required``, ``invalid_signature`` or ``signature_expired``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import attrs

from .. import hookimpl
from ..models import Rejection, RequestInfo
from .compat import decode_repeatedly
from .routing import decode_path

SIG_PARAM = "sig"
EXPIRES_PARAM = "expires"
VERSION = "MP1"
_MAX_EXPIRES_DIGITS = 12


class SigningError(ValueError):
    """A URL that cannot be signed or verified (its path does not decode)."""


def decoded_path(route: str, raw_path: str) -> str:
    """The path as ``route`` decodes it. Raises :class:`SigningError`."""
    try:
        return decode_repeatedly(raw_path) if route == "compat" else decode_path(raw_path)
    except (ValueError, UnicodeDecodeError):
        raise SigningError("the path is not valid percent-encoded UTF-8") from None


def canonical(route: str, raw_path: str, query, known: frozenset[str],
              expires: str | None) -> bytes:
    """The canonical form of a request (see the module docstring)."""
    pairs = sorted((name, value) for name, value in query if name in known)
    return "\n".join((
        VERSION,
        quote(decoded_path(route, raw_path), safe="/"),
        "&".join(f"{quote(n, safe='')}={quote(v, safe='')}" for n, v in pairs),
        expires or "",
    )).encode("utf-8", "surrogatepass")


def signature(key: bytes, message: bytes) -> str:
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def sign_url(url: str, route: str, known: frozenset[str], key: str,
             expires: int | None = None) -> str:
    """``url`` (a path with query, or an absolute URL) with ``sig`` (and ``expires``) added;
    an existing ``sig`` is replaced, every other parameter kept in order."""
    parts = urlsplit(url)
    query = [(n, v) for n, v in parse_qsl(parts.query, keep_blank_values=True)
             if n not in (SIG_PARAM, EXPIRES_PARAM)]
    if expires is not None:
        query.append((EXPIRES_PARAM, str(int(expires))))
    message = canonical(route, parts.path, query, known,
                        str(int(expires)) if expires is not None else None)
    query.append((SIG_PARAM, signature(key.encode("utf-8"), message)))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))


@attrs.define(eq=False)
class Signer:
    """The signing plugin instance: the keys as ready HMAC states, the known parameter names."""

    runtime: object
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
            message = canonical(route, request.path, request.query, self.known, expiry)
        except SigningError as e:
            return Rejection(400, "invalid_path", str(e), parameter="path")
        candidate = given[0].encode("utf-8", "surrogatepass")
        valid = False
        for state in self.keys:
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

    @hookimpl
    def mediaproxy_check_request(self, image_request, request, runtime):
        if not self.keys or image_request.route in self.exempt:
            return None
        return self.verify(image_request.route, request, runtime.reactor.seconds())

    @hookimpl
    def mediaproxy_config_reloaded(self, runtime, old, new):
        self.refresh()


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
