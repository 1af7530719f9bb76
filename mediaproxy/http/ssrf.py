"""
Server-side request forgery defence for every fetch that is not the configured backend.

The backend (``backend.url``) is trusted as configured and reached through
:class:`mediaproxy.http.upstream.Upstream`. Anything else a plugin fetches (a watermark, a remote
source on an allowed host) must go through :func:`safe_agent` (or :func:`agent_for`, built from
``[ssrf]``), an :class:`~twisted.web.iweb.IAgent` whose endpoint factory

1. refuses malformed host names (an empty label or one over 63 characters), hosts outside
   ``ssrf.allowed_hosts`` (when that list is set) and schemes other than http and https;
2. resolves the host name itself, **at connect time**, and refuses the connection when **any**
   resolved address is refused by the :class:`AddressPolicy` (so a name with one public and one
   internal record is refused);
3. connects to exactly the address it checked (an IP literal, never the name again), so a DNS
   answer that changes between the check and the connection (DNS rebinding) cannot slip
   through, and every redirect hop (``ssrf.max_redirects``, 0 by default) goes through the same
   two checks because it is a new request through the same factory.

The address policy refuses, unless the address lies in ``ssrf.allow_networks``:

* IPv4: ``0.0.0.0/8``, ``10/8``, ``100.64/10`` (CGNAT), ``127/8``, ``169.254/16`` (link-local,
  cloud metadata), ``172.16/12``, ``192.0.0/24``, ``192.0.2/24``, ``192.88.99/24``,
  ``192.168/16``, ``198.18/15``, ``198.51.100/24``, ``203.0.113/24``, ``224/4`` (multicast),
  ``240/4`` and the broadcast address;
* IPv6: ``::``, ``::1``, ``fc00::/7`` (ULA), ``fe80::/10``, ``fec0::/10``, ``ff00::/8``,
  ``100::/64``, ``100:0:0:1::/64`` (dummy prefix), ``2001:db8::/32`` and ``3fff::/20``
  (documentation), ``2001:10::/28``, ``2001:20::/28``, ``5f00::/16`` (SRv6 segment IDs);
* every IPv6 form that embeds an IPv4 address: IPv4-mapped ``::ffff:0:0/96``, IPv4-translated
  ``::ffff:0:0:0/96``, IPv4-compatible ``::/96``, 6to4 ``2002::/16``, Teredo ``2001::/32`` and
  NAT64 ``64:ff9b::/96`` / ``64:ff9b:1::/48``, whatever the embedded address (allowed only when
  the embedded IPv4 address is in ``ssrf.allow_networks``);
* anything else Python's :mod:`ipaddress` does not call global.

IPv4 literals in unusual spellings (``2130706433``, ``0x7f.1``, ``017700000001``, ``127.1``) are
resolved by the system's ``getaddrinfo`` like any name and then checked as the address they
are.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Iterable

import attrs
from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.internet.interfaces import IResolutionReceiver, IStreamClientEndpoint
from twisted.internet.ssl import optionsForClientTLS
from twisted.web.client import Agent, HTTPConnectionPool, RedirectAgent
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from .pool import QuietConnectionPool

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

BLOCKED_V4 = tuple(ipaddress.IPv4Network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
    "172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16",
    "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
    "255.255.255.255/32",
))
BLOCKED_V6 = tuple(ipaddress.IPv6Network(n) for n in (
    "::/128", "::1/128", "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8", "100::/64",
    "2001:db8::/32", "2001:10::/28", "2001:20::/28",
    # not globally reachable (IANA) but called global by the supported Pythons' ipaddress
    "100:0:0:1::/64", "3fff::/20", "5f00::/16",
))

_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")
_COMPATIBLE = ipaddress.IPv6Network("::/96")
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")
_TEREDO = ipaddress.IPv6Network("2001::/32")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")


# A DNS name (labels of 1 to 63 characters: getaddrinfo cannot even encode another, and
# Twisted's resolver then never completes), or an IP literal (with a zone).
_NAME = re.compile(r"(?=.{1,253}\Z)[A-Za-z0-9_-]{1,63}(\.[A-Za-z0-9_-]{1,63})*\.?")
_ADDRESS = re.compile(r"[0-9A-Fa-f:.]{2,45}(%[A-Za-z0-9]{1,16})?")


class BlockedAddress(ConnectError):
    """A fetch was refused by the SSRF filter; nothing was connected to."""


def embedded_ipv4(ip: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address | None] | None:
    """``(form, embedded IPv4 or None)`` when ``ip`` is one of the IPv4-embedding forms."""
    low32 = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _MAPPED:
        return "IPv4-mapped", low32
    if ip in _TRANSLATED:
        return "IPv4-translated", low32
    if ip in _COMPATIBLE and int(ip) > 1:
        return "IPv4-compatible", low32
    if ip in _SIX_TO_FOUR:
        return "6to4", ip.sixtofour
    if ip in _TEREDO:
        return "Teredo", ip.teredo[1] if ip.teredo else None
    if ip in _NAT64:
        return "NAT64", low32
    if ip in _NAT64_LOCAL:
        return "NAT64", None
    return None


@attrs.frozen
class AddressPolicy:
    """Which addresses a plugin's fetch may connect to, and which hosts it may name."""

    allow: tuple = attrs.field(default=(), converter=lambda items: tuple(
        ipaddress.ip_network(i, strict=False) if isinstance(i, str) else i for i in items))
    hosts: tuple[str, ...] = attrs.field(default=(), converter=lambda items: tuple(
        h.lower() for h in items))

    def _allowed(self, ip: IPAddress) -> bool:
        return any(ip.version == net.version and ip in net for net in self.allow)

    def refusal(self, address: str | IPAddress) -> str | None:
        """Why a connection to ``address`` is refused, or None when it is allowed."""
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0]) if isinstance(address, str) \
                else address
        except ValueError:
            return "not an IP address"
        if self._allowed(ip):
            return None
        if ip.version == 6:
            embedding = embedded_ipv4(ip)
            if embedding is not None:
                form, v4 = embedding
                if v4 is not None and self._allowed(v4):
                    return None
                return f"{form} IPv6 address (embeds an IPv4 address)"
            for net in BLOCKED_V6:
                if ip in net:
                    return f"in the refused network {net}"
        else:
            for net4 in BLOCKED_V4:
                if ip in net4:
                    return f"in the refused network {net4}"
        if not ip.is_global:
            return "not a public address"
        return None

    def host_refusal(self, host: str) -> str | None:
        """Why ``host`` (a name or an IP literal) may not be fetched from, or None."""
        if not self.hosts:
            return None
        host = host.lower().rstrip(".")
        for allowed in self.hosts:
            if host == allowed or (allowed.startswith("*.") and host.endswith(allowed[1:])):
                return None
        return "the host is not in ssrf.allowed_hosts"


