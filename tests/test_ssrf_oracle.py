"""
The SSRF guard against an independent oracle: the IANA special-purpose address registries.

The oracle is written here from

* the IANA IPv4 Special-Purpose Address Registry and the IANA IPv6 Special-Purpose Address
  Registry (https://www.iana.org/assignments/iana-ipv4-special-registry/,
  https://www.iana.org/assignments/iana-ipv6-special-registry/): every row with its "Globally
  Reachable" column; an address takes the answer of the most specific row it lies in, and a
  row without a True/False answer (Teredo and 6to4 "N/A", the terminated 192.88.99.0/24 and
  2001:10::/28) is no promise of reachability, so it is refused;
* what the guard's documentation (mediaproxy/ssrf.py, docs/security.md) refuses on top of the
  registry, each rule stated here from that text, not from the code: multicast (224.0.0.0/4,
  ff00::/8) and the deprecated site-local fec0::/10, the whole of 192.0.0.0/24 and ORCHIDv2
  2001:20::/28, and every IPv6 form that embeds an IPv4 address (IPv4-mapped, IPv4-translated,
  IPv4-compatible, 6to4, Teredo, NAT64 64:ff9b::/96 and 64:ff9b:1::/48) unless the embedded
  address is in ``allow_networks``; the embedded address is extracted here with bit arithmetic;
* ``allow_networks``: an address in an allowed network of its own family is allowed.

One registry detail is the interpreter's: the globally reachable sub-blocks of 2001::/23 (the
anycast addresses 2001:1::1-3, AMT 2001:3::/32, AS112 2001:4:112::/48, DETs 2001:30::/28) are
refused by an ipaddress from before the CVE-2024-4032 update (Python < 3.11.10/3.12.4), whose
table has all of 2001::/23 as private. The guard documents that it defers to ipaddress for what
its table does not name, so for those sub-blocks (only) the oracle asks ipaddress too.

Addresses are drawn inside every row, at its edges and just outside them, in the embedding forms
around random IPv4 addresses, and anywhere; each is fetched through the safe agent on the real
reactor either as a literal or as a name that a resolver we control answers with it (alone, or
with a public address before or after it), so the real resolution and checking logic runs; the
harness (tests/test_ssrf_refusals.py) observes ``connectTCP`` and counts the connections a real
loopback listener accepts.
"""

from __future__ import annotations

import ipaddress
import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mediaproxy.http import ssrf

from .test_ssrf_refusals import Net

V4, V6 = ipaddress.IPv4Network, ipaddress.IPv6Network

# (block, globally reachable): True, False, or None for "N/A" / terminated.
IANA_V4 = [
    ("0.0.0.0/8", False), ("0.0.0.0/32", False), ("10.0.0.0/8", False),
    ("100.64.0.0/10", False), ("127.0.0.0/8", False), ("169.254.0.0/16", False),
    ("172.16.0.0/12", False), ("192.0.0.0/24", False), ("192.0.0.0/29", False),
    ("192.0.0.8/32", False), ("192.0.0.9/32", True), ("192.0.0.10/32", True),
    ("192.0.0.170/32", False), ("192.0.0.171/32", False), ("192.0.2.0/24", False),
    ("192.31.196.0/24", True), ("192.52.193.0/24", True), ("192.88.99.0/24", None),
    ("192.88.99.2/32", False), ("192.168.0.0/16", False), ("192.175.48.0/24", True),
    ("198.18.0.0/15", False), ("198.51.100.0/24", False), ("203.0.113.0/24", False),
    ("240.0.0.0/4", False), ("255.255.255.255/32", False),
]
IANA_V6 = [
    ("::1/128", False), ("::/128", False), ("::ffff:0:0/96", False), ("64:ff9b::/96", True),
    ("64:ff9b:1::/48", False), ("100::/64", False), ("100:0:0:1::/64", False),
    ("2001::/23", False), ("2001::/32", None), ("2001:1::1/128", True),
    ("2001:1::2/128", True), ("2001:1::3/128", True), ("2001:2::/48", False),
    ("2001:3::/32", True), ("2001:4:112::/48", True), ("2001:10::/28", None),
    ("2001:20::/28", True), ("2001:30::/28", True), ("2001:db8::/32", False),
    ("2002::/16", None), ("2620:4f:8000::/48", True), ("3fff::/20", False),
    ("5f00::/16", False), ("fc00::/7", False), ("fe80::/10", False),
]
REGISTRY = [(ipaddress.ip_network(block), reachable) for block, reachable in IANA_V4 + IANA_V6]

# Refused by the guard's documented policy although the registry says reachable or says nothing.
ALSO_REFUSED = [ipaddress.ip_network(n) for n in (
    "224.0.0.0/4", "ff00::/8", "fec0::/10", "192.0.0.0/24", "2001:20::/28")]

