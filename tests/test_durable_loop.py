"""Durable tool loops: a background response's loop records each completed step in the
store, and a worker killed -9 mid-loop leaves the job to another worker that goes on
after the last recorded step. Against real ``agentd serve`` instances sharing a real
Redis (one server, and a cluster), a real MCP tool server (tests/mcp_servers/toolbox.py,
whose ``chain`` tool counts its calls and can wait for a gate file) and the echo model,
which reads the tools' results as its next step's calls."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx2 as httpx
import openai
import orjson
import pytest
import redis
from aiohttp.test_utils import TestServer
from redis.cluster import RedisCluster
from redis.crc import key_slot

from agentd.agent import Agents, Checkpoint, Listener, RecordedStep, TurnRequest, TurnResult
from agentd.config import from_dict
from agentd.jobs.mcp import recorded_ends
from agentd.jobs.steps import Streamed
from agentd.server.app import create_app
from agentd.server.keys import AGENTS
from agentd.store import Store, open_store
from agentd.store.keys import record_keys, steps_key
from agentd.wire.responses import ResponseEvents, ResponseView, parse_create
from agentd.wire.responses.items import call_item

from .chat_helpers import post
from .mcp_servers.procs import HttpToolbox
from .procs import AgentdProcess, RedisClusterProcs, RedisServer
from .test_responses import client, history, wait_status
from .waiting import wait_until

Start = Callable[..., AgentdProcess]

# -- the store: steps recorded per response, fenced by attempt, on every topology ------


async def test_steps_are_recorded_in_order_fenced_and_dropped_at_the_end(store: Store) -> None:
    jobs = store.jobs
    await jobs.create("resp_s", {"status": b"queued", "req": b"{}"}, 60)
    assert (await jobs.start("resp_s", 3, "c")).attempt == 1
    assert await jobs.steps("resp_s") == []
    assert await jobs.record_step("resp_s", 1, 0, b'{"n":0}')
    assert await jobs.record_step("resp_s", 1, 1, b'{"n":1}')
    # Sent again (a retried write): kept once. After a missing step: left out.
    assert await jobs.record_step("resp_s", 1, 1, b'{"n":"again"}')
    assert await jobs.record_step("resp_s", 1, 3, b'{"n":3}')
    assert await jobs.steps("resp_s") == [b'{"n":0}', b'{"n":1}']
    # A newer attempt owns the job: the older one records nothing more.
    assert (await jobs.start("resp_s", 3, "c")).attempt == 2
    assert not await jobs.record_step("resp_s", 1, 2, b'{"late":1}')
    assert await jobs.record_step("resp_s", 2, 2, b'{"n":2}')
    assert await jobs.steps("resp_s") == [b'{"n":0}', b'{"n":1}', b'{"n":2}']
    # Ended: no attempt resumes, the steps go.
    assert await jobs.finish("resp_s", 2, {"status": b"completed"}, [(0, b"{}")])
    assert await jobs.steps("resp_s") == []
    assert not await jobs.record_step("resp_s", 3, 0, b"{}")
    # Deleted with the record too.
    await jobs.create("resp_d", {"status": b"queued", "req": b"{}"}, 60)
    await jobs.start("resp_d", 3, "c")
    assert await jobs.record_step("resp_d", 1, 0, b"{}")
    assert await jobs.delete("resp_d")
    assert await jobs.steps("resp_d") == []
    assert not await jobs.record_step("resp_d", 1, 1, b"{}")


async def test_steps_live_in_the_records_slot_and_expire_with_it(
    redis_standalone: RedisServer,
) -> None:
    assert key_slot(steps_key("resp_k").encode()) == key_slot(record_keys("resp_k")[0].encode())
    store = open_store(from_dict({"redis": {"urls": [redis_standalone.url]}}))
    await store.start()
    try:
        await store.jobs.create("resp_t", {"status": b"queued", "req": b"{}"}, 600)
        await store.jobs.start("resp_t", 3, "c")
        assert await store.jobs.record_step("resp_t", 1, 0, b"{}")
    finally:
        await store.close()
    with redis.Redis.from_url(redis_standalone.url) as r:
        ttl = r.ttl(steps_key("resp_t"))
        assert 0 < ttl <= r.ttl(record_keys("resp_t")[0])


def test_a_resumed_attempt_streams_only_the_text_beyond_what_was_streamed() -> None:
    def event(kind: str, **fields: Any) -> bytes:
        return orjson.dumps({"type": kind, **fields})

    opening = [event("response.created"), event("response.in_progress")]
    # A first attempt started over by a second one: only the second one's text counts.
    events = [*opening, event("response.output_text.delta", delta="stale")]
    events += [event("response.in_progress"), event("response.output_text.delta", delta="ab")]
    events.append(event("response.output_text.delta", delta="cd"))
    streamed = Streamed.of(events)
    assert streamed.opened
    assert [streamed.rest(p) for p in ("a", "bcd", "ef", "g")] == ["", "", "ef", "g"]
    assert [Streamed.of(opening).rest(p) for p in ("x", "y")] == ["x", "y"]
    # Nothing was opened (the stream holds its creation only): open it, stream it all.
    untouched = Streamed.of(opening[:1])
    assert not untouched.opened and untouched.rest("abc") == "abc"


def test_calls_a_stored_turn_ran_end_with_their_recorded_results() -> None:
    # The earlier attempt stored its turn and stopped before its calls' ends reached
    # the stream: the attempt that finds the turn ends them as the steps recorded them.
    request = parse_create(orjson.dumps({"model": "looper", "input": "hi"}), None)
    view = ResponseView("resp_r", 1.0, "in_progress", request)
    first = ResponseEvents(view, 0, tools=True)
    ok, bad = (call_item("resp_r", f"call_{n}", "web", "chain", "{}") for n in "ab")
    written = first.opening() + first.call_started(ok) + first.call_started(bad)
    said = {"role": "assistant", "content": None, "tool_calls": [
        {"id": f"call_{n}", "type": "function", "function": {"name": "web__chain",
                                                              "arguments": "{}"}}
        for n in "ab"]}  # fmt: skip
    results = [
        {"role": "tool", "tool_call_id": "call_a", "content": "fine"},
        {"role": "tool", "tool_call_id": "call_b", "content": "late", "status": "timeout"},
    ]
    resumed = ResponseEvents(view, len(written), tools=True)
    resumed.resume(written[2:])
    ends = recorded_ends(resumed, "resp_r", [RecordedStep(said, results, {})])
    assert [e["type"] for e in ends] == [
        "response.mcp_call.completed", "response.output_item.done",
        "response.mcp_call.failed", "response.output_item.done",
    ]  # fmt: skip
    assert [e["sequence_number"] for e in ends] == list(range(len(written), len(written) + 4))
    assert ends[1]["item"]["output"] == "fine"
    assert ends[3]["item"]["error"]["code"] == -32001  # a timeout's
    # Ended now: told again (a call the stream ended), nothing more.
    assert recorded_ends(resumed, "resp_r", [RecordedStep(said, results, {})]) == []
    final = resumed.closing(dataclasses.replace(view, status="completed", output_text="done"))
    assert [i["status"] for i in final[-1]["response"]["output"][:2]] == ["completed", "failed"]


# -- loops over the toolbox: resumed in process, and after a worker is killed -9 ------


@pytest.fixture
def toolbox(tmp_path: Path) -> Iterator[HttpToolbox]:
    state = tmp_path / "toolbox"
    state.mkdir()
    server = HttpToolbox(state)
    yield server
    server.kill()


def _config(urls: list[str], toolbox: HttpToolbox, *, cluster: bool) -> str:
    return f"""
