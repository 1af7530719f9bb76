"""The metrics against a real scrape: a real proxy (memory, a real Redis and a file layer), real
requests on loopback (hits, a miss, a refusal, pass-through, backend 404/500/503, a retry, a
breaker opening, a rate-limit refusal, a coalesced wait), then ``/metrics`` read over a socket
and parsed with prometheus-client's own text parser: each series moved exactly as the requests
say. And the reference table of docs/operations.md against the same kind of scrape, both ways.
"""

from __future__ import annotations

import re
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from mediaproxy.cache.layered import find_layer
from mediaproxy.testing import ImageOrigin, make_image, start_proxy, wait_for

DOCS = Path(__file__).resolve().parent.parent / "docs" / "operations.md"

#: Documented series a scrape of the proxy below does not show, and why. (The alerts plugin is
#: on by default, so its mediaproxy_alert_firing is scraped too.)
DOCUMENTED_ELSEWHERE = {
    # exported only by the supervisor of server.workers > 1 (the collection of its workers'
    # metrics); tests/test_workers_observability.py reads them
    "mediaproxy_workers", "mediaproxy_workers_scrape_errors_total",
    "mediaproxy_workers_restarts_total", "mediaproxy_worker_recycles_total",
}




def monitoring_url(running, path="/metrics"):
    svc = next(s for s in running.services if getattr(s, "what", "").startswith("monitoring"))
    return f"http://127.0.0.1:{svc.port.getHost().port}{path}"


def scrape(running) -> dict:
    """{family name: family} of a real scrape (counters named without ``_total``, as the
    parser gives them)."""
    text = urllib.request.urlopen(monitoring_url(running), timeout=10).read().decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def value(families, name, suffix="", **labels):
    """The value of the sample ``name + suffix`` with exactly ``labels`` (not counting
    ``le``), or None."""
    for sample in families[name].samples:
        if sample.name == name + suffix and sample.labels == labels:
            return sample.value
    return None


IMAGE = make_image((300, 200))


