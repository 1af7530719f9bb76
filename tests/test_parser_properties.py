"""
Property tests of the parsers the other property files leave out, each against an oracle
written from the specification, not from the code: ``Accept`` negotiation (``fmt=auto``),
``If-None-Match`` (RFC 9110 weak comparison), signed URLs (what the signature covers), the
config's environment overrides (an unusable value names its key) and the query scheme's
numbers (the ranges of docs/user-guide.md).
"""

from __future__ import annotations

import string
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mediaproxy.builtin import routing
from mediaproxy.builtin.signing import Signer, sign_url
from mediaproxy.config import ConfigError, iter_settings, load_config
from mediaproxy.imaging.negotiation import negotiate_format
from mediaproxy.models import ImageRequest, Rejection, RequestInfo
from mediaproxy.resource import etag_matches
from mediaproxy.testing.runtime import make_runtime

# -- Accept negotiation -----------------------------------------------------------------------

MEDIA = ["image/avif", "image/webp", "image/png", "image/jpeg", "image/*", "*/*", "text/html"]
#: RFC 9110 12.4.2: qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )
qvalues = st.one_of(st.just("1"), st.just("1.0"), st.just("0"),
                    st.integers(0, 999).map(lambda n: f"0.{n:03d}".rstrip("0") or "0"))


def random_case(text: str, flips: list[bool]) -> str:
    return "".join(c.upper() if flip else c for c, flip in zip(text, flips + [False] * len(text)))


@st.composite
def accept_headers(draw):
    """A well-formed Accept header of distinct media ranges, and each range's q (1 if absent)."""
    chosen = draw(st.lists(st.sampled_from(MEDIA), unique=True, max_size=len(MEDIA)))
    parts, q_of = [], {}
    for media in chosen:
        q = draw(st.one_of(st.none(), qvalues))
        spelled = random_case(media, draw(st.lists(st.booleans(), max_size=len(media))))
        space = draw(st.sampled_from(["", " "]))
        parts.append(spelled if q is None else f"{spelled}{space};{space}q={q}")
        q_of[media] = 1.0 if q is None else float(q)
    return draw(st.sampled_from([",", ", "])).join(parts), q_of


@given(accept_headers())
def test_auto_picks_avif_then_webp_when_named_with_a_positive_q(generated):
    header, q_of = generated
    webp = q_of.get("image/webp", 0) > 0
    # AVIF carries a still; an animation becomes an animated WebP, or a GIF without WebP
    expected = (("avif~webp" if webp else "avif~gif") if q_of.get("image/avif", 0) > 0
                else "webp" if webp else None)
    assert negotiate_format("auto", header) == (expected, True)


@given(st.one_of(st.none(), st.text(max_size=60)),
       st.sampled_from([None, "jpeg", "png", "webp", "avif", "gif"]))
def test_negotiation_is_total_and_only_auto_varies(accept, requested):
    fmt, varies = negotiate_format(requested, accept)
    if requested != "auto":
        assert (fmt, varies) == (requested, False)
    else:
        assert fmt in (None, "avif~webp", "avif~gif", "webp") and varies


# -- If-None-Match ----------------------------------------------------------------------------

#: etagc (RFC 9110 8.8.3) without DQUOTE; a comma is legal inside a tag but the list split
#: treats it as a separator, so tags here are drawn without it (see the test below).
ETAGC = "".join(c for c in string.printable if c not in '"\\, \t\r\n\x0b\x0c')
opaque = st.text(alphabet=ETAGC, max_size=12)


@st.composite
def entity_tags(draw):
    value = draw(opaque)
    return value, ("W/" if draw(st.booleans()) else "") + f'"{value}"'


@given(st.lists(entity_tags(), max_size=5), entity_tags(), st.sampled_from([",", ", ", " , "]))
def test_if_none_match_is_the_weak_comparison(listed, current, separator):
    header = separator.join(tag for _, tag in listed)
    expected = any(value == current[0] for value, _ in listed)
    assert etag_matches(header, current[1]) is expected


@given(st.text(max_size=60), entity_tags())
def test_if_none_match_is_total(header, current):
    assert etag_matches(header, current[1]) in (True, False)
    assert etag_matches(" * ", current[1]) is True


# -- signed URLs ------------------------------------------------------------------------------

KEY = "k" * 32
SIGNER = Signer(make_runtime({"signing": {"keys": [KEY]}}))
KNOWN = sorted(SIGNER.known)
path_text = st.text(alphabet=string.ascii_letters + string.digits + "-_.~", min_size=1,
                    max_size=16)
values = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=8)


@st.composite
def signed(draw):
    path = "/media/" + "/".join(draw(st.lists(path_text, min_size=1, max_size=3))) + ".jpg"
    names = draw(st.lists(st.sampled_from(KNOWN), unique=True, min_size=1, max_size=4))
    query = [(name, draw(values)) for name in names]
    url = sign_url(f"{path}?{urlencode(query)}", "query", SIGNER.known, KEY)
    parts = urlsplit(url)
    return parts.path, parse_qsl(parts.query, keep_blank_values=True)


def verify(path, query):
    return SIGNER.verify("query", RequestInfo(method="GET", path=path, query=query), now=0.0)


@settings(max_examples=60)
@given(signed(), st.randoms(use_true_random=False))
def test_a_signed_url_verifies_in_any_parameter_order(url, rnd):
    path, query = url
    shuffled = list(query)
    rnd.shuffle(shuffled)
    assert verify(path, shuffled) is None


@settings(max_examples=60)
@given(signed(), st.text(alphabet=string.ascii_lowercase, min_size=3, max_size=8), values)
def test_unknown_parameters_are_outside_the_signature(url, name, value):
    path, query = url
    if name in SIGNER.known:
        return
    assert verify(path, [*query, (name, value)]) is None


@settings(max_examples=60)
@given(signed(), st.data())
def test_changing_any_signed_value_or_the_path_is_refused(url, data):
    path, query = url
    signed_at = [i for i, (name, _) in enumerate(query) if name != "sig"]
    at = data.draw(st.sampled_from(signed_at))
    name, value = query[at]
    other = data.draw(values.filter(lambda v: v != value))
    tampered = [*query[:at], (name, other), *query[at + 1:]]
    assert verify(path, tampered).error == "invalid_signature"
    assert verify(path + "x", query).error == "invalid_signature"


# -- config environment overrides -------------------------------------------------------------

TYPED = [key for key, field in iter_settings()
         if field.metadata.get("kind") in ("int", "float", "bool")]


@pytest.mark.parametrize("kind", ["int", "float", "bool"])
def test_every_value_kind_is_drawn_from(kind):
    assert any(f.metadata.get("kind") == kind for _, f in iter_settings())


@given(st.sampled_from(TYPED), st.text(alphabet=string.ascii_letters + " -", max_size=10))
def test_an_unusable_environment_value_names_its_key(key, text):
    value = "x-" + text                     # never a number, a size or a boolean
    environ = {"MEDIAPROXY_" + key.upper().replace(".", "__"): value}
    with pytest.raises(ConfigError) as raised:
        load_config(environ=environ)
    assert key in str(raised.value)


# -- the query scheme's numbers ---------------------------------------------------------------

#: The ranges of docs/user-guide.md "The query scheme" with the default limits; each parameter
#: with one of its spellings and a companion that keeps the request a transform.
NUMBERS = {"w": (0, 8192, "h"), "width": (0, 8192, "h"), "h": (0, 8192, "w"),
           "height": (0, 8192, "w"), "q": (1, 100, "w"), "quality": (1, 100, "w"),
           "trim": (0, 100, "w")}
CANONICAL = {"width": "w", "height": "h", "quality": "q"}
ROUTING = make_runtime()


@given(st.sampled_from(sorted(NUMBERS)),
       st.one_of(st.integers(-50, 20_000).map(str),
                 st.integers(0, 200).map(lambda n: f"00{n}"),
                 st.integers(0, 200).map(lambda n: f"+{n}"),
                 st.text(alphabet="0123456789.e- x", max_size=6)))
def test_a_number_is_accepted_exactly_when_it_is_digits_within_its_range(name, text):
    low, high, companion = NUMBERS[name]
    result = routing.mediaproxy_match_request(
        RequestInfo(method="GET", path="/media/a.jpg", query=[(companion, "10"), (name, text)]),
        ROUTING)
    digits = text.strip()
    valid = digits.isascii() and digits.isdigit() and len(digits) <= 9 and \
        low <= int(digits) <= high
    if valid:
        assert isinstance(result, ImageRequest)
        assert result.params[CANONICAL.get(name, name)] == int(digits)
    else:
        assert isinstance(result, Rejection)
        assert (result.status, result.parameter) == (400, CANONICAL.get(name, name))
