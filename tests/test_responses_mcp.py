"""MCP tools in the Responses API: ``tools: [{"type": "mcp", ...}]`` in a request, the
``mcp_list_tools`` and ``mcp_call`` output items, their streaming events, and the 400s
of servers a request may not name; against the real toolbox MCP server
(tests/mcp_servers/toolbox.py), driven by the official SDK, with the echo model
scripting the calls (``call NAME ARGS`` lines)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from openai.types.responses import Response, ResponseStreamEvent

from .chat_helpers import post
from .mcp_servers.procs import HttpToolbox
from .sdk_strict import strictly
from .waiting import wait_until


@pytest.fixture(scope="module")
def toolbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpToolbox]:
    server = HttpToolbox(tmp_path_factory.mktemp("responses-toolbox"))
    yield server
    server.kill()


def config(toolbox: HttpToolbox, **tools: Any) -> dict[str, Any]:
    """The toolbox configured as ``web``; its URLs allowed to requests; agent ``echo``
    without tools of its own, ``tooled`` with the toolbox's."""
    return {
        "mcp_servers": [{"label": "web", "url": toolbox.url}],
        "agents": [{"name": "echo"}, {"name": "tooled", "tools": ["web"]}],
        "tools": {
            "tool_timeout_s": 10.0,
            "allowed_server_urls": [f"http://127.0.0.1:{toolbox.port}/mcp"],
            **tools,
        },
    }


WEB = {"type": "mcp", "server_label": "web", "require_approval": "never"}


