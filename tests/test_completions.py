"""``POST /v1/completions`` (legacy): the official SDK against agentd (the ``serve`` app)
on the echo backend and on the stub upstream; every body and streamed chunk is checked
against the SDK's own type."""

from __future__ import annotations

from typing import Any, Literal

import aiohttp
import openai
import orjson
import pytest
from openai.types import Completion, CompletionChoice

from .chat_helpers import Factory, echo, post, sse
from .openai_stub import Fail, FailMidStream, StartStub
from .sdk_strict import strictly


class StreamedChoice(CompletionChoice):
    # The SDK says the stream shares the completion's shape, but OpenAI (and agentd)
    # send finish_reason null until a choice's last piece, and the SDK parses stream
    # chunks without validating them. Only that one field is relaxed here.
    finish_reason: Literal["stop", "length", "content_filter"] | None  # type: ignore[assignment]


class StreamedCompletion(Completion):
    choices: list[StreamedChoice]  # type: ignore[assignment]


def sdk(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0)


async def create(client: openai.AsyncOpenAI, **params: Any) -> Completion:
    """Call through the SDK; check the raw body strictly and return it parsed."""
    raw = await client.completions.with_raw_response.create(**params)
    body = strictly(Completion, raw.http_response.content)
    assert raw.parse() == body
    return body


async def streamed(url: str, body: dict[str, Any]) -> list[Any]:
    """The events of a streamed completion, raw ([DONE] as a string), each chunk checked."""
    async with aiohttp.ClientSession() as http, http.post(url + "/v1/completions", json=body) as r:
        assert r.status == 200, await r.text()
        assert r.headers["Content-Type"].startswith("text/event-stream")
        events = await sse(r)
    assert events[-1] == "[DONE]"
    for event in events[:-1]:
        if "error" not in event:
            strictly(StreamedCompletion, event)
    return events


def text_of(events: list[Any], index: int = 0) -> str:
    return "".join(
        c["text"] for e in events[:-1] for c in e.get("choices", ()) if c["index"] == index
    )


def upstream(*nodes: Any, **backend: Any) -> dict[str, Any]:
    """An app whose agent "writer" sends model "instruct-1" to the stub nodes."""
    return {
        "backends": [
            {"name": "up", "type": "openai", "urls": [n.url for n in nodes], **backend},
        ],
        "agents": [{"name": "writer", "backend": "up", "model": "instruct-1"}],
    }


async def test_echo_completes_with_the_prompt(serve: Factory) -> None:
    client = sdk(await serve(**echo()))
    body = await create(client, model="echo", prompt="say this back")
    assert body.object == "text_completion" and body.model == "echo"
    assert body.id.startswith("cmpl-")
    [choice] = body.choices
    assert (choice.index, choice.text, choice.finish_reason) == (0, "say this back", "stop")
    assert body.usage is not None
    assert (body.usage.prompt_tokens, body.usage.completion_tokens) == (4, 3)


async def test_echo_honours_n_max_tokens_and_a_list_of_prompts(serve: Factory) -> None:
    client = sdk(await serve(**echo()))
    body = await create(client, model="echo", prompt=["one two three", "four"], n=2, max_tokens=2)
    assert [(c.index, c.text, c.finish_reason) for c in body.choices] == [
        (0, "one two ", "length"),
        (1, "one two ", "length"),
        (2, "four", "stop"),
        (3, "four", "stop"),
    ]
    body = await create(client, model="echo", prompt=[5, 6])
    assert body.choices[0].text == "5 6"  # token ids cannot be decoded by echo


async def test_echo_streams_word_by_word_then_usage_then_done(serve: Factory) -> None:
    url = await serve(**echo())
    events = await streamed(
        url,
        {
            "model": "echo",
            "prompt": "one two three",
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    chunks, usage = events[:-2], events[-2]
    assert [c["choices"][0]["text"] for c in chunks] == ["one ", "two ", "three"]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, "stop"]
    assert len({c["id"] for c in events[:-1]}) == 1
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 3
    strictly(Completion, usage)

    # Without include_usage: no usage chunk. And the SDK reads the same stream.
    events = await streamed(url, {"model": "echo", "prompt": "a b", "stream": True})
    assert all("usage" not in e for e in events[:-1])
    stream = await sdk(url).completions.create(model="echo", prompt="a b", stream=True)
    assert "".join([c.choices[0].text async for c in stream if c.choices]) == "a b"


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        ({"model": "echo"}, "missing_required_parameter", "prompt"),
        ({"prompt": "x"}, "missing_required_parameter", "model"),
        ({"model": "echo", "prompt": {"a": 1}}, "invalid_type", "prompt"),
        ({"model": "echo", "prompt": [1, "a"]}, "invalid_value", "prompt"),
        ({"model": "echo", "prompt": "x", "n": 0}, "invalid_value", "n"),
        ({"model": "echo", "prompt": "x", "max_tokens": -1}, "invalid_value", "max_tokens"),
        ({"model": "echo", "prompt": "x", "temperature": "hot"}, "invalid_type", "temperature"),
        ({"model": "echo", "prompt": "x", "stop": [1]}, "invalid_type", "stop"),
        ({"model": "echo", "prompt": "x", "messages": []}, "unknown_parameter", "messages"),
        (
            {"model": "echo", "prompt": "x", "stream_options": {"include_usage": 1}},
            "invalid_type",
            "stream_options.include_usage",
        ),
    ],
)
async def test_bad_requests_get_a_stable_code_naming_the_field(
    serve: Factory, body: dict[str, Any], code: str, param: str
) -> None:
    url = await serve(**echo())
    async with aiohttp.ClientSession() as http:
        status, _, reply = await post(http, url + "/v1/completions", body)
        assert (status, reply["error"]["code"], reply["error"]["param"]) == (400, code, param)
        status, _, _ = await post(http, url + "/v1/completions", {"model": "echo", "prompt": "x"})
        assert status == 200


