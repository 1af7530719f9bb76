"""The rolling request figures (mediaproxy.monitoring.rolling), on a task.Clock: percentiles
against an independent oracle (sorted samples, nearest rank), rates, ratios, the window."""

import math
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from mediaproxy.models import Event
from mediaproxy.monitoring.rolling import BASE, BINS, GROWTH, TOP, RollingFigures, bin_of


def nearest_rank(samples, pct):
    """The oracle: the sample of rank ceil(n * pct / 100) in sorted order."""
    ordered = sorted(samples)
    return ordered[math.ceil(Fraction(len(ordered) * pct, 100)) - 1]


durations = st.floats(min_value=BASE, max_value=TOP, allow_nan=False)


@settings(max_examples=200)
@given(st.lists(durations, min_size=1, max_size=300), st.sampled_from([50, 95, 99]))
def test_percentiles_are_within_one_bin_of_the_true_value(samples, pct):
    clock = Clock()
    rolling = RollingFigures(clock, window=60)
    for value in samples:
        rolling.record("image", value, 200)
    got = rolling.figures()["image"][f"p{pct}"]
    true = nearest_rank(samples, pct)
    # never below the true value, at most one bin's width above it (float rounding aside)
    assert true * (1 - 1e-9) <= got <= true * GROWTH * (1 + 1e-9)


@given(st.lists(st.tuples(durations, st.integers(0, 59)), min_size=1, max_size=200))
def test_samples_spread_over_the_window_count_as_one_population(timed):
    clock = Clock()
    rolling = RollingFigures(clock, window=60)
    for value, second in sorted(timed, key=lambda t: t[1]):
        clock.advance(second - clock.seconds())
        rolling.record("passthrough", value, 200)
    true = nearest_rank([v for v, _ in timed], 99)
    got = rolling.figures()["passthrough"]["p99"]
    assert true * (1 - 1e-9) <= got <= true * GROWTH * (1 + 1e-9)


def test_bins_cover_the_range_in_order():
    assert bin_of(0) == 0 and bin_of(BASE) == 0 and bin_of(TOP * 10) == BINS - 1
    assert [bin_of(BASE * GROWTH ** i * 1.01) for i in range(5)] == [1, 2, 3, 4, 5]


def test_rates_error_ratios_and_the_hit_ratio():
    clock = Clock()
    rolling = RollingFigures(clock, window=10, min_requests=5)
    clock.advance(10)
    for status, cache in [(200, "HIT-MEMORY")] * 5 + [(200, "STALE"), (200, "MISS"),
                                                      (404, "MISS"), (502, ""), (503, "")]:
        rolling.record("image", 0.01, status, cache)
    rolling.record("image", 5.0, 200, "", aborted=True)   # counted in the rate only
    for status in (200, 200, 200, 500):
        rolling.record("passthrough", 0.2, status)
    figures = rolling.figures()
    image = figures["image"]
    assert image["requests"] == 11 and image["rate"] == 1.1
    assert image["error_rate"] == 0.2 and image["client_error_rate"] == 0.1
    assert image["p99"] < 0.011   # the aborted 5 s request is not a latency
    assert figures["cache"] == {"lookups": 8, "hit_ratio": 6 / 8}
    # four pass-through requests: under min_requests, their ratios are unknown
    assert figures["passthrough"]["rate"] == 0.4
    assert figures["passthrough"]["error_rate"] is None
    assert figures["passthrough"]["p50"] is None


def test_old_seconds_leave_the_window_and_memory_stays_bounded():
    clock = Clock()
    rolling = RollingFigures(clock, window=5, min_requests=1)
    for second in range(1000):
        clock.advance(1)
        for _ in range(3):
            rolling.record("image", 2.0 if second < 995 else 0.001, 500 if second < 995 else 200)
    figures = rolling.figures()["image"]
    assert figures["requests"] == 15 and figures["rate"] == 3.0
    assert figures["error_rate"] == 0.0 and figures["p99"] < 0.0011
    assert len(rolling._ring) == 5   # one slot per second of the window, whatever the traffic
    clock.advance(5)
    assert rolling.figures()["image"]["requests"] == 0


def test_events_feed_it_and_sheds_have_a_rate():
    clock = Clock()
    rolling = RollingFigures(clock, window=60)
    clock.advance(100)
    rolling.observe(Event("request", 0.5, "c1", {"kind": "image", "method": "GET",
                                                 "status": 200, "bytes": 10,
                                                 "cache": "MISS", "route": "query",
                                                 "aborted": False, "path": "/x",
                                                 "client": "127.0.0.1"}))
    for _ in range(30):
        rolling.observe(Event("admission.shed", 1.0, "", {"reason": "queue_full"}))
    rolling.observe(Event("cache.hit", 1.0, "", {"layer": "memory"}))   # ignored
    flat = rolling.flat()
    assert flat["image.requests"] == 1 and flat["shed.rate"] == 0.5
    assert flat["cache.hit_ratio"] == 0.0 and flat["image.p50"] >= 0.5
