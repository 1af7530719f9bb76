"""
The SSRF guard (:mod:`mediaproxy.ssrf`) on the running reactor: every refusal with the exact
exception and reason, and that nothing was dialled; what is allowed is dialled by the checked
address only.

How the guard dials: :func:`~mediaproxy.ssrf.safe_agent` is an Agent whose endpoint factory
checks the scheme, the host name and ``allowed_hosts``, resolves the name itself through an
IHostnameResolver, checks every address with the AddressPolicy and connects to the first one
as a literal with a TCP4/TCP6 client endpoint, i.e. ``reactor.connectTCP(address, port, ...)``.

What these tests observe is that call on the real, running reactor. :class:`Dialler` is the
reactor with ``connectTCP`` wrapped: it records ``(address, port, timeout)`` and sends the
connection to :class:`Listener`, a real HTTP server on 127.0.0.1 that counts the connections it
accepts (the addresses under test, 10.0.0.1, 2001:2::1, 169.254.169.254 ..., must not and cannot
be reached from a test machine, so the connection the guard asked for is carried to loopback).
"Nothing was dialled" is: no ``connectTCP`` call and no connection accepted.

Names are resolved by Twisted's real GAIResolver (thread pool, address families, receiver
protocol) with ``getaddrinfo`` replaced by :class:`Names`, a table: a real DNS server answering
arbitrary names with chosen addresses cannot be had on demand here. A name that is not in the
table goes to the system's getaddrinfo with AI_NUMERICHOST, so numeric spellings (2130706433,
0x7f.1) are parsed by libc exactly as in production and no DNS query leaves the machine.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from urllib.parse import quote, unquote

import pytest
from twisted.internet._resolver import GAIResolver
from twisted.internet.error import ConnectionLost, DNSLookupError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.defer import Deferred
from twisted.web.client import URI, HTTPConnectionPool, ResponseDone, ResponseNeverReceived
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface.verify import verifyObject

from mediaproxy.http import ssrf
from mediaproxy.config import load_config
from mediaproxy.testing import call_in_reactor

PUBLIC = "93.184.216.34"
PUBLIC6 = "2606:2800:220:1:248:1893:25c8:1946"

NAMES = {
    "localhost": ["127.0.0.1", "::1"],
    "metadata.google.internal": ["169.254.169.254"],
    "mixed.example": [PUBLIC, "10.0.0.1"],
    "internal.example": ["fd00::5"],
    "bench.example": ["2001:2::7"],
    "public.example": [PUBLIC],
    "public6.example": [PUBLIC6],
    "two.example": [PUBLIC, "93.184.216.35"],
    "empty.example": [],
}


# -- the harness ----------------------------------------------------------------------------------

class Names:
    """``getaddrinfo`` from a table (a list of lists is answered in turn: DNS rebinding);
    other names through the system's getaddrinfo, numeric spellings only."""

    def __init__(self, table):
        self.table = {name: list(answers) for name, answers in table.items()}
        self.asked: list[str] = []
        self._lock = threading.Lock()

    def getaddrinfo(self, host, port, family=0, type=0, proto=0, flags=0):
        with self._lock:
            self.asked.append(host)
            answers = self.table.get(host.lower().rstrip("."))   # DNS: any case, root dot
            if answers and isinstance(answers[0], list):
                answers = answers.pop(0) if len(answers) > 1 else answers[0]
        if answers is None:
            return socket.getaddrinfo(host, port, family, type, proto,
                                      flags | socket.AI_NUMERICHOST)
        infos = []
        for address in answers:
            if ":" in address:     # as getaddrinfo writes it, a scoped one with its zone
                bare, _, zone = address.partition("%")
                text = socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, bare))
                infos.append((socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "",
                              (f"{text}%{zone}" if zone else text, port, 0,
                               socket.if_nametoindex(zone) if zone else 0)))
            else:
                infos.append((socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "",
                              (address, port)))
        return infos


