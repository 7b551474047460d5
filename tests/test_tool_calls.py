"""Client-side function tools passed through chat completions: the model's tool calls
reach the client in OpenAI's shapes (whole and streamed), the client's tool messages
reach the model, sessions store and replay all of it, bad tools and tool messages are
400s with stable codes, and the cache keys replies on the tools. Over the echo backend's
scripted calls and over the OpenAI stub (agentd's ``openai`` backend), with the
official SDK."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from agentd import _fastpath_py
from agentd.backends import ChatRequest, ToolCallBuffer
from agentd.backends.echo import ARGUMENT_PIECE, scripted_calls, tool_results_text
from agentd.errors import BadRequest
from agentd.schema import check_tool_messages, check_tool_params, pending_calls

from .chat_helpers import Factory, echo, post, sse, turn_running
from .openai_stub import MakePool, StartStub, StubNode
from .sdk_strict import strictly
from .test_websocket import receive, until
from .waiting import wait_until

CHAT = "/v1/chat/completions"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
}
TOOLS = [WEATHER, TIME]
PARIS = '{"city": "Paris, France"}'
ASK = f"call get_weather {PARIS}"


class Upstream:
    """agentd over one backend: its URL, and the stub node when the backend is one."""

    def __init__(self, url: str, node: StubNode | None) -> None:
        self.url, self.node = url, node

    def client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.url + "/v1", api_key="unused", max_retries=0)

    def answer(self, *results: str, names: tuple[str, ...] = ("get_weather",)) -> str:
        """The final text each backend makes of tool results."""
        if self.node is not None:
            return "stub:" + " | ".join(results)
        return "\n".join(f"{n}: {r}" for n, r in zip(names, results, strict=True))


@pytest.fixture(params=["echo", "stub"])
async def upstream(
    request: pytest.FixtureRequest, serve: Factory, stub: StartStub
) -> AsyncIterator[Upstream]:
    if request.param == "echo":
        yield Upstream(await serve(), None)
        return
    node = await stub(interleave=True)
    url = await serve(
        backends=[{"name": "up", "type": "openai", "urls": [node.url]}],
        agents=[{"name": "echo", "backend": "up"}],
    )
    yield Upstream(url, node)


def _assemble(chunks: list[ChatCompletionChunk]) -> tuple[dict[int, dict[str, Any]], int, str]:
    """Streamed tool call pieces put together as a client does: calls by index, how many
    argument pieces came, and the finish reason."""
    calls: dict[int, dict[str, Any]] = {}
    pieces, finish = 0, ""
    for chunk in chunks:
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for piece in choice.delta.tool_calls or ():
                call = calls.setdefault(piece.index, {"id": "", "name": "", "arguments": ""})
                if piece.id:
                    call["id"] = piece.id
                if piece.function is not None:
                    call["name"] += piece.function.name or ""
                    if piece.function.arguments:
                        call["arguments"] += piece.function.arguments
                        pieces += 1
    return calls, pieces, finish


# -- the round trip with the SDK -----------------------------------------------------------


async def test_a_tool_call_round_trip_without_a_session(upstream: Upstream) -> None:
    client = upstream.client()
    try:
        messages: list[Any] = [{"role": "user", "content": ASK}]
        reply = await client.chat.completions.create(model="echo", messages=messages, tools=TOOLS)
        choice = reply.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.content is None
        [call] = choice.message.tool_calls or []
        assert call.type == "function" and call.id.startswith("call_")
        assert call.function.name == "get_weather"
        assert json.loads(call.function.arguments) == {"city": "Paris, France"}
        messages.append(choice.message)  # sent back as the SDK returned it
        messages.append({"role": "tool", "tool_call_id": call.id, "content": "sunny"})
        final = await client.chat.completions.create(model="echo", messages=messages, tools=TOOLS)
        assert final.choices[0].finish_reason == "stop"
        assert final.choices[0].message.content == upstream.answer("sunny")
        assert final.choices[0].message.tool_calls is None
    finally:
        await client.close()
    if upstream.node is not None:
        sent = upstream.node.requests[-1].json
        assert sent["tools"] == TOOLS
        assert sent["messages"][1]["tool_calls"][0]["id"] == call.id
        assert sent["messages"][2] == {"role": "tool", "tool_call_id": call.id, "content": "sunny"}


async def test_a_streamed_tool_call_arrives_in_argument_pieces(upstream: Upstream) -> None:
    client = upstream.client()
    try:
        stream = await client.chat.completions.create(
            model="echo",
            messages=[{"role": "user", "content": ASK}],
            tools=TOOLS,
            tool_choice="auto",
            parallel_tool_calls=True,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    finally:
        await client.close()
    calls, pieces, finish = _assemble(chunks)
    assert finish == "tool_calls"
    assert list(calls) == [0]
    # The SDK's own stream helper puts them together the same way.
    client = upstream.client()
    try:
        async with client.chat.completions.stream(
            model="echo", messages=[{"role": "user", "content": ASK}], tools=TOOLS
        ) as helper:
            whole = await helper.get_final_completion()
    finally:
        await client.close()
    [call] = whole.choices[0].message.tool_calls or []
    assert (call.function.name, call.function.arguments) == ("get_weather", PARIS)
    assert whole.choices[0].finish_reason == "tool_calls"
    assert calls[0]["name"] == "get_weather" and calls[0]["id"].startswith("call_")
    assert calls[0]["arguments"] == PARIS
    assert pieces > 1  # split across chunks, and reassembled
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


async def test_parallel_tool_calls_stream_and_are_answered_together(upstream: Upstream) -> None:
    ask = f'call get_weather {PARIS}\ncall get_time {{"zone": "UTC"}}'
    client = upstream.client()
    try:
        stream = await client.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": ask}], tools=TOOLS, stream=True
        )
        calls, _, finish = _assemble([chunk async for chunk in stream])
        assert finish == "tool_calls"
        assert [calls[0]["name"], calls[1]["name"]] == ["get_weather", "get_time"]
        assert calls[0]["arguments"] == PARIS
        assert json.loads(calls[1]["arguments"]) == {"zone": "UTC"}
        assert calls[0]["id"] != calls[1]["id"]
        assistant = {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": c["id"], "type": "function",
                 "function": {"name": c["name"], "arguments": c["arguments"]}}
                for c in (calls[0], calls[1])
            ],
        }  # fmt: skip
        final = await client.chat.completions.create(
            model="echo",
            tools=TOOLS,
            messages=[
                {"role": "user", "content": ask},
                assistant,
                {"role": "tool", "tool_call_id": calls[0]["id"], "content": "sunny"},
                {"role": "tool", "tool_call_id": calls[1]["id"], "content": "noon"},
            ],
        )
    finally:
        await client.close()
    expected = upstream.answer("sunny", "noon", names=("get_weather", "get_time"))
    assert final.choices[0].message.content == expected


async def test_a_session_stores_and_replays_the_calls_and_results(upstream: Upstream) -> None:
    async with aiohttp.ClientSession() as http:
        sid = (await post(http, upstream.url + "/v1/sessions", {}))[2]["id"]
    client = upstream.client()
    extra = {"session_id": sid}
    try:
        reply = await client.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": ASK}], tools=TOOLS,
            extra_body=extra,
        )  # fmt: skip
        [call] = reply.choices[0].message.tool_calls or []
        # With a session, the next request carries only the new message: the result.
        final = await client.chat.completions.create(
            model="echo",
            messages=[{"role": "tool", "tool_call_id": call.id, "content": "sunny"}],
            tools=TOOLS,
            extra_body=extra,
        )
        assert final.choices[0].message.content == upstream.answer("sunny")
        again = await client.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": "thanks"}], extra_body=extra
        )
        assert again.choices[0].finish_reason == "stop"
    finally:
        await client.close()
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{upstream.url}/v1/sessions/{sid}/messages") as r,
    ):
        history = orjson.loads(await r.read())["data"]
    shapes = [(m["role"], m.get("content"), m.get("tool_calls"), m.get("tool_call_id"))
              for m in history]  # fmt: skip
    whole = call.model_dump()
    assert shapes[:4] == [
        ("user", ASK, None, None),
        ("assistant", None, [whole], None),
        ("tool", "sunny", None, call.id),
        ("assistant", upstream.answer("sunny"), None, None),
    ]
    assert "content" in history[1]  # null, as OpenAI's shape has it, not left out
    if upstream.node is not None:
        # The third turn replayed the whole exchange to the model.
        replayed = upstream.node.requests[-1].json["messages"]
        assert [m["role"] for m in replayed] == ["user", "assistant", "tool", "assistant", "user"]
        assert replayed[1]["tool_calls"] == [whole] and replayed[1]["content"] is None
        assert replayed[2]["tool_call_id"] == call.id


async def test_replies_match_the_sdk_types_strictly(serve: Factory) -> None:
    url = await serve()
    body = {"model": "echo", "messages": [{"role": "user", "content": ASK}], "tools": TOOLS}
    async with aiohttp.ClientSession() as http:
        status, _, reply = await post(http, url + CHAT, body)
        assert status == 200, reply
        strictly(ChatCompletion, reply)
        async with http.post(url + CHAT, json={**body, "stream": True}) as r:
            events = await sse(r)
    assert events[-1] == "[DONE]"
    for event in events[:-1]:
        strictly(ChatCompletionChunk, event)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": None}
    first = events[1]["choices"][0]["delta"]["tool_calls"][0]
    assert first["function"] == {"name": "get_weather", "arguments": ""}
    assert {"index", "id", "type"} <= set(first)
    rest = [e["choices"][0]["delta"]["tool_calls"][0] for e in events[2:-2]]
    assert all(set(p) == {"index", "function"} for p in rest)
    assert all(len(p["function"]["arguments"]) <= ARGUMENT_PIECE for p in rest)
    assert "".join(p["function"]["arguments"] for p in rest) == PARIS


# -- the backends ------------------------------------------------------------------------


@pytest.mark.parametrize("streamed", [True, False])
async def test_the_openai_backend_reassembles_the_calls(
    stub: StartStub, make_pool: MakePool, streamed: bool
) -> None:
    node = await stub(interleave=True, ignore_stream=not streamed)
    pool = await make_pool(node)
    ask = f'call get_weather {PARIS}\ncall get_time {{"zone": "UTC"}}'
    request = ChatRequest(
        "m", [{"role": "user", "content": ask}], {"tools": TOOLS, "tool_choice": "required"}
    )
    chunks = [chunk async for chunk in pool.stream(request)]
    sent = node.requests[-1].json
    assert sent["tools"] == TOOLS and sent["tool_choice"] == "required"
    final = chunks[-1]
    assert final.finish_reason == "tool_calls"
    assert [c["function"] for c in final.tool_calls or []] == [
        {"name": "get_weather", "arguments": PARIS},
        {"name": "get_time", "arguments": '{"zone": "UTC"}'},
    ]
    pieces = [p for c in chunks for p in c.tool_deltas or ()]
    rebuilt = ToolCallBuffer()
    for piece in pieces:
        rebuilt.add(piece)
    assert rebuilt.calls() == final.tool_calls
    assert len(pieces) > 2 if streamed else len(pieces) == 2
    done = await pool.complete(request)
    assert done.finish_reason == "tool_calls" and done.text == ""
    assert [c["function"]["name"] for c in done.tool_calls or []] == ["get_weather", "get_time"]


@pytest.mark.parametrize("streamed", [True, False])
async def test_calls_finishing_with_stop_finish_with_tool_calls(
    stub: StartStub, make_pool: MakePool, streamed: bool
) -> None:
    pool = await make_pool(await stub(calls_finish="stop", ignore_stream=not streamed))
    request = ChatRequest("m", [{"role": "user", "content": ASK}], {"tools": TOOLS})
    done = await pool.complete(request)
    assert done.finish_reason == "tool_calls" and done.tool_calls


def test_the_buffer_follows_servers_that_number_every_call_zero() -> None:
    buffer = ToolCallBuffer()
    out = [
        buffer.add({"index": 0, "id": "a", "function": {"name": "f", "arguments": "{"}}),
        buffer.add({"index": 0, "function": {"arguments": "}"}}),
        buffer.add({"index": 0, "id": "b", "function": {"name": "g", "arguments": "["}}),
        buffer.add({"index": 0, "function": {"arguments": "]"}}),
        buffer.add({"index": 0, "id": "b", "function": {"arguments": " "}}),  # id repeated
    ]
    assert [p["index"] for p in out] == [0, 0, 1, 1, 1]
    assert [(c["id"], c["function"]["arguments"]) for c in buffer.calls()] == [
        ("a", "{}"),
        ("b", "[] "),
    ]


def test_the_buffer_renumbers_and_follows_servers_without_indexes() -> None:
    buffer = ToolCallBuffer()
    out = [
        buffer.add({"index": 3, "id": "a", "type": "function",
                    "function": {"name": "f", "arguments": ""}}),
        buffer.add({"index": 7, "id": "b", "function": {"name": "g", "arguments": "{"}}),
        buffer.add({"index": 3, "function": {"arguments": '{"x"'}}),
        buffer.add({"index": 7, "function": {"arguments": "}"}}),
        buffer.add({"index": 3, "function": {"arguments": ": 1}"}}),
        buffer.add({"id": "c", "function": {"name": "h", "arguments": "[]"}}),  # no index
        buffer.add({"function": {"arguments": " "}}),  # neither: the latest call
    ]  # fmt: skip
    assert [p["index"] for p in out] == [0, 1, 0, 1, 0, 2, 2]
    assert out[0] == {"index": 0, "id": "a", "type": "function",
                      "function": {"name": "f", "arguments": ""}}  # fmt: skip
    assert out[2] == {"index": 0, "function": {"arguments": '{"x"'}}
    assert [(c["id"], c["function"]["name"], c["function"]["arguments"])
            for c in buffer.calls()] == [("a", "f", '{"x": 1}'), ("b", "g", "{}"),
                                         ("c", "h", "[] ")]  # fmt: skip


def test_the_echo_scripts_calls_deterministically() -> None:
    messages = [{"role": "user", "content": f"call get_weather {PARIS}\n\n  call get_time  "}]
    calls = scripted_calls(messages, {"tools": TOOLS})
    assert calls == scripted_calls(messages, {"tools": TOOLS})  # the same ids again
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in calls] == [
        ("get_weather", PARIS),
        ("get_time", "{}"),
    ]
    other = scripted_calls([{"role": "system", "content": "x"}, *messages], {"tools": TOOLS})
    assert {c["id"] for c in other}.isdisjoint(c["id"] for c in calls)
    assert scripted_calls(messages, {}) == []  # no tools: a plain echo
    assert scripted_calls(messages, {"tools": TOOLS, "tool_choice": "none"}) == []
    mixed = [{"role": "user", "content": "call get_time\nwhat time is it?"}]
    assert scripted_calls(mixed, {"tools": TOOLS}) == []
    broken = scripted_calls([{"role": "user", "content": "call f {oops"}], {"tools": TOOLS})
    assert broken[0]["function"]["arguments"] == "{oops"  # verbatim, as a model may err
    answered = [
        *messages,
        {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "tool_call_id": calls[0]["id"], "content": "sunny"},
        {
            "role": "tool",
            "tool_call_id": calls[1]["id"],
            "content": [{"type": "text", "text": "9"}],
        },
    ]
    assert scripted_calls(answered, {"tools": TOOLS}) == []
    assert tool_results_text(answered) == "get_weather: sunny\nget_time: 9"


# -- bad input -----------------------------------------------------------------------------


def _fn(**function: Any) -> dict[str, Any]:
    return {"type": "function", "function": {"name": "f", **function}}


BAD_TOOLS = [
    ({"tools": "f"}, "invalid_type", "tools"),
    ({"tools": []}, "invalid_value", "tools"),
    ({"tools": [WEATHER] * 129}, "invalid_value", "tools"),
    ({"tools": ["f"]}, "invalid_type", "tools[0]"),
    ({"tools": [{"function": {"name": "f"}}]}, "missing_required_parameter", "tools[0].type"),
    ({"tools": [{"type": "custom", "custom": {"name": "f"}}]}, "unknown_parameter",
     "tools[0].custom"),
    ({"tools": [{"type": "custom"}]}, "unsupported_value", "tools[0].type"),
    ({"tools": [{"type": "fn", "function": {"name": "f"}}]}, "invalid_value", "tools[0].type"),
    ({"tools": [{"type": "function"}]}, "missing_required_parameter", "tools[0].function"),
    ({"tools": [_fn(name="a b")]}, "invalid_value", "tools[0].function.name"),
    ({"tools": [_fn(name="x" * 65)]}, "invalid_value", "tools[0].function.name"),
    ({"tools": [_fn(name=None)]}, "missing_required_parameter", "tools[0].function.name"),
    ({"tools": [_fn(), _fn()]}, "invalid_value", "tools[1].function.name"),
    ({"tools": [_fn(params={})]}, "unknown_parameter", "tools[0].function.params"),
    ({"tools": [_fn(parameters=[])]}, "invalid_type", "tools[0].function.parameters"),
    ({"tools": [_fn(strict="yes")]}, "invalid_type", "tools[0].function.strict"),
    ({"tools": [_fn(description=1)]}, "invalid_type", "tools[0].function.description"),
    ({"tool_choice": "auto"}, "invalid_value", "tool_choice"),
    ({"parallel_tool_calls": True}, "invalid_value", "parallel_tool_calls"),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "invalid_value", "tool_choice"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "invalid_value", "tool_choice.function.name"),
    ({"tools": TOOLS, "tool_choice": {"type": "allowed_tools",
      "allowed_tools": {"mode": "auto", "tools": [{"type": "function",
                                                   "function": {"name": "nope"}}]}}},
     "invalid_value", "tool_choice.allowed_tools.tools[0].function.name"),
]  # fmt: skip


@pytest.mark.parametrize(("extra", "code", "param"), BAD_TOOLS)
async def test_bad_tool_definitions_are_refused(
    serve: Factory, extra: dict[str, Any], code: str, param: str
) -> None:
    url = await serve()
    body = {"model": "echo", "messages": [{"role": "user", "content": ASK}], **extra}
    async with aiohttp.ClientSession() as http:
        status, _, reply = await post(http, url + CHAT, body)
    assert status == 400, reply
    assert (reply["error"]["code"], reply["error"]["param"]) == (code, param), reply


async def test_good_tool_choices_are_accepted(serve: Factory) -> None:
    url = await serve()
    choices = [
        "none",
        "required",
        {"type": "function", "function": {"name": "get_time"}},
        {"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": [WEATHER | {
            "function": {"name": "get_weather"}}]}},
    ]  # fmt: skip
    async with aiohttp.ClientSession() as http:
        for choice in choices:
            body = {"model": "echo", "messages": [{"role": "user", "content": ASK}],
                    "tools": TOOLS, "tool_choice": choice}  # fmt: skip
            status, _, reply = await post(http, url + CHAT, body)
            assert status == 200, (choice, reply)
            expected = "stop" if choice == "none" else "tool_calls"
            assert reply["choices"][0]["finish_reason"] == expected


CALL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
ASKED = {"role": "assistant", "content": None, "tool_calls": [CALL]}
USER = {"role": "user", "content": "hi"}


def _result(call_id: Any = "call_1", **extra: Any) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": "ok", **extra}


BAD_MESSAGES = [
    ([USER, _result()], "unknown_tool_call", "messages[1].tool_call_id"),
    ([USER, ASKED, _result("call_2")], "unknown_tool_call", "messages[2].tool_call_id"),
    ([USER, ASKED, _result(), _result()], "unknown_tool_call", "messages[3].tool_call_id"),
    ([USER, ASKED, {"role": "tool", "content": "ok"}], "missing_required_parameter",
     "messages[2].tool_call_id"),
    ([USER, ASKED, _result(7)], "invalid_type", "messages[2].tool_call_id"),
    ([USER, ASKED, {"role": "tool", "tool_call_id": "call_1"}], "missing_required_parameter",
     "messages[2].content"),
    ([USER, ASKED, USER], "tool_calls_unanswered", "messages[2]"),
    ([USER, ASKED], "tool_calls_unanswered", "messages"),
    ([USER, {**ASKED, "tool_calls": [CALL, {**CALL, "id": "call_2"}]}, _result()],
     "tool_calls_unanswered", "messages"),
    ([{**USER, "tool_calls": [CALL]}], "invalid_value", "messages[0].tool_calls"),
    ([{**USER, "tool_call_id": "call_1"}], "invalid_value", "messages[0].tool_call_id"),
    ([USER, {**ASKED, "tool_calls": []}], "invalid_value", "messages[1].tool_calls"),
    ([USER, {**ASKED, "tool_calls": {}}], "invalid_type", "messages[1].tool_calls"),
    ([USER, {**ASKED, "tool_calls": [{**CALL, "id": ""}]}], "invalid_value",
     "messages[1].tool_calls[0].id"),
    ([USER, {**ASKED, "tool_calls": [CALL, CALL]}], "invalid_value",
     "messages[1].tool_calls[1].id"),
    ([USER, {**ASKED, "tool_calls": [{**CALL, "type": "custom"}]}], "unsupported_value",
     "messages[1].tool_calls[0].type"),
    ([USER, {**ASKED, "tool_calls": [{**CALL, "function": {"name": "f"}}]}],
     "missing_required_parameter", "messages[1].tool_calls[0].function.arguments"),
    ([USER, {**ASKED, "tool_calls": [{**CALL, "function": {"name": "f", "arguments": {}}}]}],
     "invalid_type", "messages[1].tool_calls[0].function.arguments"),
    ([USER, {**ASKED, "tool_calls": [{**CALL, "extra": 1}]}], "unknown_parameter",
     "messages[1].tool_calls[0].extra"),
]  # fmt: skip


@pytest.mark.parametrize(("messages", "code", "param"), BAD_MESSAGES)
async def test_bad_tool_messages_are_refused(
    serve: Factory, messages: list[Any], code: str, param: str
) -> None:
    url = await serve()
    body = {"model": "echo", "messages": messages, "tools": TOOLS}
    async with aiohttp.ClientSession() as http:
        status, _, reply = await post(http, url + CHAT, body)
    assert status == 400, reply
    assert (reply["error"]["code"], reply["error"]["param"]) == (code, param), reply


async def test_a_session_with_unanswered_calls_refuses_other_messages(serve: Factory) -> None:
    url = await serve()
    async with aiohttp.ClientSession() as http:
        sid = (await post(http, url + "/v1/sessions", {}))[2]["id"]
        ask = f"call get_weather {PARIS}\ncall get_time"
        body = {"model": "echo", "tools": TOOLS, "session_id": sid,
                "messages": [{"role": "user", "content": ask}]}  # fmt: skip
        status, _, reply = await post(http, url + CHAT, body)
        assert status == 200, reply
        first, second = reply["choices"][0]["message"]["tool_calls"]
        refused = [
            ([USER], "tool_calls_unanswered", "messages[0]"),
            ([_result(first["id"])], "tool_calls_unanswered", "messages"),  # one of two
            ([_result("call_x")], "unknown_tool_call", "messages[0].tool_call_id"),
            # Sending the stored reply again, as a client holding the conversation would.
            ([reply["choices"][0]["message"], _result(first["id"]), _result(second["id"])],
             "tool_calls_unanswered", "messages[0]"),
        ]  # fmt: skip
        for messages, code, param in refused:
            status, _, error = await post(http, url + CHAT, {**body, "messages": messages})
            assert status == 400, error
            assert (error["error"]["code"], error["error"]["param"]) == (code, param)
        async with http.get(f"{url}/v1/sessions/{sid}/messages") as r:
            assert len(orjson.loads(await r.read())["data"]) == 2  # nothing half-written
        # Answered across two turns, one result each: then the model is called.
        part = {**body, "messages": [_result(first["id"])]}
        status, _, error = await post(http, url + CHAT, part)
        assert error["error"]["code"] == "tool_calls_unanswered"
        both = {**body, "messages": [_result(first["id"]), _result(second["id"], content="9")]}
        status, _, final = await post(http, url + CHAT, both)
        assert status == 200, final
        assert final["choices"][0]["message"]["content"] == "get_weather: ok\nget_time: 9"


async def test_a_history_window_never_starts_with_an_orphan_result(
    serve: Factory, stub: StartStub
) -> None:
    node = await stub()
    url = await serve(
        backends=[{"name": "up", "type": "openai", "urls": [node.url]}],
        agents=[{"name": "echo", "backend": "up", "history": 2}],
    )
    async with aiohttp.ClientSession() as http:
        sid = (await post(http, url + "/v1/sessions", {}))[2]["id"]
        body = {"model": "echo", "tools": TOOLS, "session_id": sid,
                "messages": [{"role": "user", "content": ASK}]}  # fmt: skip
        reply = (await post(http, url + CHAT, body))[2]
        [call] = reply["choices"][0]["message"]["tool_calls"]
        status, _, _ = await post(http, url + CHAT, {**body, "messages": [_result(call["id"])]})
        assert status == 200
        # The last two messages are the result and the answer: the result's call is out
        # of the window, so the result stays out too (a model refuses it).
        status, _, reply = await post(http, url + CHAT, {**body, "messages": [USER]})
        assert status == 200, reply
    sent = node.requests[-1].json["messages"]
    assert [(m["role"], m["content"]) for m in sent] == [("assistant", "stub:ok"), ("user", "hi")]


# -- the cache ----------------------------------------------------------------------------


async def test_the_cache_keys_replies_on_the_tools(serve: Factory) -> None:
    url = await serve()
    body = {"model": "echo", "messages": [{"role": "user", "content": ASK}], "temperature": 0,
            "tools": [WEATHER]}  # fmt: skip
    async with aiohttp.ClientSession() as http:
        status, headers, first = await post(http, url + CHAT, body)
        assert status == 200 and headers["X-Cache"] == "miss"
        _, headers, again = await post(http, url + CHAT, body)
        assert headers["X-Cache"] == "hit-l1"
        assert again["choices"][0] == first["choices"][0]
        assert again["choices"][0]["finish_reason"] == "tool_calls"
        async with http.post(url + CHAT, json={**body, "stream": True}) as r:
            assert r.headers["X-Cache"] == "hit-l1"
            events = await sse(r)
        # A hit streams each call whole, in one piece.
        [piece] = [p for e in events[:-1] for c in e["choices"]
                   for p in c["delta"].get("tool_calls", ())]  # fmt: skip
        assert piece == {"index": 0, **first["choices"][0]["message"]["tool_calls"][0]}
        for other in (
            {**body, "tools": TOOLS},
            {**body, "tools": [WEATHER], "tool_choice": "required"},
            {k: v for k, v in body.items() if k != "tools"},
        ):
            _, headers, reply = await post(http, url + CHAT, other)
            assert headers["X-Cache"] == "miss", other
        assert reply["choices"][0]["message"] == {"role": "assistant", "content": ASK}


def test_the_cache_key_holds_the_tools_in_both_implementations() -> None:
    from agentd import fastpath

    messages = [{"role": "user", "content": ASK}]
    for impl in {_fastpath_py.cache_key, fastpath.cache_key}:
        one = impl("echo", "m", messages, {"tools": [WEATHER]})
        assert one == impl("echo", "m", messages, {"tools": [WEATHER]})
        assert one != impl("echo", "m", messages, {"tools": TOOLS})
        assert one != impl("echo", "m", messages, {"tools": [WEATHER], "tool_choice": "auto"})
    assert _fastpath_py.cache_key("a", "m", messages, {"tools": TOOLS}) == fastpath.cache_key(
        "a", "m", messages, {"tools": TOOLS}
    )


# -- the APIs that do not relay tool calls -------------------------------------------------


async def _calling_upstream(serve: Factory, stub: StartStub) -> tuple[str, StubNode]:
    """agentd over an upstream that answers "call ..." with a tool call even when the
    request names no tools (as a provider with tools of its own may)."""

    def calls(body: dict[str, Any]) -> list[tuple[str, str]] | None:
        last = body["messages"][-1]
        return [("get_weather", PARIS)] if str(last.get("content")).startswith("call") else None

    node = await stub(calls=calls)
    url = await serve(
        backends=[{"name": "up", "type": "openai", "urls": [node.url]}],
        agents=[{"name": "echo", "backend": "up"}],
    )
    return url, node


async def test_a_websocket_turn_answered_with_tool_calls_ends_in_an_error(
    serve: Factory, stub: StartStub
) -> None:
    url, _ = await _calling_upstream(serve, stub)
    async with aiohttp.ClientSession() as http, http.ws_connect(url + "/v1/ws") as ws:
        await ws.send_json({"type": "hello"})
        ready = await receive(ws)
        await ws.send_json({"type": "message", "id": 1, "content": ASK})
        error, before = await until(ws, "error")
        assert error["id"] == 1 and error["code"] == "tool_calls_unsupported"
        assert "get_weather" in error["message"]
        assert not any(f["type"] == "done" for f in before)
        # The connection lives on, and a plain turn works.
        await ws.send_json({"type": "message", "id": 2, "content": "plain words"})
        done, _ = await until(ws, "done")
        assert done["message"]["content"] == "stub:plain words"
        async with http.get(f"{url}/v1/sessions/{ready['session_id']}/messages") as r:
            history = orjson.loads(await r.read())["data"]
    # Nothing of the refused turn was stored: no client could answer its calls.
    assert [m["content"] for m in history] == ["plain words", "stub:plain words"]


async def test_a_response_answered_with_tool_calls_fails_clearly(
    serve: Factory, stub: StartStub
) -> None:
    url, _ = await _calling_upstream(serve, stub)
    async with aiohttp.ClientSession() as http:
        status, _, reply = await post(http, url + "/v1/responses", {"model": "echo", "input": ASK})
    assert status == 400, reply
    assert reply["error"]["code"] == "tool_calls_unsupported"


async def test_tool_calls_come_back_from_redis_and_the_disk_cache(
    serve: Factory, tmp_path: Any, redis_standalone: Any
) -> None:
    """Two instances over one Redis: the second answers from L2 what the first cached."""
    config = {
        "redis": {"urls": [redis_standalone.url]},
        "cache": {"disk_path": str(tmp_path / "l3")},
    }
    first_url, second_url = await serve(**config), await serve(**config)
    body = {"model": "echo", "messages": [{"role": "user", "content": ASK}], "temperature": 0,
            "tools": [WEATHER]}  # fmt: skip
    async with aiohttp.ClientSession() as http:
        _, headers, first = await post(http, first_url + CHAT, body)
        assert headers["X-Cache"] == "miss"
        _, headers, second = await post(http, second_url + CHAT, body)
        assert headers["X-Cache"] == "hit-l2"
    assert second["choices"] == first["choices"]
    assert second["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == PARIS


# -- interrupted ---------------------------------------------------------------------------


async def test_an_interrupted_call_is_stored_without_calls(serve: Factory) -> None:
    """A reply cut while its call streams asks for nothing: the next message needs no
    tool result."""
    url = await serve(
        sessions={"concurrent_turns": "interrupt", "turn_lease": 0.6}, **echo(tokens_per_s=10)
    )
    ask = 'call get_weather {"city": "%s"}' % ("x" * 400)  # 50 pieces: 5 s at 10/s
    async with aiohttp.ClientSession() as http:
        sid = (await post(http, url + "/v1/sessions", {}))[2]["id"]
        body = {"model": "echo", "tools": TOOLS, "session_id": sid,
                "messages": [{"role": "user", "content": ask}]}  # fmt: skip
        first = asyncio.create_task(post(http, url + CHAT, body))
        await turn_running(http, url)
        status, _, second = await post(http, url + CHAT, {**body, "messages": [USER]})
        assert status == 200, second
        assert second["choices"][0]["message"]["content"] == "hi"
        status, _, cut = await first
        assert status == 200 and cut["choices"][0]["finish_reason"] == "cancelled"
        assert "tool_calls" not in cut["choices"][0]["message"]
        async with http.get(f"{url}/v1/sessions/{sid}/messages") as r:
            history = orjson.loads(await r.read())["data"]
    assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant"]
    assert history[1]["status"] == "cancelled" and "tool_calls" not in history[1]


async def test_a_background_response_answered_with_tool_calls_fails_at_once(
    serve: Factory, stub: StartStub
) -> None:
    url, node = await _calling_upstream(serve, stub)
    async with aiohttp.ClientSession() as http:
        body = {"model": "echo", "input": ASK, "background": True}
        status, _, queued = await post(http, url + "/v1/responses", body)
        assert status == 200, queued

        async def ended() -> Any:
            async with http.get(f"{url}/v1/responses/{queued['id']}") as r:
                response = orjson.loads(await r.read())
            return response if response["status"] not in ("queued", "in_progress") else None

        response = await wait_until(ended, what="the response to end")
    assert response["status"] == "failed"
    assert response["error"]["agentd_code"] == "tool_calls_unsupported", response["error"]
    assert len(node.requests) == 1  # not retried: no attempt could end otherwise


async def _model_calls(http: aiohttp.ClientSession, url: str) -> int:
    """The echo model calls an app made, from its /metrics."""
    async with http.get(url + "/metrics") as r:
        text = await r.text()
    return sum(
        int(float(line.rsplit(" ", 1)[1]))
        for line in text.splitlines()
        if line.startswith("agentd_upstream_calls_total{")
    )


def _pieces(events: list[Any]) -> list[dict[str, Any]]:
    return [p for e in events[:-1] for c in e["choices"] for p in c["delta"].get("tool_calls", ())]


async def test_a_cached_call_streams_live_on_a_miss_also_to_another_instance(
    serve: Factory, redis_standalone: Any
) -> None:
    """The request that makes a cacheable reply, and an identical one on another instance
    following its flight through Redis, both see the arguments in pieces as they come."""
    config = {"redis": {"urls": [redis_standalone.url]}, "cache": {"disk_path": ""},
              **echo(tokens_per_s=20)}  # fmt: skip
    first_url, second_url = await serve(**config), await serve(**config)
    body = {"model": "echo", "messages": [{"role": "user", "content": ASK}], "temperature": 0,
            "tools": [WEATHER], "stream": True}  # fmt: skip

    async def stream(http: aiohttp.ClientSession, url: str) -> tuple[str, list[Any]]:
        async with http.post(url + CHAT, json=body) as r:
            return r.headers["X-Cache"], await sse(r)

    async with aiohttp.ClientSession() as http:
        leading = asyncio.create_task(stream(http, first_url))
        await turn_running(http, first_url)
        following = await stream(http, second_url)
        led = await leading
        hit = await stream(http, first_url)
        calls = [await _model_calls(http, url) for url in (first_url, second_url)]
    assert calls == [1, 0]  # the second followed the first's call
    for level, events in (led, following):
        assert level == "miss"
        pieces = _pieces(events)
        assert len(pieces) > 2
        assert "".join(p["function"].get("arguments", "") for p in pieces) == PARIS
        assert events[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert _pieces(led[1]) == _pieces(following[1])
    # The kept reply holds the call whole: a hit streams it in one piece.
    assert hit[0] == "hit-l1"
    [whole] = _pieces(hit[1])
    assert whole["function"]["arguments"] == PARIS and whole["id"] == _pieces(led[1])[0]["id"]


async def test_odd_tool_parts_posted_to_a_session_do_not_break_its_turns(serve: Factory) -> None:
    """Messages posted through the sessions API are checked for their fields only: a turn
    reads whatever tool parts they hold without failing."""
    url = await serve()
    async with aiohttp.ClientSession() as http:
        sid = (await post(http, url + "/v1/sessions", {}))[2]["id"]
        odd = [
            {"role": "assistant", "content": "x", "tool_calls": "junk"},
            {"role": "assistant", "content": None, "tool_calls": [7, {"id": 3}]},
            {"role": "tool", "tool_call_id": [1], "content": "y"},
        ]
        status, _, posted = await post(http, f"{url}/v1/sessions/{sid}/messages", {"messages": odd})
        assert status in (200, 201), posted
        body = {"model": "echo", "session_id": sid, "tools": TOOLS,
                "messages": [{"role": "user", "content": ASK}]}  # fmt: skip
        status, _, reply = await post(http, url + CHAT, body)
    assert status == 200, reply
    assert reply["choices"][0]["finish_reason"] == "tool_calls"


# -- hostile input ------------------------------------------------------------------------

_SCALARS = st.none() | st.booleans() | st.integers() | st.text(max_size=8)
_WORDS = st.sampled_from(
    ["id", "type", "function", "name", "arguments", "parameters", "strict", "description",
     "mode", "tools", "allowed_tools", "x"]
)  # fmt: skip
_JSON = st.recursive(
    _SCALARS | st.sampled_from(["function", "custom", "auto", "call_1", "f"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_WORDS, inner, max_size=4),
    max_leaves=12,
)
_MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "tool", "system"])},
    optional={"content": _JSON, "tool_calls": _JSON, "tool_call_id": _JSON},
)


@given(
    params=st.dictionaries(st.sampled_from(["tools", "tool_choice", "parallel_tool_calls"]),
                           _JSON, max_size=3),
    messages=st.lists(_MESSAGE, min_size=1, max_size=5),
    history=st.lists(_MESSAGE, max_size=4),
)  # fmt: skip
def test_the_tool_checks_answer_any_input_with_a_400_or_nothing(
    params: dict[str, Any], messages: list[dict[str, Any]], history: list[dict[str, Any]]
) -> None:
    for check in (
        lambda: check_tool_params(params),
        lambda: check_tool_messages(messages, pending_calls(history)),
    ):
        try:
            check()
        except BadRequest as exc:
            assert exc.status == 400 and exc.code and exc.detail and exc.detail["param"]
