"""Request classes in the backend pools, against stub upstreams on real sockets: the
per-node in-flight cap, the background share, waiting in line (interactive first), the
release of every place on every path, per-class policies, and their configuration."""

from __future__ import annotations

import asyncio
import contextlib
import tomllib
from typing import Any

import pytest

from agentd.backends import Backends, ChatRequest, Pool
from agentd.backends.pool import background_limit
from agentd.config import BackendConfig, ConfigError, dump_toml, from_dict
from agentd.errors import UpstreamError, UpstreamTimeout
from agentd.metrics import BackendMetrics

from .openai_stub import Fail, FailMidStream, Hang, MakePool, Slow, StartStub, StubNode
from .waiting import wait_until


def ask(text: str) -> ChatRequest:
    return ChatRequest(model="m", messages=[{"role": "user", "content": text}])


def seen(node: StubNode) -> list[str]:
    """The user message of each request the stub received, in order."""
    return [r.json["messages"][-1]["content"] for r in node.requests]


def counts(pool: Pool) -> list[tuple[object, object]]:
    """Each node's (in flight, of which background) as the pool reports them."""
    return [(s["inflight"], s["inflight_background"]) for s in pool.status()]


def now() -> float:
    return asyncio.get_running_loop().time()


async def cancel_all(tasks: list[asyncio.Task[Any]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


# -- the background share ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_inflight", "share", "limit"),
    [(4, 0.5, 2), (1, 0.5, 1), (3, 0.1, 1), (4, 0.0, 0), (100, 0.29, 29), (8, 1.0, 8)],
)
def test_background_limit_rounds_down_but_keeps_one_place(
    max_inflight: int, share: float, limit: int
) -> None:
    assert background_limit(max_inflight, share) == limit


async def test_a_flood_of_background_calls_holds_at_most_its_share(
    stub: StartStub, make_pool: MakePool
) -> None:
    node = await stub(Slow(first_s=0.02))
    pool = await make_pool(node, max_inflight=4, background_share=0.5)
    done = await asyncio.gather(
        *(pool.complete(ask(f"bg-{i}"), request_class="background") for i in range(20))
    )
    assert [c.text for c in done] == [f"stub:bg-{i}" for i in range(20)]
    assert len(node.requests) == 20
    assert node.peak_inflight <= 2
    assert counts(pool) == [(0, 0)]
    assert pool.waiting() == {"interactive": 0, "background": 0}


async def test_an_interactive_call_is_admitted_while_background_calls_wait(
    stub: StartStub, make_pool: MakePool
) -> None:
    node = await stub(Hang())
    pool = await make_pool(node, max_inflight=4, background_share=0.5)
    flood = [
        asyncio.create_task(pool.complete(ask(f"bg-{i}"), request_class="background"))
        for i in range(20)
    ]
    await wait_until(
        lambda: pool.waiting()["background"] == 18 and node.inflight == 2,
        what="2 background calls running, 18 waiting",
    )
    assert len(node.requests) == 2

    chat = asyncio.create_task(pool.complete(ask("hello")))
    await wait_until(lambda: len(node.requests) == 3, what="the stub sees the interactive call")
    assert seen(node)[2] == "hello"
    assert pool.waiting() == {"interactive": 0, "background": 18}
    assert counts(pool) == [(3, 2)]
    assert node.peak_inflight == 3

    await cancel_all([*flood, chat])
    assert counts(pool) == [(0, 0)]
    assert pool.waiting() == {"interactive": 0, "background": 0}
    # Places freed by the cancelled calls went to waiters being cancelled too: nothing
    # else was sent.
    assert len(node.requests) == 3


async def test_background_shares_are_per_node(stub: StartStub, make_pool: MakePool) -> None:
    a, b = await stub(Slow(first_s=0.02)), await stub(Slow(first_s=0.02))
    pool = await make_pool(a, b, max_inflight=4, background_share=0.5)
    await asyncio.gather(
        *(pool.complete(ask(f"bg-{i}"), request_class="nightly") for i in range(20))
    )
    assert len(a.requests) + len(b.requests) == 20
    assert a.peak_inflight <= 2 and b.peak_inflight <= 2
    assert counts(pool) == [(0, 0), (0, 0)]


# -- the in-flight cap and the line ------------------------------------------------------


async def test_interactive_calls_are_capped_and_served_in_turn(
    stub: StartStub, make_pool: MakePool
) -> None:
    node = await stub(Slow(first_s=0.02))
    pool = await make_pool(node, max_inflight=2)
    texts = [c.text for c in await asyncio.gather(*(pool.complete(ask(f"c{i}")) for i in range(8)))]
    assert texts == [f"stub:c{i}" for i in range(8)]
    assert node.peak_inflight <= 2
    assert counts(pool) == [(0, 0)]


async def test_a_waiter_gets_the_place_a_call_frees(stub: StartStub, make_pool: MakePool) -> None:
    node = await stub(Hang())
    pool = await make_pool(node, max_inflight=2)
    calls = [asyncio.create_task(pool.complete(ask(f"c{i}"))) for i in range(4)]
    await wait_until(
        lambda: pool.waiting()["interactive"] == 2 and node.inflight == 2,
        what="two calls running, two waiting",
    )
    assert seen(node) == ["c0", "c1"]

    calls[0].cancel()
    await wait_until(lambda: len(node.requests) == 3, what="the first waiter is served")
    assert seen(node)[2] == "c2"  # in the order they came
    assert pool.waiting()["interactive"] == 1
    assert counts(pool) == [(2, 0)]

    await cancel_all(calls)
    assert counts(pool) == [(0, 0)]
    assert pool.status()[0]["breaker"] == "closed"  # cancellations say nothing of the node


async def test_interactive_waiters_go_before_background_waiters(
    stub: StartStub, make_pool: MakePool
) -> None:
    node = await stub(Hang())
    pool = await make_pool(node, max_inflight=2, background_share=1.0)
    first = [asyncio.create_task(pool.complete(ask(f"c{i}"))) for i in range(2)]
    await wait_until(lambda: node.inflight == 2, what="the node is full")
    job = asyncio.create_task(pool.complete(ask("job"), request_class="background"))
    await wait_until(lambda: pool.waiting()["background"] == 1, what="the job waits")
    chat = asyncio.create_task(pool.complete(ask("chat")))
    await wait_until(lambda: pool.waiting()["interactive"] == 1, what="the chat waits")

    first[0].cancel()
    await wait_until(lambda: len(node.requests) == 3, what="one waiter is served")
    assert seen(node)[2] == "chat"
    first[1].cancel()
    await wait_until(lambda: len(node.requests) == 4, what="the other waiter is served")
    assert seen(node)[3] == "job"

    await cancel_all([*first, job, chat])
    assert counts(pool) == [(0, 0)]


async def test_a_full_node_is_passed_over_for_one_with_room(
    stub: StartStub, make_pool: MakePool
) -> None:
    a, b = await stub(Hang()), await stub(Hang())
    pool = await make_pool(a, b, max_inflight=1, policy="round_robin")
    calls = [asyncio.create_task(pool.complete(ask(f"c{i}"))) for i in range(2)]
    await wait_until(lambda: len(a.requests) + len(b.requests) == 2, what="both calls sent")
    assert (seen(a), seen(b)) == (["c0"], ["c1"])
    third = asyncio.create_task(pool.complete(ask("c2")))
    await wait_until(lambda: pool.waiting()["interactive"] == 1, what="the third call waits")

    calls[1].cancel()  # b has room again; round robin would have said a
    await wait_until(lambda: len(b.requests) == 2, what="the waiter goes to b")
    assert seen(b)[1] == "c2"
    await cancel_all([*calls, third])
    assert counts(pool) == [(0, 0), (0, 0)]


@pytest.mark.parametrize("request_class", ["interactive", "background"])
async def test_a_waiter_whose_deadline_passes_gets_upstream_timeout(
    stub: StartStub, make_pool: MakePool, request_class: str
) -> None:
    node = await stub(Hang())
    pool = await make_pool(node, max_inflight=1)
    holder = asyncio.create_task(pool.complete(ask("holder")))
    await wait_until(lambda: node.inflight == 1, what="the node is full")
    with pytest.raises(UpstreamTimeout) as info:
        await pool.complete(ask("late"), deadline=now() + 0.2, request_class=request_class)
    assert (info.value.code, info.value.status) == ("upstream_timeout", 504)
    assert seen(node) == ["holder"]
    assert pool.waiting() == {"interactive": 0, "background": 0}
    assert counts(pool) == [(1, 0)]
    assert pool.status()[0]["breaker"] == "closed"  # waiting is not the node's failure

    await cancel_all([holder])
    assert counts(pool) == [(0, 0)]


async def test_cancelling_a_waiting_call_leaves_no_count_behind(
    stub: StartStub, make_pool: MakePool
) -> None:
    node = await stub(Hang())
    pool = await make_pool(node, max_inflight=1)
    holder = asyncio.create_task(pool.complete(ask("holder"), request_class="background"))
    await wait_until(lambda: node.inflight == 1, what="the node is full")
    waiter = asyncio.create_task(pool.complete(ask("waiter"), request_class="background"))
    await wait_until(lambda: pool.waiting()["background"] == 1, what="the call waits")

    await cancel_all([waiter])
    assert pool.waiting() == {"interactive": 0, "background": 0}
    assert counts(pool) == [(1, 1)]
    await cancel_all([holder])
    assert counts(pool) == [(0, 0)]
    assert seen(node) == ["holder"]


async def test_a_place_handed_to_a_call_being_cancelled_is_given_back(
    stub: StartStub, make_pool: MakePool
) -> None:
    node = await stub(Hang())
    pool = await make_pool(node, max_inflight=1)
    holder = asyncio.create_task(pool.complete(ask("holder")))
    await wait_until(lambda: node.inflight == 1, what="the node is full")
    waiter = asyncio.create_task(pool.complete(ask("waiter"), request_class="background"))
    await wait_until(lambda: pool.waiting()["background"] == 1, what="the call waits")

    # The holder's end hands its place to the waiter before the waiter's own
    # cancellation runs: the waiter must give it back.
    holder.cancel()
    waiter.cancel()
    await asyncio.gather(holder, waiter, return_exceptions=True)
    assert counts(pool) == [(0, 0)]
    assert pool.waiting() == {"interactive": 0, "background": 0}
    assert seen(node) == ["holder"]


async def test_a_waiter_takes_a_node_whose_breaker_cool_down_ends(
    stub: StartStub, make_pool: MakePool
) -> None:
    a, b = await stub(Fail(500)), await stub(Hang())
    pool = await make_pool(
        a, b, policy="round_robin", max_inflight=1, breaker_failures=1, breaker_cooldown_s=0.1
    )
    # Fails on a (whose breaker opens), is retried on b and hangs there.
    holder = asyncio.create_task(pool.complete(ask("holder")))
    await wait_until(lambda: b.inflight == 1, what="b is full")
    assert pool.status()[0]["breaker"] == "open"
    a.mode = Slow(first_s=0.0)
    # No call ends; the waiter is served when a's breaker lets a probe through.
    done = await pool.complete(ask("waiter"), deadline=now() + 10)
    assert done.node == a.url
    assert seen(a) == ["holder", "waiter"]
    assert pool.status()[0]["breaker"] == "closed"
    await cancel_all([holder])
    assert counts(pool) == [(0, 0), (0, 0)]


# -- every path releases its place ---------------------------------------------------------


@pytest.mark.parametrize("request_class", ["interactive", "background"])
async def test_counts_return_to_zero_after_errors_and_early_close(
    stub: StartStub, make_pool: MakePool, request_class: str
) -> None:
    node = await stub(Fail(500))
    pool = await make_pool(node, max_inflight=2, breaker_failures=100)
    with pytest.raises(UpstreamError):
        await pool.complete(ask("a"), request_class=request_class)
    assert counts(pool) == [(0, 0)]

    node.mode = FailMidStream(after=1)
    with pytest.raises(UpstreamError):
        await pool.complete(ask("a b c"), request_class=request_class)
    assert counts(pool) == [(0, 0)]

    node.mode = Slow(first_s=0.0, between_s=0.2)
    async with contextlib.aclosing(pool.stream(ask("a b c d"), request_class=request_class)) as s:
        async for _ in s:
            assert counts(pool) == [(1, int(request_class != "interactive"))]
            break
    assert counts(pool) == [(0, 0)]


async def test_a_retry_moves_the_place_to_the_next_node(
    stub: StartStub, make_pool: MakePool
) -> None:
    bad, good = await stub(Fail(503)), await stub()
    pool = await make_pool(bad, good, policy="round_robin", max_inflight=1)
    done = await pool.complete(ask("x"), request_class="background")
    assert done.node == good.url
    assert (len(bad.requests), len(good.requests)) == (1, 1)
    assert counts(pool) == [(0, 0), (0, 0)]


async def test_an_early_close_serves_the_next_waiter(stub: StartStub, make_pool: MakePool) -> None:
    node = await stub(Slow(first_s=0.0, between_s=0.2))
    pool = await make_pool(node, max_inflight=1)
    async with contextlib.aclosing(pool.stream(ask("a b c d"))) as stream:
        async for _ in stream:
            waiter = asyncio.create_task(pool.complete(ask("next"), request_class="background"))
            await wait_until(lambda: pool.waiting()["background"] == 1, what="the call waits")
            break
    node.mode = Slow(first_s=0.0)
    assert (await waiter).text == "stub:next"
    assert counts(pool) == [(0, 0)]


# -- a policy per class ----------------------------------------------------------------------


async def test_background_calls_use_their_own_policy(stub: StartStub, make_pool: MakePool) -> None:
    a, b = await stub(), await stub()
    pool = await make_pool(
        a, b, policy="affinity", policies={"background": "round_robin"}, max_inflight=4
    )
    interactive: list[str] = []
    background: list[str] = []
    other: list[str] = []
    for i in range(4):
        done = await pool.complete(ask(f"bg{i}"), session_id="s1", request_class="background")
        background.append(done.node)
        interactive.append((await pool.complete(ask(f"int{i}"), session_id="s1")).node)
        other.append(
            (await pool.complete(ask(f"r{i}"), session_id="s1", request_class="reasoning")).node
        )
    # Round robin for background calls, with its own turns (other classes' calls do not
    # move them); affinity (the session's home node) for the rest.
    assert background == [a.url, b.url, a.url, b.url]
    home = interactive[0]
    assert interactive == [home] * 4 and other == [home] * 4
    owner, away = (a, b) if home == a.url else (b, a)
    assert [t for t in seen(owner) if not t.startswith("bg")] == [
        t for i in range(4) for t in (f"int{i}", f"r{i}")
    ]
    assert [t for t in seen(away) if not t.startswith("bg")] == []
    assert [t for t in seen(a) if t.startswith("bg")] == ["bg0", "bg2"]
    assert [t for t in seen(b) if t.startswith("bg")] == ["bg1", "bg3"]


# -- configuration ---------------------------------------------------------------------------


def test_request_class_keys_parse_and_round_trip() -> None:
    config = from_dict(
        {
            "backends": [
                {
                    "name": "up",
                    "type": "openai",
                    "urls": ["http://127.0.0.1:9/v1"],
                    "policies": {"interactive": "p2c", "background": "least_inflight"},
                    "max_inflight": 8,
                    "background_share": 0.25,
                }
            ],
            "agents": [
                {"name": "a", "backend": "up", "request_class": "reasoning"},
                {"name": "b", "backend": "up"},
            ],
        }
    )
    backend = config.backends[0]
    assert backend.policies == {"interactive": "p2c", "background": "least_inflight"}
    assert (backend.max_inflight, backend.background_share) == (8, 0.25)
    assert [a.background_class for a in config.agents] == ["reasoning", "background"]
    assert from_dict(tomllib.loads(dump_toml(config))) == config
    default = from_dict({}).backends[0]
    assert (default.policies, default.max_inflight, default.background_share) == ({}, 0, 0.5)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"backends": [{"policies": {"background": "fastest"}}]},
            "backends[0].policies.background: must be one of p2c, least_inflight, "
            "round_robin, affinity; got 'fastest'",
        ),
        (
            {"backends": [{"policies": {"background": 3}}]},
            "backends[0].policies.background: must be one of",
        ),
        (
            {"backends": [{"policies": {"no spaces": "p2c"}}]},
            "backends[0].policies: a request class must be 1-64 characters",
        ),
        ({"backends": [{"policies": "p2c"}]}, "backends[0].policies: expected table"),
        (
            {"backends": [{"background_share": 1.5}]},
            "backends[0].background_share: must be <= 1.0, got 1.5",
        ),
        (
            {"backends": [{"background_share": -0.1}]},
            "backends[0].background_share: must be >= 0.0, got -0.1",
        ),
        ({"backends": [{"max_inflight": -1}]}, "backends[0].max_inflight: must be >= 0, got -1"),
        (
            {"agents": [{"request_class": "jobs/nightly"}]},
            "agents[0].request_class: must be 1-64 characters of letters, digits",
        ),
    ],
)
def test_invalid_request_class_settings_name_their_key(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_dict(raw)
    assert any(e.startswith(message) for e in info.value.errors), info.value.errors


async def test_load_by_kind_is_reported_to_metrics(stub: StartStub) -> None:
    node = await stub(Hang())
    metrics = BackendMetrics()
    config = BackendConfig(
        name="up", type="openai", urls=(node.url,), max_inflight=4, background_share=0.5
    )
    async with Backends([config], metrics, environ={}) as backends:
        pool = backends.get("up")
        calls = [
            asyncio.create_task(pool.complete(ask(f"bg-{i}"), request_class="background"))
            for i in range(5)
        ]
        calls.append(asyncio.create_task(pool.complete(ask("hello"))))
        await wait_until(
            lambda: node.inflight == 3, what="1 interactive and 2 background calls running"
        )
        backends.report_load()
        registry = metrics._registry
        assert registry is not None

        def sample(name: str, **labels: str) -> float | None:
            return registry.get_sample_value(name, {"backend": "up", **labels})

        assert sample("agentd_upstream_inflight", node=node.url, kind="interactive") == 1
        assert sample("agentd_upstream_inflight", node=node.url, kind="background") == 2
        assert sample("agentd_upstream_waiting", kind="background") == 3
        assert sample("agentd_upstream_waiting", kind="interactive") == 0
        await cancel_all(calls)
        backends.report_load()
        assert sample("agentd_upstream_inflight", node=node.url, kind="background") == 0
        assert sample("agentd_upstream_waiting", kind="background") == 0