class Serving(Protocol):
    """Minimal HTTP/1.1 (keep-alive): ``/redirect?to=URL`` answers 302 to URL, anything else 200
    ``ok <path>``. A TLS handshake is recorded and the connection dropped."""

    def connectionMade(self):
        self.factory.accepted += 1
        self.buffer = b""
        self.started = False

    def dataReceived(self, data):
        if not self.started:
            self.started = True
            self.factory.first_bytes.append(data[:8])
            if data[:2] == b"\x16\x03":
                self.transport.abortConnection()
                return
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            target = head.split(b"\r\n", 1)[0].split(b" ")[1].decode()
            self.factory.paths.append(target)
            if target.startswith("/redirect?to="):
                location = unquote(target[len("/redirect?to="):])
                self.respond(b"302 Found", b"", f"Location: {location}\r\n".encode())
            else:
                self.respond(b"200 OK", b"ok " + target.encode())

    def respond(self, status, body, extra=b""):
        self.transport.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: " +
                             str(len(body)).encode() + b"\r\n" + extra + b"\r\n" + body)


class Listener(Factory):
    """A real server on loopback counting the connections it accepts and the requests it
    answers."""

    protocol = Serving

    def __init__(self):
        self.accepted = 0
        self.first_bytes: list[bytes] = []
        self.paths: list[str] = []


class Dialler:
    """The real reactor with ``connectTCP`` observed (see the module docstring)."""

    def __init__(self, reactor, port):
        self._reactor = reactor
        self._port = port
        self.dialled: list[tuple[str, int, float]] = []

    def connectTCP(self, host, port, factory, timeout=30, bindAddress=None):
        self.dialled.append((host, port, timeout))
        return self._reactor.connectTCP("127.0.0.1", self._port, factory, timeout, bindAddress)

    def __getattr__(self, name):
        return getattr(self._reactor, name)


class _Body(Protocol):
    def __init__(self, done):
        self.done, self.data = done, b""

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason=None):
        if reason.check(ResponseDone):
            self.done.callback(self.data)
        else:
            self.done.errback(reason)


def body_of(response) -> Deferred:
    done: Deferred = Deferred()
    response.deliverBody(_Body(done))
    return done


class Net:
    """One listener, one dialler, a resolver table; ``agent(...)`` builds a safe agent on them."""

    def __init__(self, reactor):
        self.reactor = reactor
        self.listener = Listener()
        self.port = call_in_reactor(reactor.listenTCP, 0, self.listener, interface="127.0.0.1")
        self.dialler = Dialler(reactor, self.port.getHost().port)
        self.names = Names(NAMES)
        self.pools: list[HTTPConnectionPool] = []

    def resolver(self, table=None):
        if table is not None:
            self.names = Names(table)
        return GAIResolver(self.reactor, getaddrinfo=self.names.getaddrinfo)

    def agent(self, names=None, pool=False, **policy):
        resolver = self.resolver(names)

        def build():
            kept = None
            if not pool:
                kept = HTTPConnectionPool(self.dialler, persistent=False)
                self.pools.append(kept)
            return ssrf.safe_agent(self.dialler, resolver=resolver, pool=kept, **policy)
        return call_in_reactor(build)

    def get(self, agent, url: str | bytes):
        """The response's (code, body) through ``agent``; its failure is raised."""
        url = url.encode() if isinstance(url, str) else url

        def go():
            return agent.request(b"GET", url).addCallback(
                lambda r: body_of(r).addCallback(lambda b: (r.code, b)))
        return call_in_reactor(go)

    def nothing_dialled(self):
        assert self.dialled == [] and self.listener.accepted == 0

    @property
    def dialled(self):
        return [(host, port) for host, port, _ in self.dialler.dialled]

    def close(self):
        call_in_reactor(self.port.stopListening)


@pytest.fixture
def net(live_reactor):
    n = Net(live_reactor)
    yield n
    n.close()


def refused(net, agent, url, host, why):
    """``url`` is refused with exactly ``BlockedAddress(host, why)`` and nothing is dialled."""
    before = (len(net.dialler.dialled), net.listener.accepted)
    with pytest.raises(ssrf.BlockedAddress) as info:
        net.get(agent, url)
    assert type(info.value) is ssrf.BlockedAddress
    assert (info.value.osError, info.value.args) == (host, (why,))
    assert (len(net.dialler.dialled), net.listener.accepted) == before, "something was dialled"


def v6(text: str) -> str:
    """An IPv6 address as the guard writes it (Python's canonical form)."""
    return str(ipaddress.IPv6Address(text))


