"""The hot metrics (agentd/metrics/hot.py): counted in memory, they show in /metrics as
prometheus-client's own would, in one process and summed over an instance's workers,
including those that exited or were killed."""

from __future__ import annotations

import math
import os
import signal
import socket
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram

from agentd.metrics import Metrics
from agentd.metrics.hot import FLUSH_INTERVAL_S, HotCounter, HotHistogram, HotSet
from agentd.metrics.worker import LATENCY_BUCKETS

from .conftest import PROBE
from .procs import AgentdProcess, RedisServer, metrics
from .waiting import wait_until, wait_until_sync

Start = Callable[..., AgentdProcess]

seconds = st.one_of(
    st.sampled_from((0.0, *LATENCY_BUCKETS, 61.0, 1e9)),
    st.floats(min_value=0.0, max_value=120.0, allow_nan=False),
)


def _histograms() -> tuple[CollectorRegistry, Histogram, CollectorRegistry, Histogram]:
    direct, hot = CollectorRegistry(), CollectorRegistry()
    return (
        direct,
        Histogram("t_seconds", "t", ["route"], buckets=LATENCY_BUCKETS, registry=direct),
        hot,
        Histogram("t_seconds", "t", ["route"], buckets=LATENCY_BUCKETS, registry=hot),
    )


@given(st.lists(seconds, max_size=60), st.integers(min_value=0, max_value=60))
def test_a_hot_histogram_counts_as_observe_does(values: list[float], flush_at: int) -> None:
    """Every bucket, the count and the sum, whenever the flushes come; ``observe_zero``
    as ``observe(0.0)``."""
    direct_reg, direct, hot_reg, wrapped = _histograms()
    hot = HotSet()
    child = HotHistogram(wrapped.labels("r"), hot)
    reference = direct.labels("r")
    for i, value in enumerate(values):
        reference.observe(value)
        if value == 0.0 and i % 2:
            child.observe_zero()  # a replayed turn's stages: the same as observe(0.0)
        else:
            child.observe(value)
        if i == flush_at:
            hot.flush()
    hot.flush()
    for bound in (*LATENCY_BUCKETS, math.inf):
        le = "+Inf" if bound == math.inf else str(float(bound))
        labels = {"route": "r", "le": le}
        assert hot_reg.get_sample_value("t_seconds_bucket", labels) == direct_reg.get_sample_value(
            "t_seconds_bucket", labels
        )
    count = {"route": "r"}
    assert hot_reg.get_sample_value("t_seconds_count", count) == len(values)
    assert math.isclose(
        hot_reg.get_sample_value("t_seconds_sum", count) or 0.0,
        direct_reg.get_sample_value("t_seconds_sum", count) or 0.0,
        rel_tol=1e-9,
        abs_tol=1e-9,
    )


def test_a_hot_counter_tells_its_count_before_and_after_a_flush() -> None:
    registry = CollectorRegistry()
    counter = Counter("c", "c", ["k"], registry=registry)
    hot = HotSet()
    child = HotCounter(counter.labels("a"), hot)
    for _ in range(3):
        child.inc()
    assert child.value() == 3
    assert registry.get_sample_value("c_total", {"k": "a"}) == 0
    hot.flush()
    assert registry.get_sample_value("c_total", {"k": "a"}) == 3 and child.value() == 3


async def test_counts_reach_the_metric_within_the_flush_interval() -> None:
    """No one reads: the timer the first count set flushes them, and one timer serves
    every count until then."""
    m = Metrics()
    m.observe_request("/x", "GET", 200, 0.001)
    m.observe_request("/x", "GET", 200, 0.002)
    m.count_lookup("hit-l1")
    assert m.hot.armed
    sample = m._registry.get_sample_value  # type: ignore[union-attr]
    assert (
        sample("agentd_http_requests_total", {"route": "/x", "method": "GET", "status": "200"}) == 0
    )
    await wait_until(
        lambda: (
            sample("agentd_http_requests_total", {"route": "/x", "method": "GET", "status": "200"})
            == 2
        ),
        limit=FLUSH_INTERVAL_S * 40,
        what="the timer's flush",
    )
    assert sample("agentd_cache_lookups_total", {"result": "hit-l1"}) == 1
    assert sample("agentd_http_request_duration_seconds_count", {"route": "/x"}) == 2
    assert not m.hot.armed
    assert m.request_totals() == (2, 0)


def test_render_and_totals_include_what_was_not_flushed() -> None:
    m = Metrics()
    for status in (200, 200, 503):
        m.observe_request("/y", "POST", status, 0.01)
    m.observe_turn({"upstream": 0.001, "upstream_ttft": 0.0005})
    assert m.request_totals() == (3, 1)
    text = m.render().decode()
    assert 'agentd_http_requests_total{method="POST",route="/y",status="200"} 2.0' in text
    assert 'agentd_http_requests_total{method="POST",route="/y",status="503"} 1.0' in text
    assert 'agentd_http_request_duration_seconds_count{route="/y"} 3.0' in text
    assert 'agentd_turn_stage_seconds_count{stage="upstream"} 1.0' in text
    assert 'agentd_turn_stage_seconds_count{stage="session"} 0.0' in text


