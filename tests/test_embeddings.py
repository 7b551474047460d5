"""``POST /v1/embeddings``: the official SDK against agentd (the ``serve`` app) on the echo
backend and on the stub upstream, every body checked against the SDK's own type."""

from __future__ import annotations

import asyncio
import base64
import math
import struct
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from openai.types import CreateEmbeddingResponse

from .chat_helpers import Factory, at_the_model, echo, post
from .openai_stub import Fail, StartStub, stub_vector
from .sdk_strict import strictly
from .waiting import wait_until


def sdk(url: str) -> openai.AsyncOpenAI:
    # No retries of the SDK's own: each test counts the calls that reach the nodes.
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0)


def decoded(raw: bytes) -> dict[str, Any]:
    """The body with base64 vectors read as floats, as the SDK does before its type sees
    them (each string must be whole little-endian float32 values)."""
    body = orjson.loads(raw)
    for item in body["data"]:
        if isinstance(item["embedding"], str):
            data = base64.b64decode(item["embedding"], validate=True)
            assert len(data) % 4 == 0
            item["embedding"] = list(struct.unpack(f"<{len(data) // 4}f", data))
    return body


async def create(client: openai.AsyncOpenAI, **params: Any) -> tuple[bytes, Any]:
    """Call through the SDK; return the raw body and what the SDK parsed."""
    raw = await client.embeddings.with_raw_response.create(**params)
    return raw.http_response.content, raw.parse()


def upstream(*nodes: Any, **backend: Any) -> dict[str, Any]:
    """An app whose agent "embed" sends model "text-embed-1" to the stub nodes."""
    return {
        "backends": [
            {"name": "up", "type": "openai", "urls": [n.url for n in nodes], **backend},
        ],
        "agents": [{"name": "embed", "backend": "up", "model": "text-embed-1"}],
    }


async def test_echo_embeddings_through_the_sdk_are_unit_vectors_from_the_text(
    serve: Factory,
) -> None:
    client = sdk(await serve(**echo()))
    # The SDK asks for base64 unless told otherwise, and decodes it itself.
    raw, parsed = await create(client, model="echo", input="hello there")
    assert b'"embedding":"' in raw
    body = strictly(CreateEmbeddingResponse, decoded(raw))
    assert body.model == "echo" and body.object == "list"
    [item] = parsed.data
    assert len(item.embedding) == 256
    assert math.isclose(math.fsum(x * x for x in item.embedding), 1.0, rel_tol=1e-5)
    assert body.data[0].embedding == item.embedding
    assert body.usage.prompt_tokens == body.usage.total_tokens == 3  # 11 characters / 4

    raw, _ = await create(client, model="echo", input="hello there", encoding_format="float")
    floats = strictly(CreateEmbeddingResponse, raw)
    # The same text, the same vector (float32 in base64, full precision as floats).
    assert [round(x, 6) for x in floats.data[0].embedding] == [round(x, 6) for x in item.embedding]
    _, other = await create(client, model="echo", input="something else", encoding_format="float")
    assert other.data[0].embedding != floats.data[0].embedding


async def test_a_list_of_inputs_and_token_ids_keep_their_order_and_dimensions(
    serve: Factory,
) -> None:
    client = sdk(await serve(**echo()))
    texts = ["a", "b", "a"]
    raw, parsed = await create(
        client, model="echo", input=texts, dimensions=64, encoding_format="float"
    )
    strictly(CreateEmbeddingResponse, raw)
    assert [d.index for d in parsed.data] == [0, 1, 2]
    assert all(len(d.embedding) == 64 for d in parsed.data)
    assert parsed.data[0].embedding == parsed.data[2].embedding != parsed.data[1].embedding

    raw, _ = await create(client, model="echo", input=[[1, 2, 3], [4]], dimensions=8)
    body = strictly(CreateEmbeddingResponse, decoded(raw))
    assert [len(d.embedding) for d in body.data] == [8, 8]
    raw, _ = await create(client, model="echo", input=[1, 2, 3], dimensions=8)
    # A list of token ids is one input: the same vector as the first of the lists.
    assert strictly(CreateEmbeddingResponse, decoded(raw)).data[0].embedding == (
        body.data[0].embedding
    )


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        ({"model": "echo"}, "missing_required_parameter", "input"),
        ({"input": "x"}, "missing_required_parameter", "model"),
        ({"model": "echo", "input": ""}, "invalid_value", "input"),
        ({"model": "echo", "input": []}, "invalid_value", "input"),
        ({"model": "echo", "input": ["a", 1]}, "invalid_value", "input"),
        ({"model": "echo", "input": [[1], [-2]]}, "invalid_value", "input"),
        ({"model": "echo", "input": {"a": 1}}, "invalid_type", "input"),
        ({"model": "echo", "input": ["a"] * 2049}, "invalid_value", "input"),
        ({"model": "echo", "input": "x", "dimensions": 0}, "invalid_value", "dimensions"),
        ({"model": "echo", "input": "x", "dimensions": "8"}, "invalid_type", "dimensions"),
        ({"model": "echo", "input": "x", "dimensions": 10**6}, "invalid_value", "dimensions"),
        ({"model": "echo", "input": "x", "encoding_format": "hex"}, "invalid_value", None),
        ({"model": "echo", "input": "x", "session_id": "s"}, "unknown_parameter", "session_id"),
    ],
)
async def test_bad_requests_get_a_stable_code_naming_the_field(
    serve: Factory, body: dict[str, Any], code: str, param: str | None
) -> None:
    url = await serve(**echo())
    async with aiohttp.ClientSession() as http:
        status, _, reply = await post(http, url + "/v1/embeddings", body)
        assert (status, reply["error"]["code"]) == (400, code), reply
        if param is not None:
            assert reply["error"]["param"] == param
        # The worker lives on.
        status, _, _ = await post(http, url + "/v1/embeddings", {"model": "echo", "input": "x"})
        assert status == 200


