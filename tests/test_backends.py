"""Backends against real sockets: the OpenAI wire format and its errors (via the stub
upstream), the echo model, and the pool's balancing, breakers, retries and deadlines."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import Counter
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentd.backends import Backends, ChatRequest, Chunk, Pool, UpstreamAuth, UpstreamRejected
from agentd.backends.echo import split_words
from agentd.backends.openai import EventSplitter, event_data
from agentd.config import BackendConfig, from_dict
from agentd.errors import BadRequest, NotFound, Overloaded, UpstreamError, UpstreamTimeout
from agentd.metrics import BackendMetrics

from .openai_stub import Fail, FailMidStream, Hang, MakePool, Normal, Slow, StartStub, stub_usage
from .procs import free_port
from .waiting import wait_until


def ask(text: str = "hello world", **params: Any) -> ChatRequest:
    return ChatRequest(
        model="llama-3-8b", messages=[{"role": "user", "content": text}], params=params
    )


async def collect(pool: Pool, request: ChatRequest, **kwargs: Any) -> list[Chunk]:
    return [chunk async for chunk in pool.stream(request, **kwargs)]


def now() -> float:
    return asyncio.get_running_loop().time()


# How early the loop's clock may say a timer fired (rounding): bounds below are "not
# before it was due", never speed checks, since a slow machine only makes things later.
TIMER_SLACK_S = 0.01


def closed_port_url() -> str:
    """A port nothing listens on: one of this process's own (tests/procs.py), which no
    other test process or port 0 bind is handed meanwhile."""
    return f"http://127.0.0.1:{free_port()}/v1"


# -- the OpenAI wire format -------------------------------------------------------------


async def cooled_down(pool: Pool) -> None:
    """Wait until the node's open breaker lets a probe through (its cool-down is over)."""
    breaker = pool.nodes[0].breaker
    loop = asyncio.get_running_loop()
    await wait_until(lambda: breaker.ready(loop.time()), what="the breaker's cool-down to end")


async def test_stream_yields_deltas_then_one_final_chunk_with_upstream_usage(
    stub: StartStub, make_pool: MakePool
) -> None:
    node = await stub()
    pool = await make_pool(node)
    chunks = await collect(pool, ask("hello big world"))
    assert [c.text for c in chunks[:-1]] == ["stub:hello ", "big ", "world"]
    assert all(c.finish_reason is None and c.usage is None for c in chunks[:-1])
    final = chunks[-1]
    assert final.finish_reason == "stop"
    assert final.usage == stub_usage([{"content": "hello big world"}], 3)
    assert {c.node for c in chunks} == {node.url}


async def test_complete_joins_the_stream(stub: StartStub, make_pool: MakePool) -> None:
    node = await stub()
    completion = await (await make_pool(node)).complete(ask("  spaced   out  "))
    assert completion.text == "stub:  spaced   out  "
    assert completion.finish_reason == "stop"
    assert completion.usage["completion_tokens"] == 3  # "stub:  ", "spaced   ", "out  "
    assert completion.node == node.url