def resolve(resolver, host: str, port: int) -> Deferred:
    """Resolve ``host`` with an :class:`~twisted.internet.interfaces.IHostnameResolver`; fire
    with the list of address strings (DNSLookupError when there is none)."""
    d: Deferred = Deferred()
    found: list[str] = []

    @implementer(IResolutionReceiver)
    class Receiver:
        def resolutionBegan(self, resolution):
            pass

        def addressResolved(self, address):
            found.append(address.host)

        def resolutionComplete(self):
            if found:
                d.callback(found)
            else:
                d.errback(DNSLookupError(host))

    resolver.resolveHostName(Receiver(), host, port)
    return d


@implementer(IStreamClientEndpoint)
class FilteringEndpoint:
    """Resolve, check every address, connect to the first one by its literal address."""

    def __init__(self, reactor, resolver, policy: AddressPolicy, host: str, port: int,
                 timeout: float, tls: bool):
        self._reactor = reactor
        self._resolver = resolver
        self._policy = policy
        self._host = host
        self._port = port
        self._timeout = timeout
        self._tls = tls

    def connect(self, factory) -> Deferred:
        literal = _literal(self._host)
        d = resolve(self._resolver, self._host, self._port) if literal is None \
            else _succeed([str(literal)])
        return d.addCallback(self._connect_checked, factory)

    def _connect_checked(self, addresses: list[str], factory):
        for address in addresses:
            reason = self._policy.refusal(address)
            if reason is not None:
                raise BlockedAddress(self._host, f"{address}: {reason}")
        ip = ipaddress.ip_address(addresses[0].split("%", 1)[0])
        kind = TCP6ClientEndpoint if ip.version == 6 else TCP4ClientEndpoint
        endpoint: IStreamClientEndpoint = kind(self._reactor, str(ip), self._port,
                                               timeout=self._timeout)
        if self._tls:
            endpoint = wrapClientTLS(optionsForClientTLS(self._host), endpoint)
        return endpoint.connect(factory)


