"""The last seconds' latency percentiles a worker reports to the service registry
(:class:`agentd.metrics.LatencyWindow`), with the clock given."""

from __future__ import annotations

from agentd.metrics import SAMPLES_PER_S, LatencyWindow


def test_percentiles_over_the_window() -> None:
    window = LatencyWindow(window_s=10)
    assert window.percentiles(0.5, 0.99, now=100.0) == [None, None]
    for i in range(1, 101):
        window.add(i / 1000, now=100.5)
    p50, p99 = window.percentiles(0.5, 0.99, now=101.0)
    assert p50 == 0.05 and p99 == 0.099


def test_old_seconds_leave_the_window() -> None:
    window = LatencyWindow(window_s=10)
    window.add(5.0, now=100.0)
    window.add(0.001, now=105.0)
    assert window.percentiles(1.0, now=105.0) == [5.0]
    assert window.percentiles(1.0, now=110.0) == [0.001]  # second 100 is out
    assert window.percentiles(0.5, now=200.0) == [None]


def test_a_busy_second_keeps_a_bounded_sample_that_weighs_its_share() -> None:
    window = LatencyWindow(window_s=10)
    for _ in range(SAMPLES_PER_S * 20):
        window.add(0.002, now=50.0)  # busy and fast
    for _ in range(10):
        window.add(1.0, now=51.0)  # quiet and slow
    kept = sum(len(kept) for _, kept in window._seconds.values())
    assert kept == SAMPLES_PER_S + 10
    # The slow second holds 10 of 5130 requests: under 1 %, so even p99 is fast.
    assert window.percentiles(0.5, 0.99, 1.0, now=52.0) == [0.002, 0.002, 1.0]