async def test_request_upstream_carries_model_params_key_and_stream_options(
    stub: StartStub, make_pool: MakePool
) -> None:
    node = await stub(api_key="sk-test")
    pool = await make_pool(node, api_key_env="UP_KEY", environ={"UP_KEY": "sk-test"})
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    request = ChatRequest("llama-3-8b", messages, {"temperature": 0.2, "max_tokens": 512})
    await pool.complete(request)
    (sent,) = node.requests
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["Authorization"] == "Bearer sk-test"
    assert sent.json == {
        "model": "llama-3-8b",
        "messages": messages,
        "temperature": 0.2,
        "max_tokens": 512,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def test_params_cannot_switch_streaming_off(stub: StartStub, make_pool: MakePool) -> None:
    node = await stub()
    await (await make_pool(node)).complete(ask(stream=False, model="other"))
    assert node.requests[0].json["stream"] is True
    assert node.requests[0].json["model"] == "llama-3-8b"


async def test_unset_key_variable_sends_no_authorization(
    stub: StartStub, make_pool: MakePool
) -> None:
    node = await stub()
    await (await make_pool(node, api_key_env="UNSET_KEY")).complete(ask())
    assert "Authorization" not in node.requests[0].headers


async def test_usage_is_estimated_when_upstream_sends_none(
    stub: StartStub, make_pool: MakePool
) -> None:
    node = await stub(send_usage=False)
    text = "one two three four five"
    completion = await (await make_pool(node)).complete(ask(text))
    # prompt: characters / 4, rounded up; completion: one token per content delta.
    assert completion.usage == {
        "prompt_tokens": math.ceil(len(text) / 4),
        "completion_tokens": 5,
        "total_tokens": math.ceil(len(text) / 4) + 5,
    }


async def test_finish_reason_length_passes_through(stub: StartStub, make_pool: MakePool) -> None:
    node = await stub()
    completion = await (await make_pool(node)).complete(ask("a b c d e", max_tokens=2))
    assert completion.text == "stub:a b "
    assert completion.finish_reason == "length"


async def test_a_stream_without_done_ends_at_its_finish(
    stub: StartStub, make_pool: MakePool
) -> None:
    node = await stub(send_done=False)
    completion = await (await make_pool(node)).complete(ask("no marker"))
    assert (completion.text, completion.finish_reason) == ("stub:no marker", "stop")
    assert completion.usage == stub_usage([{"content": "no marker"}], 2)


async def test_a_json_reply_to_a_stream_request_is_one_final_chunk(
    stub: StartStub, make_pool: MakePool
) -> None:
    node = await stub(ignore_stream=True)
    chunks = await collect(await make_pool(node), ask("whole reply"))
    assert [(c.text, c.finish_reason) for c in chunks] == [("stub:whole reply", "stop")]
    assert chunks[0].usage == stub_usage([{"content": "whole reply"}], 2)


async def test_unserializable_params_are_a_bad_request_not_a_node_failure(
    stub: StartStub, make_pool: MakePool
) -> None:
    node = await stub()
    pool = await make_pool(node, breaker_failures=1)
    with pytest.raises(BadRequest) as info:
        await pool.complete(ask(temperature=object()))
    assert info.value.code == "invalid_params"
    assert node.requests == []
    assert pool.status()[0]["breaker"] == "closed"


SSE_PAYLOADS = st.lists(
    st.text(st.characters(blacklist_characters="\r\n", codec="utf-8"), min_size=1, max_size=30)
    .map(lambda s: s.encode())
    .filter(lambda b: b[:1] != b" "),
    min_size=1,
    max_size=8,
)


@given(
    payloads=SSE_PAYLOADS,
    newline=st.sampled_from([b"\n", b"\r\n", b"\r"]),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=10),
    comments=st.booleans(),
)
def test_sse_events_survive_any_line_ending_and_any_split(
    payloads: list[bytes], newline: bytes, cuts: list[int], comments: bool
) -> None:
    wire = b""
    for payload in payloads:
        if comments:
            wire += b": keep-alive" + newline + newline
        wire += b"data: " + payload + newline + newline
    pieces, start = [], 0
    for cut in sorted({min(c, len(wire)) for c in cuts}):
        pieces.append(wire[start:cut])
        start = cut
    pieces.append(wire[start:])
    seen: list[bytes] = []
    splitter = EventSplitter()
    for piece in pieces:
        if piece:
            events = splitter.feed(piece)
            seen += [data for event in events if (data := event_data(event)) is not None]
    assert seen == payloads
    assert splitter.rest == b""


def test_multi_line_data_events_join_with_newlines() -> None:
    assert event_data(b'event: x\ndata: {"a":\ndata:1}\nid: 3') == b'{"a":\n1}'
    assert event_data(b": comment only") is None