def sdk(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused")


async def raw_create(url: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http:
        status, _, answer = await post(http, url + "/v1/responses", body)
    return status, answer


def strict_response(doc: dict[str, Any]) -> Response:
    """``doc`` as the SDK's Response, strictly (agentd's ``session_id`` extension aside)."""
    return strictly(Response, {k: v for k, v in doc.items() if k != "session_id"})  # type: ignore[no-any-return]


def strict_event(event: dict[str, Any]) -> None:
    if isinstance(event.get("response"), dict):
        event = {**event, "response": {k: v for k, v in event["response"].items()
                                       if k != "session_id"}}  # fmt: skip
    strictly(ResponseStreamEvent, event)


def kinds(output: list[Any]) -> list[str]:
    return [item.type for item in output]


# -- the output items -------------------------------------------------------------------


async def test_a_configured_server_lists_its_tools_and_shows_each_call(
    serve: Any, toolbox: HttpToolbox
) -> None:
    url = await serve(**config(toolbox))
    client = sdk(url)
    response = await client.responses.create(
        model="echo", input='call add {"a": 2, "b": 40}', tools=[WEB]
    )
    assert response.status == "completed"
    assert kinds(response.output) == ["mcp_list_tools", "mcp_call", "message"]
    listed, call, _ = response.output
    assert listed.server_label == "web" and listed.error is None
    tools = {t.name: t for t in listed.tools}
    assert {"echo", "add", "fail", "hang"} <= set(tools)
    assert tools["add"].description and "a" in tools["add"].input_schema["properties"]
    assert (call.server_label, call.name, call.arguments) == ("web", "add", '{"a": 2, "b": 40}')
    assert call.status == "completed" and call.error is None
    assert orjson.loads(call.output) == {"sum": 42}
    assert response.output_text == f"add: {call.output}"
    assert response.tools[0].type == "mcp" and response.tools[0].server_label == "web"

    # The whole object is OpenAI's, strictly; a stored response shows the same output.
    async with aiohttp.ClientSession() as http, http.get(f"{url}/v1/responses/{response.id}") as r:
        stored = await r.json()
    again = strict_response(stored)
    assert [i.model_dump() for i in again.output] == [i.model_dump() for i in response.output]
    await client.close()


async def test_allowed_tools_narrow_the_server_and_failures_are_failed_calls(
    serve: Any, toolbox: HttpToolbox
) -> None:
    # hang times out; fail must answer within the limit, even on a loaded machine.
    url = await serve(**config(toolbox, tool_timeout_s=5.0))
    client = sdk(url)
    narrowed = {**WEB, "allowed_tools": ["fail", "hang"]}
    script = 'call fail {"why": "testing"}\ncall hang {}\ncall add {"a": 1, "b": 1}'
    response = await client.responses.create(model="echo", input=script, tools=[narrowed])
    listed, *calls, message = response.output
    assert sorted(t.name for t in listed.tools) == ["fail", "hang"]
    # add is not the turn's: the model reads that, and no server was called.
    assert [c.name for c in calls] == ["fail", "hang"]
    assert all(c.status == "failed" and c.output is None for c in calls)
    assert calls[0].error.type == "mcp_tool_execution_error"
    assert "failed on purpose: testing" in calls[0].error.content[0]["text"]
    assert calls[1].error.type == "mcp_protocol_error" and calls[1].error.code == -32001
    assert "did not answer within" in calls[1].error.message
    lines = message.content[0].text.splitlines()
    assert lines[2].startswith("add: there is no tool named 'add'")
    await client.close()


async def test_tool_choice_none_offers_the_tools_but_calls_none(
    serve: Any, toolbox: HttpToolbox
) -> None:
    url = await serve(**config(toolbox))
    client = sdk(url)
    script = 'call add {"a": 1, "b": 2}'
    response = await client.responses.create(
        model="echo", input=script, tools=[WEB], tool_choice="none"
    )
    assert kinds(response.output) == ["mcp_list_tools", "message"]
    assert response.output_text == script and response.tool_choice == "none"
    await client.close()


async def test_a_server_url_the_operator_allows_is_used_under_the_requests_label(
    serve: Any, toolbox: HttpToolbox
) -> None:
    url = await serve(**config(toolbox))
    client = sdk(url)
    remote = {"type": "mcp", "server_label": "remote", "server_url": toolbox.url,
              "require_approval": "never", "headers": {"X-Trace": "t1"}}  # fmt: skip
    response = await client.responses.create(
        model="echo", input='call echo {"text": "far"}', tools=[remote]
    )
    assert kinds(response.output) == ["mcp_list_tools", "mcp_call", "message"]
    assert response.output[0].server_label == "remote"
    assert response.output[1].server_label == "remote" and response.output[1].output == "far"
    assert response.output_text == "echo: far"
    # The request's headers are not shown back.
    assert response.tools[0].server_url == toolbox.url and response.tools[0].headers is None

    # With the agent's own server, which has the same tools, each is named by its label.
    both = await client.responses.create(
        model="tooled", input='call remote__echo {"text": "r"}\ncall web__echo {"text": "w"}',
        tools=[remote],
    )  # fmt: skip
    calls = [(i.server_label, i.name, i.output) for i in both.output if i.type == "mcp_call"]
    assert calls == [("remote", "echo", "r"), ("web", "echo", "w")]
    await client.close()


async def test_an_agents_own_tools_show_their_calls_too(serve: Any, toolbox: HttpToolbox) -> None:
    url = await serve(**config(toolbox))
    client = sdk(url)
    response = await client.responses.create(model="tooled", input='call echo {"text": "own"}')
    # Its servers were not named by the request: not listed, but every call is shown.
    assert kinds(response.output) == ["mcp_call", "message"]
    assert response.output[0].server_label == "web" and response.output[0].output == "own"
    await client.close()


async def test_a_server_that_cannot_list_its_tools_is_a_failed_listing(
    serve: Any, toolbox: HttpToolbox, tmp_path: Path
) -> None:
    down = HttpToolbox(tmp_path)
    down.kill()
    settings = config(toolbox)
    settings["mcp_servers"].append({"label": "down", "url": down.url, "timeout_s": 2.0})
    url = await serve(**settings)
    client = sdk(url)
    response = await client.responses.create(
        model="echo", input="hello", tools=[{**WEB, "server_label": "down"}]
    )
    assert response.status == "completed" and response.output_text == "hello"
    assert kinds(response.output) == ["mcp_list_tools", "message"]
    assert response.output[0].tools == [] and "down" in response.output[0].error
    await client.close()


# -- streaming --------------------------------------------------------------------------


def check_stream(events: list[dict[str, Any]]) -> None:
    """Every event is the SDK's, strictly; numbered from 0 without a gap; each item is
    added, then done, at its own output index; the last event's response has them all."""
    for event in events:
        strict_event(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    added = [e for e in events if e["type"] == "response.output_item.added"]
    done = [e for e in events if e["type"] == "response.output_item.done"]
    assert sorted(e["output_index"] for e in added) == list(range(len(added)))
    final = events[-1]["response"]["output"]
    for event in done:
        assert final[event["output_index"]] == event["item"]
    assert len(done) == len(final)


async def test_streamed_tool_items_and_events_in_order(serve: Any, toolbox: HttpToolbox) -> None:
    url = await serve(**config(toolbox))
    client = sdk(url)
    script = 'call echo {"text": "one"}\ncall fail {"why": "two"}'
    stream = await client.responses.create(model="echo", input=script, tools=[WEB], stream=True)
    events = [e.model_dump(mode="json", exclude_unset=True) async for e in stream]
    check_stream(events)
    types = [e["type"] for e in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    listing = types.index("response.mcp_list_tools.in_progress")
    assert types[listing - 1 : listing + 3] == [
        "response.output_item.added", "response.mcp_list_tools.in_progress",
        "response.mcp_list_tools.completed", "response.output_item.done",
    ]  # fmt: skip
    for ended in ("completed", "failed"):
        assert types.count(f"response.mcp_call.{ended}") == 1
    assert types.count("response.mcp_call.in_progress") == 2
    assert types.count("response.mcp_call_arguments.done") == 2
    arguments = [e["delta"] for e in events if e["type"] == "response.mcp_call_arguments.delta"]
    assert sorted(arguments) == ['{"text": "one"}', '{"why": "two"}']
    # The message comes after the tools' items, and is the last output item.
    first_text = types.index("response.output_text.delta")
    assert types.index("response.mcp_call.completed") < first_text
    message_added = [e for e in events if e["type"] == "response.output_item.added"][-1]
    assert message_added["item"]["type"] == "message" and message_added["output_index"] == 3
    assert types[-1] == "response.completed"
    final = events[-1]["response"]
    assert [i["type"] for i in final["output"]] == [
        "mcp_list_tools", "mcp_call", "mcp_call", "message"
    ]  # fmt: skip
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text == final["output"][3]["content"][0]["text"]
    assert text.startswith("echo: one\nfail: ")

    # The stored response is the streamed one.
    stored = await client.responses.retrieve(final["id"])
    assert stored.model_dump(mode="json", exclude_unset=True)["output"] == final["output"]
    await client.close()


# -- background -------------------------------------------------------------------------


async def test_a_background_response_runs_its_tools_and_replays_their_events(
    serve: Any, toolbox: HttpToolbox
) -> None:
    url = await serve(**config(toolbox))
    client = sdk(url)
    job = await client.responses.create(
        model="echo", input='call add {"a": 3, "b": 4}', tools=[WEB], background=True
    )
    assert job.status == "queued"

    async def ended() -> Any:
        response = await client.responses.retrieve(job.id)
        return response if response.status not in ("queued", "in_progress") else None

    response = await wait_until(ended, 30, "the background response to end")
    assert response.status == "completed", response.error
    assert kinds(response.output) == ["mcp_list_tools", "mcp_call", "message"]
    assert orjson.loads(response.output[1].output) == {"sum": 7}
    # Its event stream, from the start, is whole and in order.
    stream = await client.responses.retrieve(job.id, stream=True)
    events = [e.model_dump(mode="json", exclude_unset=True) async for e in stream]
    check_stream(events)
    assert [e["type"] for e in events][:2] == ["response.created", "response.queued"]
    assert (
        events[-1]["response"]["output"]
        == response.model_dump(mode="json", exclude_unset=True)["output"]
    )
    # Resumed after the call began: the rest, numbered as before.
    began = next(e for e in events if e["type"] == "response.mcp_call.in_progress")
    after = began["sequence_number"]
    stream = await client.responses.retrieve(job.id, stream=True, starting_after=after)
    rest = [e.model_dump(mode="json", exclude_unset=True) async for e in stream]
    assert rest == events[after + 1 :]
    await client.close()


async def test_a_cancelled_background_response_ends_its_running_call(
    serve: Any, toolbox: HttpToolbox
) -> None:
    url = await serve(**config(toolbox, tool_timeout_s=60.0))
    client = sdk(url)
    (toolbox.state / "hang-started").unlink(missing_ok=True)
    job = await client.responses.create(
        model="echo", input="call hang {}", tools=[WEB], background=True
    )
    await wait_until(lambda: (toolbox.state / "hang-started").exists(), 30, "the call to start")
    cancelled = await client.responses.cancel(job.id)
    assert cancelled.status == "cancelled"
    listed, call = cancelled.output[:2]
    assert listed.type == "mcp_list_tools" and call.type == "mcp_call"
    assert call.name == "hang" and call.status == "failed"
    assert call.error.type == "mcp_protocol_error" and call.error.code == -32800
    stored = await client.responses.retrieve(job.id)
    assert (
        stored.model_dump(exclude_unset=True)["output"]
        == cancelled.model_dump(exclude_unset=True)["output"]
    )
    stream = await client.responses.retrieve(job.id, stream=True)
    events = [e.model_dump(mode="json", exclude_unset=True) async for e in stream]
    check_stream(events)
    assert "response.mcp_call.failed" in [e["type"] for e in events]
    assert events[-1]["type"] == "response.incomplete"
    await client.close()


# -- approvals --------------------------------------------------------------------------


def tallied(toolbox: HttpToolbox, name: str) -> int:
    path = toolbox.state / f"tally-{name}"
    return len(path.read_text()) if path.exists() else 0


async def test_a_call_waits_for_approval_by_default_and_runs_once_approved(
    serve: Any, toolbox: HttpToolbox
) -> None:
    url = await serve(**config(toolbox))
    client = sdk(url)
    web = {"type": "mcp", "server_label": "web"}  # require_approval left out: "always"
    asked = await client.responses.create(
        model="echo", input='call tally {"name": "approved"}', tools=[web]
    )
    assert asked.status == "completed"
    assert kinds(asked.output) == ["mcp_list_tools", "mcp_approval_request"]
    request = asked.output[1]
    assert (request.server_label, request.name) == ("web", "tally")
    assert request.arguments == '{"name": "approved"}'
    assert asked.output_text == "" and tallied(toolbox, "approved") == 0
    strict_response(asked.model_dump(mode="json", exclude_unset=True))

    approval = {"type": "mcp_approval_response", "approval_request_id": request.id,
                "approve": True}  # fmt: skip
    done = await client.responses.create(
        model="echo", input=[approval], tools=[web], previous_response_id=asked.id
    )
    assert done.status == "completed"
    assert kinds(done.output) == ["mcp_call", "message"]
    call = done.output[0]
    assert call.approval_request_id == request.id and call.output == "approved 1"
    assert done.output_text == "tally: approved 1"
    assert tallied(toolbox, "approved") == 1

    # The conversation goes on from there, as any other.
    after = await client.responses.create(
        model="echo", input="thanks", previous_response_id=done.id
    )
    assert after.output_text == "thanks"
    await client.close()


async def test_a_refused_call_is_a_result_the_model_reads(serve: Any, toolbox: HttpToolbox) -> None:
    url = await serve(**config(toolbox))
    client = sdk(url)
    web = {**WEB, "require_approval": {"never": {"tool_names": ["echo"]}}}
    script = 'call echo {"text": "free"}\ncall tally {"name": "refused"}'
    asked = await client.responses.create(model="echo", input=script, tools=[web])
    # echo needs no approval and ran; tally waits.
    assert kinds(asked.output) == ["mcp_list_tools", "mcp_call", "mcp_approval_request"]
    assert asked.output[1].output == "free"
    refusal = {"type": "mcp_approval_response", "approval_request_id": asked.output[2].id,
               "approve": False, "reason": "not today"}  # fmt: skip
    done = await client.responses.create(
        model="echo", input=[refusal], tools=[web], previous_response_id=asked.id
    )
    assert kinds(done.output) == ["message"]
    assert done.output_text == "echo: free\ntally: the user did not approve the call: not today"
    assert tallied(toolbox, "refused") == 0
    await client.close()


async def test_approvals_stream_and_bad_answers_are_refused(
    serve: Any, toolbox: HttpToolbox
) -> None:
    url = await serve(**config(toolbox))
    client = sdk(url)
    web = {"type": "mcp", "server_label": "web", "require_approval": "always"}
    stream = await client.responses.create(
        model="echo", input='call echo {"text": "s"}', tools=[web], stream=True
    )
    events = [e.model_dump(mode="json", exclude_unset=True) async for e in stream]
    check_stream(events)
    final = events[-1]["response"]
    assert [i["type"] for i in final["output"]] == ["mcp_list_tools", "mcp_approval_request"]
    request_id = final["output"][1]["id"]

    approve = {"type": "mcp_approval_response", "approval_request_id": request_id,
               "approve": True}  # fmt: skip
    for body, code, param in (
        ({"input": [approve]}, "missing_required_parameter", "previous_response_id"),
        ({"input": [{**approve, "approval_request_id": "mcpr_other"}],
          "previous_response_id": final["id"]}, "unknown_approval_request", "input"),
        ({"input": [approve, approve], "previous_response_id": final["id"]}, "invalid_value",
         "input"),
        ({"input": [{**approve, "approve": "yes"}], "previous_response_id": final["id"]},
         "invalid_type", "input[0].approve"),
        ({"input": [{**approve, "extra": 1}], "previous_response_id": final["id"]},
         "unknown_parameter", "input[0].extra"),
    ):  # fmt: skip
        status, answer = await raw_create(url, {"model": "echo", "tools": [web], **body})
        assert status == 400, (body, answer)
        assert (answer["error"]["code"], answer["error"]["param"]) == (code, param)

    stream = await client.responses.create(
        model="echo", input=[approve], tools=[web], previous_response_id=final["id"], stream=True
    )
    events = [e.model_dump(mode="json", exclude_unset=True) async for e in stream]
    check_stream(events)
    types = [e["type"] for e in events]
    assert "response.mcp_call.completed" in types
    assert events[-1]["response"]["output"][-1]["content"][0]["text"] == "echo: s"
    await client.close()


async def test_approvals_in_the_background_and_continuations_that_forget_the_tools(
    serve: Any, toolbox: HttpToolbox
) -> None:
    url = await serve(**config(toolbox))
    client = sdk(url)
    web = {"type": "mcp", "server_label": "web", "require_approval": "always"}

    async def ended(rid: str) -> Any:
        async def done() -> Any:
            response = await client.responses.retrieve(rid)
            return response if response.status not in ("queued", "in_progress") else None

        return await wait_until(done, 30, "the background response to end")

    job = await client.responses.create(
        model="echo", input='call tally {"name": "queued"}', tools=[web], background=True
    )
    asked = await ended(job.id)
    assert kinds(asked.output) == ["mcp_list_tools", "mcp_approval_request"]
    approve = {"type": "mcp_approval_response", "approval_request_id": asked.output[1].id,
               "approve": True}  # fmt: skip
    # Without its tools, the calls could not run: refused before anything is stored.
    status, answer = await raw_create(
        url, {"model": "echo", "input": [approve], "previous_response_id": job.id}
    )
    assert status == 400 and answer["error"]["code"] == "mcp_tools_required", answer
    assert answer["error"]["param"] == "tools"
    assert tallied(toolbox, "queued") == 0

    job = await client.responses.create(model="echo", input=[approve], tools=[web],
                                        previous_response_id=job.id, background=True)  # fmt: skip
    done = await ended(job.id)
    assert kinds(done.output) == ["mcp_call", "message"]
    assert done.output_text == "tally: queued 1" and tallied(toolbox, "queued") == 1
    stream = await client.responses.retrieve(job.id, stream=True)
    check_stream([e.model_dump(mode="json", exclude_unset=True) async for e in stream])
    await client.close()


async def test_a_response_that_is_not_stored_runs_only_calls_that_need_no_approval(
    serve: Any, toolbox: HttpToolbox
) -> None:
    url = await serve(**config(toolbox))
    body = {"model": "echo", "input": 'call echo {"text": "x"}', "store": False}
    status, answer = await raw_create(url, {**body, "tools": [{**WEB, "require_approval": None}]})
    assert status == 400 and answer["error"]["code"] == "unsupported_value", answer
    assert answer["error"]["param"] == "tools[0].require_approval"
    status, answer = await raw_create(url, {**body, "tools": [WEB]})
    assert status == 200, answer
    assert [i["type"] for i in answer["output"]] == ["mcp_list_tools", "mcp_call", "message"]


# -- refusals ---------------------------------------------------------------------------


async def test_servers_a_request_may_not_name_are_refused(serve: Any, toolbox: HttpToolbox) -> None:
    url = await serve(**config(toolbox))
    elsewhere = "http://127.0.0.1:1/mcp"
    for tool, code, param in (
        ({"server_label": "nowhere"}, "unknown_server_label", "tools[0].server_label"),
        ({"server_label": "x", "server_url": elsewhere}, "server_url_not_allowed",
         "tools[0].server_url"),
        ({"server_label": "x", "server_url": toolbox.url + "x"}, "server_url_not_allowed",
         "tools[0].server_url"),
        ({"server_label": "web", "server_url": toolbox.url}, "server_label_conflict",
         "tools[0].server_label"),
    ):  # fmt: skip
        body = {"model": "echo", "input": "hi", "tools": [{"type": "mcp", **tool}]}
        for extra in ({}, {"background": True}):
            status, answer = await raw_create(url, {**body, **extra})
            assert status == 400, (tool, answer)
            assert (answer["error"]["code"], answer["error"]["param"]) == (code, param)
    # Nothing was stored or queued for them.
    async with aiohttp.ClientSession() as http, http.get(f"{url}/v1/sessions") as r:
        assert (await r.json())["data"] == []


HOSTILE: list[tuple[Any, str, str]] = [
    ("mcp", "invalid_type", "tools[0]"),
    ({"server_label": "web"}, "missing_required_parameter", "tools[0].type"),
    ({"type": 1}, "invalid_type", "tools[0].type"),
    ({"type": "web_search"}, "unsupported_value", "tools[0].type"),
    ({"type": "mcp"}, "missing_required_parameter", "tools[0].server_label"),
    ({"type": "mcp", "server_label": 5}, "invalid_type", "tools[0].server_label"),
    ({"type": "mcp", "server_label": "a b"}, "invalid_value", "tools[0].server_label"),
    ({"type": "mcp", "server_label": "x" * 65}, "invalid_value", "tools[0].server_label"),
    ({"type": "mcp", "server_label": "web", "surprise": 1}, "unknown_parameter",
     "tools[0].surprise"),
    ({"type": "mcp", "server_label": "web", "connector_id": "connector_gmail"},
     "unsupported_parameter", "tools[0].connector_id"),
    ({"type": "mcp", "server_label": "r", "server_url": "file:///etc/passwd"}, "invalid_value",
     "tools[0].server_url"),
    ({"type": "mcp", "server_label": "r", "server_url": "http://u:p@127.0.0.1/mcp"},
     "invalid_value", "tools[0].server_url"),
    ({"type": "mcp", "server_label": "r", "server_url": "http://127.0.0.1/mcp/../admin"},
     "invalid_value", "tools[0].server_url"),
    ({"type": "mcp", "server_label": "r", "server_url": "http://h/" + "x" * 3000},
     "invalid_value", "tools[0].server_url"),
    ({"type": "mcp", "server_label": "web", "headers": {"A": "b"}}, "unsupported_value",
     "tools[0].headers"),
    ({"type": "mcp", "server_label": "r", "server_url": "http://h/m", "headers": []},
     "invalid_type", "tools[0].headers"),
    ({"type": "mcp", "server_label": "r", "server_url": "http://h/m",
      "headers": {"X": "a\r\nInjected: 1"}}, "invalid_value", "tools[0].headers.X"),
    ({"type": "mcp", "server_label": "r", "server_url": "http://h/m", "headers": {"Host": "e"}},
     "invalid_value", "tools[0].headers"),
    ({"type": "mcp", "server_label": "r", "server_url": "http://h/m",
      "headers": {f"h{i}": "v" for i in range(17)}}, "invalid_value", "tools[0].headers"),
    ({"type": "mcp", "server_label": "web", "allowed_tools": "add"}, "invalid_type",
     "tools[0].allowed_tools"),
    ({"type": "mcp", "server_label": "web", "allowed_tools": [1]}, "invalid_type",
     "tools[0].allowed_tools[0]"),
    ({"type": "mcp", "server_label": "web", "allowed_tools": ["a"] * 129}, "invalid_value",
     "tools[0].allowed_tools"),
    ({"type": "mcp", "server_label": "web", "allowed_tools": {"read_only": True}},
     "unsupported_value", "tools[0].allowed_tools.read_only"),
    ({"type": "mcp", "server_label": "web", "require_approval": "sometimes"}, "invalid_value",
     "tools[0].require_approval"),
    ({"type": "mcp", "server_label": "web", "require_approval": {"maybe": {}}},
     "unknown_parameter", "tools[0].require_approval.maybe"),
]  # fmt: skip


async def test_hostile_tools_are_refused_with_stable_codes(
    serve: Any, toolbox: HttpToolbox
) -> None:
    url = await serve(**config(toolbox))
    for tool, code, param in HOSTILE:
        status, answer = await raw_create(url, {"model": "echo", "input": "hi", "tools": [tool]})
        assert status == 400, (tool, answer)
        assert (answer["error"]["code"], answer["error"]["param"]) == (code, param), tool
    too_many = [{**WEB, "server_label": f"s{i}"} for i in range(17)]
    twice = [WEB, WEB]
    for tools, code, param in ((too_many, "invalid_value", "tools"),
                               (twice, "invalid_value", "tools[1].server_label")):  # fmt: skip
        status, answer = await raw_create(url, {"model": "echo", "input": "hi", "tools": tools})
        assert status == 400 and answer["error"]["code"] == code, answer
        assert answer["error"]["param"] == param
    status, answer = await raw_create(
        url, {"model": "echo", "input": "hi", "tool_choice": "required"}
    )
    assert status == 400 and answer["error"]["param"] == "tool_choice"
