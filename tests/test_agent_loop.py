"""The agent loop (agentd/agent/loop.py): an agent with MCP tools runs them server-side
and goes on until the model answers, over chat completions (plain and streamed, through
the official SDK too), the WebSocket protocol and the Responses API; against real MCP
servers (tests/mcp_servers/toolbox.py) and the echo model, which scripts calls
(``call NAME ARGS`` lines, in the user's message or in a tool's result)."""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest

from .chat_helpers import post
from .mcp_servers.procs import TOOLBOX, HttpToolbox
from .waiting import wait_until


@pytest.fixture(scope="module")
def toolbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpToolbox]:
    server = HttpToolbox(tmp_path_factory.mktemp("loop-toolbox"))
    yield server
    server.kill()


def config(toolbox: HttpToolbox, state: Path, **tools: Any) -> dict[str, Any]:
    """Agent ``tooled`` with the HTTP toolbox ``web``; agent ``local`` with a stdio one
    (its ``tally`` and ``crash`` only)."""
    return {
        "mcp_servers": [
            {"label": "web", "url": toolbox.url},
            {
                "label": "local",
                "command": sys.executable,
                "args": [TOOLBOX, "stdio"],
                "env": {"TOOLBOX_STATE": str(state)},
            },
        ],
        "agents": [
            {"name": "echo"},
            {"name": "tooled", "tools": ["web"]},
            {"name": "local", "tools": ["local:tally", "local:crash"]},
        ],
        "tools": {"tool_timeout_s": 10.0, **tools},
    }