[server]
workers = 2
shutdown_timeout = 2.0
[redis]
urls = {orjson.dumps(urls).decode()}
cluster = {"true" if cluster else "false"}
[jobs]
lease_s = 1.0
[[backends]]
name = "echo"
type = "echo"
[[mcp_servers]]
label = "web"
url = "{toolbox.url}"
[[agents]]
name = "looper"
backend = "echo"
tools = ["web"]
"""


def _call(tool: str, **arguments: str) -> str:
    return f"call {tool} {orjson.dumps(arguments).decode()}"


# Two calls a step, each answering with one call of the next step (the echo model reads
# results that are all call lines as its next calls): ``one`` and ``side``, then ``two``
# and ``five``, then ``three`` (held at the gate ``g``) and ``four``, whose answers are
# the model's final reply.
SCRIPT = "\n".join(
    [
        _call("chain", name="one", then=_call("chain", name="two", then=_call(
            "chain", name="three", gate="g"))),
        _call("chain", name="side", then=_call("chain", name="five", then=_call(
            "chain", name="four"))),
    ]
)  # fmt: skip
FINAL = "chain: three done\nchain: four done"


def _counts(toolbox: HttpToolbox) -> dict[str, int]:
    """Calls per name, from the toolbox's tally files."""
    return {p.name.removeprefix("tally-"): p.stat().st_size for p in toolbox.state.glob("tally-*")}