# -- addresses: every refused form, with its reason -----------------------------------------------

def network(net_text):
    return f"in the refused network {net_text}"


EMBEDS = "IPv6 address (embeds an IPv4 address)"

LITERALS = [
    # IPv4, and its unusual spellings (parsed by getaddrinfo like any name)
    ("http://127.0.0.1/", "127.0.0.1", "127.0.0.1", network("127.0.0.0/8")),
    ("http://127.1/", "127.1", "127.0.0.1", network("127.0.0.0/8")),
    ("http://2130706433/", "2130706433", "127.0.0.1", network("127.0.0.0/8")),
    ("http://0x7f000001/", "0x7f000001", "127.0.0.1", network("127.0.0.0/8")),
    ("http://0x7f.1/", "0x7f.1", "127.0.0.1", network("127.0.0.0/8")),
    ("http://017700000001/", "017700000001", "127.0.0.1", network("127.0.0.0/8")),
    ("http://127.255.255.254:8080/", "127.255.255.254", "127.255.255.254",
     network("127.0.0.0/8")),
    ("http://0/", "0", "0.0.0.0", network("0.0.0.0/8")),
    ("http://0.0.0.0/", "0.0.0.0", "0.0.0.0", network("0.0.0.0/8")),
    ("http://10.0.0.1/", "10.0.0.1", "10.0.0.1", network("10.0.0.0/8")),
    ("http://172.16.5.4/", "172.16.5.4", "172.16.5.4", network("172.16.0.0/12")),
    ("http://172.31.255.255/", "172.31.255.255", "172.31.255.255", network("172.16.0.0/12")),
    ("http://192.168.1.1/", "192.168.1.1", "192.168.1.1", network("192.168.0.0/16")),
    ("http://100.64.0.1/", "100.64.0.1", "100.64.0.1", network("100.64.0.0/10")),
    ("http://100.127.255.254/", "100.127.255.254", "100.127.255.254",
     network("100.64.0.0/10")),
    ("http://169.254.169.254/latest/meta-data/", "169.254.169.254", "169.254.169.254",
     network("169.254.0.0/16")),
    ("http://169.254.170.2/v2/credentials", "169.254.170.2", "169.254.170.2",
     network("169.254.0.0/16")),
    ("http://224.0.0.1/", "224.0.0.1", "224.0.0.1", network("224.0.0.0/4")),
    ("http://239.255.255.250/", "239.255.255.250", "239.255.255.250", network("224.0.0.0/4")),
    ("http://255.255.255.255/", "255.255.255.255", "255.255.255.255", network("240.0.0.0/4")),
    ("http://240.0.0.1/", "240.0.0.1", "240.0.0.1", network("240.0.0.0/4")),
    ("http://198.18.0.1/", "198.18.0.1", "198.18.0.1", network("198.18.0.0/15")),
    ("http://198.19.255.255/", "198.19.255.255", "198.19.255.255", network("198.18.0.0/15")),
    ("http://192.0.0.170/", "192.0.0.170", "192.0.0.170", network("192.0.0.0/24")),
    ("http://192.0.0.9/", "192.0.0.9", "192.0.0.9", network("192.0.0.0/24")),
    ("http://192.0.2.1/", "192.0.2.1", "192.0.2.1", network("192.0.2.0/24")),
    ("http://192.88.99.1/", "192.88.99.1", "192.88.99.1", network("192.88.99.0/24")),
    ("http://198.51.100.7/", "198.51.100.7", "198.51.100.7", network("198.51.100.0/24")),
    ("http://203.0.113.7/", "203.0.113.7", "203.0.113.7", network("203.0.113.0/24")),
    # IPv6 in the explicit table
    ("http://[::1]/", "::1", "::1", network("::1/128")),
    ("http://[::]/", "::", "::", network("::/128")),
    ("http://[0:0:0:0:0:0:0:1]/", "0:0:0:0:0:0:0:1", "::1", network("::1/128")),
    ("http://[fc00::1]/", "fc00::1", "fc00::1", network("fc00::/7")),
    ("http://[fd12:3456::1]/", "fd12:3456::1", "fd12:3456::1", network("fc00::/7")),
    ("http://[fe80::1]/", "fe80::1", "fe80::1", network("fe80::/10")),
    ("http://[fe80::1%25eth0]/", "fe80::1%25eth0", "fe80::1", network("fe80::/10")),
    ("http://[fec0::1]/", "fec0::1", "fec0::1", network("fec0::/10")),
    ("http://[ff02::1]/", "ff02::1", "ff02::1", network("ff00::/8")),
    ("http://[ff0e::1]/", "ff0e::1", "ff0e::1", network("ff00::/8")),
    ("http://[100::1]/", "100::1", "100::1", network("100::/64")),
    ("http://[2001:db8::1]/", "2001:db8::1", "2001:db8::1", network("2001:db8::/32")),
    ("http://[2001:10::1]/", "2001:10::1", "2001:10::1", network("2001:10::/28")),
    ("http://[2001:20::1]/", "2001:20::1", "2001:20::1", network("2001:20::/28")),
    ("http://[100:0:0:1::1]/", "100:0:0:1::1", "100:0:0:1::1", network("100:0:0:1::/64")),
    ("http://[3fff::1]/", "3fff::1", "3fff::1", network("3fff::/20")),
    ("http://[5f00::1]/", "5f00::1", "5f00::1", network("5f00::/16")),
    # every IPv6 form embedding an IPv4 address, whatever that address
    ("http://[::ffff:127.0.0.1]/", "::ffff:127.0.0.1", v6("::ffff:127.0.0.1"),
     f"IPv4-mapped {EMBEDS}"),
    ("http://[::ffff:7f00:1]/", "::ffff:7f00:1", v6("::ffff:127.0.0.1"), f"IPv4-mapped {EMBEDS}"),
    ("http://[::ffff:10.0.0.1]/", "::ffff:10.0.0.1", v6("::ffff:10.0.0.1"),
     f"IPv4-mapped {EMBEDS}"),
    ("http://[::ffff:169.254.169.254]/", "::ffff:169.254.169.254", v6("::ffff:169.254.169.254"),
     f"IPv4-mapped {EMBEDS}"),
    ("http://[::ffff:8.8.8.8]/", "::ffff:8.8.8.8", v6("::ffff:8.8.8.8"), f"IPv4-mapped {EMBEDS}"),
    ("http://[::127.0.0.1]/", "::127.0.0.1", "::7f00:1", f"IPv4-compatible {EMBEDS}"),
    ("http://[::2]/", "::2", "::2", f"IPv4-compatible {EMBEDS}"),
    ("http://[::ffff:0:a9fe:a9fe]/", "::ffff:0:a9fe:a9fe", "::ffff:0:a9fe:a9fe",
     f"IPv4-translated {EMBEDS}"),
    ("http://[2002:7f00:1::]/", "2002:7f00:1::", "2002:7f00:1::", f"6to4 {EMBEDS}"),
    ("http://[2002:a9fe:a9fe::1]/", "2002:a9fe:a9fe::1", "2002:a9fe:a9fe::1", f"6to4 {EMBEDS}"),
    ("http://[2002:c0a8:101::1]/", "2002:c0a8:101::1", "2002:c0a8:101::1", f"6to4 {EMBEDS}"),
    ("http://[2002:808:808::1]/", "2002:808:808::1", "2002:808:808::1", f"6to4 {EMBEDS}"),
    ("http://[64:ff9b::a9fe:a9fe]/", "64:ff9b::a9fe:a9fe", "64:ff9b::a9fe:a9fe",
     f"NAT64 {EMBEDS}"),
    ("http://[64:ff9b::8.8.8.8]/", "64:ff9b::8.8.8.8", "64:ff9b::808:808", f"NAT64 {EMBEDS}"),
    ("http://[64:ff9b:1::a9fe:a9fe]/", "64:ff9b:1::a9fe:a9fe", "64:ff9b:1::a9fe:a9fe",
     f"NAT64 {EMBEDS}"),
    ("http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/", "2001:0:4136:e378:8000:63bf:3fff:fdd2",
     "2001:0:4136:e378:8000:63bf:3fff:fdd2", f"Teredo {EMBEDS}"),
    # not public, outside the explicit table: the "not a public address" fallback
    ("http://[2001:2::1]/", "2001:2::1", "2001:2::1", "not a public address"),
    ("http://[2001:2:0:ffff::1]/", "2001:2:0:ffff::1", "2001:2:0:ffff::1",
     "not a public address"),
    ("http://[2001:5::1]/", "2001:5::1", "2001:5::1", "not a public address"),
    ("http://[2001:1ff:ffff::1]/", "2001:1ff:ffff::1", "2001:1ff:ffff::1",
     "not a public address"),
]