# -- error mapping ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind", "code", "http_status"),
    [
        (400, UpstreamRejected, "upstream_rejected", 400),
        (404, UpstreamRejected, "upstream_rejected", 400),
        (422, UpstreamRejected, "upstream_rejected", 400),
        (401, UpstreamAuth, "upstream_auth", 502),
        (403, UpstreamAuth, "upstream_auth", 502),
        (429, UpstreamError, "upstream_rate_limited", 502),
        (500, UpstreamError, "upstream_error", 502),
        (502, UpstreamError, "upstream_error", 502),
        (503, UpstreamError, "upstream_error", 502),
    ],
)
async def test_upstream_statuses_map_to_typed_errors(
    stub: StartStub,
    make_pool: MakePool,
    status: int,
    kind: type[Exception],
    code: str,
    http_status: int,
) -> None:
    node = await stub(Fail(status, message="model 'x' says no"))
    pool = await make_pool(node)
    with pytest.raises(kind) as info:
        await pool.complete(ask())
    error = info.value
    assert isinstance(error, UpstreamError | BadRequest)
    assert (error.code, error.status) == (code, http_status)  # type: ignore[attr-defined]
    if status in (401, 403):
        assert "says no" not in str(error)  # may quote the key: never passed on
    else:
        assert "model 'x' says no" in str(error)
    assert len(node.requests) == 1


@pytest.mark.parametrize("status", [400, 422, 401])
async def test_rejected_and_auth_errors_are_not_retried(
    stub: StartStub, make_pool: MakePool, status: int
) -> None:
    bad, good = await stub(Fail(status)), await stub()
    pool = await make_pool(bad, good, policy="round_robin")
    with pytest.raises(UpstreamRejected if status != 401 else UpstreamAuth):
        await pool.complete(ask())
    assert (len(bad.requests), len(good.requests)) == (1, 0)


@pytest.mark.parametrize("status", [429, 500, 503])
async def test_retryable_statuses_are_retried_on_another_node(
    stub: StartStub, make_pool: MakePool, status: int
) -> None:
    bad, good = await stub(Fail(status)), await stub()
    pool = await make_pool(bad, good, policy="round_robin")
    completion = await pool.complete(ask("hi"))
    assert (completion.text, completion.node) == ("stub:hi", good.url)
    assert (len(bad.requests), len(good.requests)) == (1, 1)


async def test_connection_refused_is_a_retryable_upstream_error(
    stub: StartStub, make_pool: MakePool
) -> None:
    dead = closed_port_url()
    with pytest.raises(UpstreamError) as info:
        await (await make_pool(dead)).complete(ask())
    assert info.value.code == "upstream_unreachable"
    good = await stub()
    pool = await make_pool(dead, good.url, policy="round_robin")
    assert (await pool.complete(ask())).node == good.url


async def test_error_event_in_the_stream_is_an_upstream_error(
    stub: StartStub, make_pool: MakePool
) -> None:
    node = await stub(FailMidStream(after=1, error_event=True))
    texts: list[str] = []
    with pytest.raises(UpstreamError):
        async for chunk in (await make_pool(node)).stream(ask("a b c")):
            texts.append(chunk.text)
    assert texts == ["stub:a "]


# -- deadlines -----------------------------------------------------------------------------


async def test_a_hanging_upstream_times_out_at_the_deadline(
    stub: StartStub, make_pool: MakePool
) -> None:
    node = await stub(Hang())
    pool = await make_pool(node, timeout_s=60.0)
    deadline = now() + 0.3
    with pytest.raises(UpstreamTimeout) as info:
        await pool.complete(ask(), deadline=deadline)
    assert info.value.status == 504
    # The deadline ended the call: not before it, and not the call's own 60 s limit.
    assert deadline - TIMER_SLACK_S <= now() < deadline + 30
    assert len(node.requests) == 1