def _redis(urls: list[str], cluster: bool) -> Any:
    return RedisCluster.from_url(urls[0]) if cluster else redis.Redis.from_url(urls[0])


def _runner_pid(r: Any, rid: str) -> int | None:
    """The pid of the worker running the job (its consumer name is host:pid:random)."""
    by = r.hget(record_keys(rid)[0], "by")
    return None if by is None else int(by.split(b":")[1])


async def _read_stream(procs: list[AgentdProcess], rid: str, seen: list[Any]) -> None:
    """Read the response's events the way a client does: when its connection breaks
    (it was served by the worker a test killed), go on from the last sequence number
    seen, on the other instance."""
    for attempt in range(40):
        sdk = client(procs[attempt % len(procs)])
        try:
            if seen:
                after = seen[-1].sequence_number
                stream = await sdk.responses.retrieve(rid, stream=True, starting_after=after)
            else:
                stream = await sdk.responses.retrieve(rid, stream=True)
            async with stream:
                async for event in stream:
                    seen.append(event)
                    if event.type in ("response.completed", "response.failed"):
                        return
        except (openai.APIError, httpx.HTTPError):
            continue
    raise AssertionError("the stream never reached its end")


async def _run(
    procs: list[AgentdProcess], *, kill: Callable[[str], Any] | None = None
) -> tuple[Any, list[Any]]:
    """Run the scripted loop as a background response while a client reads its events;
    ``kill(rid)`` (awaited) acts mid-loop. The final response and the events read."""
    sdk = client(procs[0])
    job = await sdk.responses.create(model="looper", input=SCRIPT, background=True)
    seen: list[Any] = []
    reader = asyncio.create_task(_read_stream(procs, job.id, seen))
    if kill is not None:
        await kill(job.id)
    await asyncio.wait_for(reader, 60)
    return await wait_status(sdk, job.id, limit=60), seen


def _output(response: Any) -> list[dict[str, Any]]:
    """A response's output items without their ids (derived from the response id)."""
    return [{k: v for k, v in item.model_dump().items() if k != "id"} for item in response.output]


def _per_item(events: list[Any]) -> dict[int, list[str]]:
    """The types of the events about each output item, by its output_index (two
    concurrent calls may end in either order: what each item is told may not vary)."""
    told: dict[int, list[str]] = {}
    for event in events:
        index = getattr(event, "output_index", None)
        if index is not None:
            told.setdefault(index, []).append(event.type)
    return told


