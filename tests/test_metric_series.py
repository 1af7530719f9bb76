"""The lock-free series (mediaproxy.monitoring.series) against prometheus-client's own metrics
as the oracle: after the same updates, the same Prometheus text."""

from hypothesis import given, settings, strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from mediaproxy.builtin import metrics  # noqa: F401  (switches the _created series off)
from mediaproxy.monitoring.series import Series

BUCKETS = (0.001, 0.01, 0.1, 1.0, 10.0)
LABELS = st.sampled_from(["a", "b", "c"])
#: values on the bucket bounds too (a bound is inclusive), negative and huge ones
VALUES = st.one_of(st.sampled_from(BUCKETS), st.floats(-1, 1e6, allow_nan=False))


@settings(max_examples=60, deadline=None)
@given(observations=st.lists(st.tuples(LABELS, VALUES), max_size=40),
       increments=st.lists(st.tuples(LABELS, st.integers(0, 10**6)), max_size=20))
def test_the_same_updates_give_the_same_text_as_prometheus_client(observations, increments):
    oracle = CollectorRegistry()
    histogram = Histogram("x_seconds", "doc", ["k"], registry=oracle, buckets=BUCKETS)
    counter = Counter("y", "doc", ["k"], registry=oracle)
    Counter("z", "never updated", ["k"], registry=oracle)
    ours = CollectorRegistry()
    series = Series()
    ours.register(series)
    our_histogram = series.histograms("x_seconds", "doc", ["k"], BUCKETS)
    our_counter = series.counters("y", "doc", ["k"])
    series.counters("z", "never updated", ["k"])
    for label, value in observations:
        histogram.labels(label).observe(value)
        our_histogram.child(label).observe(value)
    for label, n in increments:
        counter.labels(label).inc(n)
        our_counter.child(label)[0] += n
    assert generate_latest(ours) == generate_latest(oracle)