@pytest.mark.parametrize("url, host, address, reason", LITERALS)
def test_an_address_literal_is_refused_with_its_reason_and_never_dialled(net, url, host,
                                                                          address, reason):
    agent = net.agent()
    refused(net, agent, url, host, f"{address}: {reason}")
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:      # another spelling: getaddrinfo parses it, like any name
        assert net.names.asked == [host]
    else:                   # a literal is checked as it is, never resolved
        assert net.names.asked == []


@pytest.mark.parametrize("name, address, reason", [
    ("localhost", "127.0.0.1", network("127.0.0.0/8")),
    ("metadata.google.internal", "169.254.169.254", network("169.254.0.0/16")),
    ("mixed.example", "10.0.0.1", network("10.0.0.0/8")),   # one bad record is enough
    ("internal.example", "fd00::5", network("fc00::/7")),
    ("bench.example", "2001:2::7", "not a public address"),
])
def test_a_name_is_refused_when_any_of_its_addresses_is(net, name, address, reason):
    agent = net.agent()
    refused(net, agent, f"http://{name}/a.png", name, f"{address}: {reason}")
    assert net.names.asked == [name]


def test_a_name_that_resolves_to_nothing_fails_the_lookup(net):
    agent = net.agent()
    for name in ("empty.example", "nowhere.invalid"):
        with pytest.raises(DNSLookupError) as info:
            net.get(agent, f"http://{name}/")
        assert type(info.value) is DNSLookupError and info.value.args == (name,)
    assert net.names.asked == ["empty.example", "nowhere.invalid"]
    net.nothing_dialled()