async def test_a_slow_stream_times_out_after_its_partial_output(
    stub: StartStub, make_pool: MakePool
) -> None:
    node = await stub(Slow(first_s=0.0, between_s=0.5))
    texts: list[str] = []
    with pytest.raises(UpstreamTimeout):
        async for chunk in (await make_pool(node)).stream(ask("a b c d e f"), deadline=now() + 0.7):
            texts.append(chunk.text)
    assert 1 <= len(texts) < 6


async def test_timeout_s_caps_a_call_without_deadline(stub: StartStub, make_pool: MakePool) -> None:
    node = await stub(Hang())
    with pytest.raises(UpstreamTimeout):
        await (await make_pool(node, timeout_s=0.3)).complete(ask())


async def test_a_past_deadline_fails_without_calling_upstream(
    stub: StartStub, make_pool: MakePool
) -> None:
    node = await stub()
    with pytest.raises(UpstreamTimeout):
        await (await make_pool(node)).complete(ask(), deadline=now() - 1)
    assert node.requests == []


# -- echo ----------------------------------------------------------------------------------


def echo_pool(**options: Any) -> Pool:
    return Backends([BackendConfig(name="echo", **options)]).get("echo")


@given(st.text())
def test_echo_pieces_are_words_that_concatenate_exactly(text: str) -> None:
    pieces = split_words(text)
    assert "".join(pieces) == text
    assert all(len(piece.split()) <= 1 for piece in pieces)
    assert len(pieces) == max(len(text.split()), 1 if text else 0)


async def test_echo_replies_with_the_last_user_message() -> None:
    messages = [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "reply"},
        {
            "role": "user",
            "content": [{"type": "text", "text": "two "}, {"type": "text", "text": "parts"}],
        },
    ]
    chunks = await collect(echo_pool(), ChatRequest("echo", messages))
    assert [c.text for c in chunks] == ["two ", "parts"]
    assert [c.finish_reason for c in chunks] == [None, "stop"]
    chars = len("sys") + len("first") + len("reply") + len("two parts")
    assert chunks[-1].usage == {
        "prompt_tokens": math.ceil(chars / 4),
        "completion_tokens": 2,
        "total_tokens": math.ceil(chars / 4) + 2,
    }
    assert {c.node for c in chunks} == {"echo"}


async def test_echo_without_a_user_message_replies_empty() -> None:
    completion = await echo_pool().complete(
        ChatRequest("echo", [{"role": "system", "content": "x"}])
    )
    assert (completion.text, completion.finish_reason) == ("", "stop")
    assert completion.usage["completion_tokens"] == 0


@pytest.mark.parametrize("paced", [False, True], ids=["full-speed", "paced"])
@pytest.mark.parametrize(
    ("params", "texts", "finish"),
    [
        ({"max_tokens": 2}, ["one ", "two "], "length"),
        ({"max_completion_tokens": 1}, ["one "], "length"),
        ({"max_tokens": 3, "max_completion_tokens": 2}, ["one ", "two "], "length"),
        ({"max_tokens": 0}, [""], "length"),
        ({"max_tokens": 3}, ["one ", "two ", "three"], "stop"),  # it fits: not cut
        ({"max_tokens": 9}, ["one ", "two ", "three"], "stop"),
    ],
)
async def test_echo_stops_at_the_token_limit(
    params: dict[str, int], texts: list[str], finish: str, paced: bool
) -> None:
    pool = echo_pool(tokens_per_s=1000.0) if paced else echo_pool()
    chunks = await collect(pool, ask("one two three", **params))
    assert [c.text for c in chunks] == texts
    assert chunks[-1].finish_reason == finish
    assert chunks[-1].usage is not None
    assert chunks[-1].usage["completion_tokens"] == len([t for t in texts if t])


