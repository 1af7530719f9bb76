"""
From a twisted.web request to a :class:`~mediaproxy.models.RequestInfo`: the correlation ID,
the end client's address (believing ``X-Forwarded-For`` only from trusted proxies), scheme and
host.
"""

from __future__ import annotations

import ipaddress
import itertools
import re
import uuid
from functools import lru_cache
from urllib.parse import parse_qsl

from ..memo import MAX_KEY_CHARS, Memo, Pairs
from ..models import RequestInfo

_CID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


#: raw query -> its decoded pairs (parse_qsl is a pure function of it: :mod:`mediaproxy.memo`)
_queries = Memo()

#: raw header name -> its lower-case text (the names clients send are a small set; bounded)
_header_names: dict[bytes, str] = {}
MAX_HEADER_NAMES = 256

_PREFIX = uuid.uuid4().hex[:16]
_counter = itertools.count(1)


#: ``monitoring.request_id_headers``' default.
ID_HEADERS = ("X-Correlation-ID", "X-Request-ID")


def correlation_id(incoming: str | None) -> str:
    """Keep a well-formed incoming ID; otherwise make a new one: a random per-process prefix
    and a counter (unique, and far cheaper than a uuid4 per request)."""
    if incoming is not None and _CID.match(incoming):
        return incoming
    return f"{_PREFIX}{next(_counter):08x}"


@lru_cache(maxsize=16)
def _raw_names(names: tuple[str, ...]) -> tuple[bytes, ...]:
    return tuple(name.lower().encode("latin-1") for name in names)


def adopted_id(request_headers, names: tuple[str, ...] = ID_HEADERS) -> str | None:
    """The incoming ID to adopt: the first well-formed value of the headers ``names``, taken in
    that order (``monitoring.request_id_headers``), each header's values in the order sent;
    None when there is none."""
    for name in _raw_names(names):
        for raw in request_headers.getRawHeaders(name, ()):
            value = raw.decode("latin-1")
            if _CID.match(value):
                return value
    return None


def align_id_headers(request, info: RequestInfo, names: tuple[str, ...] = ID_HEADERS) -> None:
    """Before a request is forwarded: every ID header of ``names`` the client sent now carries
    the request's correlation ID, so the backend sees one ID however it reads it (the proxy
    sets ``X-Correlation-ID`` itself)."""
    headers = request.requestHeaders
    value = [info.correlation_id.encode("latin-1")]
    for name in _raw_names(names):
        if headers.hasHeader(name):
            headers.setRawHeaders(name, value)


@lru_cache(maxsize=64)
def _networks(cidrs: tuple[str, ...]):
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


def is_trusted(address: str, trusted: tuple[str, ...]) -> bool:
    """Whether ``address`` lies in one of the ``trusted`` networks."""
    if not trusted or not address:
        return False
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in _networks(trusted))


def client_address(peer: str, forwarded_for: list[str], trusted: tuple[str, ...]) -> str:
    """The end client: walk ``X-Forwarded-For`` from the right while the hop is trusted."""
    if not is_trusted(peer, trusted):
        return peer
    hops = [h.strip() for value in forwarded_for for h in value.split(",") if h.strip()]
    for hop in reversed(hops):
        if not is_trusted(hop, trusted):
            return hop
    return hops[0] if hops else peer


def peer_address(request) -> str:
    peer = request.getClientAddress()
    return getattr(peer, "host", "") or ""


def _secure(request) -> bool:
    """``request.isSecure()``, asked once per connection (it cannot change on one, and
    Twisted's answer looks the transport's interfaces up each time)."""
    channel = getattr(request, "channel", None)
    if channel is None or getattr(request, "_forceSSL", False):
        return request.isSecure()
    secure = getattr(channel, "mediaproxy_secure", None)
    if secure is None:
        secure = channel.mediaproxy_secure = request.isSecure()
    return secure


def from_request(request, trusted_proxies: tuple[str, ...] = (),
                 id_headers: tuple[str, ...] = ID_HEADERS) -> RequestInfo:
    """Build the RequestInfo of a twisted.web ``request`` (headers decoded as latin-1); its
    correlation ID is adopted from ``id_headers`` (:func:`adopted_id`) or made."""
    names = _header_names
    headers = []
    for name, values in request.requestHeaders.getAllRawHeaders():
        lower = names.get(name)
        if lower is None:
            lower = name.decode("latin-1").lower()
            if len(names) < MAX_HEADER_NAMES:
                names[name] = lower
        for value in values:
            headers.append((lower, value.decode("latin-1")))
    headers = Pairs(headers)  # type: ignore[assignment]  # the same pairs, made a Pairs
    raw_uri = request.uri
    # An absolute-form target (GET http://host/x HTTP/1.1) keeps only its path; a path that
    # merely contains :// (/media/http://x/a.jpg) is an origin-form target like any other.
    if not raw_uri.startswith(b"/") and b"://" in raw_uri.split(b"?", 1)[0][:16]:
        rest = raw_uri.split(b"://", 1)[1]
        slash = rest.find(b"/")
        raw_uri = rest[slash:] if slash >= 0 else b"/"
    path, _, query = raw_uri.partition(b"?")
    pairs = _queries.get(query)
    if pairs is None:
        pairs = Pairs(parse_qsl(query.decode("latin-1"), keep_blank_values=True))
        if len(query) <= MAX_KEY_CHARS:
            _queries.put(query, pairs)
    peer = peer_address(request)
    trusted = is_trusted(peer, trusted_proxies)
    scheme = "https" if _secure(request) else "http"
    client = peer
    if trusted:
        xff = request.requestHeaders.getRawHeaders(b"x-forwarded-for", [])
        client = client_address(peer, [v.decode("latin-1") for v in xff], trusted_proxies)
        proto = request.getHeader(b"x-forwarded-proto")
        if proto and proto.decode("latin-1").lower() in ("http", "https"):
            scheme = proto.decode("latin-1").lower()
    host = (request.getHeader(b"host") or b"").decode("latin-1")
    return RequestInfo(
        method=request.method.decode("latin-1"),
        path=path.decode("latin-1"),
        query=pairs,
        headers=headers,
        client_ip=client,
        peer_ip=peer,
        scheme=scheme,
        host=host,
        correlation_id=correlation_id(adopted_id(request.requestHeaders, id_headers)),
    )