# -- host names, schemes and allowed_hosts: refused before any lookup -----------------------------

@pytest.mark.parametrize("url, host", [
    ("http://bad!host/", "bad!host"),
    ("http://bad$host.example/", "bad$host.example"),
    ("http://*.example/", "*.example"),
    ("http://a,b.example/", "a,b.example"),
    ("http://exa'mple.com/", "exa'mple.com"),
    ("http://evil%2eexample/", "evil%2eexample"),
    ("http://" + "a" * 254 + "/", "a" * 254),
    # names getaddrinfo cannot even encode (an empty label, a label over 63 characters): the
    # system resolver fails them with an error Twisted's resolver never reports, and the fetch
    # would wait forever
    ("http://a..b.example/", "a..b.example"),
    ("http://.example/", ".example"),
    ("http://" + "x" * 64 + ".example/", "x" * 64 + ".example"),
    ("http://a..b/", "a..b"),
    ("http://1.2.3..4/", "1.2.3..4"),
    ("http://[fe80::1%25a-b]/", "fe80::1%25a-b"),
    ("file:///etc/passwd", ""),
])
def test_an_invalid_host_name_is_refused_without_a_lookup(net, url, host):
    agent = net.agent()
    refused(net, agent, url, host, "not a valid host name")
    assert net.names.asked == []


def test_the_longest_valid_host_name_is_looked_up(net):
    name = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])
    assert len(name) == 253
    agent = net.agent(names={name: [PUBLIC]})
    assert net.get(agent, f"http://{name}/x") == (200, b"ok /x")
    assert net.names.asked == [name]
    assert net.dialled == [(PUBLIC, 80)]


@pytest.mark.parametrize("url", [
    "http://\u00e9.example/".encode(), b"http://[a:b::..c]/", b"http://[1::2::3]/",
])
def test_urls_the_agent_cannot_parse_never_reach_the_guard(net, url):
    with pytest.raises(ValueError) as info:
        net.get(net.agent(), url)
    assert type(info.value) is ValueError
    assert net.names.asked == []
    net.nothing_dialled()


@pytest.mark.parametrize("url, host, scheme", [
    (f"ftp://{PUBLIC}/", PUBLIC, "ftp"),
    ("gopher://public.example/", "public.example", "gopher"),
])
def test_only_http_and_https_are_fetched(net, url, host, scheme):
    agent = net.agent()
    refused(net, agent, url, host, f"the scheme {scheme!r} is not fetched")
    assert net.names.asked == []