def test_every_series_moves_as_the_requests_say(redis_server, tmp_path):
    origin = ImageOrigin({
        "/media/a.jpg": IMAGE,
        "/media/slow.jpg": IMAGE,
        "/media/broken.jpg": (500, b"boom", "text/plain", []),
        "/media/busy.jpg": (503, b"busy", "text/plain", []),
        "/page": (200, b"hello", "text/plain", []),
    })
    origin.hold("/media/slow.jpg")   # a second request joins the first one's render
    overrides = {
        "monitoring": {"listen": "tcp:0:interface=127.0.0.1"},
        "cache": {"redis": {"url": redis_server.url}, "file": {"dir": str(tmp_path / "files")}},
        # one retry, at once; the image breaker opens on the third failure in a row and stays
        # open for the scrape
        "backend": {"retries": 1, "retry_backoff": 0, "retry_backoff_max": 0,
                    "image_breaker": {"consecutive_failures": 3, "open_for": 600}},
        # nine image requests get their per-request token, the tenth is refused
        "ratelimit": {"ip_rate": 0.001, "ip_burst": 9, "adaptive": False, "exempt": []},
    }
    with start_proxy(origin=origin, overrides=overrides) as proxy:
        wait_for(lambda: proxy.runtime.redis.healthy, 10, "connected to Redis")
        a = "/media/a.jpg?w=100&fmt=jpeg"
        assert proxy.get(a).headers["x-cache"] == "MISS"                      # 1
        assert proxy.get(a).headers["x-cache"] == "HIT-MEMORY"                # 2
        redis, files = find_layer(proxy.runtime, "redis"), find_layer(proxy.runtime, "file")
        wait_for(lambda: redis.stats()["stores"] == 1, 10, "the result stored in Redis")
        find_layer(proxy.runtime, "memory").purge("")   # forget it here, not in Redis
        assert proxy.get(a).headers["x-cache"] == "HIT-REDIS"                 # 3
        assert proxy.get("/media/a.jpg?w=abc").status == 400                  # refused early
        page = proxy.get("/page")
        posted = proxy.request("POST", "/page", body=b"x" * 1000)
        nothing = proxy.get("/nothing-here")
        assert (page.status, posted.status, nothing.status) == (200, 405, 404)
        assert proxy.get("/media/none.jpg?w=10&fmt=jpeg").status == 404       # 4: placeholder

        # two requests for one variant: the second waits for the first one's render
        slow = "/media/slow.jpg?w=50&fmt=jpeg"
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(proxy.get, slow)                              # 5
            wait_for(lambda: origin.hits["/media/slow.jpg"] == 1, 10, "the first fetch")
            second = pool.submit(proxy.get, slow)                             # 6
            counters = proxy.runtime.pm.get_plugin("mediaproxy.builtin.metrics.counters")
            wait_for(lambda: counters.count("coalesced") == 1, 10, "the second one waiting")
            origin.release()
            assert first.result(timeout=10).status == 200
            assert second.result(timeout=10).status == 200

        # 503 twice (a retry), then 500 once: three failures in a row open the image breaker
        assert proxy.get("/media/busy.jpg?w=10&fmt=jpeg").status == 502       # 7
        assert origin.hits["/media/busy.jpg"] == 2
        assert proxy.get("/media/broken.jpg?w=10&fmt=jpeg").status == 502     # 8
        assert proxy.runtime.breakers()["images"].state == "open"
        assert proxy.get("/media/a.jpg?w=100&fmt=jpeg").status == 200         # (hit, token 9)

        assert proxy.get("/media/a.jpg?w=100&fmt=jpeg").status == 429

        # the results and their originals (the source cache keeps them in the file layer)
        wait_for(lambda: files.stats()["items"] == 4 and redis.stats()["stores"] == 2, 10,
                 "every store done")
        m = scrape(proxy)

    def requests(kind, method, status):
        return value(m, "mediaproxy_http_requests", "_total", kind=kind, method=method,
                     status=status)

    assert requests("image", "GET", "2xx") == 6        # a (miss, memory, redis, last), slow x2
    assert requests("image", "GET", "4xx") == 3        # w=abc, the placeholder 404, the 429
    assert requests("image", "GET", "5xx") == 2        # busy, broken (502 placeholders)
    assert requests("passthrough", "GET", "2xx") == 1
    assert requests("passthrough", "GET", "4xx") == 1
    assert requests("passthrough", "POST", "4xx") == 1
    assert value(m, "mediaproxy_http_request_duration_seconds", "_count", kind="image") == 11
    assert value(m, "mediaproxy_http_request_duration_seconds", "_count",
                 kind="passthrough") == 3
    assert value(m, "mediaproxy_http_request_bytes", "_total", kind="passthrough") == 1000
    assert value(m, "mediaproxy_http_request_bytes", "_total", kind="image") == 0
    assert value(m, "mediaproxy_http_response_bytes", "_total", kind="passthrough") == \
        len(page.body) + len(posted.body) + len(nothing.body)
    assert value(m, "mediaproxy_http_response_bytes", "_total", kind="image") > 0
    assert value(m, "mediaproxy_http_requests_in_flight", kind="image") == 0

    # the cache, as a whole and per layer
    assert value(m, "mediaproxy_cache_lookups", "_total", result="hit") == 3   # memory, redis, last
    assert value(m, "mediaproxy_cache_lookups", "_total", result="miss") == 6
    assert value(m, "mediaproxy_cache_lookups", "_total", result="stale") == 0
    # per layer: a render looks the key up twice (before and under the coalescing lock), the
    # second slow request once; a layer is asked only when the faster ones missed
    reads = {"memory": (2, 12), "redis": (1, 11), "file": (0, 11)}
    assert value(m, "mediaproxy_cache_errors", "_total", layer="redis", op="get") is None
    for layer, (hits, misses) in reads.items():
        assert value(m, "mediaproxy_cache_hits", "_total", layer=layer) == hits, layer
        assert value(m, "mediaproxy_cache_misses", "_total", layer=layer) == misses, layer
        assert value(m, "mediaproxy_cache_operation_seconds", "_count", layer=layer,
                     op="read") == hits + misses, layer
    assert value(m, "mediaproxy_coalesced_waiters", "_total") == 1
    assert value(m, "mediaproxy_cache_items", layer="file") == 4
    assert value(m, "mediaproxy_cache_dir_used_bytes") == \
        value(m, "mediaproxy_cache_bytes", layer="file") > 0
    assert value(m, "mediaproxy_cache_dir_free_bytes") > 0
    assert value(m, "mediaproxy_cache_evictions", "_total", layer="memory") == 0
    # a write per stored result and layer, plus the back-fill of memory after the Redis hit
    assert value(m, "mediaproxy_cache_operation_seconds", "_count", layer="redis",
                 op="write") == 2
    assert value(m, "mediaproxy_cache_operation_seconds", "_count", layer="file",
                 op="write") == 2
    assert value(m, "mediaproxy_cache_operation_seconds", "_count", layer="memory",
                 op="write") == 3

    # the backend
    def responses(purpose, status):
        return value(m, "mediaproxy_backend_responses", "_total", purpose=purpose,
                     status=status)

    assert responses("source", "2xx") == 2               # a, slow
    assert responses("source", "4xx") == 1               # none.jpg
    assert responses("source", "5xx") == 3               # busy twice, broken
    assert responses("passthrough", "2xx") == 1
    assert responses("passthrough", "4xx") == 2
    assert value(m, "mediaproxy_backend_retries", "_total", purpose="source") == 1
    assert value(m, "mediaproxy_backend_retries", "_total", purpose="passthrough") == 0
    assert value(m, "mediaproxy_backend_request_duration_seconds", "_count",
                 purpose="source") == 6
    assert value(m, "mediaproxy_backend_request_duration_seconds", "_count",
                 purpose="passthrough") == 3
    assert value(m, "mediaproxy_breaker_state", breaker="images") == 2
    assert value(m, "mediaproxy_breaker_state", breaker="passthrough") == 0
    assert value(m, "mediaproxy_breaker_opened", "_total", breaker="images") == 1
    assert value(m, "mediaproxy_breaker_opened", "_total", breaker="passthrough") == 0

    # refusals
    assert value(m, "mediaproxy_ratelimit_decisions", "_total", result="rejected") == 1
    assert value(m, "mediaproxy_ratelimit_decisions", "_total", result="allowed") == \
        9 + 5      # the per-request tokens, and a per-transform token per render
    assert value(m, "mediaproxy_rejections", "_total", error="invalid_parameter") == 1
    assert value(m, "mediaproxy_rejections", "_total", error="rate_limited") == 1
    assert value(m, "mediaproxy_source_errors", "_total", status="404") == 1
    assert value(m, "mediaproxy_source_errors", "_total", status="502") == 2
    assert value(m, "mediaproxy_transform_seconds", "_count", format="jpeg") == 2

    # the process
    assert value(m, "mediaproxy_transform_pool_threads", state="busy") == 0
    assert value(m, "mediaproxy_transform_pool_threads", state="size") == \
        proxy.runtime.threadpool.max
    assert value(m, "mediaproxy_reactor_lag_seconds") >= 0
    assert value(m, "mediaproxy_start_time_seconds") == proxy.runtime.started
    from mediaproxy import __version__
    assert value(m, "mediaproxy_build_info", version=__version__) == 1
    assert value(m, "process_resident_memory_bytes") > 0
    assert value(m, "python_gc_collections", "_total", generation="0") >= 0


