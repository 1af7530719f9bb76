"""
Signed image URLs, the one implementation both sides use: the proxy checks signatures with it
(:mod:`mediaproxy.builtin.signing`) and applications build and sign URLs with it
(:mod:`mediaproxy.django`, or any Python code). Standard library only, so importing it loads
neither Twisted nor Pillow (``import mediaproxy`` is lazy for the same reason).

The canonical form (version ``MP1``) is four lines joined by ``\\n``::

    MP1
    <the path after the decoding the route does, re-quoted: quote(path, safe="/")>
    <the signed query parameters as sent, sorted: quote(name)=quote(value) joined by "&">
    <the value of ``expires``, or nothing>

* the **path** is decoded the way the route decodes it (once for the query scheme, up to three
  times for the compat routes), so what is signed is what is fetched, however the client spelt
  it; quoting it again makes the line unambiguous;
* the **signed parameters** are, on the proxy, those some plugin registered (by name or alias),
  each pair as sent, repeats included, sorted by name then value: adding, repeating or changing
  any of them breaks the signature, while unknown parameters (ignored by the routes, ``?v=123``
  cache busters) are not signed. A builder that knows no registry (``known=None``) signs every
  parameter but ``sig`` and ``expires``, so it must emit only parameters the proxy knows: its
  own :func:`build_url` does;
* ``sig`` is taken out **by exact parameter name** from the parsed pairs, never by editing the
  URL text; more than one ``sig`` is refused by the proxy;
* ``expires`` (Unix seconds, optional) is signed; past it the URL is refused.

The signature is ``base64url(HMAC-SHA256(key, canonical))`` without padding (43 characters).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Container, Iterable, Mapping
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

SIG_PARAM = "sig"
EXPIRES_PARAM = "expires"
VERSION = "MP1"
#: An ``expires`` longer than this is not a Unix time (the proxy refuses it).
MAX_EXPIRES_DIGITS = 12
#: What stays unquoted in a path the builder emits: the URL's own sub-delimiters and ``%`` (a
#: path given already percent-encoded, as a storage's ``url()`` gives it, is kept as it is).
_PATH_SAFE = "/%:@!$&'()*+,;=~"
_RESERVED = frozenset({SIG_PARAM, EXPIRES_PARAM})


class SigningError(ValueError):
    """A URL that cannot be signed or verified (its path does not decode)."""


def decode_path(raw: str) -> str:
    """Percent-decode a request path once, strictly (UTF-8). Raises ValueError."""
    if "%" in raw:
        for i, ch in enumerate(raw):
            if ch == "%" and not _is_hex_pair(raw[i + 1:i + 3]):
                raise ValueError("malformed percent-encoding in the path")
    return unquote(raw, encoding="utf-8", errors="strict")


#: The most times the compat routes percent-decode a path (double-encoded TinyMCE paths).
MAX_DECODES = 3


def decode_repeatedly(raw: str) -> str:
    """Percent-decode up to :data:`MAX_DECODES` times until stable, the compat routes' decoding.
    Any malformed pass raises ValueError (or UnicodeDecodeError): a ``%`` left after a pass
    claims one more layer of encoding, and a bad one is as malformed as on the first pass (the
    original service refuses it too)."""
    text = decode_path(raw)
    for _ in range(MAX_DECODES - 1):
        if "%" not in text:
            break
        decoded = decode_path(text)
        if decoded == text:
            break
        text = decoded
    return text


def _is_hex_pair(text: str) -> bool:
    return len(text) == 2 and all(c in "0123456789abcdefABCDEF" for c in text)


def canonical(path: str, query: Iterable[tuple[str, str]], known: Container[str] | None,
              expires: str | None) -> bytes:
    """The canonical form of a request whose **decoded** path is ``path`` (see the module
    docstring). ``known`` None signs every parameter but ``sig`` and ``expires``."""
    if known is None:
        pairs = sorted((n, v) for n, v in query if n not in _RESERVED)
    else:
        pairs = sorted((n, v) for n, v in query if n in known)
    return "\n".join((
        VERSION,
        quote(path, safe="/"),
        "&".join(f"{quote(n, safe='')}={quote(v, safe='')}" for n, v in pairs),
        expires or "",
    )).encode("utf-8", "surrogatepass")


def signature(key: bytes, message: bytes) -> str:
    """``base64url(HMAC-SHA256(key, message))`` without padding."""
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def sign_url(url: str, key: str, *, known: Container[str] | None = None,
             expires: int | None = None, decode=decode_path) -> str:
    """``url`` (a path with query, or an absolute URL) with ``sig`` (and ``expires``) added;
    an existing ``sig`` or ``expires`` is replaced, every other parameter kept in order.
    ``decode`` is the route's path decoding (once, for the query scheme). Raises
    :class:`SigningError` when the path does not decode."""
    parts = urlsplit(url)
    query = [(n, v) for n, v in parse_qsl(parts.query, keep_blank_values=True)
             if n not in _RESERVED]
    stamp = None if expires is None else str(int(expires))
    if stamp is not None:
        query.append((EXPIRES_PARAM, stamp))
    try:
        path = decode(parts.path)
    except (ValueError, UnicodeDecodeError):
        raise SigningError("the path is not valid percent-encoded UTF-8") from None
    message = canonical(path, query, known, stamp)
    query.append((SIG_PARAM, signature(key.encode("utf-8"), message)))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))


def quote_path(path: str) -> str:
    """``path`` as it goes on the wire: characters a URL path cannot hold (spaces, non-ASCII,
    ``?``, ``#``) percent-encoded, an existing ``%XX`` kept."""
    return quote(path, safe=_PATH_SAFE)


def build_url(path: str, params: Mapping[str, object] | Iterable[tuple[str, object]] = (), *,
              base: str = "", key: str | None = None, expires: int | None = None) -> str:
    """The URL of the image at backend path ``path`` (``/media/uploads/a.jpg``, quoted or not)
    with transform ``params`` (``{"w": 300, "fmt": "webp"}``; a None value is left out),
    prefixed with ``base`` (the proxy's origin, ``https://img.example.com``, or ``""`` for a
    same-origin path), signed with ``key`` when one is given.

    Parameter values are written with ``str()``; ``True``/``False`` as ``1``/``0``."""
    if not path.startswith("/"):
        raise ValueError(f"an image path must start with '/': {path!r}")
    items = params.items() if isinstance(params, Mapping) else params
    query = [(str(n), _text(v)) for n, v in items if v is not None]
    url = base.rstrip("/") + quote_path(path)
    if query:
        url += "?" + urlencode(query)
    if key:
        return sign_url(url, key, expires=expires)
    if expires is not None:
        raise ValueError("expires needs a key: an unsigned URL cannot expire")
    return url


def _text(value: object) -> str:
    if value is True:
        return "1"
    if value is False:
        return "0"
    return str(value)
