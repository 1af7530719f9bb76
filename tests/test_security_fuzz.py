"""
Hypothesis: no input to a parser or validator raises anything but a refusal.

The routes, the check chain (validation, signatures, rate limits) and the transform steps run
through the real plugin manager of a composed runtime (on a memory reactor); the sniffer and
the streaming collector, the SSRF address policy, the header probe, the client address
parser and the size-map parser are driven directly.
"""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone

from mediaproxy import imaging
from mediaproxy.http import ssrf
from mediaproxy.builtin.validation import path_refusal
from mediaproxy.config import load_config, parse_size_map
from mediaproxy.http.fetch import SourcePolicy, _Collector, sniff_format
from mediaproxy.models import ImageRequest, Rejection, RequestInfo
from mediaproxy.http.requestinfo import client_address
from mediaproxy.tap import compose


PIECES = ["/", ".", "..", "%", "%2e", "%2E", "%2f", "%5c", "%25", "%00", "%c0%ae", "%ef%bc%8e",
          "\\", ";", ":", "//", "http://", "a", "b.jpg", ".png", "é", "\x00", "\n", " ", "%zz",
          "uploads", "media", "tenant_1", "300", "200", "cover", "centre", "ffffff", "0",
          "80.webp", "%252e", "?", "#", "～", "．"]
paths = st.builds(
    lambda prefix, parts: prefix + "".join(parts),
    st.sampled_from(["/media/", "/media/uploads/", "/static/", "/media_stream-image/media/",
                     "/media_stream-image/media/uploads/", "/", ""]),
    st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=4)), max_size=14))
names = st.one_of(st.sampled_from(["w", "h", "fit", "pos", "bg", "q", "fmt", "enlarge", "trim",
                                   "width", "height", "quality", "format", "background",
                                   "position", "gravity", "sig", "expires", "v"]),
                  st.text(max_size=6))
values = st.one_of(st.sampled_from(["0", "1", "300", "8192", "9999999999", "-1", "1e3", " 5",
                                    "cover", "webp", "auto", "#fff", "transparent", "x" * 43,
                                    ""]), st.text(max_size=12))
queries = st.lists(st.tuples(names, values), max_size=6)


# -- the reference model of a safe source path ---------------------------------------------------
# Written from the rules (mediaproxy.builtin.validation's docstring), not from the code: a
# decoded source path is refused when it is longer than the limit in UTF-8 bytes, or when it, or
# what NFKC makes of it (full-width dots, slashes, percent signs, digits), breaks one of the
# rules of its form. "Control character" is C0 and DEL, in the clear and percent-encoded alike.

_CONTROL_CHARS = {chr(n) for n in range(0x20)} | {"\x7f"}
# A "%" followed by "25" any number of times, then one of these, is an encoded dot, separator or
# control character at some depth of encoding; "%" before anything else is a literal in a name.
_ENCODED_FORBIDDEN = {"2e", "2f", "5c", "7f"} | {f"{n:02x}" for n in range(0x20)}


def _breaks_a_rule(path: str) -> bool:
    if not path.startswith("/"):                      # relative
        return True
    if path.startswith("//") or "://" in path:        # a host or a scheme
        return True
    if any(ch == "\\" or ch in _CONTROL_CHARS for ch in path):   # NUL included
        return True
    for segment in path.split("/"):                   # '..', also as '..;' (Tomcat)
        if segment == ".." or segment.startswith("..;"):
            return True
    lower = path.lower()                              # still encoded after the decoding
    return any(_encoded_forbidden(lower[i + 1:]) for i, ch in enumerate(lower) if ch == "%")


def _encoded_forbidden(after: str) -> bool:
    while True:
        if after[:2] in _ENCODED_FORBIDDEN:
            return True
        if after[:2] != "25":
            return False
        after = after[2:]


def reference_refuses(path: str, max_length: int) -> bool:
    if len(path.encode("utf-8", "surrogatepass")) > max_length:
        return True
    return _breaks_a_rule(path) or _breaks_a_rule(unicodedata.normalize("NFKC", path))


DANGEROUS = ["/", ".", "..", "..;", ";", "%", "%2e", "%2E", "%2f", "%5C", "%25", "%00", "%1f",
             "%7f", "%7F", "%20", "%41", "%zz", "\\", "\x00", "\x1f", "\x7f", "\n", "://",
             ":", "//", "http:", "a", "b.png", "\uff0e", "\uff0f", "\uff05", "\uff12",
             "\uff45", "\uff3c", "\ufe68", "\uff1a", "\u2025", "\u2024", "\u00e9",
             "\u00bd", "\x85", "\u200b", "\uff0e\uff0e", "\uff12\uff45", "\uff12\uff26",
             "\uff05\uff12"]
dangerous_paths = st.builds(
    lambda prefix, parts: prefix + "".join(parts),
    st.sampled_from(["/media/", "/", "", "//", "media/"]),
    st.lists(st.one_of(st.sampled_from(DANGEROUS), st.text(max_size=3)), max_size=12))


@pytest.fixture(scope="module")
def runtime():
    config = load_config(environ={}, overrides={
        "signing": {"keys": ["fuzz-key-0123456789abcdef"], "exempt_routes": ["compat"]},
        "validation": {"unknown_params": "reject"}, "ratelimit": {"ip_rate": 1e6,
                                                                   "ip_burst": 10 ** 6}})
    rt, _, _ = compose(config, MemoryReactorClock(), load_entrypoints=False)
    return rt


