"""Client-side function tools in the Responses API: ``tools: [{"type": "function",
...}]`` passed through to the model, its calls returned as ``function_call`` items (and
their streaming events), answered with ``function_call_output`` items (continued with
``previous_response_id``, or sent with their calls), next to MCP tools; driven by the
official SDK, with the echo model scripting the calls (``call NAME ARGS`` lines)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from openai.types.responses import ResponseInputItem, ResponseItemList

from .mcp_servers.procs import HttpToolbox
from .sdk_strict import strictly
from .test_responses_mcp import WEB, check_stream, config, kinds, raw_create, sdk, strict_response
from .waiting import wait_until

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}
TIME = {"type": "function", "name": "get_time", "parameters": {"type": "object"}}


@pytest.fixture(scope="module")
def toolbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpToolbox]:
    server = HttpToolbox(tmp_path_factory.mktemp("responses-functions-toolbox"))
    yield server
    server.kill()


def output(call_id: str, text: str) -> dict[str, Any]:
    return {"type": "function_call_output", "call_id": call_id, "output": text}


async def get_json(url: str) -> Any:
    async with aiohttp.ClientSession() as http, http.get(url) as r:
        assert r.status == 200, await r.text()
        return await r.json()


# -- a round trip -----------------------------------------------------------------------


async def test_a_call_goes_to_the_client_and_its_output_continues_the_response(
    serve: Any, toolbox: HttpToolbox
) -> None:
    url = await serve(**config(toolbox))
    client = sdk(url)
    first = await client.responses.create(
        model="echo", input='call get_weather {"city": "Paris"}', tools=[WEATHER]
    )
    assert first.status == "completed" and first.error is None
    assert kinds(first.output) == ["function_call"]
    (call,) = first.output
    assert (call.name, call.arguments, call.status) == ("get_weather", '{"city": "Paris"}',
                                                        "completed")  # fmt: skip
    assert call.id.startswith("fc_") and call.call_id
    assert first.output_text == ""
    assert first.tools[0].type == "function" and first.tools[0].name == "get_weather"
    assert first.tools[0].strict is True and first.tools[0].parameters == WEATHER["parameters"]
    stored = strict_response(await get_json(f"{url}/v1/responses/{first.id}"))
    assert [i.model_dump() for i in stored.output] == [i.model_dump() for i in first.output]

    # The client runs it and sends its output: the model reads it and answers.
    second = await client.responses.create(
        model="echo",
        previous_response_id=first.id,
        input=[output(call.call_id, "sunny, 21 C")],
        tools=[WEATHER],
    )
    assert second.status == "completed", second.error
    assert kinds(second.output) == ["message"]
    assert second.output_text == "get_weather: sunny, 21 C"
    strict_response(await get_json(f"{url}/v1/responses/{second.id}"))
    items = await client.responses.input_items.list(second.id)
    assert [(i.type, i.call_id, i.output) for i in items.data] == [
        ("function_call_output", call.call_id, "sunny, 21 C")
    ]

    # The session holds the call and its result as chat messages.
    history = await get_json(f"{url}/v1/sessions/{second.session_id}/messages")  # type: ignore[attr-defined]
    roles = [m["role"] for m in history["data"]]
    assert roles == ["user", "assistant", "tool", "assistant"], roles
    assert history["data"][1]["tool_calls"][0]["id"] == call.call_id

    # An output that answers the calls again answers none: the call was answered.
    with pytest.raises(openai.BadRequestError) as refused:
        await client.responses.create(model="echo", previous_response_id=second.id,
                                      input=[output(call.call_id, "again")])  # fmt: skip
    assert refused.value.code == "unknown_tool_call"
    await client.close()


async def test_parallel_calls_are_answered_together_and_each_must_be(
    serve: Any, toolbox: HttpToolbox
) -> None:
    url = await serve(**config(toolbox))
    client = sdk(url)
    script = 'call get_weather {"city": "Oslo"}\ncall get_time {"zone": "CET"}'
    first = await client.responses.create(
        model="echo", input=script, tools=[WEATHER, TIME], parallel_tool_calls=True,
        tool_choice="required",
    )  # fmt: skip
    assert kinds(first.output) == ["function_call", "function_call"]
    weather, time = first.output
    assert (weather.name, time.name) == ("get_weather", "get_time")
    assert weather.call_id != time.call_id and weather.id != time.id
    assert first.parallel_tool_calls is True and first.tool_choice == "required"

    async def refused(input_: list[dict[str, Any]]) -> tuple[str, str]:
        status, answer = await raw_create(
            url, {"model": "echo", "previous_response_id": first.id, "input": input_}
        )
        assert status == 400, answer
        return answer["error"]["code"], answer["error"]["param"]

    # One output missing, or one for a call that was never made: refused, nothing run.
    one = [output(weather.call_id, "rain")]
    assert await refused(one) == ("tool_calls_unanswered", "input")
    extra = [*one, output(time.call_id, "9:00"), output("call_nobody", "x")]
    assert await refused(extra) == ("unknown_tool_call", "input")
    twice = [*one, output(time.call_id, "9:00"), output(weather.call_id, "sun")]
    assert await refused(twice) == ("unknown_tool_call", "input[2].call_id")
    # Answered, in any order: the model reads both results.
    second = await client.responses.create(
        model="echo",
        previous_response_id=first.id,
        input=[output(time.call_id, "9:00"), output(weather.call_id, "rain")],
    )
    assert second.status == "completed", second.error
    assert second.output_text.splitlines() == ["get_time: 9:00", "get_weather: rain"]
    await client.close()


async def test_calls_sent_back_with_their_outputs_without_a_stored_response(
    serve: Any, toolbox: HttpToolbox
) -> None:
    url = await serve(**config(toolbox))
    client = sdk(url)
    first = await client.responses.create(
        model="echo", input='call get_weather {"city": "Rome"}', tools=[WEATHER], store=False
    )
    (call,) = first.output
    # Stateless: the input holds the whole conversation, the call item as the SDK gave it.
    sent_back = call.model_dump(mode="json", exclude_none=True)
    strictly(ResponseInputItem, sent_back)
    second = await client.responses.create(
        model="echo",
        store=False,
        tools=[WEATHER],
        input=[
            {"role": "user", "content": 'call get_weather {"city": "Rome"}'},
            sent_back,
            output(call.call_id, "hot"),
        ],
    )
    assert second.status == "completed" and second.output_text == "get_weather: hot"

    # Stored, such an input is listed as it was sent.
    third = await client.responses.create(
        model="echo", tools=[WEATHER],
        input=[{"role": "user", "content": "weather?"}, sent_back, output(call.call_id, "dry")],
    )  # fmt: skip
    assert third.output_text == "get_weather: dry"
    listed = await get_json(f"{url}/v1/responses/{third.id}/input_items?order=asc")
    items = strictly(ResponseItemList, listed).data
    assert [i.type for i in items] == ["message", "function_call", "function_call_output"]
    assert (items[1].call_id, items[1].name, items[1].arguments) == (
        call.call_id, "get_weather", call.arguments
    )  # fmt: skip
    assert (items[2].call_id, items[2].output) == (call.call_id, "dry")
    assert len({i.id for i in items}) == 3
    await client.close()


# -- streaming --------------------------------------------------------------------------


async def test_streamed_calls_have_their_items_and_argument_events(
    serve: Any, toolbox: HttpToolbox
) -> None:
    url = await serve(**config(toolbox))
    client = sdk(url)
    script = 'call get_weather {"city": "Lima"}\ncall get_time {}'
    stream = await client.responses.create(
        model="echo", input=script, tools=[WEATHER, TIME], stream=True
    )
    events = [e.model_dump(mode="json", exclude_unset=True) async for e in stream]
    check_stream(events)
    types = [e["type"] for e in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] == "response.completed"
    assert types[2:-1] == [
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
    ] * 2  # fmt: skip
    final = events[-1]["response"]
    assert final["status"] == "completed"
    assert [(i["type"], i["name"]) for i in final["output"]] == [
        ("function_call", "get_weather"), ("function_call", "get_time")
    ]  # fmt: skip
    added = events[2]
    assert added["item"]["arguments"] == "" and added["item"]["status"] == "in_progress"
    deltas = [e["delta"] for e in events if e["type"].endswith("arguments.delta")]
    assert deltas == ['{"city": "Lima"}', "{}"]
    assert {e["item_id"] for e in events if "item_id" in e} == {i["id"] for i in final["output"]}

    # Continued streaming: the answer is a message, as ever.
    calls = final["output"]
    stream = await client.responses.create(
        model="echo", previous_response_id=final["id"], tools=[WEATHER, TIME], stream=True,
        input=[output(calls[0]["call_id"], "fog"), output(calls[1]["call_id"], "noon")],
    )  # fmt: skip
    events = [e.model_dump(mode="json", exclude_unset=True) async for e in stream]
    check_stream(events)
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text == "get_weather: fog\nget_time: noon"
    assert events[-1]["response"]["output"][0]["type"] == "message"
    await client.close()


# -- next to server-side tools ----------------------------------------------------------


async def test_a_turn_runs_the_mcp_call_and_ends_with_the_clients_call(
    serve: Any, toolbox: HttpToolbox
) -> None:
    url = await serve(**config(toolbox))
    client = sdk(url)
    script = 'call add {"a": 2, "b": 3}\ncall get_weather {"city": "Bern"}'
    stream = await client.responses.create(
        model="echo", input=script, tools=[WEB, WEATHER], stream=True
    )
    events = [e.model_dump(mode="json", exclude_unset=True) async for e in stream]
    check_stream(events)
    final = events[-1]["response"]
    assert final["status"] == "completed"
    assert [i["type"] for i in final["output"]] == ["mcp_list_tools", "mcp_call", "function_call"]
    mcp_call, call = final["output"][1:]
    assert orjson.loads(mcp_call["output"]) == {"sum": 5}
    assert call["name"] == "get_weather"
    assert [t["type"] for t in final["tools"]] == ["mcp", "function"]

    second = await client.responses.create(
        model="echo", previous_response_id=final["id"], tools=[WEB, WEATHER],
        input=[output(call["call_id"], "snow")],
    )  # fmt: skip
    assert second.status == "completed", second.error
    # The model reads both results: the server's, then the client's.
    assert second.output_text == f"add: {mcp_call['output']}\nget_weather: snow"
    await client.close()


async def test_an_agent_with_its_own_tools_passes_the_clients_calls_through(
    serve: Any, toolbox: HttpToolbox
) -> None:
    url = await serve(**config(toolbox))
    client = sdk(url)
    script = 'call echo {"text": "hi"}\ncall get_time {}'
    first = await client.responses.create(model="tooled", input=script, tools=[TIME])
    assert first.status == "completed", first.error
    assert kinds(first.output) == ["mcp_call", "function_call"]
    assert first.output[0].status == "completed" and first.output[1].name == "get_time"
    second = await client.responses.create(
        model="tooled", previous_response_id=first.id,
        input=[output(first.output[1].call_id, "noon")], tools=[TIME],
    )  # fmt: skip
    assert second.output_text.splitlines()[-1] == "get_time: noon"
    # A client tool named like one of the agent's: the model could not tell them apart.
    tools = [WEB, TIME, {"type": "function", "name": "add"}]
    status, answer = await raw_create(url, {"model": "tooled", "input": "hi", "tools": tools})
    assert status == 400 and answer["error"]["code"] == "tool_name_conflict", answer
    assert answer["error"]["param"] == "tools[2].name", answer
    await client.close()


# -- background -------------------------------------------------------------------------


async def test_a_background_response_completes_with_its_function_calls(
    serve: Any, toolbox: HttpToolbox
) -> None:
    url = await serve(**config(toolbox))
    client = sdk(url)
    job = await client.responses.create(
        model="echo", input='call get_weather {"city": "Kyiv"}', tools=[WEATHER], background=True
    )
    assert job.status == "queued" and job.tools[0].name == "get_weather"

    async def ended() -> Any:
        response = await client.responses.retrieve(job.id)
        return response if response.status not in ("queued", "in_progress") else None

    response = await wait_until(ended, 30, "the background response to end")
    assert response.status == "completed", response.error
    assert kinds(response.output) == ["function_call"]
    stream = await client.responses.retrieve(job.id, stream=True)
    events = [e.model_dump(mode="json", exclude_unset=True) async for e in stream]
    check_stream(events)
    assert "response.function_call_arguments.done" in [e["type"] for e in events]
    assert (
        events[-1]["response"]["output"]
        == response.model_dump(mode="json", exclude_unset=True)["output"]
    )
    # Continued in the background too.
    job = await client.responses.create(
        model="echo", previous_response_id=job.id, background=True,
        input=[output(response.output[0].call_id, "cold")],
    )  # fmt: skip
    response = await wait_until(ended, 30, "the continuation to end")
    assert response.status == "completed", response.error
    assert response.output_text == "get_weather: cold"
    await client.close()


# -- refusals ---------------------------------------------------------------------------

CALL = {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"}
USER = {"role": "user", "content": "hi"}

HOSTILE: list[tuple[dict[str, Any], str, str]] = [
    ({"tools": [{"type": "function"}]}, "missing_required_parameter", "tools[0].name"),
    ({"tools": [{"type": "function", "name": "a b"}]}, "invalid_value", "tools[0].name"),
    ({"tools": [{"type": "function", "name": "x" * 65}]}, "invalid_value", "tools[0].name"),
    ({"tools": [{"type": "function", "name": 5}]}, "invalid_type", "tools[0].name"),
    ({"tools": [WEATHER, WEB, WEATHER]}, "invalid_value", "tools[2].name"),
    ({"tools": [{"type": "function", "name": "f", "parameters": "{}"}]}, "invalid_type",
     "tools[0].parameters"),
    ({"tools": [{"type": "function", "name": "f", "strict": "yes"}]}, "invalid_type",
     "tools[0].strict"),
    ({"tools": [{"type": "function", "name": "f", "description": ["d"]}]}, "invalid_type",
     "tools[0].description"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "unknown_parameter",
     "tools[0].function"),
    ({"tools": [{"type": "function", "name": f"f{i}"} for i in range(129)]}, "invalid_value",
     "tools"),
    ({"tools": [{"type": "custom", "name": "f"}]}, "unsupported_value", "tools[0].type"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}},
     "invalid_value", "tool_choice.name"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function"}}, "missing_required_parameter",
     "tool_choice.name"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "name": "get_weather", "x": 1}},
     "unknown_parameter", "tool_choice.x"),
    ({"tools": [WEATHER], "tool_choice": {"type": "allowed_tools", "mode": "auto"}},
     "unsupported_value", "tool_choice.type"),
    ({"tools": [WEATHER], "tool_choice": "sometimes"}, "unsupported_value", "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": 1}, "invalid_type", "tool_choice"),
    ({"tools": [WEATHER], "parallel_tool_calls": "yes"}, "invalid_type", "parallel_tool_calls"),
    ({"input": [USER, CALL, {**output("c1", "x"), "output": 5}]}, "invalid_type",
     "input[2].output"),
    ({"input": [USER, CALL, {**output("c1", "x"), "output": [{"type": "input_image"}]}]},
     "unsupported_input", "input[2].output[0].type"),
    ({"input": [USER, CALL, {**output("c1", "x"), "extra": 1}]}, "unknown_parameter",
     "input[2].extra"),
    ({"input": [USER, CALL, {"type": "function_call_output", "call_id": "c1"}]},
     "missing_required_parameter", "input[2].output"),
    ({"input": [USER, output("", "x")]}, "invalid_value", "input[1].call_id"),
    ({"input": [USER, output("c" * 257, "x")]}, "invalid_value", "input[1].call_id"),
    ({"input": [USER, {**CALL, "arguments": None}]}, "missing_required_parameter",
     "input[1].arguments"),
    ({"input": [USER, {**CALL, "arguments": {"city": "x"}}]}, "invalid_type",
     "input[1].arguments"),
    ({"input": [USER, {**CALL, "name": "no such"}]}, "invalid_value", "input[1].name"),
    ({"input": [USER, CALL, CALL, output("c1", "x")]}, "invalid_value", "input[2].call_id"),
    ({"input": [USER, CALL, USER]}, "tool_calls_unanswered", "input[2]"),
    ({"input": [USER, CALL]}, "tool_calls_unanswered", "input"),
    ({"input": [USER, output("c1", "x")]}, "unknown_tool_call", "input[1].call_id"),
    ({"input": [USER, CALL, output("c1", "x"), output("c1", "y")]}, "unknown_tool_call",
     "input[3].call_id"),
]  # fmt: skip


async def test_hostile_function_tools_and_items_are_refused_with_stable_codes(
    serve: Any, toolbox: HttpToolbox
) -> None:
    url = await serve(**config(toolbox))
    for extra, code, param in HOSTILE:
        status, answer = await raw_create(url, {"model": "echo", "input": "hi", **extra})
        assert status == 400, (extra, answer)
        assert (answer["error"]["code"], answer["error"]["param"]) == (code, param), extra
    # Continuing a response that made no call: its outputs answer nothing.
    client = sdk(url)
    plain = await client.responses.create(model="echo", input="hello")
    status, answer = await raw_create(url, {"model": "echo", "previous_response_id": plain.id,
                                            "input": [output("c1", "x")]})  # fmt: skip
    assert status == 400 and answer["error"]["code"] == "unknown_tool_call", answer
    # A response ending with calls waits for their outputs, not for another question.
    first = await client.responses.create(model="echo", input="call get_time {}", tools=[TIME])
    status, answer = await raw_create(url, {"model": "echo", "previous_response_id": first.id,
                                            "input": "and now?", "tools": [TIME]})  # fmt: skip
    assert status == 400 and answer["error"]["code"] == "tool_calls_unanswered", answer
    await client.close()


async def test_approvals_and_outputs_answer_one_response_together(
    serve: Any, toolbox: HttpToolbox
) -> None:
    url = await serve(**config(toolbox))
    client = sdk(url)
    held = {**WEB, "require_approval": "always"}
    script = 'call add {"a": 1, "b": 1}\ncall get_weather {"city": "Riga"}'
    first = await client.responses.create(model="echo", input=script, tools=[held, WEATHER])
    assert first.status == "completed", first.error
    assert sorted(kinds(first.output)) == ["function_call", "mcp_approval_request",
                                           "mcp_list_tools"]  # fmt: skip
    call = next(i for i in first.output if i.type == "function_call")
    asked = next(i for i in first.output if i.type == "mcp_approval_request")
    approval = {"type": "mcp_approval_response", "approval_request_id": asked.id, "approve": True}
    # Both answered in one request (the approval may come first).
    second = await client.responses.create(
        model="echo", previous_response_id=first.id, tools=[held, WEATHER],
        input=[approval, output(call.call_id, "wind")],
    )  # fmt: skip
    assert second.status == "completed", second.error
    assert kinds(second.output) == ["mcp_call", "message"]
    ran = second.output[0]
    assert ran.approval_request_id == asked.id and orjson.loads(ran.output) == {"sum": 2}
    assert second.output_text == f"add: {ran.output}\nget_weather: wind"
    # The approval alone leaves the client's call unanswered.
    alone = {"model": "echo", "previous_response_id": first.id, "tools": [held, WEATHER],
             "input": [approval]}  # fmt: skip
    status, answer = await raw_create(url, alone)
    assert status == 400 and answer["error"]["code"] == "tool_calls_unanswered", answer
    await client.close()


async def test_a_conversation_is_continued_with_outputs_too(
    serve: Any, toolbox: HttpToolbox
) -> None:
    url = await serve(**config(toolbox))
    client = sdk(url)
    conversation = await client.conversations.create()
    first = await client.responses.create(
        model="echo", conversation=conversation.id, input="call get_time {}", tools=[TIME]
    )
    (call,) = first.output
    refused = {"model": "echo", "conversation": conversation.id,
               "input": [output("call_other", "x")]}  # fmt: skip
    status, answer = await raw_create(url, refused)
    assert status == 400 and answer["error"]["code"] == "unknown_tool_call", answer
    second = await client.responses.create(
        model="echo", conversation=conversation.id, instructions="Answer briefly.",
        input=[output(call.call_id, "teatime")],
    )  # fmt: skip
    assert second.status == "completed", second.error
    assert second.output_text == "get_time: teatime"
    await client.close()