# The reachable sub-blocks of 2001::/23 that an ipaddress from before CVE-2024-4032 calls private.
DEFERRED = [ipaddress.ip_network(n) for n in (
    "2001:1::1/128", "2001:1::2/128", "2001:1::3/128", "2001:3::/32", "2001:4:112::/48",
    "2001:30::/28")]

PUBLIC = "93.184.216.34"
LOW32 = (1 << 32) - 1


def embedded(ip: ipaddress.IPv6Address):
    """(form, embedded IPv4 or None) for the IPv4-embedding IPv6 forms, from the bits."""
    n = int(ip)
    low = ipaddress.IPv4Address(n & LOW32)
    if n >> 32 == 0xFFFF:                                   # ::ffff:a.b.c.d
        return "IPv4-mapped", low
    if n >> 32 == 0xFFFF_0000:                              # ::ffff:0:a.b.c.d
        return "IPv4-translated", low
    if n >> 32 == 0 and n > 1:                              # ::a.b.c.d (not :: and ::1)
        return "IPv4-compatible", low
    if n >> 112 == 0x2002:                                  # 2002:AABB:CCDD::/48
        return "6to4", ipaddress.IPv4Address((n >> 80) & LOW32)
    if n >> 96 == 0x2001_0000:                              # Teredo: the client, inverted
        return "Teredo", ipaddress.IPv4Address(~n & LOW32)
    if n >> 32 == 0x0064_FF9B << 64:                        # 64:ff9b::a.b.c.d
        return "NAT64", low
    if n >> 80 == 0x0064_FF9B_0001:                         # 64:ff9b:1::/48, local use
        return "NAT64", None
    return None


def registry_reachable(ip) -> bool:
    rows = [(net, ok) for net, ok in REGISTRY if net.version == ip.version and ip in net]
    if any(ip in net for net in ALSO_REFUSED if net.version == ip.version):
        return False
    if any(ip in net for net in DEFERRED if net.version == ip.version):
        return not ip.is_private
    if not rows:
        return True
    _, answer = max(rows, key=lambda row: row[0].prefixlen)
    return answer is True


def oracle_allows(ip, allow) -> bool:
    if any(ip in net for net in allow if net.version == ip.version):
        return True
    if ip.version == 6:
        form = embedded(ip)
        if form is not None:
            v4 = form[1]
            return v4 is not None and any(v4 in net for net in allow if net.version == 4)
    return registry_reachable(ip)


# -- the oracle itself, against the registries' own examples --------------------------------------

@pytest.mark.parametrize("address, allowed", [
    ("8.8.8.8", True), ("192.0.0.9", False), ("192.31.196.1", True), ("192.88.99.2", False),
    ("224.0.0.1", False), ("2001:4860::1", True), ("2001:2::1", False), ("2001:30::1", None),
    ("2620:4f:8000::1", True), ("5f00::1", False), ("3fff::1", False), ("64:ff9b::808:808", False),
    ("2001:0:4136:e378:8000:63bf:f5ff:fffe", False), ("::ffff:8.8.8.8", False),
])
def test_the_oracle_reads_the_registry(address, allowed):
    ip = ipaddress.ip_address(address)
    if allowed is None:     # interpreter-dependent (see the module docstring)
        allowed = not ip.is_private
    assert oracle_allows(ip, ()) is allowed


def test_the_embedded_forms_are_read_from_the_bits():
    assert embedded(ipaddress.IPv6Address("::ffff:10.0.0.1")) == ("IPv4-mapped",
                                                                  ipaddress.IPv4Address("10.0.0.1"))
    assert embedded(ipaddress.IPv6Address("2002:a00:1::5")) == ("6to4",
                                                                ipaddress.IPv4Address("10.0.0.1"))
    assert embedded(ipaddress.IPv6Address("2001:0:4136:e378:8000:63bf:f5ff:fffe")) == \
        ("Teredo", ipaddress.IPv4Address("10.0.0.1"))
    assert embedded(ipaddress.IPv6Address("64:ff9b::a00:1"))[1] == ipaddress.IPv4Address("10.0.0.1")
    assert embedded(ipaddress.IPv6Address("::1")) is None


# -- strategies -----------------------------------------------------------------------------------

def inside(net) -> st.SearchStrategy:
    first, last = int(net.network_address), int(net.broadcast_address)
    top = (1 << net.max_prefixlen) - 1
    edges = [first, last, max(first - 1, 0), min(last + 1, top)]
    return st.one_of(st.sampled_from(edges), st.integers(first, last)).map(
        lambda n: ipaddress.ip_address(n) if net.version == 4 else ipaddress.IPv6Address(n))


ROWS = [net for net, _ in REGISTRY] + ALSO_REFUSED + [
    V6("::/96"), V6("::ffff:0:0:0/96"), V6("2000::/3"), V4("0.0.0.0/0")]

any_v4 = st.integers(0, LOW32).map(ipaddress.IPv4Address)
interesting_v4 = st.one_of(any_v4, st.sampled_from([
    ipaddress.IPv4Address(a) for a in ("127.0.0.1", "10.0.0.1", "169.254.169.254", "8.8.8.8",
                                       "0.0.0.0", "0.0.0.1", "255.255.255.255", PUBLIC)]))

