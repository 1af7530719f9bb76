"""
What the hook contract promises a plugin author, over HTTP against a real origin:

* the check chain runs in the core, before ``mediaproxy_handle_image``: a plugin that takes
  over the image protocol cannot skip validation, signatures or rate limits;
* ``mediaproxy_admit_transform`` is asked only by a request about to start a transform, and
  its refusal is the answer (no fetch);
* ``mediaproxy_check_passthrough`` can refuse a pass-through request before the backend sees it.
"""

from __future__ import annotations

import json

from twisted.internet.defer import succeed

from mediaproxy import ImageResponse, Rejection, hookimpl
from mediaproxy.testing import ImageOrigin, make_image, start_proxy


PHOTO = "/media/uploads/photo.jpg"


def origin_with_photo():
    return ImageOrigin({PHOTO: (200, make_image((400, 300)), "image/jpeg", [])})


class TakeOver:
    """A plugin that answers every image request itself, first."""

    def __init__(self):
        self.asked = []

    @hookimpl(tryfirst=True)
    def mediaproxy_handle_image(self, image_request, request, runtime):
        self.asked.append(dict(image_request.params))
        return succeed(ImageResponse(status=200, body=b"taken over", content_type="image/png"))


def error_of(body: bytes) -> tuple[str, str | None]:
    data = json.loads(body)
    return data["error"], data["parameter"]


def test_a_plugin_that_takes_over_the_protocol_still_gets_only_checked_requests():
    plugin = TakeOver()
    proxy = start_proxy(origin=origin_with_photo(), plugins=[plugin], overrides={
        "limits": {"max_width": 1000},
        "ratelimit": {"exempt": [], "ip_rate": 0.001, "ip_burst": 2}})
    try:
        status, _, body, _ = proxy.get(f"{PHOTO}?w=300")
        assert (status, body) == (200, b"taken over")          # the take-over works...
        status, _, body, _ = proxy.get(f"{PHOTO}?w=1001")
        assert (status, error_of(body)) == (400, ("invalid_parameter", "w"))   # ...validation
        status, _, body, _ = proxy.get("/media/../etc/passwd.jpg?w=10")
        assert status == 400 and error_of(body)[0] == "invalid_path"
        status, _, body, _ = proxy.get(f"{PHOTO}?w=301")
        assert status == 200                                    # the second token of 2
        status, headers, body, _ = proxy.get(f"{PHOTO}?w=302")
        assert (status, error_of(body)[0]) == (429, "rate_limited")  # ...and the rate limit
        assert "retry-after" in headers
        assert [p["w"] for p in plugin.asked] == [300, 301]
        assert proxy.origin.hits[PHOTO] == 0
    finally:
        proxy.stop()


def test_a_plugin_that_takes_over_the_protocol_cannot_skip_the_signature():
    plugin = TakeOver()
    proxy = start_proxy(origin=origin_with_photo(), plugins=[plugin], overrides={
        "signing": {"keys": ["a-signing-key-of-enough-length-0123"]}})
    try:
        status, _, body, _ = proxy.get(f"{PHOTO}?w=300")
        assert status == 403 and error_of(body)[0] == "signature_required"
        assert plugin.asked == []
    finally:
        proxy.stop()


class Quota:
    """A third-party limiter: admits ``allowance`` transforms, then refuses with 402."""

    def __init__(self, allowance: int):
        self.allowance = allowance
        self.asked = 0

    @hookimpl
    def mediaproxy_admit_transform(self, image_request, request, runtime):
        self.asked += 1
        if self.allowance <= 0:
            return Rejection(402, "quota_exceeded", "the transform quota is used up")
        self.allowance -= 1
        return None


def test_admission_is_asked_once_per_transform_and_its_refusal_is_the_answer():
    quota = Quota(allowance=1)
    proxy = start_proxy(origin=origin_with_photo(), plugins=[quota])
    try:
        status, headers, _, _ = proxy.get(f"{PHOTO}?w=200")
        assert (status, headers["x-cache"]) == (200, "MISS")
        assert proxy.origin.hits[PHOTO] == 1
        status, headers, _, _ = proxy.get(f"{PHOTO}?w=200")      # a hit is never asked
        assert (status, headers["x-cache"]) == (200, "HIT-MEMORY")
        assert quota.asked == 1
        status, _, body, _ = proxy.get(f"{PHOTO}?w=100")         # a new variant is refused
        assert (status, error_of(body)[0]) == (402, "quota_exceeded")
        assert quota.asked == 2
        assert proxy.origin.hits[PHOTO] == 1                      # nothing fetched for it
    finally:
        proxy.stop()


class Gate:
    """Refuses pass-through POSTs; lets everything else through."""

    @hookimpl
    def mediaproxy_check_passthrough(self, request, runtime):
        if request.method == "POST":
            return Rejection(403, "read_only", "this edge is read-only",
                             headers=[("X-Gate", "closed")])
        return None


def test_a_passthrough_check_refuses_before_the_backend_sees_the_request():
    origin = ImageOrigin({"/page": (200, b"hello", "text/plain", [])})
    origin.render_POST = origin.render_GET
    proxy = start_proxy(origin=origin, plugins=[Gate()])
    try:
        status, headers, body, _ = proxy.request("POST", "/page", body=b"x=1")
        assert (status, error_of(body)[0], headers["x-gate"]) == (403, "read_only", "closed")
        assert headers["x-correlation-id"] == json.loads(body)["correlation_id"]
        assert origin.hits["/page"] == 0
        status, _, body, _ = proxy.get("/page")
        assert (status, body, origin.hits["/page"]) == (200, b"hello", 1)
    finally:
        proxy.stop()


def test_a_third_party_refusal_of_a_transform_costs_no_rate_limit_token():
    # The built-in limiter answers mediaproxy_admit_transform last (trylast): a quota plugin
    # that refuses first leaves the client's one transform token for the next request.
    quota = Quota(allowance=0)
    proxy = start_proxy(origin=origin_with_photo(), plugins=[quota], overrides={
        "ratelimit": {"exempt": [], "ip_transform_rate": 0.001, "ip_transform_burst": 1}})
    try:
        status, _, body, _ = proxy.get(f"{PHOTO}?w=100")
        assert (status, error_of(body)[0]) == (402, "quota_exceeded")
        quota.allowance = 2
        status, headers, _, _ = proxy.get(f"{PHOTO}?w=200")
        assert (status, headers["x-cache"]) == (200, "MISS")      # the token was still there
        status, _, body, _ = proxy.get(f"{PHOTO}?w=300")
        assert (status, error_of(body)[0]) == (429, "rate_limited")   # and now it is spent
    finally:
        proxy.stop()


def test_a_third_party_refusal_of_a_passthrough_costs_no_rate_limit_token():
    origin = ImageOrigin({"/page": (200, b"hello", "text/plain", [])})
    origin.render_POST = origin.render_GET
    proxy = start_proxy(origin=origin, plugins=[Gate()], overrides={
        "ratelimit": {"exempt": [], "passthrough_rate": 0.001, "passthrough_burst": 1}})
    try:
        assert proxy.request("POST", "/page", body=b"x=1")[0] == 403    # the gate, first
        assert proxy.get("/page")[0] == 200                              # the one token
        status, _, body, _ = proxy.get("/page")
        assert (status, error_of(body)[0]) == (429, "rate_limited")
    finally:
        proxy.stop()