def test_allowed_hosts_limit_the_names_before_any_lookup(net):
    table = {**NAMES, "a.cdn.example": ["93.184.216.35"], "cdn.example": ["93.184.216.36"],
             "evilcdn.example": ["93.184.216.37"]}
    agent = net.agent(names=table, hosts=["Public.Example", "*.cdn.example"])
    for url, host in [("http://cdn.example/", "cdn.example"),
                      ("http://evilcdn.example/", "evilcdn.example"),
                      ("http://public.example.evil/", "public.example.evil"),
                      (f"http://{PUBLIC}/", PUBLIC)]:
        refused(net, agent, url, host, "the host is not in ssrf.allowed_hosts")
    assert net.names.asked == []
    assert net.get(agent, "http://public.example/") == (200, b"ok /")
    assert net.get(agent, "http://PUBLIC.example./") == (200, b"ok /")
    assert net.get(agent, "http://a.cdn.example/") == (200, b"ok /")
    assert net.dialled == [(PUBLIC, 80), (PUBLIC, 80), ("93.184.216.35", 80)]


# -- what is allowed is dialled, by its checked address -------------------------------------------

@pytest.mark.parametrize("url, dialled", [
    (f"http://{PUBLIC}/a.png", (PUBLIC, 80)),
    (f"http://{PUBLIC}:8080/a.png", (PUBLIC, 8080)),
    ("http://public.example/a.png", (PUBLIC, 80)),
    (f"http://[{PUBLIC6}]/a.png", (PUBLIC6, 80)),
    ("http://public6.example:81/a.png", (PUBLIC6, 81)),
    ("http://two.example/a.png", (PUBLIC, 80)),       # the first address, by its literal
])
def test_a_public_address_is_dialled_by_its_checked_address(net, url, dialled):
    agent = net.agent()
    assert net.get(agent, url) == (200, b"ok /a.png")
    assert net.dialled == [dialled]
    assert net.listener.accepted == 1
    assert net.listener.first_bytes[0].startswith(b"GET /a.p")


def test_https_is_dialled_by_address_and_speaks_tls(net):
    agent = net.agent()
    with pytest.raises(ResponseNeverReceived) as info:   # the listener drops the handshake
        net.get(agent, "https://public.example/a.png")
    assert [r.type for r in info.value.reasons] == [ConnectionLost]
    assert net.dialled == [(PUBLIC, 443)]
    assert net.listener.accepted == 1
    assert net.listener.first_bytes[0][:2] == b"\x16\x03"     # a TLS handshake record


def test_the_connect_timeout_is_five_seconds_unless_configured(net):
    net.get(net.agent(), "http://public.example/")
    net.get(net.agent(connect_timeout=1.5), "http://public.example/")
    assert [timeout for _, _, timeout in net.dialler.dialled] == [5.0, 1.5]


def test_explicitly_allowed_networks(net):
    agent = net.agent(allow=["10.0.0.0/8", "127.0.0.1/32", "2001:2::/48", "fe80::/10",
                             "172.16.1.2/12"])
    for url in ("http://10.1.2.3/", "http://127.0.0.1/", "http://[2001:2::1]/",
                "http://[fe80::1%25eth0]/", "http://172.31.0.1/", "http://bench.example/"):
        assert net.get(agent, url) == (200, b"ok /"), url
    assert net.dialled == [("10.1.2.3", 80), ("127.0.0.1", 80), ("2001:2::1", 80),
                           ("fe80::1", 80), ("172.31.0.1", 80), ("2001:2::7", 80)]
    refused(net, agent, "http://127.0.0.2/", "127.0.0.2", f"127.0.0.2: {network('127.0.0.0/8')}")