@settings(max_examples=400)
@given(path=paths, query=queries, method=st.sampled_from(["GET", "HEAD", "POST"]))
@example(path="/media/%EF%BC%8E%EF%BC%8E;/a.jpg", query=[("w", "10")], method="GET")
@example(path="/media/%EF%BC%85%EF%BC%92%EF%BD%85/a.jpg", query=[("w", "10")], method="GET")
@example(path="/media_stream-image/media/uploads/%EF%BC%8E%EF%BC%8E;/a.jpg/10/10/cover/"
              "centre/ffffff/0/80.webp", query=[], method="GET")
def test_routes_and_the_check_chain_only_ever_refuse(runtime, path, query, method):
    info = RequestInfo(method=method, path=path, query=query, client_ip="192.0.2.1")
    match = runtime.pm.hook.mediaproxy_match_request(request=info, runtime=runtime)
    assert match is None or isinstance(match, (ImageRequest, Rejection))
    if not isinstance(match, ImageRequest):
        return
    checked = runtime.pm.hook.mediaproxy_check_request(image_request=match, request=info,
                                                       runtime=runtime)
    assert checked is None or isinstance(checked, Rejection)
    source = match.source_path
    if reference_refuses(source, 1024):
        # an unsafe path is refused first, whatever else is wrong with the request
        assert isinstance(checked, Rejection)
        assert (checked.status, checked.error, checked.parameter) == (400, "invalid_path",
                                                                      "path")
    if checked is None:
        # Whatever got through is a safe path under an allowed prefix, signed or exempt, with
        # no encoded separator in the raw path of a query-scheme URL.
        assert not reference_refuses(source, 1024)
        assert source.startswith(("/media/", "/static/"))
        assert match.route == "compat" or any(n == "sig" for n, _ in query)
        assert match.route == "compat" or not any(
            code in path.lower() for code in ("%2f", "%5c"))


@settings(max_examples=500)
@given(text=st.one_of(dangerous_paths, st.text(max_size=80)), limit=st.sampled_from([16, 64]))
@example(text="/media/\uff0e\uff0e;/x.png", limit=64)          # NFKC: '..;'
@example(text="/media/\uff05\uff12\uff45/x.png", limit=64)    # NFKC: '%2e'
@example(text="/media/a\uff05\uff12\uff26x.png", limit=64)    # NFKC: '%2F'
@example(text="/media/..;jsessionid=1/x.png", limit=64)
@example(text="/media/" + "a" * 57, limit=64)                  # exactly 64 bytes
@example(text="/media/" + "a" * 56 + "\u00e9", limit=64)       # 64 characters, 65 bytes
def test_path_refusal_agrees_with_the_reference_model(text, limit):
    refusal = path_refusal(text, limit)
    assert refusal is None or (isinstance(refusal, str) and refusal)
    assert (refusal is not None) == reference_refuses(text, limit), refusal


@settings(max_examples=300)
@given(head=st.binary(max_size=40), chunks=st.lists(st.binary(max_size=300), max_size=6),
       formats=st.lists(st.sampled_from(["jpeg", "png", "gif", "webp", "avif", "heif", "tiff",
                                         "bmp"]), max_size=4))
def test_the_streaming_sniffer_only_refuses(head, chunks, formats):
    assert sniff_format(head) in (None, "jpeg", "png", "gif", "webp", "avif", "heif", "tiff",
                                  "bmp")
    policy = SourcePolicy(max_bytes=500, formats=frozenset(formats),
                          format_limits={"png": 100})

    class Transport:
        def stopProducing(self):
            pass

    clock = MemoryReactorClock()
    collector = _Collector(clock, 500, 10.0, policy)
    collector.makeConnection(Transport())
    for chunk in (head, *chunks):
        collector.dataReceived(chunk)
    collector.connectionLost(Failure(ResponseDone()))
    outcome = []
    collector.finished.addBoth(outcome.append)
    result = outcome[0]
    if isinstance(result, Failure):
        assert type(result.value).__name__ in ("_Refused", "_TooLarge")
    else:
        assert sniff_format(result[:12]) in formats and len(result) <= 500


@settings(max_examples=300)
@given(st.one_of(st.text(max_size=50), st.ip_addresses().map(str)))
def test_the_address_policy_is_total(address):
    policy = ssrf.AddressPolicy(allow=("10.0.0.0/8",), hosts=("*.example.com",))
    assert policy.refusal(address) is None or isinstance(policy.refusal(address), str)
    assert policy.host_refusal(address) is None or isinstance(policy.host_refusal(address), str)


@settings(max_examples=200)
@given(st.binary(max_size=2000))
def test_the_header_probe_only_raises_image_errors(data):
    try:
        info = imaging.probe(data)
    except imaging.ImageError:
        return
    assert info.width >= 0 and info.height >= 0


@settings(max_examples=300)
@given(peer=st.text(max_size=20), hops=st.lists(st.text(max_size=30), max_size=4),
       trusted=st.lists(st.sampled_from(["127.0.0.1", "10.0.0.0/8", "::1"]), max_size=2))
def test_client_address_is_total(peer, hops, trusted):
    assert isinstance(client_address(peer, hops, tuple(trusted)), str)


@settings(max_examples=300)
@given(st.lists(st.text(max_size=16), max_size=4))
def test_the_size_map_parser_only_raises_value_errors(items):
    try:
        limits = parse_size_map(tuple(items))
    except ValueError:
        return
    assert all(v >= 1 for v in limits.values())