def ask(content: str, model: str = "tooled", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def steps_of(timing: str) -> int:
    found = re.search(r"steps;desc=(\d+)", timing)
    assert found, timing
    return int(found.group(1))


async def chat(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> tuple[int, Any, Any]:
    return await post(http, url + "/v1/chat/completions", body)


# -- chat completions --------------------------------------------------------------------


async def test_a_tool_call_runs_server_side_and_the_model_answers_with_its_result(
    serve: Any, toolbox: HttpToolbox, tmp_path: Path
) -> None:
    url = await serve(**config(toolbox, tmp_path))
    async with aiohttp.ClientSession() as http:
        status, headers, body = await chat(http, url, ask('call add {"a": 2, "b": 40}'))
    assert status == 200, body
    choice = body["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["content"].startswith("add: ")
    assert "42" in choice["message"]["content"]
    assert "tool_calls" not in choice["message"]
    timing = headers["Server-Timing"]
    assert steps_of(timing) == 2
    assert re.search(r'tool;desc="web/add";dur=\d+\.\d\d', timing), timing
    assert re.search(r"tools;dur=\d+\.\d\d", timing), timing
    # Both model calls are counted: the second one's prompt holds the first's.
    single = await _usage_of_one_call(url)
    assert body["usage"]["prompt_tokens"] > single["prompt_tokens"]


async def _usage_of_one_call(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http:
        _, _, body = await chat(http, url, ask('call add {"a": 2, "b": 40}', model="echo"))
    return body["usage"]


async def test_a_looping_turn_is_stored_in_openai_shapes_and_the_session_goes_on(
    serve: Any, toolbox: HttpToolbox, tmp_path: Path
) -> None:
    url = await serve(**config(toolbox, tmp_path))
    async with aiohttp.ClientSession() as http:
        status, _, session = await post(http, url + "/v1/sessions", {"agent": "tooled"})
        assert status == 201
        sid = session["id"]
        status, _, body = await chat(http, url, ask('call echo {"text": "hi"}', session_id=sid))
        assert status == 200, body
        async with http.get(f"{url}/v1/sessions/{sid}/messages") as r:
            history = (await r.json())["data"]
        roles = [m["role"] for m in history]
        assert roles == ["user", "assistant", "tool", "assistant"]
        call = history[1]["tool_calls"][0]
        assert history[1]["content"] is None
        assert call["function"] == {"name": "echo", "arguments": '{"text": "hi"}'}
        assert history[2]["tool_call_id"] == call["id"] and history[2]["content"] == "hi"
        assert "status" not in history[2]
        assert history[3]["content"] == "echo: hi"
        assert len({m["turn"] for m in history}) == 1
        assert body["seq"] == history[3]["seq"]
        # The stored conversation is a valid one to go on from.
        status, _, body = await chat(http, url, ask("and now?", session_id=sid))
        assert status == 200, body
        assert body["choices"][0]["message"]["content"] == "and now?"


async def test_parallel_calls_run_at_once(serve: Any, toolbox: HttpToolbox, tmp_path: Path) -> None:
    # barrier answers only when both calls are in progress together; run one after the
    # other, each would time out.
    url = await serve(**config(toolbox, tmp_path, tool_timeout_s=5.0))
    lines = "\n".join(['call barrier {"parties": 2}'] * 2)
    async with aiohttp.ClientSession() as http:
        status, headers, body = await chat(http, url, ask(lines))
    assert status == 200, body
    assert body["choices"][0]["message"]["content"] == "barrier: all arrived\nbarrier: all arrived"
    assert len(re.findall(r'tool;desc="web/barrier"', headers["Server-Timing"])) == 2


async def test_tool_errors_and_timeouts_are_results_the_model_reads(
    serve: Any, toolbox: HttpToolbox, tmp_path: Path
) -> None:
    # hang times out; fail must answer within the limit, even on a loaded machine.
    url = await serve(**config(toolbox, tmp_path, tool_timeout_s=5.0))
    async with aiohttp.ClientSession() as http:
        status, _, session = await post(http, url + "/v1/sessions", {"agent": "tooled"})
        sid = session["id"]
        script = 'call fail {"why": "testing"}\ncall hang {}\ncall nope {}\ncall add {"a": 1'
        status, _, body = await chat(http, url, ask(script, session_id=sid))
        assert status == 200, body
        lines = body["choices"][0]["message"]["content"].splitlines()
        assert lines[0].startswith("fail: ") and "failed on purpose: testing" in lines[0]
        assert lines[1].startswith("hang: ") and "did not answer within" in lines[1]
        assert lines[2].startswith("nope: there is no tool named 'nope'")
        assert lines[3].startswith("add: the arguments of 'add' are not valid JSON")
        async with http.get(f"{url}/v1/sessions/{sid}/messages") as r:
            history = (await r.json())["data"]
    assert [m.get("status") for m in history if m["role"] == "tool"] == [
        "error", "timeout", "error", "error"
    ]  # fmt: skip


async def test_the_step_limit_ends_the_loop_with_an_answer(
    serve: Any, toolbox: HttpToolbox, tmp_path: Path
) -> None:
    # "again" asks for itself forever; the last allowed call is made with tool_choice
    # "none", so the model answers in words.
    url = await serve(**config(toolbox, tmp_path, max_steps=3))
    async with aiohttp.ClientSession() as http:
        status, headers, body = await chat(http, url, ask("call again {}"))
    assert status == 200, body
    assert steps_of(headers["Server-Timing"]) == 3
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["choices"][0]["message"]["content"] == "again: call again {}"
    assert len(re.findall(r'tool;desc="web/again"', headers["Server-Timing"])) == 2


async def test_a_streamed_turn_shows_tool_progress_that_standard_clients_skip(
    serve: Any, toolbox: HttpToolbox, tmp_path: Path
) -> None:
    url = await serve(**config(toolbox, tmp_path))
    frames: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as http:
        body = ask('call echo {"text": "streamed"}', stream=True)
        async with http.post(url + "/v1/chat/completions", json=body) as r:
            assert r.status == 200
            async for line in r.content:
                if line.startswith(b"data: {"):
                    frames.append(orjson.loads(line[6:]))
    progress = [f["agentd"] for f in frames if "agentd" in f]
    assert [p["type"] for p in progress] == ["tool_call", "tool_result"]
    assert progress[0]["name"] == "echo" and progress[0]["server"] == "web"
    assert progress[0]["arguments"] == '{"text": "streamed"}'
    assert progress[1]["outcome"] == "ok" and progress[1]["output"] == "streamed"
    assert progress[0]["call_id"] == progress[1]["call_id"]
    for frame in frames:
        if "agentd" in frame:
            assert frame["choices"] == [{"index": 0, "delta": {}, "finish_reason": None}]
    # The agent's own calls are not the client's: no tool_calls deltas reach it.
    assert not any(f["choices"] and "tool_calls" in f["choices"][0]["delta"] for f in frames)
    text = "".join(f["choices"][0]["delta"].get("content") or "" for f in frames if f["choices"])
    assert text == "echo: streamed"
    assert frames[-1]["choices"][0]["finish_reason"] == "stop"

    # The official SDK reads the same stream as a plain reply.
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused")
    stream = await client.chat.completions.create(
        model="tooled", messages=[{"role": "user", "content": 'call echo {"text": "sdk"}'}],
        stream=True,
    )  # fmt: skip
    said = [c.choices[0].delta.content async for c in stream if c.choices]
    assert "".join(s or "" for s in said) == "echo: sdk"
    await client.close()


async def test_client_calls_in_a_reply_with_the_agents_go_to_the_client(
    serve: Any, toolbox: HttpToolbox, tmp_path: Path
) -> None:
    url = await serve(**config(toolbox, tmp_path))
    mine = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
    async with aiohttp.ClientSession() as http:
        status, _, session = await post(http, url + "/v1/sessions", {"agent": "tooled"})
        sid = session["id"]
        script = 'call add {"a": 1, "b": 1}\ncall lookup {"q": "x"}'
        status, _, body = await chat(http, url, ask(script, session_id=sid, tools=[mine]))
        assert status == 200, body
        choice = body["choices"][0]
        assert choice["finish_reason"] == "tool_calls"
        calls = choice["message"]["tool_calls"]
        assert [c["function"]["name"] for c in calls] == ["lookup"]
        answer = {"role": "tool", "tool_call_id": calls[0]["id"], "content": "found"}
        status, _, body = await chat(
            http, url, {"model": "tooled", "messages": [answer], "session_id": sid, "tools": [mine]}
        )
        assert status == 200, body
        said = body["choices"][0]["message"]["content"]
        assert said.startswith("add: {") and '"sum": 2' in said
        assert said.endswith("\nlookup: found")
        async with http.get(f"{url}/v1/sessions/{sid}/messages") as r:
            history = (await r.json())["data"]
    assert [m["role"] for m in history] == ["user", "assistant", "tool", "tool", "assistant"]
    assert len(history[1]["tool_calls"]) == 2


async def test_a_client_tool_named_like_the_agents_is_refused(
    serve: Any, toolbox: HttpToolbox, tmp_path: Path
) -> None:
    url = await serve(**config(toolbox, tmp_path))
    clash = {"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}
    async with aiohttp.ClientSession() as http:
        status, _, body = await chat(http, url, ask("hi", tools=[clash]))
    assert status == 400
    assert body["error"]["code"] == "tool_name_conflict"
    assert body["error"]["param"] == "tools[0].function.name"


@pytest.mark.parametrize("stream", [False, True])
async def test_the_loop_over_a_provider_that_interleaves_parallel_calls(
    serve: Any, stub: Any, toolbox: HttpToolbox, tmp_path: Path, stream: bool
) -> None:
    node = await stub(interleave=True, argument_piece=3)
    raw = config(toolbox, tmp_path)
    raw["backends"] = [{"name": "echo"}, {"name": "up", "type": "openai", "urls": [node.url]}]
    raw["agents"][1]["backend"] = "up"
    url = await serve(**raw)
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    messages: Any = [
        {"role": "user", "content": 'call echo {"text": "one"}\ncall echo {"text": "two"}'}
    ]
    if stream:
        chunks = await client.chat.completions.create(
            model="tooled", messages=messages, stream=True
        )
        said = "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])
    else:
        reply = await client.chat.completions.create(model="tooled", messages=messages)
        said = reply.choices[0].message.content or ""
    await client.close()
    assert said == "stub:one | two"
    # The stub's second request held both calls and both results, in order.
    last = node.requests[-1].json["messages"]
    assert [m["role"] for m in last] == ["user", "assistant", "tool", "tool"]
    assert [c["function"]["arguments"] for c in last[1]["tool_calls"]] == [
        '{"text": "one"}', '{"text": "two"}'
    ]  # fmt: skip


async def test_a_tool_server_that_crashes_mid_call_is_a_result_and_comes_back(
    serve: Any, toolbox: HttpToolbox, tmp_path: Path
) -> None:
    url = await serve(**config(toolbox, tmp_path))
    async with aiohttp.ClientSession() as http:
        status, _, body = await chat(http, url, ask("call crash {}", model="local"))
        assert status == 200, body
        assert body["choices"][0]["message"]["content"].startswith(
            "crash: the call of 'crash' failed"
        )
        # The stdio server is started again for the next call.
        status, _, body = await chat(http, url, ask('call tally {"name": "back"}', model="local"))
        assert status == 200, body
        assert body["choices"][0]["message"]["content"] == "tally: back 1"


# -- the WebSocket and the Responses API ---------------------------------------------------


async def test_a_websocket_turn_runs_the_loop_and_shows_each_call(
    serve: Any, toolbox: HttpToolbox, tmp_path: Path
) -> None:
    url = await serve(**config(toolbox, tmp_path))
    async with aiohttp.ClientSession() as http, http.ws_connect(url + "/v1/ws") as ws:
        await ws.send_json({"type": "hello", "agent": "local"})
        hello = await ws.receive_json(timeout=10)
        assert hello["type"] == "ready", hello
        await ws.send_json({"type": "message", "id": 1, "content": 'call tally {"name": "ws"}'})
        frames = []
        while not frames or frames[-1]["type"] not in ("done", "error"):
            frame = await ws.receive_json(timeout=20)
            if frame.get("id") == 1:
                frames.append(frame)
    kinds = [f["type"] for f in frames]
    assert kinds[:2] == ["tool_call", "tool_result"] and kinds[-1] == "done", frames
    assert frames[0]["server"] == "local" and frames[1]["output"] == "ws 1"
    assert frames[-1]["message"]["content"] == "tally: ws 1"
    assert frames[-1]["finish_reason"] == "stop"
    assert (tmp_path / "tally-ws").read_text() == "x"


async def test_a_responses_turn_runs_the_loop(
    serve: Any, toolbox: HttpToolbox, tmp_path: Path
) -> None:
    url = await serve(**config(toolbox, tmp_path))
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused")
    response = await client.responses.create(model="tooled", input='call echo {"text": "r"}')
    await client.close()
    assert response.status == "completed"
    assert response.output_text == "echo: r"


# -- stopping ---------------------------------------------------------------------------


async def test_an_interrupt_stops_a_running_tool_call_and_the_turn_is_stored_cancelled(
    serve: Any, toolbox: HttpToolbox, tmp_path: Path
) -> None:
    url = await serve(**config(toolbox, tmp_path), sessions={"concurrent_turns": "interrupt"})
    hang_state = toolbox.state
    for trace in ("cancelled", "hang-started"):
        (hang_state / trace).unlink(missing_ok=True)
    async with aiohttp.ClientSession() as http:
        status, _, session = await post(http, url + "/v1/sessions", {"agent": "tooled"})
        sid = session["id"]
        first = asyncio.create_task(chat(http, url, ask("call hang {}", session_id=sid)))
        await wait_until(lambda: (hang_state / "hang-started").exists(), 20, "the tool to start")
        status, _, second = await chat(http, url, ask("next", session_id=sid))
        assert status == 200, second
        status, _, body = await first
        assert status == 200, body
        assert body["choices"][0]["finish_reason"] == "cancelled"
        # The tool server was told: the call stopped there too.
        await wait_until(lambda: (hang_state / "cancelled").exists(), 20, "the cancellation")
        async with http.get(f"{url}/v1/sessions/{sid}/messages") as r:
            history = (await r.json())["data"]
    assert [m["role"] for m in history] == ["user", "assistant", "tool", "assistant", "user",
                                            "assistant"]  # fmt: skip
    assert history[2]["status"] == "cancelled"
    assert history[2]["content"] == "the call was cancelled: the turn was interrupted"
    assert history[3]["status"] == "cancelled"
    assert history[5]["content"] == "next"
