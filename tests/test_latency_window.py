"""The last seconds' latency percentiles a worker reports to the service registry
(:class:`agentd.metrics.LatencyWindow`), with the clock given."""

from __future__ import annotations

import math
import random

from agentd.metrics import SAMPLES_PER_S, LatencyWindow
from agentd.metrics.latency import _skip


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
    kept = sum(len(slot.kept) for slot in window._seconds.values())
    assert kept == SAMPLES_PER_S + 10
    # The slow second holds 10 of 5130 requests: under 1 %, so even p99 is fast.
    assert window.percentiles(0.5, 0.99, 1.0, now=52.0) == [0.002, 0.002, 1.0]


def test_a_busy_second_keeps_a_uniform_sample_of_all_its_requests() -> None:
    # Algorithm L skips ahead between replacements: the kept sample must still be drawn
    # from the whole second, not its first requests (seeded: the same draw every run).
    random.seed(1804)
    window = LatencyWindow(window_s=10)
    offered = 100_000
    for i in range(offered):
        window.add(i / offered, now=70.0)
    (slot,) = window._seconds.values()
    assert slot.seen == offered and len(slot.kept) == SAMPLES_PER_S
    assert len(set(slot.kept)) == SAMPLES_PER_S  # each request kept at most once
    # 64 expected in each quarter of the second (binomial, sd 7); the first quarter
    # would hold them all without replacements.
    quarters = [sum(1 for v in slot.kept if q / 4 <= v < (q + 1) / 4) for q in range(4)]
    assert all(40 <= n <= 90 for n in quarters), quarters
    assert window.percentiles(0.5, now=71.0)[0] == sorted(slot.kept)[SAMPLES_PER_S // 2 - 1]


def test_a_draw_that_rounds_the_weight_to_one_replaces_the_next_request() -> None:
    # random() just below 1 makes Algorithm L's weight exp(log(u) / 256) round to 1.0;
    # the next request then replaces a sample instead of failing in log1p(-1).
    assert math.exp(math.log(1 - 2**-53) / SAMPLES_PER_S) == 1.0
    assert _skip(1.0) == 1
