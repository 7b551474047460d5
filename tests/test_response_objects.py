"""The Responses API's shapes (agentd/wire/responses/): the create
request's parsing and rejections, the response object and the streaming events, each
checked against the official SDK's models and, end to end, against the SDK's own client."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import openai
import orjson
import pydantic
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.responses import Response, ResponseStreamEvent

from agentd.errors import BadRequest
from agentd.fastpath import MAX_DEPTH, MAX_MESSAGES
from agentd.wire.errors import error_dict
from agentd.wire.responses import (
    MAX_CONTENT_PARTS,
    CreateRequest,
    ResponseEvents,
    ResponseView,
    event_frame,
    message_item_id,
    new_response_id,
    parse_create,
    response_object,
)
from agentd.wire.responses.items import call_item, call_item_id, list_tools_item, tool_error

EVENT = pydantic.TypeAdapter(ResponseStreamEvent)
STATUSES = ("queued", "in_progress", "completed", "failed", "cancelled", "incomplete")


def parse(body: Any, header: str | None = None) -> CreateRequest:
    return parse_create(orjson.dumps(body), header)


def rejected(raw: bytes) -> BadRequest:
    with pytest.raises(BadRequest) as info:
        parse_create(raw, None)
    return info.value


def view(status: str = "completed", text: str | None = "hello", **kw: Any) -> ResponseView:
    request = kw.pop("request", None) or parse({"model": "helper", "input": "hi"})
    return ResponseView("resp_abc", 1_700_000_000.75, status, request, text, **kw)


# -- parse_create: what it accepts ------------------------------------------------------


def test_string_input_is_one_user_message() -> None:
    request = parse({"model": "helper", "input": "Say hi"})
    assert request == CreateRequest("helper", [{"role": "user", "content": "Say hi"}])
    assert (request.background, request.stream, request.metadata, request.params) == (
        False, False, {}, {},
    )  # fmt: skip


def test_list_input_joins_text_parts_of_each_message() -> None:
    request = parse(
        {
            "model": "helper",
            "input": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "input_text", "text": "Rule"}]},
                {
                    "type": "message",
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "first"},
                        {"type": "input_text", "text": "second"},
                    ],
                },
                # An output item sent back as input, as the SDK writes it.
                {
                    "id": "msg_1",
                    "type": "message",
                    "status": "completed",
                    "role": "assistant",
                    "content": [
                        {"type": "output_text", "text": "earlier", "annotations": [],
                         "logprobs": []},
                    ],
                },
                {"role": "user", "content": []},
            ],
        }
    )  # fmt: skip
    assert request.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": "Rule"},
        {"role": "user", "content": "first\nsecond"},
        {"role": "assistant", "content": "earlier"},
        {"role": "user", "content": ""},
    ]


def test_instructions_come_first_as_a_system_message() -> None:
    request = parse({"model": "helper", "input": "hi", "instructions": "Answer in French."})
    assert request.instructions == "Answer in French."
    assert request.messages == [{"role": "user", "content": "hi"}]
    assert request.chat_messages() == [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "hi"},
    ]
    assert parse({"model": "helper", "input": "hi"}).chat_messages() == request.messages


@pytest.mark.parametrize(
    ("extra", "header", "expected"),
    [
        ({}, None, None),
        ({}, "from-header", "from-header"),
        ({"session_id": "from-body"}, None, "from-body"),
        ({"session_id": "from-body"}, "from-header", "from-body"),
        ({"session_id": None}, "from-header", None),  # the body wins even when null
    ],
)
def test_session_id_in_the_body_wins_over_the_header(
    extra: dict[str, Any], header: str | None, expected: str | None
) -> None:
    assert parse({"model": "helper", "input": "hi", **extra}, header).session_id == expected


def test_generation_params_take_their_chat_names() -> None:
    request = parse(
        {
            "model": "helper",
            "input": "hi",
            "max_output_tokens": 64,
            "temperature": 0.2,
            "top_p": 1,
            "user": "u-1",
            "stop": ["\n"],
            "seed": 7,
            "presence_penalty": 0.5,
            "frequency_penalty": -0.5,
            "logit_bias": {"50256": -100},
            "service_tier": "auto",
            "prompt_cache_key": "k",
            "safety_identifier": "s",
            # nested: forwarded under the chat API's names
            "reasoning": {"effort": "low", "summary": "auto"},
            "text": {"verbosity": "high"},
            # ignored hints never reach the params
            "include": ["message.output_text.logprobs"],
            "truncation": "auto",
            "parallel_tool_calls": False,
            "top_logprobs": 2,
            "stream_options": {"include_obfuscation": False},
        }
    )
    assert request.params == {
        "max_tokens": 64,
        "temperature": 0.2,
        "top_p": 1,
        "user": "u-1",
        "stop": ["\n"],
        "seed": 7,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
        "logit_bias": {"50256": -100},
        "service_tier": "auto",
        "prompt_cache_key": "k",
        "safety_identifier": "s",
        "reasoning_effort": "low",
        "verbosity": "high",
    }


def test_a_reasoning_effort_of_the_wrong_type_is_named() -> None:
    error = rejected(orjson.dumps({"model": "m", "input": "hi", "reasoning": {"effort": 1}}))
    assert (error.code, error.detail) == ("invalid_type", {"param": "reasoning.effort"})


def test_null_params_are_left_out() -> None:
    body = {"model": "helper", "input": "hi", "temperature": None, "max_output_tokens": None}
    assert parse(body).params == {}


def test_harmless_values_of_restricted_fields_are_accepted() -> None:
    request = parse(
        {
            "model": "helper",
            "input": "hi",
            "tools": [],
            "tool_choice": "none",
            "store": True,
            "text": {"format": {"type": "text"}, "verbosity": "low"},
        }
    )
    assert request.params == {"verbosity": "low"}  # forwarded as the chat API's verbosity
    for body in ({"tools": None, "tool_choice": "auto", "store": None, "text": None},
                 {"text": {"format": None}}):  # fmt: skip
        parse({"model": "helper", "input": "hi", **body})


def test_store_false_is_a_stateless_turn() -> None:
    request = parse({"model": "helper", "input": "hi", "store": False})
    assert request.store is False
    assert parse({"model": "helper", "input": "hi"}).store is True
    assert CreateRequest.from_json(request.to_json()).store is False
    view = ResponseView("resp_1", 0.0, "completed", request, output_text="ok")
    # The SDK's Response declares no store: it is a request field only.
    assert "store" not in response_object(view)


def test_background_stream_metadata_and_previous_response() -> None:
    request = parse(
        {
            "model": "helper",
            "input": "hi",
            "background": True,
            "stream": True,  # allowed together, as OpenAI allows them
            "metadata": {"ticket": "42", "k" * 64: "v" * 512},
            "previous_response_id": "resp_123",
        }
    )
    assert (request.background, request.stream) == (True, True)
    assert request.metadata == {"ticket": "42", "k" * 64: "v" * 512}
    assert request.previous_response_id == "resp_123"
    nulls = parse({"model": "helper", "input": "hi", "background": None, "stream": None,
                   "metadata": None})  # fmt: skip
    assert (nulls.background, nulls.stream, nulls.metadata) == (False, False, {})


# -- parse_create: every rejection, with its code and param ------------------------------


def _deep(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


REJECTIONS: list[tuple[str, bytes, str, str | None]] = [
    ("not json", b"{", "invalid_json", None),
    ("empty body", b"", "invalid_json", None),
    # orjson reads an integer past 64 bits as a float: no longer an integer.
    ("int beyond 64 bits", b'{"model": "a", "input": "x", "seed": 1' + b"0" * 30 + b"}",
     "invalid_type", "seed"),
    ("nested too deep", b'{"model": "a", "input": "x", "metadata": ' + _deep(MAX_DEPTH) + b"}",
     "invalid_json", None),
    ("nested past the decoder's limit", b'{"model": "a", "input": ' + _deep(5000) + b"}",
     "invalid_json", None),
    ("array body", b"[]", "invalid_request", None),
    ("string body", b'"hi"', "invalid_request", None),
    ("null body", b"null", "invalid_request", None),
]  # fmt: skip

BAD_FIELDS: list[tuple[str, dict[str, Any], str, str | None]] = [
    ("model missing", {"model": None}, "missing_required_parameter", "model"),
    ("model not a string", {"model": 5}, "invalid_type", "model"),
    ("model empty", {"model": ""}, "invalid_value", "model"),
    ("input missing", {"input": None}, "missing_required_parameter", "input"),
    ("input empty string", {"input": ""}, "invalid_value", "input"),
    ("input empty list", {"input": []}, "invalid_value", "input"),
    ("input an object", {"input": {"role": "user"}}, "invalid_type", "input"),
    ("too many items", {"input": ["x"] * (MAX_MESSAGES + 1)}, "invalid_value", "input"),
    ("item not an object", {"input": ["hi"]}, "invalid_type", "input[0]"),
    ("unanswered output", {"input": [{"role": "user", "content": "a"},
                                    {"type": "function_call_output", "call_id": "c",
                                     "output": "x"}]},
     "unknown_tool_call", "input[1].call_id"),
    ("function call item", {"input": [{"type": "function_call", "name": "f"}]},
     "missing_required_parameter", "input[0].call_id"),
    ("unknown item type", {"input": [{"type": "telepathy"}]}, "unsupported_input",
     "input[0].type"),
    ("item type not a string", {"input": [{"type": 1, "role": "user", "content": "x"}]},
     "invalid_type", "input[0].type"),
    ("role missing", {"input": [{"content": "x"}]}, "missing_required_parameter",
     "input[0].role"),
    ("tool role", {"input": [{"role": "tool", "content": "x"}]}, "invalid_value",
     "input[0].role"),
    ("role a list", {"input": [{"role": ["user"], "content": "x"}]}, "invalid_value",
     "input[0].role"),
    ("unknown item field", {"input": [{"role": "user", "content": "x", "name": "bob"}]},
     "unknown_parameter", "input[0].name"),
    ("content missing", {"input": [{"role": "user"}]}, "missing_required_parameter",
     "input[0].content"),
    ("content a number", {"input": [{"role": "user", "content": 5}]}, "invalid_type",
     "input[0].content"),
    ("image part", {"input": [{"role": "user", "content": [
        {"type": "input_text", "text": "what is it?"},
        {"type": "input_image", "image_url": "https://example.com/a.png"}]}]},
     "unsupported_input", "input[0].content[1].type"),
    ("file part", {"input": [{"role": "user", "content": [
        {"type": "input_file", "file_id": "f"}]}]},
     "unsupported_input", "input[0].content[0].type"),
    ("refusal part", {"input": [{"role": "assistant", "content": [
        {"type": "refusal", "refusal": "no"}]}]},
     "unsupported_input", "input[0].content[0].type"),
    ("part not an object", {"input": [{"role": "user", "content": ["hi"]}]},
     "invalid_type", "input[0].content[0]"),
    ("part type missing", {"input": [{"role": "user", "content": [{"text": "hi"}]}]},
     "missing_required_parameter", "input[0].content[0].type"),
    ("part type not a string", {"input": [{"role": "user", "content": [{"type": []}]}]},
     "invalid_type", "input[0].content[0].type"),
    ("part text missing", {"input": [{"role": "user", "content": [{"type": "input_text"}]}]},
     "invalid_type", "input[0].content[0].text"),
    ("part text a number", {"input": [{"role": "user", "content": [
        {"type": "input_text", "text": 1}]}]}, "invalid_type", "input[0].content[0].text"),
    ("unknown part field", {"input": [{"role": "user", "content": [
        {"type": "input_text", "text": "x", "detail": "high"}]}]},
     "unknown_parameter", "input[0].content[0].detail"),
    ("too many parts", {"input": [{"role": "user", "content": [
        {"type": "input_text", "text": "x"}] * (MAX_CONTENT_PARTS + 1)}]},
     "invalid_value", "input[0].content"),
    ("unknown field", {"temperatur": 1}, "unknown_parameter", "temperatur"),
    ("chat field", {"messages": []}, "unknown_parameter", "messages"),
    ("conversation type", {"conversation": 5}, "invalid_type", "conversation"),
    ("not a conversation id", {"conversation": "s_1"}, "invalid_value", "conversation"),
    ("bad conversation tail", {"conversation": "conv_{x}"}, "invalid_value", "conversation"),
    ("conversation object", {"conversation": {"id": "conv_1", "x": 1}}, "unknown_parameter",
     "conversation.x"),
    ("conversation and previous", {"conversation": "conv_1", "previous_response_id": "resp_1"},
     "invalid_request", "conversation"),
    ("conversation not stored", {"conversation": "conv_1", "store": False}, "unsupported_value",
     "store"),
    ("prompt template", {"prompt": {"id": "p"}}, "unsupported_parameter", "prompt"),
    ("moderation", {"moderation": {"model": "m"}}, "unsupported_parameter", "moderation"),
    ("tools", {"tools": [{"type": "web_search"}]}, "unsupported_value", "tools[0].type"),
    ("tools not a list", {"tools": "all"}, "invalid_type", "tools"),
    ("tool_choice required", {"tool_choice": "required"}, "unsupported_value", "tool_choice"),
    ("tool_choice a function", {"tool_choice": {"type": "function", "name": "f"}},
     "invalid_value", "tool_choice.name"),
    ("store false in the background", {"store": False, "background": True},
     "unsupported_value", "store"),
    ("store false continuing", {"store": False, "previous_response_id": "resp_1"},
     "unsupported_value", "store"),
    ("store false in a session", {"store": False, "session_id": "s1"},
     "unsupported_value", "store"),
    ("store a string", {"store": "no"}, "invalid_type", "store"),
    ("json schema output", {"text": {"format": {"type": "json_schema", "name": "x",
                                                "schema": {}}}},
     "unsupported_value", "text.format.type"),
    ("json object output", {"text": {"format": {"type": "json_object"}}},
     "unsupported_value", "text.format.type"),
    ("text format a string", {"text": {"format": "text"}}, "invalid_type", "text.format"),
    ("unknown text field", {"text": {"colour": "red"}}, "unknown_parameter", "text.colour"),
    ("text not an object", {"text": "plain"}, "invalid_type", "text"),
    ("temperature a string", {"temperature": "hot"}, "invalid_type", "temperature"),
    ("temperature a boolean", {"temperature": True}, "invalid_type", "temperature"),
    ("temperature too high", {"temperature": 2.5}, "invalid_value", "temperature"),
    ("top_p negative", {"top_p": -0.1}, "invalid_value", "top_p"),
    ("max_output_tokens zero", {"max_output_tokens": 0}, "invalid_value", "max_output_tokens"),
    ("max_output_tokens a float", {"max_output_tokens": 1.5}, "invalid_type",
     "max_output_tokens"),
    ("stop a number", {"stop": 3}, "invalid_type", "stop"),
    ("stream a string", {"stream": "yes"}, "invalid_type", "stream"),
    ("background a number", {"background": 1}, "invalid_type", "background"),
    ("instructions a list", {"instructions": [{"role": "system"}]}, "invalid_type",
     "instructions"),
    ("previous_response_id a number", {"previous_response_id": 5}, "invalid_type",
     "previous_response_id"),
    ("previous_response_id empty", {"previous_response_id": ""}, "invalid_value",
     "previous_response_id"),
    ("previous_response_id huge", {"previous_response_id": "r" * 100_000}, "invalid_value",
     "previous_response_id"),
    ("session_id a number", {"session_id": 5}, "invalid_session_id", "session_id"),
    ("metadata a list", {"metadata": [["a", "b"]]}, "invalid_type", "metadata"),
    ("metadata too many pairs", {"metadata": {str(i): "v" for i in range(17)}},
     "invalid_value", "metadata"),
    ("metadata key too long", {"metadata": {"k" * 65: "v"}}, "invalid_value", "metadata"),
    ("metadata value too long", {"metadata": {"k": "v" * 513}}, "invalid_value", "metadata.k"),
    ("metadata value a number", {"metadata": {"k": 1}}, "invalid_type", "metadata.k"),
    ("ignored field of the wrong type", {"include": "everything"}, "invalid_type", "include"),
    ("reasoning a string", {"reasoning": "high"}, "invalid_type", "reasoning"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("raw", "code", "param"),
    [pytest.param(raw, code, param, id=name) for name, raw, code, param in REJECTIONS],
)
def test_bodies_that_cannot_be_read_are_rejected(raw: bytes, code: str, param: str | None) -> None:
    exc = rejected(raw)
    assert (exc.status, exc.code) == (400, code)
    assert (exc.detail or {}).get("param") == param


@pytest.mark.parametrize(
    ("fields", "code", "param"),
    [pytest.param(fields, code, param, id=name) for name, fields, code, param in BAD_FIELDS],
)
def test_bad_fields_are_rejected_with_a_stable_code_and_param(
    fields: dict[str, Any], code: str, param: str
) -> None:
    exc = rejected(orjson.dumps({"model": "helper", "input": "hi", **fields}))
    assert (exc.status, exc.code) == (400, code), exc.message
    error = exc.to_dict()["error"]
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", code, param)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"x" * 100_000: 1}, "x" * 64 + "..."),
        ({"input": [{"role": "user", "content": "hi", "y" * 100_000: 1}]},
         "input[0]." + "y" * 64 + "..."),
        ({"text": {"z" * 100_000: 1}}, "text." + "z" * 64 + "..."),
        ({"input": [{"type": "t" * 100_000}]}, "input[0].type"),
    ],
)  # fmt: skip
def test_errors_do_not_echo_huge_names(fields: dict[str, Any], param: str) -> None:
    exc = rejected(orjson.dumps({"model": "helper", "input": "hi", **fields}))
    assert exc.to_dict()["error"]["param"] == param
    assert len(exc.message) < 300


def test_huge_text_is_accepted_up_to_the_body_limit() -> None:
    # The route's body limit (server.max_request_bytes) bounds text, not the parser.
    text = "x" * 2_000_000
    request = parse({"model": "helper", "input": [{"role": "user", "content": text}],
                     "instructions": text})  # fmt: skip
    assert request.messages[0]["content"] == text


def test_nesting_up_to_max_depth_is_accepted() -> None:
    # MAX_DEPTH levels in all (the chat API's limit): the body, an object, the arrays.
    raw = b'{"model": "a", "input": "x", "reasoning": {"a": ' + _deep(MAX_DEPTH - 2) + b"}}"
    assert parse_create(raw, None).agent == "a"


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False,
    allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=20,
)  # fmt: skip
FIELDS = st.sampled_from(
    ["model", "input", "instructions", "metadata", "session_id", "background", "stream",
     "temperature", "max_output_tokens", "tools", "text", "store", "include", "x"]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(FIELDS, JSON, max_size=6) | JSON)
def test_any_json_either_parses_or_is_a_bad_request(body: Any) -> None:
    try:
        request = parse(body)
    except BadRequest as exc:
        assert exc.status == 400 and exc.code
        return
    assert request.agent and request.messages
    assert all(isinstance(m["content"], str) for m in request.messages)


@given(st.text(min_size=1), st.text())
def test_any_text_input_is_one_user_message(text: str, agent_suffix: str) -> None:
    request = parse({"model": "a" + agent_suffix, "input": text})
    assert request.messages == [{"role": "user", "content": text}]


# -- CreateRequest: stored with a job ---------------------------------------------------

TEXT = st.text(max_size=20)
REQUESTS = st.builds(
    CreateRequest,
    agent=st.text(min_size=1, max_size=20),
    messages=st.lists(
        st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system"]),
                               "content": TEXT}), min_size=1, max_size=4),
    instructions=st.none() | TEXT,
    previous_response_id=st.none() | TEXT,
    session_id=st.none() | TEXT,
    metadata=st.dictionaries(TEXT, TEXT, max_size=3),
    background=st.booleans(),
    stream=st.booleans(),
    params=st.fixed_dictionaries({}, optional={
        "temperature": st.floats(0, 2), "max_tokens": st.integers(1, 2**31),
        "stop": st.lists(TEXT, max_size=2), "user": TEXT}),
)  # fmt: skip


@given(REQUESTS)
def test_create_request_round_trips_through_json(request: CreateRequest) -> None:
    assert CreateRequest.from_json(request.to_json()) == request


def test_a_parsed_request_round_trips_through_json() -> None:
    request = parse({"model": "helper", "input": "hi", "metadata": {"a": "b"}, "top_p": 0.5,
                     "background": True, "instructions": "Be kind."}, "sess")  # fmt: skip
    assert CreateRequest.from_json(request.to_json()) == request


def test_from_json_ignores_unknown_keys_and_defaults_missing_ones() -> None:
    stored = {"v": 1, "agent": "helper", "messages": [{"role": "user", "content": "hi"}],
              "added_in_a_later_release": True}  # fmt: skip
    assert CreateRequest.from_json(orjson.dumps(stored)) == CreateRequest(
        "helper", [{"role": "user", "content": "hi"}]
    )


@pytest.mark.parametrize(
    "data", [b"[]", b'{"v": 2, "agent": "a", "messages": []}', b'{"agent": "a"}', b"{"]
)
def test_from_json_refuses_what_to_json_did_not_write(data: bytes) -> None:
    with pytest.raises(ValueError):
        CreateRequest.from_json(data)


# -- ids --------------------------------------------------------------------------------


def test_response_ids_are_random_and_shaped_like_openai_ids() -> None:
    ids = {new_response_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(re.fullmatch(r"resp_[0-9a-f]{48}", i) for i in ids)


def test_the_message_item_id_is_derived_from_the_response_id() -> None:
    assert message_item_id("resp_1") == message_item_id("resp_1")
    assert message_item_id("resp_1") != message_item_id("resp_2")
    assert re.fullmatch(r"msg_[0-9a-f]{48}", message_item_id("resp_1"))


# -- response_object --------------------------------------------------------------------


@pytest.mark.parametrize("status", STATUSES)
@pytest.mark.parametrize("text", [None, "", "Bonjour !"])
def test_the_response_object_validates_with_the_sdk(status: str, text: str | None) -> None:
    obj = response_object(view(status, text))
    response = Response.model_validate(obj)
    assert response.status == status
    assert response.output_text == (text or "")
    assert response.id == "resp_abc" and response.model == "helper"
    assert obj["created_at"] == 1_700_000_000
    if text is None:
        assert obj["output"] == []
    else:
        (item,) = obj["output"]
        assert item["id"] == message_item_id("resp_abc")
        expected = {"completed": "completed", "queued": "in_progress",
                    "in_progress": "in_progress"}.get(status, "incomplete")  # fmt: skip
        assert item["status"] == expected
    assert orjson.loads(orjson.dumps(obj)) == obj


def test_the_response_object_echoes_the_request() -> None:
    request = parse(
        {
            "model": "helper",
            "input": "hi",
            "instructions": "Be kind.",
            "metadata": {"ticket": "42"},
            "previous_response_id": "resp_prev",
            "background": True,
            "temperature": 0.3,
            "top_p": 0.9,
            "max_output_tokens": 100,
            "user": "u-1",
        },
        "sess-from-header",
    )
    obj = response_object(view("in_progress", None, request=request))
    response = Response.model_validate(obj)
    assert (response.instructions, response.metadata, response.previous_response_id) == (
        "Be kind.", {"ticket": "42"}, "resp_prev",
    )  # fmt: skip
    assert (response.background, response.temperature, response.top_p) == (True, 0.3, 0.9)
    assert (response.max_output_tokens, response.user) == (100, "u-1")
    assert (response.tools, response.tool_choice, response.parallel_tool_calls) == (
        [], "auto", True,
    )  # fmt: skip
    assert obj["session_id"] == "sess-from-header"  # the request's, until the view says
    assert response_object(view(request=request, session_id="stored"))["session_id"] == "stored"


def test_usage_is_rendered_in_responses_names() -> None:
    usage = {
        "prompt_tokens": 12,
        "completion_tokens": 5,
        "total_tokens": 17,
        "prompt_tokens_details": {"cached_tokens": 4},
        "completion_tokens_details": {"reasoning_tokens": 2},
    }
    obj = response_object(view(usage=usage))
    assert obj["usage"] == {
        "input_tokens": 12,
        "input_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 0},
        "output_tokens": 5,
        "output_tokens_details": {"reasoning_tokens": 2},
        "total_tokens": 17,
    }
    assert Response.model_validate(obj).usage.total_tokens == 17  # type: ignore[union-attr]
    # What a backend may leave out counts as zero; the total is the sum when absent.
    sparse = response_object(view(usage={"prompt_tokens": 3, "completion_tokens": 2}))["usage"]
    assert (sparse["total_tokens"], sparse["input_tokens_details"]["cached_tokens"]) == (5, 0)
    assert response_object(view(usage={}))["usage"]["total_tokens"] == 0
    assert response_object(view(usage=None))["usage"] is None


def test_completed_at_is_set_only_on_completed_responses() -> None:
    assert response_object(view("completed", completed_at=1_700_000_009.9))["completed_at"] == (
        1_700_000_009
    )
    assert response_object(view("failed", completed_at=1_700_000_009.9))["completed_at"] is None


@pytest.mark.parametrize(
    ("error", "code"),
    [
        ({"code": "upstream_timeout", "message": "the model took too long"}, "server_error"),
        ({"code": "rate_limited", "message": "slow down"}, "rate_limit_exceeded"),
        ({"code": "server_error", "message": "boom"}, "server_error"),
    ],
)
def test_errors_use_the_sdk_codes_and_keep_agentd_s(error: dict[str, Any], code: str) -> None:
    obj = response_object(view("failed", None, error=error))
    response = Response.model_validate(obj)
    assert response.error is not None
    assert (response.error.code, response.error.message) == (code, error["message"])
    assert obj["error"]["agentd_code"] == error["code"]


def test_error_dict_carries_an_agentd_error() -> None:
    error = error_dict(BadRequest("upstream said no", code="upstream_rejected"))
    assert error == {"code": "upstream_rejected", "message": "upstream said no",
                     "type": "invalid_request_error"}  # fmt: skip
    Response.model_validate(response_object(view("failed", error=error)))


@pytest.mark.parametrize(
    ("reason", "rendered"),
    [("length", "max_output_tokens"), ("max_output_tokens", "max_output_tokens"),
     ("content_filter", "content_filter"), (None, None), ("other", None)],
)  # fmt: skip
def test_incomplete_details_name_the_reason(reason: str | None, rendered: str | None) -> None:
    obj = response_object(view("incomplete", "cut sho", incomplete_reason=reason))
    assert obj["incomplete_details"] == {"reason": rendered}
    assert Response.model_validate(obj).output_text == "cut sho"
    completed = response_object(view("completed", incomplete_reason=reason))
    assert completed["incomplete_details"] is None


def test_an_unknown_status_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        response_object(view("done"))


# -- ResponseEvents ---------------------------------------------------------------------


def run_stream(
    deltas: list[str], final: ResponseView, first_seq: int = 0, start: ResponseView | None = None
) -> list[dict[str, Any]]:
    events = ResponseEvents(start or view("in_progress", None), first_seq)
    out = events.opening()
    out += [events.delta(d) for d in deltas]
    out += events.closing(final)
    assert events.next_seq == first_seq + len(out)
    return out


def validate_all(events: list[dict[str, Any]]) -> list[Any]:
    models = [EVENT.validate_python(e) for e in events]
    for event, model in zip(events, models, strict=True):
        assert model.type == event["type"]
    return models


@settings(deadline=None)
@given(st.lists(st.text(), max_size=8), st.integers(0, 10**6))
def test_a_full_stream_validates_and_its_deltas_make_the_text(
    deltas: list[str], first_seq: int
) -> None:
    text = "".join(deltas)
    usage = {"prompt_tokens": 3, "completion_tokens": 4}
    events = run_stream(deltas, view("completed", text, usage=usage), first_seq)
    models = validate_all(events)
    assert [e["sequence_number"] for e in events] == list(range(first_seq, first_seq + len(events)))
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * len(deltas),
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    item_id = message_item_id("resp_abc")
    assert {e["item_id"] for e in events if "item_id" in e} == {item_id}
    assert "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta") == text
    by_type = {m.type: m for m in models}
    assert by_type["response.output_text.done"].text == text
    assert by_type["response.content_part.done"].part.text == text
    assert by_type["response.output_item.done"].item.status == "completed"
    completed = by_type["response.completed"].response
    assert (completed.status, completed.output_text) == ("completed", text)
    assert completed.output[0].id == item_id
    assert completed.usage.output_tokens == 4
    # The opening events show a response with no output yet.
    assert by_type["response.created"].response.output == []
    assert by_type["response.in_progress"].response.status == "in_progress"
    assert by_type["response.output_item.added"].item.status == "in_progress"


def test_closing_takes_the_text_from_the_deltas_when_the_view_has_none() -> None:
    events = run_stream(["Hel", "lo"], view("completed", None))
    models = validate_all(events)
    assert models[-4].text == "Hello"
    assert models[-1].response.output_text == "Hello"


@pytest.mark.parametrize(
    ("final", "terminal", "item_status"),
    [
        (view("failed", "par", error={"code": "upstream_error", "message": "backend died"}),
         "response.failed", "incomplete"),
        (view("incomplete", "partial", incomplete_reason="length"), "response.incomplete",
         "incomplete"),
        # OpenAI's stream has no cancelled event: incomplete, with the cancelled status.
        (view("cancelled", "par"), "response.incomplete", "incomplete"),
    ],
)  # fmt: skip
def test_each_final_status_ends_with_its_terminal_event(
    final: ResponseView, terminal: str, item_status: str
) -> None:
    events = run_stream(["par"], final)
    models = validate_all(events)
    assert events[-1]["type"] == terminal
    assert models[-2].item.status == item_status
    response = models[-1].response
    assert (response.status, response.output_text) == (final.status, final.output_text)
    if final.status == "failed":
        assert response.error.message == "backend died"
    if final.status == "incomplete":
        assert response.incomplete_details.reason == "max_output_tokens"


def test_a_queued_response_opens_with_created_and_queued() -> None:
    request = parse({"model": "helper", "input": "hi", "background": True, "stream": True})
    events = ResponseEvents(view("queued", None, request=request), first_seq=0)
    created = events.created()
    assert [e["type"] for e in created] == ["response.created", "response.queued"]
    assert {e["response"]["status"] for e in created} == {"queued"}
    # Later (on whichever worker runs it), the stream goes on from the next number.
    resumed = ResponseEvents(view("queued", None, request=request), first_seq=events.next_seq)
    started = resumed.started()
    assert [e["sequence_number"] for e in started] == [2, 3, 4]
    assert started[0]["response"]["status"] == "in_progress"
    validate_all(created + started + [resumed.delta("ok")] + resumed.closing(view(request=request)))


def test_a_response_that_fails_before_it_starts_closes_without_an_item() -> None:
    events = ResponseEvents(view("queued", None), first_seq=5)
    out = events.created()
    error = {"code": "overloaded", "message": "no capacity"}
    out += events.closing(view("failed", None, error=error))
    assert [e["type"] for e in out] == ["response.created", "response.queued", "response.failed"]
    assert [e["sequence_number"] for e in out] == [5, 6, 7]
    models = validate_all(out)
    assert models[-1].response.output == []


def test_a_resumed_builder_closes_the_item_it_is_told_is_open() -> None:
    events = ResponseEvents(view("in_progress", None), first_seq=40)
    events.item_open = True
    out = [events.delta("rest"), *events.closing(view("completed", "all of it, rest"))]
    assert [e["type"] for e in out][:2] == ["response.output_text.delta",
                                            "response.output_text.done"]  # fmt: skip
    assert validate_all(out)[1].text == "all of it, rest"


Batches = list[list[dict[str, Any]]]


def tool_turn(
    events: ResponseEvents, text: Callable[[str], str] = str, replayed: int = 0
) -> Batches:
    """A turn with tools as a job tells its builder (each batch written at once): a
    listing; a step of two calls (one fails); a step that says something and makes one
    call; the answer. ``text`` gives what of a piece of text to stream; the first
    ``replayed`` steps are told again as recorded ones are (no step start)."""
    a, b, c = (call_item("resp_abc", f"call_{n}", "web", "fetch", f'{{"n":"{n}"}}') for n in "abc")
    listed = list_tools_item("resp_abc", "web", [("fetch", "Fetches", {"type": "object"})])
    batches = [events.tool_item(listed)]
    if replayed < 1:
        batches.append(events.calls_starting([a["id"], b["id"]]))
    batches += [events.call_started(a), events.call_started(b)]
    batches.append(events.call_ended({**b, "status": "completed", "output": "B"}))
    failed = {**a, "status": "failed", "error": tool_error("x", "timeout")}
    batches.append(events.call_ended(failed))
    if said := text("Let me look."):
        batches.append(events.text(said))
    if replayed < 2:
        batches.append(events.calls_starting([c["id"]]))
    batches.append(events.call_started(c))
    batches.append(events.call_ended({**c, "status": "completed", "output": "C"}))
    if said := text("\n\nDone."):
        batches.append(events.text(said))
    return [b for b in batches if b]


# The mcp_call items of tool_turn's steps.
STEPS = [{call_item_id("resp_abc", "call_a"), call_item_id("resp_abc", "call_b")},
         {call_item_id("resp_abc", "call_c")}]  # fmt: skip


def test_a_stream_cut_after_any_write_goes_on_as_the_undisturbed_one() -> None:
    # A later attempt's builder, given what an earlier one wrote, tells the whole turn
    # again (steps replayed, the running one made again): the stream it continues is
    # the undisturbed one, event for event, numbers and output included.
    final = view("completed", "Let me look.\n\nDone.")
    whole = ResponseEvents(view("in_progress", None), 0, tools=True)
    batches = [whole.opening(), *tool_turn(whole)]
    undisturbed = [e for batch in batches for e in batch]
    undisturbed += whole.closing(final)
    validate_all(undisturbed)
    types = [e["type"] for e in undisturbed]
    assert types.count("response.output_item.added") == types.count("response.output_item.done")
    for cut in range(1, len(batches) + 1):
        written = [orjson.loads(orjson.dumps(e)) for batch in batches[:cut] for e in batch]
        resumed = ResponseEvents(view("in_progress", None), len(written), tools=True)
        resumed.resume(written[2:])  # since response.in_progress
        streamed = len("".join(e["delta"] for e in written if "delta" in e and "logprobs" in e))

        def rest(piece: str) -> str:
            nonlocal streamed
            cut_at, streamed = min(streamed, len(piece)), max(0, streamed - len(piece))
            return piece[cut_at:]

        # The steps whose calls all ended in the stream were recorded: told again.
        ended = {e["item"]["id"] for e in written if e["type"] == "response.output_item.done"}
        replayed = sum(1 for step in STEPS if step <= ended)
        went_on = [e for batch in tool_turn(resumed, rest, replayed) for e in batch]
        went_on += resumed.closing(final)
        assert written + went_on == undisturbed, cut
        assert (resumed.items, resumed.message_at) == (whole.items, whole.message_at)


def test_a_call_left_running_that_the_resumed_step_does_not_make_again_fails() -> None:
    # The model, asked for the step again, makes another call (a new id): the stale
    # call ends failed, saying why, before the new one is added; at the end, any other.
    old, other = (call_item("resp_abc", f"call_{n}", "web", "fetch", "{}") for n in "xy")
    first = ResponseEvents(view("in_progress", None), 0, tools=True)
    written = first.opening() + first.call_started(old) + first.call_started(other)
    resumed = ResponseEvents(view("in_progress", None), len(written), tools=True)
    resumed.resume(written[2:])
    new = call_item("resp_abc", "call_z", "web", "fetch", "{}")
    out = resumed.calls_starting([new["id"], other["id"]]) + resumed.call_started(new)
    assert [(e["type"], e.get("output_index")) for e in out] == [
        ("response.mcp_call.failed", 0), ("response.output_item.done", 0),
        ("response.output_item.added", 2), ("response.mcp_call.in_progress", 2),
        ("response.mcp_call_arguments.delta", 2), ("response.mcp_call_arguments.done", 2),
    ]  # fmt: skip
    assert out[1]["item"]["status"] == "failed"
    assert "did not make this call" in out[1]["item"]["error"]["message"]
    # Only the first step may go on with them: ``other``, not made again, ends with it.
    out += resumed.call_ended({**new, "status": "completed", "output": "ok"})
    out += resumed.closing(view("completed", "fine"))
    models = validate_all(written + out)
    assert [e["sequence_number"] for e in written + out] == list(range(len(written + out)))
    output = models[-1].response.output
    assert [(i.id, i.status) for i in output[:3]] == [
        (old["id"], "failed"), (other["id"], "incomplete"), (new["id"], "completed"),
    ]  # fmt: skip
    assert output[3].type == "message"
    # A turn that ends without another step: its stale calls end failed too.
    alone = ResponseEvents(view("in_progress", None), len(written), tools=True)
    alone.resume(written[2:])
    closing = alone.closing(view("completed", "fine"))
    assert [e["type"] for e in closing[:4]] == ["response.mcp_call.failed",
                                                "response.output_item.done"] * 2  # fmt: skip
    assert {e["item"]["error"]["code"] for e in closing[1:4:2]} == {-32800}


def test_misuse_is_refused() -> None:
    events = ResponseEvents(view("in_progress", None))
    with pytest.raises(RuntimeError):
        events.delta("too early")
    with pytest.raises(ValueError):
        events.closing(view("in_progress"))
    assert events.next_seq == 0


def test_sse_frames_are_framed_as_openai_frames_them() -> None:
    event = ResponseEvents(view("in_progress", None)).opening()[0]
    frame = event_frame(event)
    head, data, tail = frame.split(b"\n", 2)
    assert head == b"event: response.created"
    assert data.startswith(b"data: ") and orjson.loads(data[6:]) == event
    assert tail == b"\n"


# -- the official SDK, end to end -----------------------------------------------------


@pytest.fixture
async def fake_route() -> AsyncIterator[Callable[[list[str]], Awaitable[str]]]:
    """Serve a fake ``POST /v1/responses`` that parses what the SDK sends as the route
    will, and replies with ``deltas`` as the text; yields the base URL."""
    servers: list[TestServer] = []

    async def start(deltas: list[str]) -> str:
        async def create(http: web.Request) -> web.StreamResponse:
            request = parse_create(await http.read(), http.headers.get("X-Session-Id"))
            start = ResponseView("resp_sdk", 1_700_000_000, "in_progress", request)
            final = dataclasses.replace(
                start,
                status="completed",
                output_text="".join(deltas),
                usage={"prompt_tokens": 1, "completion_tokens": 2},
            )
            if not request.stream:
                return web.json_response(response_object(final))
            events = ResponseEvents(start)
            body = events.opening() + [events.delta(d) for d in deltas] + events.closing(final)
            reply = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await reply.prepare(http)
            for event in body:
                await reply.write(event_frame(event))
            await reply.write_eof()
            return reply

        app = web.Application()
        app.router.add_post("/v1/responses", create)
        server = TestServer(app)
        await server.start_server()
        servers.append(server)
        return str(server.make_url("/v1"))

    yield start
    for server in servers:
        await server.close()


async def test_the_sdk_reads_a_response(fake_route: Any) -> None:
    client = openai.AsyncOpenAI(base_url=await fake_route(["Hi ", "there"]), api_key="k",
                                max_retries=0)  # fmt: skip
    response = await client.responses.create(
        model="helper",
        input=[{"role": "user", "content": [{"type": "input_text", "text": "hello"}]}],
        instructions="Be brief.",
        max_output_tokens=50,
        extra_body={"session_id": "s-1"},
    )
    assert (response.output_text, response.status) == ("Hi there", "completed")
    assert response.max_output_tokens == 50
    assert response.session_id == "s-1"  # type: ignore[attr-defined]
    await client.close()


async def test_the_sdk_reads_a_streamed_response(fake_route: Any) -> None:
    client = openai.AsyncOpenAI(base_url=await fake_route(["Hi ", "there", "!"]), api_key="k",
                                max_retries=0)  # fmt: skip
    async with client.responses.stream(model="helper", input="hello") as stream:
        deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    assert deltas == ["Hi ", "there", "!"]
    assert final.output_text == "Hi there!"
    raw = await client.responses.create(model="helper", input="hello", stream=True)
    assert [e.sequence_number async for e in raw] == list(range(11))
    await client.close()