async def test_echo_at_full_speed_never_yields_to_the_loop() -> None:
    ran: list[bool] = []
    asyncio.get_running_loop().call_soon(ran.append, True)
    chunks = await collect(echo_pool(), ask("many words " * 50))
    assert len(chunks) == 100
    assert ran == []


async def test_echo_honours_latency_and_pace() -> None:
    # No chunk comes before it is due (the echo paces by absolute times).
    start = now()
    arrivals = [now() async for _ in echo_pool(latency_ms=150).stream(ask("a b c"))]
    assert arrivals[0] >= start + 0.15 - TIMER_SLACK_S
    start = now()
    arrivals = [now() async for _ in echo_pool(tokens_per_s=40).stream(ask("a b c d e f"))]
    # Six chunks, one each 25 ms after the first: the last is due 125 ms after the start.
    assert arrivals[-1] >= start + 0.125 - TIMER_SLACK_S
    assert arrivals[-1] > arrivals[0]


async def test_echo_times_out_at_the_deadline() -> None:
    with pytest.raises(UpstreamTimeout):
        await echo_pool(latency_ms=10_000).complete(ask(), deadline=now() + 0.1)


async def test_the_default_config_has_a_working_echo_backend() -> None:
    async with Backends(from_dict({}).backends) as backends:
        assert (await backends.get("echo").complete(ask("hi there"))).text == "hi there"
        with pytest.raises(NotFound) as info:
            backends.get("nope")
        assert info.value.status == 404


# -- the pool: balancing ----------------------------------------------------------------


async def test_p2c_sends_most_traffic_to_the_fast_node(
    stub: StartStub, make_pool: MakePool
) -> None:
    fast, slow, failing = await stub(), await stub(Slow(first_s=0.3)), await stub(Fail(500))
    pool = await make_pool(fast, slow, failing, breaker_failures=3)
    served = Counter([(await pool.complete(ask())).node for _ in range(60)])
    assert served[fast.url] > 36, served
    assert served[failing.url] == 0
    assert len(failing.requests) <= 3  # then its breaker stays open (cool-down 10 s)


async def test_round_robin_takes_turns(stub: StartStub, make_pool: MakePool) -> None:
    a, b = await stub(), await stub()
    pool = await make_pool(a, b, policy="round_robin")
    served = [(await pool.complete(ask())).node for _ in range(6)]
    assert served == [a.url, b.url] * 3


async def test_least_inflight_spreads_concurrent_calls(
    stub: StartStub, make_pool: MakePool
) -> None:
    a, b = await stub(Slow(0.3)), await stub(Slow(0.3))
    pool = await make_pool(a, b, policy="least_inflight")
    done = await asyncio.gather(*(pool.complete(ask()) for _ in range(6)))
    assert Counter(c.node for c in done) == {a.url: 3, b.url: 3}


async def test_affinity_keeps_a_session_on_one_node(stub: StartStub, make_pool: MakePool) -> None:
    nodes = [await stub() for _ in range(3)]
    pool = await make_pool(*nodes, policy="affinity")
    for session in ("s_abc", "s_def", "s_ghi"):
        served = {(await pool.complete(ask(), session_id=session)).node for _ in range(8)}
        assert len(served) == 1


async def test_affinity_spreads_sessions_evenly(stub: StartStub, make_pool: MakePool) -> None:
    nodes = [await stub() for _ in range(3)]
    pool = await make_pool(*nodes, policy="affinity")
    served = Counter([(await pool.complete(ask(), session_id=f"s_{i}")).node for i in range(300)])
    assert set(served) == {n.url for n in nodes}
    assert all(60 <= count <= 141 for count in served.values()), served


