"""The merge of several workers' metrics (mediaproxy.monitoring.merge), checked against an
oracle that reads the series straight from the generated values: each worker's exposition is
written here by hand (not by prometheus-client), merged, and every merged series must equal the
oracle's sum / max / min of that series over the workers that have it, whatever the order the
workers answered in."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from mediaproxy.monitoring.merge import merge, monotonic_part, parse, render

#: The families of the generated expositions: name, type, how the oracle merges, label values
#: (a label value of its own merge: a shared layer's size is the largest, not the sum).
FAMILIES = {
    "mediaproxy_cache_bytes": ("gauge", {"memory": "sum", "redis": "max", "file": "max"},
                               ("memory", "redis", "file")),
    "mediaproxy_http_requests": ("counter", "sum", ("image", "passthrough")),
    "mediaproxy_http_requests_in_flight": ("gauge", "sum", ("image", "passthrough")),
    "mediaproxy_reactor_lag_seconds": ("gauge", "max", ("",)),
    "mediaproxy_breaker_state": ("gauge", "max", ("images", "passthrough")),
    "process_start_time_seconds": ("gauge", "min", ("",)),
}

# Values that are multiples of 1/4 below 2**20: their sums are exact in floating point, so the
# oracle's plain sum is the one right answer in any order.
value = st.integers(0, 4 * 2**20).map(lambda n: n / 4)
one_worker = st.dictionaries(
    st.sampled_from([(name, label) for name, (_, _, labels) in FAMILIES.items()
                     for label in labels]), value, max_size=9)


def sample_name(name: str) -> str:
    return name + "_total" if FAMILIES[name][0] == "counter" else name


def exposition(series: dict) -> str:
    """Prometheus text format 0.0.4 of one worker's series, written by hand."""
    lines = []
    for name, (kind, _, _) in FAMILIES.items():
        mine = {label: v for (n, label), v in series.items() if n == name}
        if not mine:
            continue
        lines.append(f"# HELP {sample_name(name)} test\n# TYPE {sample_name(name)} {kind}")
        for label, v in sorted(mine.items()):
            key = "layer" if name == "mediaproxy_cache_bytes" else "kind"
            labels = f'{{{key}="{label}"}}' if label else ""
            lines.append(f"{sample_name(name)}{labels} {v!r}")
    return "\n".join(lines) + "\n"


def oracle(workers: list[dict]) -> dict:
    found: dict = {}
    for series in workers:
        for key, v in series.items():
            found.setdefault(key, []).append(v)
    how = {"sum": sum, "max": max, "min": min}
    def merged(name, label, vs):
        rule = FAMILIES[name][1]
        return how[rule[label] if isinstance(rule, dict) else rule](vs)

    return {(sample_name(name), label): merged(name, label, vs)
            for (name, label), vs in found.items()}


def read(families) -> dict:
    return {(s.name, s.labels.get("kind", s.labels.get("layer", ""))): s.value
            for f in families for s in f.samples}


@settings(max_examples=150)
@given(st.lists(one_worker, min_size=1, max_size=5), st.randoms(use_true_random=False))
def test_merging_then_reading_equals_the_oracle_in_any_order(workers, rnd):
    texts = [exposition(w) for w in workers]
    expected = oracle(workers)
    assert read(merge(parse(t) for t in texts)) == expected
    rnd.shuffle(texts)
    merged = merge(parse(t) for t in texts)
    assert read(merged) == expected
    # and what /metrics serves reads back the same
    assert read(parse(render(merged).decode())) == expected


def test_created_times_keep_the_earliest_and_histograms_are_summed():
    a = ("# TYPE x_seconds histogram\n"
         'x_seconds_bucket{le="1.0"} 1.0\nx_seconds_bucket{le="+Inf"} 2.0\n'
         "x_seconds_count 2.0\nx_seconds_sum 3.5\n"
         "# TYPE x_seconds_created gauge\nx_seconds_created 200.0\n")
    b = a.replace("200.0", "100.0").replace("3.5", "0.25")
    merged = {(s.name, s.labels.get("le")): s.value
              for f in merge([parse(a), parse(b)]) for s in f.samples}
    assert merged == {("x_seconds_bucket", "1.0"): 2.0, ("x_seconds_bucket", "+Inf"): 4.0,
                      ("x_seconds_count", None): 4.0, ("x_seconds_sum", None): 3.75,
                      ("x_seconds_created", None): 100.0}


def test_only_what_only_grows_is_kept_of_a_worker_gone():
    text = ("# TYPE r_total counter\nr_total 5.0\n# TYPE r_created gauge\nr_created 9.0\n"
            "# TYPE q gauge\nq 3.0\n")
    assert sorted(f.name for f in monotonic_part(parse(text))) == ["r", "r_created"]
