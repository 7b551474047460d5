"""The fields of OpenAI's chat request as agentd treats them (forwarded, applied, ignored,
unknown), the echo backend's token limits through both APIs, and the model objects'
``created``."""

from __future__ import annotations

import os
from typing import Any

import aiohttp
import orjson
import pytest

from .chat_helpers import Factory, chat_body, post, sse
from .openai_stub import StubNode
from .procs import AgentdProcess

CHAT = "/v1/chat/completions"

# One value of each field the openai backend forwards, and of each it drops.
FORWARDED = {
    "reasoning_effort": "low",
    "verbosity": "low",
    "service_tier": "auto",
    "prompt_cache_key": "k",
    "safety_identifier": "u-1",
    "user": "u-1",
    "seed": 7,
    "stop": ["\n\n"],
    "max_completion_tokens": 50,
    "logit_bias": {"50256": -100},
    "frequency_penalty": 0.5,
    "presence_penalty": 0.5,
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
    "tool_choice": "auto",
    "parallel_tool_calls": False,
    "prediction": {"type": "content", "content": "x"},
    "web_search_options": {},
    "response_format": {"type": "text"},
}
DROPPED = {
    "store": True,
    "metadata": {"topic": "tests"},
    "logprobs": True,
    "top_logprobs": 2,
    "modalities": ["text"],
    "audio": {"voice": "alloy", "format": "mp3"},
    "n": 1,
    "stream_options": None,
}


async def _session(http: aiohttp.ClientSession, url: str) -> str:
    return (await post(http, url + "/v1/sessions", {}))[2]["id"]


async def _history(http: aiohttp.ClientSession, url: str, sid: str) -> list[dict[str, Any]]:
    async with http.get(f"{url}/v1/sessions/{sid}/messages") as r:
        return orjson.loads(await r.read())["data"]


async def test_the_openai_backend_forwards_what_it_can_honour(serve: Factory) -> None:
    async with StubNode() as node:
        url = await serve(
            backends=[{"name": "up", "type": "openai", "urls": [node.url]}],
            agents=[{"name": "echo", "backend": "up"}],
        )
        async with aiohttp.ClientSession() as http:
            status, _, reply = await post(http, url + CHAT, chat_body(**FORWARDED, **DROPPED))
        assert status == 200, reply
        sent = node.requests[-1].json
    for name, value in FORWARDED.items():
        assert sent[name] == value, name
    # agentd's own fields and the ignored ones stay here (stream_options is agentd's own
    # request for usage).
    assert not {"store", "metadata", "logprobs", "top_logprobs", "modalities", "audio", "n"} & set(
        sent
    )
    assert sent["stream_options"] == {"include_usage": True}


async def test_store_false_reads_the_session_and_leaves_it_alone(serve: Factory) -> None:
    url = await serve()
    async with aiohttp.ClientSession() as http:
        sid = await _session(http, url)
        await post(http, url + CHAT, chat_body("kept", session_id=sid))
        status, headers, reply = await post(
            http, url + CHAT, chat_body("not kept", session_id=sid, store=False)
        )
        assert status == 200 and reply["choices"][0]["message"]["content"] == "not kept"
        assert headers["X-Session-Id"] == sid and "seq" not in reply
        body = chat_body("streamed, not kept", session_id=sid, store=False, stream=True)
        async with http.post(url + CHAT, json=body) as r:
            chunks = (await sse(r))[:-1]
        assert not any("seq" in c for c in chunks)
        history = await _history(http, url, sid)
    assert [m["content"] for m in history] == ["kept", "kept"]


async def test_metadata_is_kept_on_the_stored_reply(serve: Factory) -> None:
    url = await serve()
    async with aiohttp.ClientSession() as http:
        sid = await _session(http, url)
        await post(http, url + CHAT, chat_body("one", session_id=sid, metadata={"k": "v"}))
        await post(http, url + CHAT, chat_body("two", session_id=sid))
        history = await _history(http, url, sid)
    assert [m.get("metadata") for m in history] == [None, {"k": "v"}, None, None]