# -- an instance's workers ----------------------------------------------------------------

CHAT_BODY = b'{"model":"echo","messages":[{"role":"user","content":"hot metrics"}],"temperature":0}'
# What the front answers itself: a plain request on a connection the client then closes
# (``Connection: close`` would send it to aiohttp).
CHAT = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: agentd\r\nContent-Type: application/json\r\n"
    b"Content-Length: " + str(len(CHAT_BODY)).encode() + b"\r\n\r\n" + CHAT_BODY
)
CHATS = 'agentd_http_requests_total{method="POST",route="/v1/chat/completions",status="200"}'
LATENCIES = 'agentd_http_request_duration_seconds_count{route="/v1/chat/completions"}'
LOOKUPS = tuple(
    f'agentd_cache_lookups_total{{result="{r}"}}' for r in ("hit-l1", "hit-l2", "hit-l3", "miss")
)


@pytest.fixture
def instance(agentd_instance: Start, redis_standalone: RedisServer) -> AgentdProcess:
    """Two workers (Redis mode, which more than one needs)."""
    return agentd_instance(
        f'[server]\nworkers = 2\n{PROBE}\n[redis]\nurls = ["{redis_standalone.url}"]\n'
    )


def _chat_once(port: int) -> bytes:
    """One chat on a fresh connection (the kernel picks the worker); its X-Cache."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(CHAT)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        headers = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
        while len(body) < int(headers[b"Content-Length"]):
            chunk = sock.recv(65536)
            assert chunk
            body += chunk
    assert head.startswith(b"HTTP/1.1 200 "), head
    return headers[b"X-Cache"]


def _counted(proc: AgentdProcess) -> tuple[float, float, float]:
    """Chat answers, their latency observations and the cache look-ups, in one scrape."""
    chats, latencies, *lookups = metrics(proc, CHATS, LATENCIES, *LOOKUPS)
    return chats or 0.0, latencies or 0.0, sum(v or 0.0 for v in lookups)


def _shows(proc: AgentdProcess, n: int) -> Callable[[], bool]:
    return lambda: _counted(proc) == (n, n, n)


@pytest.mark.slow
def test_metrics_count_every_front_answer_of_both_workers_and_of_a_killed_one(
    instance: AgentdProcess,
) -> None:
    # The first answer of one worker is the miss, the other's first is an L2 hit (Redis
    # holds the reply): both seen, both workers answered.
    caches: list[bytes] = []
    wait_until_sync(
        lambda: caches.append(_chat_once(instance.port)) or b"hit-l2" in caches,
        what="both workers to answer a chat",
        poll_s=0,
    )
    for _ in range(20):
        caches.append(_chat_once(instance.port))
    sent = len(caches)
    assert caches.count(b"miss") == 1 and caches.count(b"hit-l2") == 1
    wait_until_sync(_shows(instance, sent), what=f"{sent} chats counted")
    for _ in range(5):  # and no more: whichever worker renders it
        assert _counted(instance) == (sent, sent, sent)

    # A worker killed outright: what it counted (flushed, as shown above) stays.
    victim = sorted(instance.worker_pids())[0]
    os.kill(victim, signal.SIGKILL)
    wait_until_sync(
        lambda: victim not in (pids := instance.worker_pids()) and len(pids) == 2,
        what="the killed worker replaced",
    )
    assert _counted(instance) == (sent, sent, sent)
    for _ in range(10):
        _chat_once(instance.port)
    wait_until_sync(_shows(instance, sent + 10), what="the later chats counted")


@pytest.mark.slow
def test_a_reload_keeps_the_counts_of_the_workers_it_replaces(instance: AgentdProcess) -> None:
    """Workers that leave (a reload) write what they counted before they exit, even
    right after their last answer."""
    old = instance.worker_pids()
    for _ in range(15):
        _chat_once(instance.port)
    instance.send(signal.SIGHUP)
    wait_until_sync(
        lambda: not (instance.worker_pids() & old) and len(instance.worker_pids()) == 2,
        what="the new generation",
    )
    wait_until_sync(_shows(instance, 15), what="15 chats counted")


async def test_a_flush_on_the_loop_and_the_timer_do_not_lose_counts() -> None:
    """Counts added between timer flushes and explicit ones are all there."""
    m = Metrics()
    for i in range(50):
        m.observe_request("/z", "GET", 200, 0.001)
        if i % 7 == 0:
            m.flush()
        if i % 11 == 0:
            await wait_until(lambda: not m.hot.armed, what="the timer's flush")
    text = m.render().decode()
    assert 'agentd_http_requests_total{method="GET",route="/z",status="200"} 50.0' in text
