"""The OpenAI-compatible chat API on a real socket: the echo backend, sessions, caching,
errors, the official SDK, and an OpenAI-compatible upstream."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import aiohttp
import orjson
import pytest

from .chat_helpers import (
    Factory,
    chat_body,
    echo,
    post,
    sse,
    turn_running,
)

# -- HTTP ------------------------------------------------------------------------------


async def test_a_stateless_completion_echoes_the_last_user_message(serve: Factory) -> None:
    url = await serve()
    async with aiohttp.ClientSession() as http:
        status, headers, body = await post(http, url + "/v1/chat/completions", chat_body())
    assert status == 200
    assert body["object"] == "chat.completion" and body["model"] == "echo"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "hello there"}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] > 0
    assert "X-Session-Id" not in headers
    timing = headers["Server-Timing"]
    for stage in ("parse", "session", "upstream_ttft", "upstream", "persist"):
        assert f"{stage};dur=" in timing


async def test_a_streamed_completion_in_openai_chunk_format(serve: Factory) -> None:
    url = await serve()
    body = chat_body("one two three four", stream=True, stream_options={"include_usage": True})
    async with (
        aiohttp.ClientSession() as http,
        http.post(url + "/v1/chat/completions", json=body) as r,
    ):
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
        events = await sse(r)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "one two three four"
    assert len([c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]) > 1
    finish = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finish[-1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0


async def test_a_session_keeps_the_conversation(serve: Factory) -> None:
    url = await serve()
    async with aiohttp.ClientSession() as http:
        _, _, session = await post(http, url + "/v1/sessions", {})
        sid = session["id"]
        status, headers, first = await post(http, url + "/v1/chat/completions",
                                            chat_body("first", session_id=sid))  # fmt: skip
        assert status == 200 and headers["X-Session-Id"] == sid and first["seq"] == 2
        headers = {"X-Session-Id": sid}
        status, _, second = await post(
            http, url + "/v1/chat/completions", chat_body("second"), headers=headers
        )
        assert status == 200 and second["seq"] == 4
        async with http.get(f"{url}/v1/sessions/{sid}/messages") as r:
            history = orjson.loads(await r.read())["data"]
    assert [(m["role"], m["content"]) for m in history] == [
        ("user", "first"), ("assistant", "first"), ("user", "second"), ("assistant", "second"),
    ]  # fmt: skip
    assert history[0]["turn"] == history[1]["turn"] != history[2]["turn"]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (chat_body() | {"model": "nobody"}, 404, "model_not_found"),
        ({"model": "echo"}, 400, "invalid_request"),
        (chat_body() | {"messages": []}, 400, "invalid_request"),
        (chat_body() | {"messages": [{"role": "robot", "content": "x"}]}, 400, "invalid_request"),
        (chat_body() | {"messages": [{"role": "user", "content": 5}]}, 400, "invalid_request"),
        (
            chat_body() | {"messages": [{"role": "user", "content": "x", "x": 1}]},
            400,
            "unknown_parameter",
        ),
        (chat_body(n=2), 400, "unsupported_value"),
        (chat_body(temperature="hot"), 400, "invalid_type"),
        (chat_body(temperature=True), 400, "invalid_type"),
        (chat_body(stream="yes"), 400, "invalid_type"),
        (chat_body(tempreature=0.1), 400, "unknown_parameter"),
        (chat_body(session_id="nope"), 404, "session_not_found"),
        (chat_body(session_id="bad id"), 400, "invalid_session_id"),
        ([1, 2], 400, "invalid_request"),
    ],
)
async def test_bad_requests_get_openai_shaped_errors(
    serve: Factory, body: Any, status: int, code: str
) -> None:
    url = await serve()
    async with aiohttp.ClientSession() as http:
        got, _, reply = await post(http, url + "/v1/chat/completions", body)
        assert (got, reply["error"]["code"]) == (status, code)
        assert set(reply["error"]) >= {"message", "type", "code"}
        # The same server keeps answering.
        assert (await post(http, url + "/v1/chat/completions", chat_body()))[0] == 200


async def test_hostile_bodies_are_refused(serve: Factory) -> None:
    url = await serve(server={"max_request_bytes": 4096})
    async with aiohttp.ClientSession() as http:
        for data, status in [
            (b"{not json", 400),
            (b"\xff\xfe\x00", 400),
            (b"[" * 600 + b"]" * 600, 400),
            (orjson.dumps(chat_body("x" * 10_000)), 413),
        ]:
            async with http.post(url + "/v1/chat/completions", data=data) as r:
                assert r.status == status
                assert "error" in orjson.loads(await r.read())
        assert (await post(http, url + "/v1/chat/completions", chat_body()))[0] == 200


async def test_models_lists_the_agents(serve: Factory) -> None:
    url = await serve(agents=[{"name": "echo"}, {"name": "helper", "backend": "echo"}])
    async with aiohttp.ClientSession() as http:
        async with http.get(url + "/v1/models") as r:
            body = orjson.loads(await r.read())
        async with http.get(url + "/v1/models/helper") as r:
            assert r.status == 200
        async with http.get(url + "/v1/models/nobody") as r:
            assert r.status == 404
    assert [m["id"] for m in body["data"]] == ["echo", "helper"]


async def test_a_full_worker_refuses_at_once_with_retry_after(serve: Factory) -> None:
    url = await serve(server={"max_inflight_turns": 1}, **echo(latency_ms=1000))
    async with aiohttp.ClientSession() as http:
        slow = asyncio.create_task(post(http, url + "/v1/chat/completions", chat_body()))
        await turn_running(http, url)
        status, headers, body = await post(http, url + "/v1/chat/completions", chat_body())
        assert status == 503 and body["error"]["code"] == "overloaded"
        assert int(headers["Retry-After"]) >= 1
        assert (await slow)[0] == 200


async def _new_session(http: aiohttp.ClientSession, url: str) -> str:
    return (await post(http, url + "/v1/sessions", {}))[2]["id"]


async def test_concurrent_turns_on_a_session_alternate(serve: Factory) -> None:
    url = await serve(**echo(latency_ms=5))
    async with aiohttp.ClientSession() as http:
        sid = await _new_session(http, url)
        results = await asyncio.gather(*(
            post(http, url + "/v1/chat/completions", chat_body(f"m{i}", session_id=sid))
            for i in range(10)
        ))  # fmt: skip
        assert all(r[0] == 200 for r in results)
        async with http.get(f"{url}/v1/sessions/{sid}/messages") as r:
            history = orjson.loads(await r.read())["data"]
    assert [m["role"] for m in history] == ["user", "assistant"] * 10
    for user, reply in zip(history[::2], history[1::2], strict=True):
        assert user["content"] == reply["content"]


async def test_reject_policy_answers_session_busy(serve: Factory) -> None:
    url = await serve(sessions={"concurrent_turns": "reject"}, **echo(latency_ms=1000))
    async with aiohttp.ClientSession() as http:
        sid = await _new_session(http, url)
        first = asyncio.create_task(
            post(http, url + "/v1/chat/completions", chat_body("a", session_id=sid))
        )
        await turn_running(http, url)
        status, _, body = await post(
            http, url + "/v1/chat/completions", chat_body("b", session_id=sid)
        )
        assert (status, body["error"]["code"]) == (409, "session_busy")
        assert (await first)[0] == 200


async def test_interrupt_policy_stores_the_partial_reply_as_cancelled(serve: Factory) -> None:
    url = await serve(
        sessions={"concurrent_turns": "interrupt", "turn_lease": 0.6},
        **echo(tokens_per_s=10),
    )
    long_text = " ".join(f"w{i}" for i in range(60))
    async with aiohttp.ClientSession() as http:
        sid = await _new_session(http, url)
        first = asyncio.create_task(
            post(http, url + "/v1/chat/completions", chat_body(long_text, session_id=sid))
        )
        await turn_running(http, url)
        status, _, second = await post(
            http, url + "/v1/chat/completions", chat_body("short", session_id=sid)
        )
        assert status == 200 and second["choices"][0]["message"]["content"] == "short"
        status, _, first_body = await first
        assert status == 200 and first_body["choices"][0]["finish_reason"] == "cancelled"
        async with http.get(f"{url}/v1/sessions/{sid}/messages") as r:
            history = orjson.loads(await r.read())["data"]
    assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant"]
    assert history[1]["status"] == "cancelled"
    assert long_text.startswith(history[1]["content"]) and history[1]["content"] != long_text
    assert history[3]["content"] == "short"


async def test_a_cached_completion_answers_as_the_first_did(serve: Factory) -> None:
    url = await serve(cache={"disk_path": ""})
    replies = []
    async with aiohttp.ClientSession() as http:
        for _ in range(3):
            status, headers, body = await post(
                http, url + "/v1/chat/completions", chat_body("one two three", temperature=0)
            )
            assert status == 200
            replies.append((headers["X-Cache"], headers["Server-Timing"], body))
    assert [cache for cache, _, _ in replies] == ["miss", "hit-l1", "hit-l1"]
    stages = r"parse;dur=\d+\.\d\d, session;dur=0\.00, upstream_ttft;dur=\d+\.\d\d, "
    stages += r"upstream;dur=\d+\.\d\d, persist;dur=0\.00"
    assert all(re.fullmatch(stages, timing) for _, timing, _ in replies)
    first, *hits = [body for _, _, body in replies]
    assert first["id"] != hits[0]["id"] != hits[1]["id"]
    assert re.fullmatch(r"chatcmpl-[0-9a-f]{24}", hits[0]["id"])
    for hit in hits:
        assert {k: v for k, v in hit.items() if k not in ("id", "created")} == {
            k: v for k, v in first.items() if k not in ("id", "created")
        }


async def test_metrics_observe_only_the_stages_a_turn_went_through(serve: Factory) -> None:
    url = await serve(cache={"disk_path": ""})
    async with aiohttp.ClientSession() as http:
        for body in (chat_body(), chat_body(temperature=0), chat_body(temperature=0)):
            assert (await post(http, url + "/v1/chat/completions", body))[0] == 200
        sid = await _new_session(http, url)
        body = chat_body("stored", session_id=sid)
        assert (await post(http, url + "/v1/chat/completions", body))[0] == 200
        async with http.get(url + "/metrics") as r:
            text = await r.text()
    # Four turns (one of them a cache hit), one with a session.
    for stage, count in (("upstream", 4), ("upstream_ttft", 4), ("session", 1), ("persist", 1)):
        assert f'agentd_turn_stage_seconds_count{{stage="{stage}"}} {count}.0' in text


async def test_the_official_openai_sdk_works_unchanged(serve: Factory) -> None:
    import openai

    url = await serve()
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    try:
        models = await client.models.list()
        assert [m.id for m in models.data] == ["echo"]
        reply = await client.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": "sdk says hi"}]
        )
        assert reply.choices[0].message.content == "sdk says hi"
        assert reply.usage is not None and reply.usage.total_tokens > 0

        async with aiohttp.ClientSession() as http:
            sid = await _new_session(http, url)
        stream = await client.chat.completions.create(
            model="echo",
            messages=[{"role": "user", "content": "streamed through the sdk"}],
            stream=True,
            extra_body={"session_id": sid},
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == "streamed through the sdk"
        with pytest.raises(openai.NotFoundError) as missing:
            await client.chat.completions.create(
                model="nobody", messages=[{"role": "user", "content": "x"}]
            )
        assert missing.value.code == "model_not_found"
    finally:
        await client.close()
    async with aiohttp.ClientSession() as http, http.get(f"{url}/v1/sessions/{sid}/messages") as r:
        history = orjson.loads(await r.read())["data"]
    assert [m["content"] for m in history] == ["streamed through the sdk"] * 2


async def test_turn_stages_and_upstream_calls_appear_in_metrics(serve: Factory) -> None:
    url = await serve()
    async with aiohttp.ClientSession() as http:
        sid = await _new_session(http, url)
        for _ in range(3):
            assert (await post(http, url + "/v1/chat/completions", chat_body(session_id=sid)))[
                0
            ] == 200
        async with http.get(url + "/metrics") as r:
            text = await r.text()
    assert 'agentd_turn_stage_seconds_count{stage="persist"} 3.0' in text
    assert 'agentd_turn_stage_seconds_count{stage="upstream_ttft"} 3.0' in text
    assert 'agentd_upstream_calls_total{backend="echo",node="echo",outcome="ok"} 3.0' in text


# -- through an OpenAI-compatible upstream ------------------------------------------------


def upstream(*urls: str, **agent: Any) -> dict[str, Any]:
    return {
        "backends": [
            {
                "name": "llm",
                "type": "openai",
                "urls": list(urls),
                "timeout_s": 2.0,
                "breaker_failures": 100,
            }
        ],
        "agents": [{"name": "helper", "backend": "llm", "model": "up-model", **agent}],
    }


async def test_session_history_and_agent_settings_are_sent_upstream(serve: Factory) -> None:
    from .openai_stub import StubNode

    async with StubNode() as node:
        url = await serve(**upstream(node.url, system_prompt="Be brief.", history=2,
                                     params={"temperature": 0.2, "max_tokens": 50}))  # fmt: skip
        async with aiohttp.ClientSession() as http:
            sid = await _new_session(http, url)
            for text in ("one", "two", "three"):
                body = chat_body(text, session_id=sid) | {"model": "helper", "top_p": 0.5}
                status, _, reply = await post(http, url + "/v1/chat/completions", body)
                assert status == 200 and reply["choices"][0]["message"]["content"] == f"stub:{text}"
        sent = node.requests[-1].json
    assert sent["model"] == "up-model" and sent["stream"] is True
    assert sent["temperature"] == 0.2 and sent["max_tokens"] == 50 and sent["top_p"] == 0.5
    # The system prompt, the last `history` (2) stored messages, then the new one.
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "two"},
        {"role": "assistant", "content": "stub:two"},
        {"role": "user", "content": "three"},
    ]


@pytest.mark.parametrize(
    ("mode", "status", "code"),
    [
        ("fail", 502, "upstream_error"),
        ("reject", 400, "upstream_rejected"),
        ("hang", 504, "upstream_timeout"),
    ],
)
async def test_upstream_failures_map_to_typed_errors(
    serve: Factory, mode: str, status: int, code: str
) -> None:
    from .openai_stub import Fail, Hang, Normal, StubNode

    modes = {"fail": Fail(503), "reject": Fail(400), "hang": Hang()}
    async with StubNode(modes[mode]) as node:
        url = await serve(**upstream(node.url), server={"turn_timeout": 1.0})
        async with aiohttp.ClientSession() as http:
            sid = await _new_session(http, url)
            body = chat_body("x", session_id=sid) | {"model": "helper"}
            got, _, reply = await post(http, url + "/v1/chat/completions", body)
            assert (got, reply["error"]["code"]) == (status, code)
            # A failed turn stores nothing and frees the session for the next one.
            async with http.get(f"{url}/v1/sessions/{sid}/messages") as r:
                assert orjson.loads(await r.read())["data"] == []
            node.mode = Normal()
            got, _, reply = await post(http, url + "/v1/chat/completions", body)
            assert got == 200


async def test_a_stream_that_fails_midway_ends_with_an_error_event(serve: Factory) -> None:
    from .openai_stub import FailMidStream, StubNode

    async with StubNode(FailMidStream(2)) as node:
        url = await serve(**upstream(node.url))
        body = chat_body("a b c d e f", stream=True) | {"model": "helper"}
        async with (
            aiohttp.ClientSession() as http,
            http.post(url + "/v1/chat/completions", json=body) as r,
        ):
            assert r.status == 200
            events = await sse(r)
    assert events[-1] == "[DONE]"
    assert "error" in events[-2] and events[-2]["error"]["type"] == "server_error"
    text = "".join(
        e["choices"][0]["delta"].get("content", "") for e in events[:-2] if e.get("choices")
    )
    assert text and "stub:a b c d e f".startswith(text)


async def test_a_burst_beyond_the_redis_pool_waits_instead_of_failing(
    serve: Factory, redis_standalone: Any
) -> None:
    url = await serve(redis={"urls": [redis_standalone.url], "pool_size": 2}, server={"workers": 2})
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100)) as http:
        sids = [await _new_session(http, url) for _ in range(40)]
        results = await asyncio.gather(
            *(post(http, url + "/v1/chat/completions", chat_body(session_id=s)) for s in sids)
        )
    assert [status for status, _, _ in results] == [200] * 40
