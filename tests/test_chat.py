"""The chat API and the WebSocket protocol, on a real socket, with the echo backend."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer
from hypothesis import given
from hypothesis import strategies as st

from agentd.agent import Agents, Interrupt, Listener, Timings, TurnRequest, TurnResult
from agentd.config import from_dict
from agentd.errors import NotFound, Overloaded
from agentd.server.app import create_app
from agentd.server.keys import AGENTS

from .waiting import wait_until

Factory = Callable[..., Any]


@pytest.fixture
async def serve() -> AsyncIterator[Factory]:
    """Start an app (memory store) with config overrides; returns its base URL."""
    servers: list[TestServer] = []

    async def start(**raw: Any) -> str:
        server = TestServer(create_app(from_dict(raw)), host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return str(server.make_url("")).rstrip("/")

    yield start
    for server in servers:
        await server.close()


def echo(**backend: Any) -> dict[str, Any]:
    return {"backends": [{"name": "echo", "type": "echo", **backend}]}


async def post(http: aiohttp.ClientSession, url: str, body: Any, **kw: Any) -> tuple[int, Any, Any]:
    async with http.post(url, json=body, **kw) as r:
        return r.status, r.headers, orjson.loads(await r.read())


def chat_body(content: str = "hello there", **extra: Any) -> dict[str, Any]:
    return {"model": "echo", "messages": [{"role": "user", "content": content}], **extra}


# The echo backend's interactive calls in flight, as /metrics reads them at each scrape.
AT_THE_MODEL = 'agentd_upstream_inflight{backend="echo",kind="interactive",node="echo"} '


async def at_the_model(http: aiohttp.ClientSession, url: str) -> int:
    """How many turns are calling the model now: such a turn holds its place in the
    worker and its session's lease."""
    async with http.get(url + "/metrics") as r:
        text = await r.text()
    for line in text.splitlines():
        if line.startswith(AT_THE_MODEL):
            return int(float(line[len(AT_THE_MODEL) :]))
    return 0


async def turn_running(http: aiohttp.ClientSession, url: str) -> None:
    """Wait until a turn of the app at ``url`` is calling the model."""
    await wait_until(lambda: at_the_model(http, url), what="the first turn to call the model")


async def sse(resp: aiohttp.ClientResponse) -> list[Any]:
    events = []
    async for raw in resp.content:
        line = raw.decode().strip()
        if line.startswith("data: "):
            data = line[6:]
            events.append(data if data == "[DONE]" else orjson.loads(data))
    return events


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
            "invalid_request",
        ),
        (chat_body(n=2), 400, "invalid_request"),
        (chat_body(temperature="hot"), 400, "invalid_request"),
        (chat_body(temperature=True), 400, "invalid_request"),
        (chat_body(stream="yes"), 400, "invalid_request"),
        (chat_body(tempreature=0.1), 400, "invalid_request"),
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


@given(
    st.floats(allow_nan=True, allow_infinity=True),
    st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=4, max_size=4),
)
def test_server_timing_formats_each_stage_in_milliseconds(
    parse: float, stages: list[float]
) -> None:
    timings = Timings(*stages)
    every = {"parse": parse, **timings.stages()}
    expected = ", ".join(f"{k};dur={v * 1000:.2f}" for k, v in every.items())
    assert timings.header(parse) == expected


# -- one turn, streamed to a listener or not -------------------------------------------