async def test_the_cache_key_holds_what_changes_the_reply(serve: Factory) -> None:
    url = await serve(agents=[{"name": "echo", "cache": {"mode": "always"}}])
    async with aiohttp.ClientSession() as http:
        body = chat_body("one two three")
        _, first_headers, _ = await post(http, url + CHAT, body)
        # max_tokens changes the reply: another key.
        _, headers, cut = await post(http, url + CHAT, body | {"max_tokens": 1})
        assert headers["X-Cache"] == "miss" and cut["choices"][0]["message"]["content"] == "one "
        # metadata, store and the ignored fields do not: the first reply, from the cache.
        same = body | {"metadata": {"k": "v"}, "store": False, "logprobs": True}
        _, headers, again = await post(http, url + CHAT, same)
    assert first_headers["X-Cache"] == "miss" and headers["X-Cache"] == "hit-l1"
    assert again["choices"][0]["message"]["content"] == "one two three"


@pytest.mark.parametrize(
    ("chat_extra", "responses_extra", "param"),
    [
        ({"tempreature": 1}, {"tempreature": 1}, "tempreature"),
        ({"x" * 100: 1}, {"x" * 100: 1}, "x" * 64 + "..."),
    ],
)
async def test_unknown_fields_get_one_error_shape_in_both_apis(
    serve: Factory, chat_extra: dict[str, Any], responses_extra: dict[str, Any], param: str
) -> None:
    url = await serve()
    async with aiohttp.ClientSession() as http:
        chat = await post(http, url + CHAT, chat_body(**chat_extra))
        responses = await post(
            http, url + "/v1/responses", {"model": "echo", "input": "hi", **responses_extra}
        )
    errors = []
    for status, _, body in (chat, responses):
        assert status == 400
        errors.append(body["error"])
    assert errors[0] == errors[1]
    assert errors[0] == {
        "message": f"unknown parameter {param!r}",
        "type": "invalid_request_error",
        "code": "unknown_parameter",
        "param": param,
    }


async def test_ill_typed_fields_get_one_error_shape_in_both_apis(serve: Factory) -> None:
    url = await serve()
    async with aiohttp.ClientSession() as http:
        chat = await post(http, url + CHAT, chat_body(temperature="hot"))
        responses = await post(
            http, url + "/v1/responses", {"model": "echo", "input": "hi", "temperature": "hot"}
        )
    assert chat[0] == responses[0] == 400
    assert (
        chat[2]["error"]
        == responses[2]["error"]
        == {
            "message": "temperature must be a number",
            "type": "invalid_request_error",
            "code": "invalid_type",
            "param": "temperature",
        }
    )


# -- the echo backend's limits, through both APIs --------------------------------------


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
async def test_echo_stops_at_max_tokens_with_finish_reason_length(
    serve: Factory, field: str
) -> None:
    url = await serve()
    async with aiohttp.ClientSession() as http:
        _, _, reply = await post(http, url + CHAT, chat_body("one two three", **{field: 2}))
        body = chat_body("one two three", stream=True, **{field: 2})
        async with http.post(url + CHAT, json=body) as r:
            chunks = (await sse(r))[:-1]
    assert reply["choices"][0]["message"]["content"] == "one two "
    assert reply["choices"][0]["finish_reason"] == "length"
    assert reply["usage"]["completion_tokens"] == 2
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == "one two "
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


async def test_echo_responses_are_incomplete_at_max_output_tokens(serve: Factory) -> None:
    url = await serve()
    body = {"model": "echo", "input": "one two three", "max_output_tokens": 1}
    async with aiohttp.ClientSession() as http:
        _, _, response = await post(http, url + "/v1/responses", body)
        async with http.post(url + "/v1/responses", json=body | {"stream": True}) as r:
            events = await sse(r)
    assert response["status"] == "incomplete"
    assert response["incomplete_details"] == {"reason": "max_output_tokens"}
    assert response["output"][0]["content"][0]["text"] == "one "
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == "one "


# -- /v1/models ------------------------------------------------------------------------


def test_models_are_as_old_as_the_config_file(
    agentd_instance: Any,
) -> None:
    proc: AgentdProcess = agentd_instance(
        '[[agents]]\nname = "echo"\n[[agents]]\nname = "dated"\nbackend = "echo"\n'
        "created = 1600000000\n"
    )
    written = int(os.stat(proc.config_path).st_mtime)
    status, listed = proc.get("/v1/models")
    assert status == 200
    assert [(m["id"], m["created"]) for m in listed["data"]] == [
        ("echo", written),
        ("dated", 1_600_000_000),
    ]
    assert proc.get("/v1/models/echo") == (200, listed["data"][0])