# -- the reference table -------------------------------------------------------------------


def documented() -> dict[str, tuple[str, set[str]]]:
    """{series name: (type, label names)} from the table of docs/operations.md "## Metrics"."""
    text = DOCS.read_text()
    section = text.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) != 4 or not cells[0].startswith("`"):
            continue
        name, kind, labels, _ = cells
        rows[name.strip("`")] = (kind, set(re.findall(r"`(\w+)`:", labels)))
    return rows


def exported_name(family) -> str:
    return family.name + "_total" if family.type == "counter" else family.name


def test_the_reference_table_and_a_real_scrape_agree_both_ways(live_reactor, tmp_path):
    table = documented()
    assert len(table) > 30   # the table was found and read
    overrides = {"monitoring": {"listen": "tcp:0:interface=127.0.0.1"},
                 "cache": {"file": {"dir": str(tmp_path / "files")}}}
    with start_proxy({"/media/a.jpg": IMAGE}, overrides=overrides) as proxy:
        assert proxy.get("/media/a.jpg?w=10&fmt=jpeg").status == 200
        assert proxy.get("/page").status == 404
        families = scrape(proxy)
    exported = {exported_name(f): f for f in families.values()}
    ours = {name for name in exported if name.startswith("mediaproxy_")}
    undocumented = ours - set(table)
    assert undocumented == set(), f"exported but not in docs/operations.md: {undocumented}"
    missing = {name for name in table if not name.endswith("*")} - set(exported)
    assert missing == DOCUMENTED_ELSEWHERE
    for pattern in (name for name in table if name.endswith("*")):
        assert any(name.startswith(pattern[:-1]) for name in exported), pattern
    for name in ours:
        kind, labels = table[name]
        family = exported[name]
        assert family.type == kind, name
        seen = {label for sample in family.samples for label in sample.labels} - {"le"}
        # a family without samples yet (no such event) shows no labels to compare
        assert seen in (labels, set()), (name, seen, labels)