@pytest.fixture
async def agents() -> AsyncIterator[Factory]:
    """Start an app (memory store, no disk cache) with config overrides; returns its Agents."""
    servers: list[TestServer] = []

    async def start(**raw: Any) -> Agents:
        raw.setdefault("cache", {"disk_path": ""})
        server = TestServer(create_app(from_dict(raw)), host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return server.app[AGENTS]

    yield start
    for server in servers:
        await server.close()


def turn_request(
    content: str = "one two three",
    session_id: str | None = None,
    agent: str = "echo",
    **params: Any,
) -> TurnRequest:
    return TurnRequest(agent, [{"role": "user", "content": content}], session_id, params)


def deadline() -> float:
    return asyncio.get_running_loop().time() + 10


class Recorder(Listener):
    """Hears a turn: where its reply came from, then its deltas."""

    def __init__(self) -> None:
        self.heard: list[str] = []

    def source(self, cache: str) -> None:
        self.heard.append(f"source:{cache}")

    async def delta(self, text: str) -> None:
        self.heard.append(text)


async def streamed(
    agents: Agents, req: TurnRequest, interrupt: Interrupt | None = None
) -> tuple[list[str], TurnResult]:
    recorder = Recorder()
    done = await agents.run(req, deadline=deadline(), interrupt=interrupt, listener=recorder)
    source, *deltas = recorder.heard
    assert source == f"source:{done.cache}"  # once, before any delta
    return deltas, done


def outcome(done: TurnResult) -> tuple[Any, ...]:
    """What a caller sees of a finished turn, but for its timings."""
    stored = [(m["seq"], m["role"], m["content"], m.get("status")) for m in done.stored]
    return (done.cache, done.text, done.finish_reason, done.usage, done.node, done.model,
            stored, done.cancelled)  # fmt: skip


def asked(interrupt: bool) -> Interrupt | None:
    if not interrupt:
        return None
    stop = Interrupt()
    stop.asked = True
    return stop


async def test_a_turn_heard_by_a_listener_ends_as_one_that_is_not(agents: Factory) -> None:
    # The same script on two identical apps: one streams every turn to a listener, the
    # other only awaits its result.
    by_run, by_complete = await agents(), await agents()
    sids = [(await a.store.create_session()).id for a in (by_run, by_complete)]
    script: list[tuple[str, bool, dict[str, Any], bool]] = [
        ("one two three", False, {}, False),  # not cacheable: bypass
        ("one two three", False, {"temperature": 0}, False),  # miss
        ("one two three", False, {"temperature": 0}, False),  # hit-l1
        ("one two three", True, {"temperature": 0}, False),  # a hit, stored in the session
        ("four five", True, {"temperature": 0}, False),  # a miss with history
        ("one two three", False, {"temperature": 0}, True),  # a hit asked to stop
        ("six seven eight", False, {"temperature": 0}, True),  # a miss asked to stop
        ("nine ten", True, {}, True),  # a session turn asked to stop
    ]
    for content, session, params, stop in script:
        req = turn_request(content, sids[0] if session else None, **params)
        deltas, done = await streamed(by_run, req, asked(stop))
        assert "".join(deltas) == done.text
        seen = outcome(done)
        req = turn_request(content, sids[1] if session else None, **params)
        done = await by_complete.run(req, deadline=deadline(), interrupt=asked(stop))
        assert outcome(done) == seen, (content, session, params, stop)
        if stop:
            assert done.cancelled and done.finish_reason == "cancelled"
            assert done.text == content.split()[0] + " "  # ended at its first chunk
    assert _cache_counts(by_run) == _cache_counts(by_complete)
    assert _stage_counts(by_run) == _stage_counts(by_complete)
    assert by_run.admission.inflight == by_complete.admission.inflight == 0


def _cache_counts(agents: Agents) -> list[str]:
    assert agents.metrics is not None
    text = agents.metrics.render().decode()
    return sorted(re.findall(r"agentd_cache_lookups_total\{.*", text))


def _stage_counts(agents: Agents) -> list[str]:
    assert agents.metrics is not None
    text = agents.metrics.render().decode()
    return sorted(re.findall(r"agentd_turn_stage_seconds_count\{.*", text))


async def test_a_turn_is_refused_before_it_runs_streamed_or_not(agents: Factory) -> None:
    slow = await agents(server={"max_inflight_turns": 1}, **echo(latency_ms=300))
    unknown = turn_request(agent="nobody")
    with pytest.raises(NotFound):
        await streamed(slow, unknown)
    with pytest.raises(NotFound):
        await slow.run(unknown, deadline=deadline())
    await slow.run(turn_request(temperature=0), deadline=deadline())  # now cached
    busy = asyncio.create_task(slow.run(turn_request(), deadline=deadline()))
    await wait_until(lambda: slow.admission.inflight == 1, what="the busy turn to be admitted")
    # A full worker refuses even a turn its L1 would answer, streamed or not.
    with pytest.raises(Overloaded):
        await slow.run(turn_request(temperature=0), deadline=deadline())
    with pytest.raises(Overloaded):
        await streamed(slow, turn_request(temperature=0))
    await busy
    done = await slow.run(turn_request(temperature=0), deadline=deadline())
    assert done.text == "one two three"
    assert done.cache == "hit-l1" and slow.admission.inflight == 0


# -- WebSocket ---------------------------------------------------------------------------


async def receive(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    msg = await ws.receive(timeout=10)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    return orjson.loads(msg.data)


async def until(ws: aiohttp.ClientWebSocketResponse, kind: str) -> tuple[dict[str, Any], list]:
    """Frames up to the first of ``kind``; returns it and those before it."""
    before = []
    while (frame := await receive(ws))["type"] != kind:
        before.append(frame)
    return frame, before


async def test_websocket_turn_streams_then_reports_what_was_stored(serve: Factory) -> None:
    url = await serve()
    async with aiohttp.ClientSession() as http, http.ws_connect(url + "/v1/ws") as ws:
        await ws.send_json({"type": "hello"})
        ready = await receive(ws)
        assert ready["type"] == "ready" and ready["seq"] == 0
        await ws.send_json({"type": "message", "id": "m1", "content": "alpha beta gamma"})
        done, before = await until(ws, "done")
        assert "".join(f["content"] for f in before if f["type"] == "delta") == "alpha beta gamma"
        assert done["id"] == "m1" and done["seq"] == 2
        assert done["message"]["content"] == "alpha beta gamma"
        await ws.send_json({"type": "ping"})
        assert (await receive(ws))["type"] == "pong"
        async with http.get(f"{url}/v1/sessions/{ready['session_id']}/messages") as r:
            assert len(orjson.loads(await r.read())["data"]) == 2


async def test_websocket_sees_other_connections_and_resumes_without_gaps(serve: Factory) -> None:
    url = await serve()
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(url + "/v1/ws") as a:
            await a.send_json({"type": "hello"})
            sid = (await receive(a))["session_id"]
            async with http.ws_connect(url + "/v1/ws") as b:
                await b.send_json({"type": "hello", "session_id": sid})
                assert (await receive(b))["type"] == "ready"
                await a.send_json({"type": "message", "id": 1, "content": "from a"})
                await until(a, "done")
                seen = [await receive(b), await receive(b)]
                assert [(f["type"], f["seq"]) for f in seen] == [("event", 1), ("event", 2)]
                assert seen[0]["message"]["content"] == "from a"
            # b is gone; a adds two turns; b comes back after seq 2.
            for i in (2, 3):
                await a.send_json({"type": "message", "id": i, "content": f"turn {i}"})
                await until(a, "done")
        async with http.ws_connect(url + "/v1/ws") as b:
            await b.send_json({"type": "hello", "session_id": sid, "after": 2})
            assert (await receive(b))["seq"] == 6
            replayed = [await receive(b) for _ in range(4)]
            assert [f["seq"] for f in replayed] == [3, 4, 5, 6]
            await b.send_json({"type": "ping"})
            assert (await receive(b))["type"] == "pong"  # nothing more, no duplicate


async def test_websocket_hostile_frames_get_errors_and_the_right_close_codes(
    serve: Factory,
) -> None:
    url = await serve(websocket={"max_frame_bytes": 4096})
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(url + "/v1/ws") as ws:
            for send, code in [
                (ws.send_bytes(b"\x00\x01"), "unsupported_frame"),
                (ws.send_str("{oops"), "invalid_json"),
                (ws.send_str("[" * 400 + "]" * 400), "invalid_json"),
                (ws.send_str("[1]"), "invalid_frame"),
                (ws.send_json({"type": "dance"}), "unknown_type"),
                (ws.send_json({"type": "message", "content": "no id"}), "invalid_frame"),
                (ws.send_json({"type": "message", "id": 1, "content": 3}), "invalid_frame"),
                (ws.send_json({"type": "hello", "session_id": "missing"}), "session_not_found"),
                (ws.send_json({"type": "hello", "agent": "nobody"}), "model_not_found"),
            ]:
                await send
                frame = await receive(ws)
                assert (frame["type"], frame["code"]) == ("error", code)
            await ws.send_json({"type": "ping"})
            assert (await receive(ws))["type"] == "pong"  # still alive
        async with http.ws_connect(url + "/v1/ws") as ws:
            await ws.send_str("x" * 10_000)
            msg = await ws.receive(timeout=10)
            assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1009
        async with http.ws_connect(url + "/v1/ws") as ws:
            # A text frame whose payload is not UTF-8.
            await ws._writer.send_frame(b"\xff\xfe", aiohttp.WSMsgType.TEXT)  # type: ignore[union-attr]
            msg = await ws.receive(timeout=10)
            assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1007
        async with http.get(url + "/healthz") as r:
            assert r.status == 200


async def test_websocket_limits_turns_per_connection_and_cancels(serve: Factory) -> None:
    url = await serve(websocket={"max_inflight_turns": 1}, **echo(latency_ms=500))
    async with aiohttp.ClientSession() as http, http.ws_connect(url + "/v1/ws") as ws:
        await ws.send_json({"type": "message", "id": "a", "content": "x"})
        assert (await receive(ws))["type"] == "ready"
        await ws.send_json({"type": "message", "id": "b", "content": "y"})
        frame = await receive(ws)
        assert (frame["type"], frame["code"]) == ("error", "too_many_turns")
        await ws.send_json({"type": "cancel", "id": "a"})
        assert (await receive(ws)) == {"type": "cancelled", "id": "a"}
        await ws.send_json({"type": "message", "id": "c", "content": "z"})
        done, _ = await until(ws, "done")
        assert done["id"] == "c" and done["seq"] == 2  # the cancelled turn stored nothing


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