@pytest.mark.parametrize("allow, url, dialled", [
    (["127.0.0.1/32"], "http://[::ffff:127.0.0.1]/", v6("::ffff:127.0.0.1")),
    (["10.0.0.0/8"], "http://[::ffff:0:a00:1]/", "::ffff:0:a00:1"),
    (["10.0.0.0/8"], "http://[::a00:1]/", "::a00:1"),
    (["10.0.0.0/8"], "http://[2002:a00:1::]/", "2002:a00:1::"),
    (["10.0.0.1/32"], "http://[64:ff9b::a00:1]/", "64:ff9b::a00:1"),
    (["10.0.0.1/32"], "http://[2001:0:4136:e378:8000:63bf:f5ff:fffe]/",
     "2001:0:4136:e378:8000:63bf:f5ff:fffe"),
    (["64:ff9b:1::/48"], "http://[64:ff9b:1::a00:1]/", "64:ff9b:1::a00:1"),
])
def test_an_embedded_ipv4_address_in_an_allowed_network_is_allowed(net, allow, url, dialled):
    agent = net.agent(allow=allow)
    assert net.get(agent, url) == (200, b"ok /")
    assert net.dialled == [(dialled, 80)]


@pytest.mark.parametrize("allow, url, address, form", [
    (["127.0.0.1/32"], "http://[::ffff:127.0.0.2]/", v6("::ffff:127.0.0.2"), "IPv4-mapped"),
    (["10.0.0.0/8"], "http://[64:ff9b:1::a00:1]/", "64:ff9b:1::a00:1", "NAT64"),
    (["10.0.0.0/8"], "http://[2002:b00:1::]/", "2002:b00:1::", "6to4"),
    (["10.0.0.1/32"], "http://[2001:0:4136:e378:8000:63bf:f5ff:fffd]/",
     "2001:0:4136:e378:8000:63bf:f5ff:fffd", "Teredo"),
    (["8.8.8.0/24"], "http://[64:ff9b::a00:1]/", "64:ff9b::a00:1", "NAT64"),
])
def test_other_embedded_addresses_stay_refused(net, allow, url, address, form):
    agent = net.agent(allow=allow)
    host = url.split("[", 1)[1].split("]", 1)[0]
    refused(net, agent, url, host, f"{address}: {form} {EMBEDS}")


def test_an_allowed_network_of_the_other_family_allows_nothing(net):
    agent = net.agent(allow=["0.0.0.0/0"])
    refused(net, agent, "http://[::1]/", "::1", f"::1: {network('::1/128')}")
    agent = net.agent(allow=["::/0"])
    refused(net, agent, "http://10.0.0.1/", "10.0.0.1", f"10.0.0.1: {network('10.0.0.0/8')}")


def test_a_scoped_link_local_answer_is_checked_and_dialled_as_the_address_checked(net):
    table = {"link.example": ["fe80::1%lo"]}
    refused(net, net.agent(names=table), "http://link.example/", "link.example",
            f"fe80::1%lo: {network('fe80::/10')}")
    agent = net.agent(names=table, allow=["fe80::/10"])
    assert net.get(agent, "http://link.example/") == (200, b"ok /")
    assert net.dialled == [("fe80::1", 80)]


def test_dns_rebinding_is_checked_on_every_connection(net):
    agent = net.agent(names={"rebind.example": [[PUBLIC], ["169.254.169.254"]]})
    assert net.get(agent, "http://rebind.example/a") == (200, b"ok /a")
    refused_after = f"169.254.169.254: {network('169.254.0.0/16')}"
    with pytest.raises(ssrf.BlockedAddress) as info:
        net.get(agent, "http://rebind.example/b")
    assert info.value.args == (refused_after,)
    assert net.names.asked == ["rebind.example", "rebind.example"]
    assert net.dialled == [(PUBLIC, 80)] and net.listener.accepted == 1


def test_connections_are_kept_and_reused_by_default(net):
    agent = net.agent(pool=True)
    assert net.get(agent, "http://public.example/a") == (200, b"ok /a")
    assert net.get(agent, "http://public.example/b") == (200, b"ok /b")
    assert net.listener.accepted == 1 and net.dialled == [(PUBLIC, 80)]
    call_in_reactor(agent._pool.closeCachedConnections)


# -- redirects: off by default; each hop is a new request, checked again --------------------------

def test_redirects_are_not_followed_by_default(net):
    agent = net.agent()
    to = quote("http://169.254.169.254/", safe="")
    code, _ = net.get(agent, f"http://public.example/redirect?to={to}")
    assert code == 302
    assert net.dialled == [(PUBLIC, 80)]


