"""One turn (agentd/agent/turn.py): streamed to a listener or not, the same path, the
same outcome; refusals before it runs; its Server-Timing."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from hypothesis import given
from hypothesis import strategies as st

from agentd.agent import Agents, Interrupt, Listener, Timings, TurnRequest, TurnResult
from agentd.config import from_dict
from agentd.errors import NotFound, Overloaded
from agentd.server.app import create_app
from agentd.server.keys import AGENTS

from .chat_helpers import (
    Factory,
    echo,
)
from .waiting import wait_until


@given(
    st.floats(allow_nan=True, allow_infinity=True),
    st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=4, max_size=4),
)
def test_server_timing_formats_each_stage_in_milliseconds(
    parse: float, stages: list[float]
) -> None:
    timings = Timings(*stages)
    every = {"parse": parse, **timings.stages()}
    expected = ", ".join(f"{k};dur={v * 1000:.2f}" for k, v in every.items())
    assert timings.header(parse) == expected


# -- one turn, streamed to a listener or not -------------------------------------------


@pytest.fixture
async def agents() -> AsyncIterator[Factory]:
    """Start an app (memory store, no disk cache) with config overrides; returns its Agents."""
    servers: list[TestServer] = []

    async def start(**raw: Any) -> Agents:
        raw.setdefault("cache", {"disk_path": ""})
        server = TestServer(create_app(from_dict(raw)), host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return server.app[AGENTS]

    yield start
    for server in servers:
        await server.close()


def turn_request(
    content: str = "one two three",
    session_id: str | None = None,
    agent: str = "echo",
    **params: Any,
) -> TurnRequest:
    return TurnRequest(agent, [{"role": "user", "content": content}], session_id, params)


def deadline() -> float:
    return asyncio.get_running_loop().time() + 10


class Recorder(Listener):
    """Hears a turn: where its reply came from, then its deltas."""

    def __init__(self) -> None:
        self.heard: list[str] = []

    def source(self, cache: str) -> None:
        self.heard.append(f"source:{cache}")

    async def delta(self, text: str) -> None:
        self.heard.append(text)


async def streamed(
    agents: Agents, req: TurnRequest, interrupt: Interrupt | None = None
) -> tuple[list[str], TurnResult]:
    recorder = Recorder()
    done = await agents.run(req, deadline=deadline(), interrupt=interrupt, listener=recorder)
    source, *deltas = recorder.heard
    assert source == f"source:{done.cache}"  # once, before any delta
    return deltas, done


def outcome(done: TurnResult) -> tuple[Any, ...]:
    """What a caller sees of a finished turn, but for its timings."""
    stored = [(m["seq"], m["role"], m["content"], m.get("status")) for m in done.stored]
    return (done.cache, done.text, done.finish_reason, done.usage, done.node, done.model,
            stored, done.cancelled)  # fmt: skip


def asked(interrupt: bool) -> Interrupt | None:
    if not interrupt:
        return None
    stop = Interrupt()
    stop.asked = True
    return stop


async def test_a_turn_heard_by_a_listener_ends_as_one_that_is_not(agents: Factory) -> None:
    # The same script on two identical apps: one streams every turn to a listener, the
    # other only awaits its result.
    by_run, by_complete = await agents(), await agents()
    sids = [(await a.store.create_session()).id for a in (by_run, by_complete)]
    script: list[tuple[str, bool, dict[str, Any], bool]] = [
        ("one two three", False, {}, False),  # not cacheable: bypass
        ("one two three", False, {"temperature": 0}, False),  # miss
        ("one two three", False, {"temperature": 0}, False),  # hit-l1
        ("one two three", True, {"temperature": 0}, False),  # a hit, stored in the session
        ("four five", True, {"temperature": 0}, False),  # a miss with history
        ("one two three", False, {"temperature": 0}, True),  # a hit asked to stop
        ("six seven eight", False, {"temperature": 0}, True),  # a miss asked to stop
        ("nine ten", True, {}, True),  # a session turn asked to stop
    ]
    for content, session, params, stop in script:
        req = turn_request(content, sids[0] if session else None, **params)
        deltas, done = await streamed(by_run, req, asked(stop))
        assert "".join(deltas) == done.text
        seen = outcome(done)
        req = turn_request(content, sids[1] if session else None, **params)
        done = await by_complete.run(req, deadline=deadline(), interrupt=asked(stop))
        assert outcome(done) == seen, (content, session, params, stop)
        if stop:
            assert done.cancelled and done.finish_reason == "cancelled"
            assert done.text == content.split()[0] + " "  # ended at its first chunk
    assert _cache_counts(by_run) == _cache_counts(by_complete)
    assert _stage_counts(by_run) == _stage_counts(by_complete)
    assert by_run.admission.inflight == by_complete.admission.inflight == 0


class EndRecorder(Recorder):
    """Hears a turn, and its end with the turns its agents still run at that moment."""

    def __init__(self, agents: Agents) -> None:
        super().__init__()
        self.agents = agents
        self.ends: list[tuple[str, dict[str, Any], int, int]] = []

    def ended(self, finish_reason: str, usage: Mapping[str, Any]) -> None:
        inflight = self.agents.admission.inflight
        self.ends.append((finish_reason, dict(usage), len(self.heard), inflight))


async def test_a_listener_hears_the_end_before_the_turns_bookkeeping(agents: Factory) -> None:
    # A turn without a session tells its end once, after its last delta and with its
    # result's finish and usage, while it still runs (admitted: its bookkeeping to come).
    app = await agents()
    sid = (await app.store.create_session()).id
    script: list[tuple[str | None, dict[str, Any], bool]] = [
        (None, {}, False),  # bypass: told at the model's last chunk
        (None, {"temperature": 0}, False),  # miss, through the cache
        (None, {"temperature": 0}, False),  # hit-l1
        (None, {}, True),  # asked to stop
        (sid, {}, False),  # a session's turn: stored after, not told
    ]
    for session, params, stop in script:
        recorder = EndRecorder(app)
        req = turn_request("one two three", session, **params)
        done = await app.run(req, deadline=deadline(), interrupt=asked(stop), listener=recorder)
        if session is not None:
            assert recorder.ends == []
            continue
        heard = len(recorder.heard)
        assert recorder.ends == [(done.finish_reason, done.usage, heard, 1)], (params, stop)
        assert app.admission.inflight == 0


async def test_a_turn_id_is_stored_once_however_many_run_it(agents: Factory) -> None:
    # Two attempts of one background job (one reclaimed while the other still ran) run
    # the same turn id at once: the lease orders them, and the second finds the first's
    # reply in the history it read under the lease instead of storing the turn again.
    slow = await agents(**echo(latency_ms=200))
    sid = (await slow.store.create_session()).id

    async def attempt() -> tuple[TurnResult, list[str]]:
        req = turn_request("once only", sid)
        req.turn_id, req.may_repeat = "resp_same", True
        listener = Recorder()
        done = await slow.run(req, deadline=deadline(), listener=listener)
        return done, listener.heard

    (first, heard1), (second, heard2) = await asyncio.gather(attempt(), attempt())
    history = await slow.store.history(sid)
    assert [(m["role"], m["content"], m["turn"]) for m in history] == [
        ("user", "once only", "resp_same"),
        ("assistant", "once only", "resp_same"),
    ]
    assert first.text == second.text == "once only"
    assert first.seq == second.seq == history[-1]["seq"]
    assert ["source:bypass", "once only"] in (heard1, heard2)  # the second: told again whole
    assert slow.admission.inflight == 0


def _cache_counts(agents: Agents) -> list[str]:
    assert agents.metrics is not None
    text = agents.metrics.render().decode()
    return sorted(re.findall(r"agentd_cache_lookups_total\{.*", text))


def _stage_counts(agents: Agents) -> list[str]:
    assert agents.metrics is not None
    text = agents.metrics.render().decode()
    return sorted(re.findall(r"agentd_turn_stage_seconds_count\{.*", text))


async def test_a_turn_is_refused_before_it_runs_streamed_or_not(agents: Factory) -> None:
    slow = await agents(server={"max_inflight_turns": 1}, **echo(latency_ms=300))
    unknown = turn_request(agent="nobody")
    with pytest.raises(NotFound):
        await streamed(slow, unknown)
    with pytest.raises(NotFound):
        await slow.run(unknown, deadline=deadline())
    await slow.run(turn_request(temperature=0), deadline=deadline())  # now cached
    busy = asyncio.create_task(slow.run(turn_request(), deadline=deadline()))
    await wait_until(lambda: slow.admission.inflight == 1, what="the busy turn to be admitted")
    # A full worker refuses even a turn its L1 would answer, streamed or not.
    with pytest.raises(Overloaded):
        await slow.run(turn_request(temperature=0), deadline=deadline())
    with pytest.raises(Overloaded):
        await streamed(slow, turn_request(temperature=0))
    await busy
    done = await slow.run(turn_request(temperature=0), deadline=deadline())
    assert done.text == "one two three"
    assert done.cache == "hit-l1" and slow.admission.inflight == 0