async def test_an_unknown_agent_is_404_and_a_backend_without_embeddings_400(
    serve: Factory,
) -> None:
    url = await serve(**echo(endpoints=["completions"]))
    client = sdk(url)
    with pytest.raises(openai.NotFoundError) as missing:
        await client.embeddings.create(model="nobody", input="x")
    assert missing.value.body["code"] == "model_not_found"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as refused:
        await client.embeddings.create(model="echo", input="x")
    assert refused.value.body["code"] == "unsupported_endpoint"  # type: ignore[index]


async def test_the_upstream_gets_the_agents_model_and_the_fields_as_sent(
    serve: Factory, stub: StartStub
) -> None:
    node = await stub()
    client = sdk(await serve(**upstream(node)))
    raw, parsed = await create(client, model="embed", input=["one two", "three"], user="u1")
    body = strictly(CreateEmbeddingResponse, decoded(raw))
    sent = node.requests[-1]
    assert sent.path == "/v1/embeddings"
    assert sent.json == {
        "model": "text-embed-1",
        "input": ["one two", "three"],
        "user": "u1",
        "encoding_format": "base64",
    }
    assert body.model == "embed"  # the agent, as the chat API names it
    assert [d.embedding for d in parsed.data] == [stub_vector("one two"), stub_vector("three")]
    assert body.usage.prompt_tokens == 3  # the stub's count (words), not agentd's estimate

    # Floats asked, floats sent upstream and back.
    raw, _ = await create(client, model="embed", input="one", encoding_format="float")
    assert strictly(CreateEmbeddingResponse, raw).data[0].embedding == stub_vector("one")
    assert node.requests[-1].json["encoding_format"] == "float"


async def test_a_failing_node_opens_its_breaker_and_then_is_not_called(
    serve: Factory, stub: StartStub
) -> None:
    node = await stub(Fail(503))
    url = await serve(**upstream(node, breaker_failures=2, breaker_cooldown_s=600))
    client = sdk(url)
    for _ in range(2):
        with pytest.raises(openai.APIStatusError) as failed:
            await client.embeddings.create(model="embed", input="x")
        assert failed.value.status_code == 502
    with pytest.raises(openai.APIStatusError) as refused:
        await client.embeddings.create(model="embed", input="x")
    assert refused.value.status_code == 503
    assert refused.value.body["code"] == "no_healthy_backend"  # type: ignore[index]
    assert len(node.requests) == 2
    async with aiohttp.ClientSession() as http, http.get(url + "/metrics") as r:
        metrics = await r.text()
    name = node.url
    assert f'agentd_upstream_calls_total{{backend="up",node="{name}",outcome="error"}} 2.0' in (
        metrics
    )
    assert f'agentd_upstream_breaker_state{{backend="up",node="{name}"}} 2.0' in metrics
    assert 'route="/v1/embeddings",status="503"' in metrics


async def test_a_two_node_pool_retries_a_failed_embeddings_call_on_the_other(
    serve: Factory, stub: StartStub
) -> None:
    bad, good = await stub(Fail(500)), await stub()
    # Round robin: the first call goes to the first node, which fails.
    url = await serve(**upstream(bad, good, policy="round_robin"))
    raw, parsed = await create(sdk(url), model="embed", input="retry me")
    strictly(CreateEmbeddingResponse, decoded(raw))
    assert parsed.data[0].embedding == stub_vector("retry me")
    assert [r.json["input"] for r in bad.requests] == ["retry me"]
    assert [r.json["input"] for r in good.requests] == ["retry me"]
    async with aiohttp.ClientSession() as http, http.get(url + "/metrics") as r:
        metrics = await r.text()
    # The whole reply read to its end: the call counts "ok", not "cancelled".
    assert f'backend="up",node="{bad.url}",outcome="error"}} 1.0' in metrics
    assert f'backend="up",node="{good.url}",outcome="ok"}} 1.0' in metrics
    assert 'outcome="cancelled"' not in metrics


async def test_embeddings_count_as_turns_for_admission(serve: Factory) -> None:
    url = await serve(**echo(latency_ms=1500), server={"max_inflight_turns": 1, "turn_timeout": 30})
    async with aiohttp.ClientSession() as http:
        first = asyncio.ensure_future(
            post(http, url + "/v1/embeddings", {"model": "echo", "input": "slow"})
        )
        await wait_until(lambda: at_the_model(http, url), what="the first call at the model")
        status, headers, reply = await post(
            http, url + "/v1/embeddings", {"model": "echo", "input": "x"}
        )
        assert (status, reply["error"]["code"]) == (503, "overloaded")
        assert "Retry-After" in headers
        assert (await first)[0] == 200


async def test_a_body_over_the_request_limit_is_413(serve: Factory) -> None:
    url = await serve(**echo(), server={"max_request_bytes": 1024})
    async with aiohttp.ClientSession() as http:
        status, _, reply = await post(
            http, url + "/v1/embeddings", {"model": "echo", "input": "x" * 2000}
        )
    assert (status, reply["error"]["code"]) == (413, "request_too_large")