embedding_forms = st.one_of(
    interesting_v4.map(lambda v4: ipaddress.IPv6Address((0xFFFF << 32) | int(v4))),
    interesting_v4.map(lambda v4: ipaddress.IPv6Address((0xFFFF_0000 << 32) | int(v4))),
    interesting_v4.map(lambda v4: ipaddress.IPv6Address(int(v4))),
    st.tuples(interesting_v4, st.integers(0, (1 << 80) - 1)).map(
        lambda t: ipaddress.IPv6Address((0x2002 << 112) | (int(t[0]) << 80) | t[1])),
    st.tuples(interesting_v4, st.integers(0, (1 << 64) - 1)).map(
        lambda t: ipaddress.IPv6Address((0x2001_0000 << 96) | (t[1] << 32) |
                                        (~int(t[0]) & LOW32))),
    interesting_v4.map(lambda v4: ipaddress.IPv6Address((0x0064_FF9B << 96) | int(v4))),
    st.integers(0, (1 << 80) - 1).map(
        lambda n: ipaddress.IPv6Address((0x0064_FF9B_0001 << 80) | n)),
)

addresses = st.one_of(st.sampled_from(ROWS).flatmap(inside), embedding_forms,
                      st.ip_addresses())


@st.composite
def allow_lists(draw, ip):
    """No allowance, or networks around the address, around its embedded IPv4 address, or
    elsewhere."""
    choices = []
    for _ in range(draw(st.integers(0, 2))):
        kind = draw(st.sampled_from(["around", "embedded", "other"]))
        target = ip
        if kind == "embedded":
            form = embedded(ip) if ip.version == 6 else None
            target = form[1] if form and form[1] is not None else draw(any_v4)
        elif kind == "other":
            target = draw(st.ip_addresses())
        prefix = draw(st.integers(target.max_prefixlen // 2, target.max_prefixlen))
        choices.append(ipaddress.ip_network(f"{target}/{prefix}", strict=False))
    return choices


def url_host(ip) -> str:
    return f"[{ip}]" if ip.version == 6 else str(ip)


@pytest.fixture(scope="module")
def net(live_reactor):
    n = Net(live_reactor)
    yield n
    n.close()


# -- the check ------------------------------------------------------------------------------------

_serial = itertools.count()


def check(net, ip, allow, delivery):
    """Fetch ``ip`` (as a literal or through a name) with ``allow``; the guard's answer and what
    was dialled must be the oracle's."""
    expected = oracle_allows(ip, allow)
    public = ipaddress.ip_address(PUBLIC)
    assert oracle_allows(public, allow)
    name = f"h{next(_serial)}.example"
    answers = {"literal": [], "name": [ip], "name+public": [ip, public],
               "public+name": [public, ip]}[delivery]
    host = url_host(ip) if delivery == "literal" else name
    agent = net.agent(names={name: [str(a) for a in answers]}, allow=[str(n) for n in allow])
    before = (len(net.dialler.dialled), net.listener.accepted)
    try:
        outcome = net.get(agent, f"http://{host}:8080/p")
    except ssrf.BlockedAddress as e:
        outcome = e
    dialled = [(h, p) for h, p, _ in net.dialler.dialled[before[0]:]]
    accepted = net.listener.accepted - before[1]
    if expected:
        first = public if delivery == "public+name" else ip
        assert outcome == (200, b"ok /p"), (str(ip), allow, outcome)
        assert dialled == [(str(first), 8080)] and accepted == 1
    else:
        assert type(outcome) is ssrf.BlockedAddress, (str(ip), allow, outcome)
        assert outcome.osError == (host.strip("[]") if delivery == "literal" else name)
        assert ipaddress.ip_address(outcome.args[0].split(": ", 1)[0]) == ip
        assert dialled == [] and accepted == 0, (str(ip), allow, dialled)
    # a literal is checked as it is, a name resolved once
    assert net.names.asked == ([] if delivery == "literal" else [name])


def edges(net):
    first, last = int(net.network_address), int(net.broadcast_address)
    top = (1 << net.max_prefixlen) - 1
    kind = ipaddress.IPv4Address if net.version == 4 else ipaddress.IPv6Address
    return [kind(n) for n in sorted({first, (first + last) // 2, last, max(first - 1, 0),
                                     min(last + 1, top)})]


@pytest.mark.parametrize("row", ROWS, ids=str)
def test_every_row_at_its_edges_and_middle(net, row):
    for ip, delivery in itertools.product(edges(row), ["literal", "name"]):
        check(net, ip, (), delivery)


# -- the property ---------------------------------------------------------------------------------

@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), ip=addresses,
       delivery=st.sampled_from(["literal", "name", "name+public", "public+name"]))
def test_allowed_or_refused_as_the_registry_says(net, data, ip, delivery):
    check(net, ip, data.draw(allow_lists(ip), label="allow"), delivery)