@pytest.mark.parametrize("target, host, why", [
    ("http://169.254.169.254/latest/meta-data/", "169.254.169.254",
     f"169.254.169.254: {network('169.254.0.0/16')}"),
    ("http://127.0.0.2:8080/echo", "127.0.0.2", f"127.0.0.2: {network('127.0.0.0/8')}"),
    ("http://[::ffff:169.254.169.254]/", "::ffff:169.254.169.254",
     f"{v6('::ffff:169.254.169.254')}: IPv4-mapped {EMBEDS}"),
    ("http://2130706434/", "2130706434", f"127.0.0.2: {network('127.0.0.0/8')}"),
    ("http://internal.example/", "internal.example", f"fd00::5: {network('fc00::/7')}"),
    ("http://bad!host/", "bad!host", "not a valid host name"),
])
def test_every_redirect_hop_is_checked_again(net, target, host, why):
    agent = net.agent(max_redirects=3)
    with pytest.raises(ssrf.BlockedAddress) as info:
        net.get(agent, f"http://public.example/redirect?to={quote(target, safe='')}")
    assert type(info.value) is ssrf.BlockedAddress
    assert (info.value.osError, info.value.args) == (host, (why,))
    assert net.dialled == [(PUBLIC, 80)]
    assert net.listener.accepted == 1
    assert net.listener.paths == [f"/redirect?to={quote(target, safe='')}"]


def test_an_allowed_redirect_is_followed(net):
    agent = net.agent(max_redirects=1)
    code, body = net.get(agent, "http://public.example/redirect?to=http://two.example/echo")
    assert (code, body) == (200, b"ok /echo")
    assert net.dialled == [(PUBLIC, 80), (PUBLIC, 80)]


# -- the agent a plugin builds from [ssrf] --------------------------------------------------------

class _Runtime:
    def __init__(self, reactor, **ssrf_settings):
        self.reactor = reactor
        self.config = load_config(environ={}, overrides={"ssrf": ssrf_settings})


def test_agent_for_applies_the_ssrf_section(net):
    runtime = _Runtime(net.dialler, allow_networks=["10.0.0.0/8"],
                       allowed_hosts=["public.example", "10.1.2.3"], max_redirects=1,
                       connect_timeout=2.5)
    agent = call_in_reactor(ssrf.agent_for, runtime, resolver=net.resolver(),
                            pool=HTTPConnectionPool(net.dialler, persistent=False))
    refused(net, agent, "http://two.example/", "two.example",
            "the host is not in ssrf.allowed_hosts")
    assert net.get(agent, "http://10.1.2.3/") == (200, b"ok /")
    assert net.get(agent, "http://public.example/redirect?to=http://10.1.2.3/x") == \
        (200, b"ok /x")
    assert net.dialler.dialled == [("10.1.2.3", 80, 2.5), (PUBLIC, 80, 2.5),
                                   ("10.1.2.3", 80, 2.5)]


# -- the address policy as a plugin may use it directly -------------------------------------------

def test_the_address_policy_answers_for_strings_and_addresses():
    policy = ssrf.AddressPolicy()
    assert policy.refusal("not an address") == "not an IP address"
    assert policy.refusal("fe80::1%eth0") == network("fe80::/10")
    assert policy.refusal(ipaddress.ip_address("10.0.0.1")) == network("10.0.0.0/8")
    assert policy.refusal(ipaddress.ip_address(PUBLIC)) is None
    assert policy.refusal(PUBLIC6) is None
    assert policy.host_refusal("anything.example") is None
    allowing = ssrf.AddressPolicy(allow=[ipaddress.ip_network("10.0.0.0/8"), "fd00::/8"])
    assert allowing.refusal("10.9.9.9") is None and allowing.refusal("fd00::1") is None


def test_the_agent_parts_provide_the_twisted_interfaces_they_are_used_through(net):
    """A plugin may compose them with Twisted's own agents and endpoints."""
    factory = ssrf.FilteringEndpointFactory(net.dialler, ssrf.AddressPolicy(),
                                            net.resolver(), 5.0)
    verifyObject(IAgentEndpointFactory, factory)
    verifyObject(IStreamClientEndpoint, factory.endpointForURI(URI.fromBytes(b"http://a.example/")))
    verifyObject(IStreamClientEndpoint, factory.endpointForURI(URI.fromBytes(b"ftp://a.example/")))