async def test_a_backend_without_completions_refuses_them_clearly(serve: Factory) -> None:
    client = sdk(await serve(**echo(endpoints=["embeddings"])))
    with pytest.raises(openai.BadRequestError) as refused:
        await client.completions.create(model="echo", prompt="x")
    assert refused.value.body["code"] == "unsupported_endpoint"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        await client.completions.create(model="echo", prompt="x", stream=True)


async def test_the_upstream_gets_the_fields_and_the_reply_comes_back_whole(
    serve: Factory, stub: StartStub
) -> None:
    node = await stub()
    client = sdk(await serve(**upstream(node)))
    body = await create(
        client, model="writer", prompt="hi there", max_tokens=1, temperature=0.5, logprobs=1
    )
    assert node.requests[-1].path == "/v1/completions"
    assert node.requests[-1].json == {
        "model": "instruct-1",
        "prompt": "hi there",
        "max_tokens": 1,
        "temperature": 0.5,
        "logprobs": 1,
        "stream": False,
    }
    assert body.model == "writer"
    [choice] = body.choices
    assert (choice.text, choice.finish_reason) == ("stub:hi ", "length")
    assert body.usage is not None and body.usage.prompt_tokens == 2  # the stub counts words


async def test_a_streamed_upstream_completion_is_relayed_chunk_by_chunk(
    serve: Factory, stub: StartStub
) -> None:
    node = await stub()
    url = await serve(**upstream(node))
    events = await streamed(
        url,
        {
            "model": "writer",
            "prompt": ["a b", "c"],
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    # agentd asks for the usage upstream whatever the client asked.
    assert node.requests[-1].json["stream_options"] == {"include_usage": True}
    assert (text_of(events, 0), text_of(events, 1)) == ("stub:a b", "stub:c")
    assert events[-2]["usage"]["prompt_tokens"] == 3
    assert all(e["model"] == "writer" for e in events[:-1])


async def test_a_stream_that_fails_before_its_first_chunk_is_retried_on_another_node(
    serve: Factory, stub: StartStub
) -> None:
    bad, good = await stub(FailMidStream(after=0)), await stub()
    url = await serve(**upstream(bad, good, policy="round_robin"))
    events = await streamed(url, {"model": "writer", "prompt": "x y", "stream": True})
    assert text_of(events) == "stub:x y"
    assert (len(bad.requests), len(good.requests)) == (1, 1)


async def test_a_stream_that_fails_midway_ends_with_an_error_event(
    serve: Factory, stub: StartStub
) -> None:
    bad, good = await stub(FailMidStream(after=1)), await stub()
    url = await serve(**upstream(bad, good, policy="round_robin"))
    events = await streamed(url, {"model": "writer", "prompt": "x y z", "stream": True})
    assert text_of(events) == "stub:x "  # what was sent stays the only answer
    assert events[-2]["error"]["code"] == "upstream_incomplete"
    assert len(good.requests) == 0


async def test_an_unstreamed_completion_is_retried_and_failures_are_counted(
    serve: Factory, stub: StartStub
) -> None:
    bad, good = await stub(Fail(502)), await stub()
    url = await serve(**upstream(bad, good, policy="round_robin"))
    body = await create(sdk(url), model="writer", prompt="again")
    assert body.choices[0].text == "stub:again"
    async with aiohttp.ClientSession() as http, http.get(url + "/metrics") as r:
        metrics = await r.text()
    assert f'backend="up",node="{bad.url}",outcome="error"}} 1.0' in metrics
    assert f'backend="up",node="{good.url}",outcome="ok"}} 1.0' in metrics
    assert 'route="/v1/completions",status="200"' in metrics


async def test_a_stream_with_no_node_left_is_a_json_error(serve: Factory, stub: StartStub) -> None:
    node = await stub(Fail(500))
    url = await serve(**upstream(node))
    async with aiohttp.ClientSession() as http:
        body = {"model": "writer", "prompt": "x", "stream": True}
        async with http.post(url + "/v1/completions", json=body) as r:
            assert r.status == 502
            assert r.headers["Content-Type"].startswith("application/json")
            assert orjson.loads(await r.read())["error"]["code"] == "upstream_error"