async def test_bounded_load_moves_a_hot_sessions_overflow(
    stub: StartStub, make_pool: MakePool
) -> None:
    nodes = [await stub(Slow(first_s=0.3)) for _ in range(3)]
    pool = await make_pool(*nodes, policy="affinity")
    home = (await pool.complete(ask(), session_id="s_hot")).node
    done = await asyncio.gather(*(pool.complete(ask(), session_id="s_hot") for _ in range(6)))
    served = Counter(c.node for c in done)
    # Capacity is ceil(1.25 x average in flight): the home node takes its share, the
    # next node on the ring takes the overflow.
    assert 2 <= served[home] < 6, served
    assert len(served) >= 2
    assert served[home] == max(served.values()), served  # no node takes more than home


# -- the pool: breakers ---------------------------------------------------------------------


async def test_breaker_opens_after_failures_and_recovers_after_cooldown(
    stub: StartStub, make_pool: MakePool
) -> None:
    node = await stub(Fail(500))
    pool = await make_pool(node, breaker_failures=3, breaker_cooldown_s=0.2)
    for _ in range(3):
        with pytest.raises(UpstreamError):
            await pool.complete(ask())
    with pytest.raises(Overloaded) as info:
        await pool.complete(ask())
    assert (info.value.code, info.value.status) == ("no_healthy_backend", 503)
    assert info.value.retry_after is not None and 0 < info.value.retry_after <= 0.2
    assert len(node.requests) == 3
    assert pool.status()[0]["breaker"] == "open"

    node.mode = Normal()
    await cooled_down(pool)
    assert (await pool.complete(ask("back"))).text == "stub:back"
    assert pool.status()[0]["breaker"] == "closed"
    await pool.complete(ask())
    assert len(node.requests) == 5


async def test_a_failed_probe_opens_the_breaker_again(stub: StartStub, make_pool: MakePool) -> None:
    node = await stub(Fail(503))
    pool = await make_pool(node, breaker_failures=2, breaker_cooldown_s=0.2)
    for _ in range(2):
        with pytest.raises(UpstreamError):
            await pool.complete(ask())
    await cooled_down(pool)
    with pytest.raises(UpstreamError):
        await pool.complete(ask())  # the probe
    with pytest.raises(Overloaded):
        await pool.complete(ask())
    assert len(node.requests) == 3


async def test_half_open_lets_exactly_one_probe_through(
    stub: StartStub, make_pool: MakePool
) -> None:
    node = await stub(Fail(500))
    pool = await make_pool(node, breaker_failures=1, breaker_cooldown_s=0.2)
    with pytest.raises(UpstreamError):
        await pool.complete(ask())
    node.mode = Slow(first_s=0.3)
    await cooled_down(pool)
    results = await asyncio.gather(
        *(pool.complete(ask()) for _ in range(3)), return_exceptions=True
    )
    assert sum(isinstance(r, Overloaded) for r in results) == 2
    assert sum(not isinstance(r, BaseException) for r in results) == 1
    assert len(node.requests) == 2


async def test_when_every_node_fails_the_last_error_is_raised(
    stub: StartStub, make_pool: MakePool
) -> None:
    nodes = [await stub(Fail(502)) for _ in range(3)]
    pool = await make_pool(*nodes)
    with pytest.raises(UpstreamError) as info:
        await pool.complete(ask())
    assert info.value.code == "upstream_error"
    assert [len(n.requests) for n in nodes] == [1, 1, 1]


# -- the pool: retries and partial output ------------------------------------------------


async def test_a_failure_after_the_first_chunk_is_not_retried(
    stub: StartStub, make_pool: MakePool
) -> None:
    broken, good = await stub(FailMidStream(after=2)), await stub()
    pool = await make_pool(broken, good, policy="round_robin")
    texts: list[str] = []
    with pytest.raises(UpstreamError) as info:
        async for chunk in pool.stream(ask("one two three four")):
            texts.append(chunk.text)
    assert texts == ["stub:one ", "two "]
    assert info.value.code == "upstream_incomplete"
    assert (len(broken.requests), len(good.requests)) == (1, 0)