@implementer(IStreamClientEndpoint)
class RefusedEndpoint:
    def __init__(self, host: str, reason: str):
        self._host, self._reason = host, reason

    def connect(self, factory) -> Deferred:
        return fail(BlockedAddress(self._host, self._reason))


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None


def _succeed(value) -> Deferred:
    d: Deferred = Deferred()
    d.callback(value)
    return d


@implementer(IAgentEndpointFactory)
@attrs.define(eq=False)
class FilteringEndpointFactory:
    reactor: Any
    policy: AddressPolicy
    resolver: Any = None
    connect_timeout: float = 5.0

    def endpointForURI(self, uri):
        try:
            host = uri.host.decode("ascii") if isinstance(uri.host, bytes) else uri.host
            scheme = uri.scheme.decode("ascii") if isinstance(uri.scheme, bytes) else uri.scheme
        except UnicodeDecodeError:
            return RefusedEndpoint("?", "the host is not an ASCII (IDNA) name")
        if not (_NAME.fullmatch(host) or (_ADDRESS.fullmatch(host) and _literal(host) is not None)):
            return RefusedEndpoint(host, "not a valid host name")
        if scheme not in ("http", "https"):
            return RefusedEndpoint(host, f"the scheme {scheme!r} is not fetched")
        reason = self.policy.host_refusal(host)
        if reason is not None:
            return RefusedEndpoint(host, reason)
        resolver = self.resolver if self.resolver is not None else self.reactor.nameResolver
        return FilteringEndpoint(self.reactor, resolver, self.policy, host, uri.port,
                                 self.connect_timeout, scheme == "https")


def safe_agent(reactor, allow: Iterable[str] = (), hosts: Iterable[str] = (),
               max_redirects: int = 0, connect_timeout: float = 5.0, resolver=None,
               pool: HTTPConnectionPool | None = None):
    """An IAgent for fetches on behalf of a client (see the module docstring). ``resolver``
    (an IHostnameResolver) defaults to the reactor's; ``pool`` to a new persistent pool."""
    policy = AddressPolicy(allow=tuple(allow), hosts=tuple(hosts))
    factory = FilteringEndpointFactory(reactor, policy, resolver, connect_timeout)
    if pool is None:
        pool = QuietConnectionPool(reactor, persistent=True)
    agent = Agent.usingEndpointFactory(reactor, factory, pool=pool)
    if max_redirects > 0:
        agent = RedirectAgent(agent, redirectLimit=max_redirects)
    return agent


def agent_for(runtime, resolver=None, pool=None):
    """The safe agent configured by ``[ssrf]``, for a plugin to build once at configure."""
    config = runtime.config.ssrf
    return safe_agent(runtime.reactor, allow=config.allow_networks, hosts=config.allowed_hosts,
                      max_redirects=config.max_redirects,
                      connect_timeout=config.connect_timeout, resolver=resolver, pool=pool)