def _shape(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The session's messages without what differs between two runs of one turn."""
    return [
        {k: v for k, v in m.items() if k not in ("seq", "created_at", "turn")} for m in messages
    ]


async def test_each_model_call_of_a_loop_sees_every_earlier_step_once(
    serve: Any, toolbox: HttpToolbox
) -> None:
    # A resumed loop builds its conversation from the recorded steps: the same one an
    # undisturbed loop's calls must see (the echo model counts its prompt's characters).
    (toolbox.state / "open-g").write_text("open")
    url = await serve(
        mcp_servers=[{"label": "web", "url": toolbox.url}],
        agents=[{"name": "looper", "tools": ["web"]}],
    )
    async with aiohttp.ClientSession() as http:
        status, _, session = await post(http, url + "/v1/sessions", {"agent": "looper"})
        assert status == 201
        ask = {"role": "user", "content": SCRIPT}
        body = {"model": "looper", "messages": [ask], "session_id": session["id"]}
        status, _, reply = await post(http, url + "/v1/chat/completions", body)
        assert status == 200, reply
        async with http.get(f"{url}/v1/sessions/{session['id']}/messages") as r:
            stored = (await r.json())["data"]
    assert reply["choices"][0]["message"]["content"] == FINAL
    chars = [len(m.get("content") or "") for m in stored]
    # A model call before each assistant message, its prompt every message before it.
    prompts = [sum(chars[:i]) for i, m in enumerate(stored) if m["role"] == "assistant"]
    assert len(prompts) == 4
    assert reply["usage"]["prompt_tokens"] == sum((c + 3) // 4 for c in prompts)


class Steps(Checkpoint):
    """A checkpoint the test holds: the steps it gives, and those the loop records."""

    def __init__(self, given: list[RecordedStep] | None = None) -> None:
        self.given = given or []
        self.steps: list[RecordedStep] = []

    def recorded(self) -> list[RecordedStep]:
        return self.given

    async def step(self, step: RecordedStep) -> None:
        self.steps.append(step)


class Heard(Listener):
    def __init__(self) -> None:
        self.deltas: list[str] = []
        self.told: list[tuple[str, Any, Any]] = []  # ("step"|"call"|"result", ...)

    async def delta(self, text: str) -> None:
        self.deltas.append(text)

    async def tool_step(self, calls: Any) -> None:
        self.told.append(("step", [c["id"] for c in calls], None))

    async def tool_call(self, call: Any, server: str) -> None:
        self.told.append(("call", call["id"], server))

    async def tool_result(self, call: Any, result: Any) -> None:
        self.told.append(("result", call["id"], (result.text, result.is_error)))


@pytest.fixture
async def agents(toolbox: HttpToolbox) -> AsyncIterator[Agents]:
    """The agents of an app (memory store) with ``looper``, whose tools are the toolbox's."""
    config = {
        "mcp_servers": [{"label": "web", "url": toolbox.url}],
        "agents": [{"name": "looper", "tools": ["web"]}],
        "cache": {"disk_path": ""},
    }
    server = TestServer(create_app(from_dict(config)), host="127.0.0.1")
    await server.start_server()
    yield server.app[AGENTS]
    await server.close()


async def test_a_loop_goes_on_after_the_steps_its_checkpoint_gives(
    agents: Agents, toolbox: HttpToolbox
) -> None:
    (toolbox.state / "open-g").write_text("open")

    async def turn(checkpoint: Steps) -> tuple[TurnResult, Heard]:
        req = TurnRequest("looper", [{"role": "user", "content": SCRIPT}], checkpoint=checkpoint)
        heard = Heard()
        deadline = asyncio.get_running_loop().time() + 30
        return await agents.run(req, deadline=deadline, listener=heard), heard

    first = Steps()
    done, _ = await turn(first)
    assert done.text == FINAL and done.steps == 4
    # Every step whose calls all ended, with its model call's usage.
    assert [len(s.results) for s in first.steps] == [2, 2, 2]
    assert all(s.usage["prompt_tokens"] > 0 for s in first.steps)
    before = _counts(toolbox)
    # Given its first two steps (as if said with some text), a new run makes only the
    # third and the answer, and tells the steps' text as the loop does (steps apart).
    said = [dataclasses.replace(s, said={**s.said, "content": f"step {i}"})
            for i, s in enumerate(first.steps[:2])]  # fmt: skip
    again = Steps(said)
    resumed, heard = await turn(again)
    deltas = heard.deltas
    counts = _counts(toolbox)
    assert {k: counts[k] - before[k] for k in before} == {
        "one": 0, "side": 0, "two": 0, "five": 0, "three": 1, "four": 1,
    }  # fmt: skip
    assert resumed.text == "step 0\n\nstep 1\n\n" + FINAL
    assert "".join(deltas) == resumed.text and deltas[:4] == ["step 0", "\n\n", "step 1", "\n\n"]
    assert resumed.steps == 4 and [r.tool for r in resumed.tool_runs] == ["chain", "chain"]
    # It recorded the third step only (the same calls and results: the ids differ, the
    # conversation having the steps' text).
    [third] = again.steps

    def made(step: RecordedStep) -> tuple[list[Any], list[Any]]:
        return [c["function"] for c in step.said["tool_calls"]], [
            r["content"] for r in step.results
        ]

    assert made(third) == made(first.steps[2])
    # The listener is told the given steps' calls again, each with its recorded result
    # (its server too), and a step start only for the step it runs.
    replayed = []
    for step in said:
        ids = [c["id"] for c in step.said["tool_calls"]]
        replayed += [("call", i, "web") for i in ids]
        replayed += [("result", r["tool_call_id"], (r["content"], False)) for r in step.results]
    assert heard.told[: len(replayed)] == replayed
    ran = [c["id"] for c in third.said["tool_calls"]]
    assert heard.told[len(replayed)] == ("step", ran, None)
    assert sorted(t[:2] for t in heard.told[len(replayed) + 1 :]) == sorted(
        [("call", i) for i in ran] + [("result", i) for i in ran]
    )


@pytest.mark.slow
@pytest.mark.parametrize("topology", ["single", "cluster"])
async def test_a_worker_killed_mid_loop_is_resumed_after_its_last_step(
    agentd_instance: Start, toolbox: HttpToolbox, request: pytest.FixtureRequest, topology: str
) -> None:
    if topology == "cluster":
        cluster: RedisClusterProcs = request.getfixturevalue("redis_cluster")
        urls = cluster.urls
    else:
        urls = [request.getfixturevalue("redis_standalone").url]
    config = _config(urls, toolbox, cluster=topology == "cluster")
    procs = [agentd_instance(config), agentd_instance(config)]
    gate = toolbox.state / "open-g"

    # The run no one disturbs: what the crashed one must end with.
    gate.write_text("open")
    baseline, baseline_events = await _run(procs)
    assert baseline.status == "completed" and baseline.output_text == FINAL
    once = {"one": 1, "side": 1, "two": 1, "five": 1}
    assert _counts(toolbox) == {**once, "three": 1, "four": 1}
    for path in [gate, *toolbox.state.glob("tally-*")]:
        path.unlink()

    r = _redis(urls, topology == "cluster")
    killed: list[int] = []

    async def kill_in_step_3(rid: str) -> None:
        # ``three`` started: steps 1 and 2 were recorded before step 3's model call.
        await wait_until(lambda: _counts(toolbox).get("three") == 1, 30, "step 3 to start")
        assert len(r.lrange(steps_key(rid), 0, -1)) == 2, r.lrange(steps_key(rid), 0, -1)

        pid = _runner_pid(r, rid)
        assert pid is not None and pid in procs[0].worker_pids() | procs[1].worker_pids()
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)
        # Another worker takes the job over and runs step 3 again, not steps 1 and 2.
        await wait_until(lambda: _counts(toolbox).get("three") == 2, 60, "step 3 to run again")
        gate.write_text("open")

    done, events = await _run(procs, kill=kill_in_step_3)
    assert killed and _runner_pid(r, done.id) not in killed

    # No call whose result was recorded ran twice; step 3's had none recorded.
    counts = _counts(toolbox)
    assert {k: counts[k] for k in (*once, "three")} == {**once, "three": 2}
    assert 1 <= counts["four"] <= 2
    # The same answer, usage and stored turn as the undisturbed run.
    assert done.status == "completed" and done.output_text == baseline.output_text
    assert done.usage == baseline.usage
    sid, baseline_sid = done.model_extra["session_id"], baseline.model_extra["session_id"]
    stored = await history(procs[0], sid)
    assert _shape(stored) == _shape(await history(procs[0], baseline_sid))
    steps = ["assistant", "tool", "tool"] * 3
    assert [m["role"] for m in stored] == ["user", *steps, "assistant"]
    # The stream read across the kill: every sequence number once, in order, and the
    # same events as the undisturbed run's (one opening, the deltas once).
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert [e.type for e in events] == [e.type for e in baseline_events]
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert deltas == [e.delta for e in baseline_events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == FINAL
    # Every tool item added once and ended once, the replayed steps' calls too: the
    # output (as the stream ends and as stored) is the undisturbed run's.
    assert _per_item(events) == _per_item(baseline_events)
    assert [e.item.id for e in events if e.type == "response.output_item.added"] == [
        item.id for item in done.output
    ]
    assert [i["name"] for i in _output(done) if i["type"] == "mcp_call"] == [
        "chain", "chain"] * 3  # fmt: skip
    assert _output(done) == _output(baseline)
    assert _output(events[-1].response) == _output(done)
    # A late reader gets the same stream, and the steps are gone with the job.
    late = [e async for e in await client(procs[1]).responses.retrieve(done.id, stream=True)]
    assert [e.model_dump() for e in late] == [e.model_dump() for e in events]
    assert r.exists(steps_key(done.id)) == 0
    r.close()