@pytest.mark.parametrize(
    "mode", [FailMidStream(after=0), FailMidStream(after=0, error_event=True), Fail(503)]
)
async def test_a_failure_before_the_first_chunk_is_retried_cleanly(
    stub: StartStub, make_pool: MakePool, mode: Any
) -> None:
    broken, good = await stub(mode), await stub()
    pool = await make_pool(broken, good, policy="round_robin")
    chunks = await collect(pool, ask("one two"))
    assert "".join(c.text for c in chunks) == "stub:one two"
    assert [c.finish_reason for c in chunks].count("stop") == 1
    assert {c.node for c in chunks} == {good.url}
    assert (len(broken.requests), len(good.requests)) == (1, 1)


async def test_closing_a_stream_early_releases_the_node(
    stub: StartStub, make_pool: MakePool
) -> None:
    metrics = BackendMetrics()
    node = await stub(Slow(first_s=0.0, between_s=0.2))
    pool = await make_pool(node, metrics=metrics, breaker_failures=1)
    async with contextlib.aclosing(pool.stream(ask("a b c d"))) as stream:
        async for _ in stream:
            break
    (status,) = pool.status()
    assert (status["inflight"], status["breaker"]) == (0, "closed")
    labels = {"backend": "up", "node": node.url, "outcome": "cancelled"}
    assert metrics._registry is not None
    assert metrics._registry.get_sample_value("agentd_upstream_calls_total", labels) == 1


def retry_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "agentd.backends.pool"]


async def test_a_single_node_failure_says_there_is_no_other_node(
    stub: StartStub, make_pool: MakePool, caplog: pytest.LogCaptureFixture
) -> None:
    node = await stub(Fail(503))
    pool = await make_pool(node)
    with (
        caplog.at_level(logging.WARNING, logger="agentd.backends.pool"),
        pytest.raises(UpstreamError),
    ):
        await pool.complete(ask())
    [line] = retry_lines(caplog)
    assert line.endswith("; no other node to try")
    assert f"node {node.url} failed" in line


async def test_a_failure_with_another_node_says_it_tries_another(
    stub: StartStub, make_pool: MakePool, caplog: pytest.LogCaptureFixture
) -> None:
    broken, good = await stub(Fail(503)), await stub()
    pool = await make_pool(broken, good, policy="round_robin", breaker_failures=1)
    with caplog.at_level(logging.WARNING, logger="agentd.backends.pool"):
        assert (await pool.complete(ask("x"))).text == "stub:x"
        # The first node's breaker is open now: when the second fails, nothing is left.
        good.mode = Fail(503)
        with pytest.raises(UpstreamError):
            await pool.complete(ask())
    lines = [line for line in retry_lines(caplog) if "failed" in line]
    assert [line.rpartition("; ")[2] for line in lines] == [
        "trying another",
        "no other node to try",
    ]
    assert (len(broken.requests), len(good.requests)) == (1, 2)


# -- metrics ---------------------------------------------------------------------------------


async def test_metrics_count_calls_latency_and_breaker_state(
    stub: StartStub, make_pool: MakePool
) -> None:
    metrics = BackendMetrics()
    node = await stub()
    pool = await make_pool(node, metrics=metrics, breaker_failures=1, breaker_cooldown_s=60)
    await pool.complete(ask())
    node.mode = Fail(500)
    with pytest.raises(UpstreamError):
        await pool.complete(ask())
    registry = metrics._registry
    assert registry is not None
    labels = {"backend": "up", "node": node.url}

    def sample(name: str, **extra: str) -> float | None:
        return registry.get_sample_value(name, {**labels, **extra})

    assert sample("agentd_upstream_calls_total", outcome="ok") == 1
    assert sample("agentd_upstream_calls_total", outcome="error") == 1
    assert sample("agentd_upstream_first_token_seconds_count") == 1
    assert sample("agentd_upstream_duration_seconds_count") == 2
    assert sample("agentd_upstream_breaker_state") == 2  # open
    assert b"agentd_upstream_calls_total" in metrics.render()
