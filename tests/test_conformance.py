"""Conformance with OpenAI's API as the official ``openai`` SDK knows it.

Each case drives a real ``agentd serve`` through the SDK, once over the echo backend and
once over an OpenAI-compatible upstream (the stub). Every HTTP exchange the SDK makes
is recorded on the way in, and every body and every streamed event is then checked with
:func:`tests.sdk_strict.strictly` against the SDK type that its route says it is
(``RULES``): a field the SDK does not declare, or of the wrong type, fails, and so does
an exchange no rule covers.

To cover a new endpoint: add its rule to ``RULES`` and a ``@case`` that calls it.
agentd's documented extensions (``EXTENSIONS``) are taken out before the check. A
``/v1/`` route the app registers with neither a rule nor a place in ``AGENTD_ONLY``
fails ``test_every_v1_route_has_a_rule_or_is_agentd_only``.

The two servers (and the stub) are started once for the module and shared by the cases,
each of which makes its own objects; starting a server per case was most of the time.
"""

from __future__ import annotations

import base64
import inspect
import re
import struct
import typing
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp
import httpx2 as httpx
import openai
import orjson
import pytest
import pytest_asyncio
from openai.types import Completion, CompletionChoice, CreateEmbeddingResponse, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessageParam
from openai.types.chat.completion_create_params import CompletionCreateParamsBase
from openai.types.conversations import (
    Conversation,
    ConversationDeletedResource,
    ConversationItem,
    ConversationItemList,
)
from openai.types.responses import Response, ResponseItemList, ResponseStreamEvent
from openai.types.shared import ErrorObject

from agentd import fastpath
from agentd.config import from_dict
from agentd.server.app import create_app

from .openai_stub import Slow, StubNode
from .procs import AgentdProcess
from .sdk_strict import strictly
from .waiting import wait_until

# -- what each route answers -------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """The SDK types of one route's answers: its JSON body, or each event of its stream
    (None: the route answers no such thing)."""

    method: str
    path: str  # a regular expression over the URL path
    body: Any = None
    event: Any = None


def model_list(body: dict[str, Any]) -> None:
    """``GET /v1/models``: OpenAI's list envelope around model objects (the SDK has no
    type for the envelope, only for its items)."""
    assert set(body) == {"object", "data"} and body["object"] == "list", body
    for item in body["data"]:
        strictly(Model, item)


def embeddings(body: dict[str, Any]) -> None:
    """``POST /v1/embeddings``: the SDK asks for base64 unless told otherwise and decodes
    the vectors itself before its type sees them, so a string must be whole little-endian
    float32 values, then checked as the floats the SDK makes of it."""
    for item in body.get("data", ()):
        if isinstance(item, dict) and isinstance(item.get("embedding"), str):
            data = base64.b64decode(item["embedding"], validate=True)
            assert data and len(data) % 4 == 0, f"{len(data)} bytes are no float32 vector"
            item["embedding"] = list(struct.unpack(f"<{len(data) // 4}f", data))
    strictly(CreateEmbeddingResponse, body)


class StreamedChoice(CompletionChoice):
    # The SDK says a streamed completion's chunks share the completion's shape, but
    # OpenAI (and agentd) send finish_reason null until a choice's last piece, and the SDK
    # parses stream chunks without validating them. Only that one field is relaxed, and
    # only for stream events (as in tests/test_completions.py).
    finish_reason: Literal["stop", "length", "content_filter"] | None  # type: ignore[assignment]


class StreamedCompletion(Completion):
    choices: list[StreamedChoice]  # type: ignore[assignment]


def response_deleted(body: dict[str, Any]) -> None:
    """``DELETE /v1/responses/{id}``: the SDK declares no type (``responses.delete``
    returns None, whatever the body); OpenAI's reference gives this shape, the one of
    every other deleted resource."""
    assert set(body) == {"id", "object", "deleted"}, body
    assert isinstance(body["id"], str) and body["id"].startswith("resp_"), body
    assert body["object"] == "response.deleted" and body["deleted"] is True, body


ID = r"[^/]+"  # one path segment: an id
RULES = (
    Rule("POST", r"/v1/chat/completions", ChatCompletion, ChatCompletionChunk),
    Rule("GET", r"/v1/models", model_list),
    Rule("GET", rf"/v1/models/{ID}", Model),
    Rule("POST", r"/v1/responses", Response, ResponseStreamEvent),
    Rule("GET", rf"/v1/responses/{ID}", Response, ResponseStreamEvent),
    Rule("DELETE", rf"/v1/responses/{ID}", response_deleted),
    Rule("POST", rf"/v1/responses/{ID}/cancel", Response),
    Rule("GET", rf"/v1/responses/{ID}/input_items", ResponseItemList),
    Rule("POST", r"/v1/conversations", Conversation),
    Rule("GET", rf"/v1/conversations/{ID}", Conversation),
    Rule("POST", rf"/v1/conversations/{ID}", Conversation),
    Rule("DELETE", rf"/v1/conversations/{ID}", ConversationDeletedResource),
    Rule("GET", rf"/v1/conversations/{ID}/items", ConversationItemList),
    Rule("POST", rf"/v1/conversations/{ID}/items", ConversationItemList),
    Rule("GET", rf"/v1/conversations/{ID}/items/{ID}", ConversationItem),
    Rule("DELETE", rf"/v1/conversations/{ID}/items/{ID}", Conversation),  # as OpenAI's
    Rule("POST", r"/v1/embeddings", embeddings),
    Rule("POST", r"/v1/completions", Completion, StreamedCompletion),
)

# The /v1/ routes that are agentd's own, with no method in the SDK (docs/protocol.md):
# they need no rule. Any other /v1/ route the app registers must have one.
AGENTD_ONLY = {
    ("GET", "/v1/info"),  # the instance's agents, backends and topology
    ("GET", "/v1/me"),  # who the credential is and what it may do (the console asks)
    # sessions: agentd's own view of a conversation, with its messages
    ("POST", "/v1/sessions"),
    ("GET", "/v1/sessions"),
    ("GET", "/v1/sessions/{id}"),
    ("DELETE", "/v1/sessions/{id}"),
    ("GET", "/v1/sessions/{id}/messages"),
    ("POST", "/v1/sessions/{id}/messages"),
    # a session's live events (SSE) and publishing to them
    ("GET", "/v1/sessions/{id}/events"),
    ("POST", "/v1/sessions/{id}/events"),
    # shared state between agents, and the listing a console browses
    ("GET", "/v1/state"),
    ("GET", "/v1/state/{namespace}"),
    ("GET", "/v1/state/{namespace}/{key}"),
    ("PUT", "/v1/state/{namespace}/{key}"),
    ("PATCH", "/v1/state/{namespace}/{key}"),
    ("DELETE", "/v1/state/{namespace}/{key}"),
    ("POST", "/v1/state/{namespace}/{key}/increment"),
    ("GET", "/v1/ws"),  # the WebSocket protocol
    ("DELETE", "/v1/cache"),  # response cache admin
    # API keys admin (docs/auth.md)
    ("POST", "/v1/admin/keys"),
    ("GET", "/v1/admin/keys"),
    ("GET", "/v1/admin/keys/{id}"),
    ("PATCH", "/v1/admin/keys/{id}"),
    ("DELETE", "/v1/admin/keys/{id}"),
    # usage (docs/auth.md)
    ("GET", "/v1/usage"),
    ("GET", "/v1/admin/usage"),
    # the operators' API (docs/admin-api.md): the registry, the queue and its dead letters
    ("GET", "/v1/admin/instances"),
    ("GET", "/v1/admin/jobs"),
    ("GET", "/v1/admin/jobs/dead"),
    ("POST", "/v1/admin/jobs/dead/{id}/retry"),
    ("DELETE", "/v1/admin/jobs/dead/{id}"),
}

# agentd's own fields, documented in docs/protocol.md: where a chat turn was stored
# (session_id, seq), a response's session, agentd's own error code beside OpenAI's.
EXTENSIONS = {
    ChatCompletion: ("session_id", "seq"),
    ChatCompletionChunk: ("session_id", "seq"),
    Response: ("session_id",),
}


def _without_extensions(kind: Any, doc: dict[str, Any]) -> dict[str, Any]:
    if kind is ResponseStreamEvent and isinstance(doc.get("response"), dict):
        return {**doc, "response": _without_extensions(Response, doc["response"])}
    names = EXTENSIONS.get(kind, ())
    doc = {k: v for k, v in doc.items() if k not in names}
    if kind is Response and isinstance(doc.get("error"), dict):
        doc["error"] = {k: v for k, v in doc["error"].items() if k != "agentd_code"}
    return doc


# The unions' reprs are pages long.
NAMES = {id(ResponseStreamEvent): "ResponseStreamEvent", id(ConversationItem): "ConversationItem"}


def conform(kind: Any, doc: Any) -> None:
    """Check one body or event against ``kind`` (an SDK type, or a checking function)."""
    if inspect.isfunction(kind):  # a checking function, not a type or a union of types
        kind(doc)
        return
    try:
        strictly(kind, _without_extensions(kind, doc))
    except AssertionError as exc:  # the event union's repr is pages long
        name = NAMES.get(id(kind)) or kind.__name__
        raise AssertionError(str(exc).replace(repr(kind), name)) from None


# -- recording what the SDK receives -----------------------------------------------------


@dataclass
class Exchange:
    method: str
    path: str
    status: int
    content_type: str
    body: bytearray = field(default_factory=bytearray)

    def events(self) -> Iterator[tuple[str | None, bytes]]:
        """The (event name, data) of each server-sent event of the body."""
        text = bytes(self.body).replace(b"\r\n", b"\n")
        for block in text.split(b"\n\n"):
            name, data = None, []
            for line in block.split(b"\n"):
                if line.startswith(b"event:"):
                    name = line[6:].strip().decode()
                elif line.startswith(b"data:"):
                    data.append(line[5:].removeprefix(b" "))
            if data:
                yield name, b"\n".join(data)


class _Tee(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, sink: bytearray) -> None:
        self._inner, self._sink = inner, sink

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            self._sink += chunk
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


class Recorder(httpx.AsyncBaseTransport):
    """An httpx transport that keeps a copy of every response body as the SDK reads it."""

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self.exchanges: list[Exchange] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        exchange = Exchange(
            request.method,
            request.url.path,
            response.status_code,
            response.headers.get("content-type", ""),
        )
        self.exchanges.append(exchange)
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=_Tee(response.stream, exchange.body),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._inner.aclose()


def check_exchange(exchange: Exchange) -> int:
    """Check every document of one exchange against its rule; how many there were."""
    rule = next(
        (r for r in RULES if r.method == exchange.method and re.fullmatch(r.path, exchange.path)),
        None,
    )
    assert rule is not None, f"no conformance rule for {exchange.method} {exchange.path}"
    where = f"{exchange.method} {exchange.path} ({exchange.status})"
    if exchange.status >= 400:
        body = orjson.loads(exchange.body)
        assert set(body) == {"error"}, where
        strictly(ErrorObject, body["error"])
        return 1
    if exchange.content_type.startswith("text/event-stream"):
        assert rule.event is not None, f"{where}: a stream where none belongs"
        count = 0
        for name, data in exchange.events():
            if data == b"[DONE]":
                continue
            doc = orjson.loads(data)
            if name is not None:  # Responses events name their type twice
                assert name == doc["type"], where
            try:
                conform(rule.event, doc)
            except AssertionError as exc:
                raise AssertionError(f"{where}: event {count}: {exc}") from None
            count += 1
        assert count, f"{where}: an empty stream"
        return count
    assert rule.body is not None, f"{where}: a JSON body where none belongs"
    try:
        conform(rule.body, orjson.loads(exchange.body))
    except AssertionError as exc:
        raise AssertionError(f"{where}: {exc}") from None
    return 1


# -- the servers under test -------------------------------------------------------------


@dataclass
class Target:
    """agentd with one backend, the SDK client that records, and its HTTP base URL."""

    proc: AgentdProcess
    sdk: openai.AsyncOpenAI
    recorder: Recorder
    upstream: bool

    async def new_session(self) -> str:
        async with (
            aiohttp.ClientSession() as http,
            http.post(self.proc.url + "/v1/sessions", json={}) as r,
        ):
            return orjson.loads(await r.read())["id"]


# Agent "slow" answers about 20 words a second, so a background response of it is still
# running when a case cancels it.
ECHO = """
[[backends]]
name = "echo"
type = "echo"

[[backends]]
name = "slow"
type = "echo"
tokens_per_s = 20.0

[[agents]]
name = "echo"
backend = "echo"

[[agents]]
name = "slow"
backend = "slow"
"""

UPSTREAM = """
[[backends]]
name = "up"
type = "openai"
urls = ["{url}"]

[[backends]]
name = "slow"
type = "openai"
urls = ["{slow}"]

[[agents]]
name = "echo"
backend = "up"

[[agents]]
name = "slow"
backend = "slow"
"""

SHARED = pytest.mark.asyncio(loop_scope="module")


@dataclass
class Server:
    proc: AgentdProcess
    upstream: bool


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=["echo", "upstream"])
async def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Server]:
    """agentd on the echo backend, or on the stub upstream: one of each for the module."""
    upstream = request.param == "upstream"
    nodes: list[StubNode] = []
    try:
        if upstream:
            nodes.append(await StubNode().start())
            nodes.append(await StubNode(Slow(first_s=0.05, between_s=0.05)).start())
            config = UPSTREAM.format(url=nodes[0].url, slow=nodes[1].url)
        else:
            config = ECHO
        workdir: Path = tmp_path_factory.mktemp(f"conformance-{request.param}")
        proc = AgentdProcess(workdir, config, [], {})
        try:
            proc.wait_ready()
            yield Server(proc, upstream)
        finally:
            proc.stop()
    finally:
        for node in nodes:
            await node.close()


@pytest_asyncio.fixture(loop_scope="module")
async def target(server: Server) -> AsyncIterator[Target]:
    recorder = Recorder()
    sdk = openai.AsyncOpenAI(
        base_url=server.proc.url + "/v1",
        api_key="x",
        max_retries=0,
        http_client=httpx.AsyncClient(transport=recorder, timeout=30),
    )
    yield Target(server.proc, sdk, recorder, server.upstream)
    await sdk.close()


# -- the cases ---------------------------------------------------------------------------

Case = Callable[[Target], Awaitable[None]]
CASES: dict[str, Case] = {}


def case(fn: Case) -> Case:
    CASES[fn.__name__] = fn
    return fn


def say(text: str = "hello there") -> list[Any]:
    return [{"role": "user", "content": text}]


TOOL = {"type": "function", "function": {"name": "noop", "parameters": {"type": "object"}}}

# A value of every field of OpenAI's chat request but the messages and the stream's (the
# SDK's own list of fields is checked against this one, and agentd's tables, below).
CHAT_FIELDS: dict[str, Any] = {
    "audio": {"voice": "alloy", "format": "mp3"},
    "function_call": "auto",
    "functions": [TOOL["function"]],
    "moderation": {"model": "omni-moderation-latest"},
    "prediction": {"type": "content", "content": "hello there"},
    "prompt_cache_options": {"mode": "implicit", "ttl": "30m"},
    "prompt_cache_retention": "24h",
    "tool_choice": "auto",
    "tools": [TOOL],
    "top_logprobs": 0,
    "web_search_options": {"search_context_size": "low"},
    "frequency_penalty": 0.0,
    "logit_bias": {"50256": -100},
    "logprobs": False,
    "max_completion_tokens": 64,
    "max_tokens": 64,
    "metadata": {"suite": "conformance"},
    "modalities": ["text"],
    "n": 1,
    "parallel_tool_calls": True,
    "presence_penalty": 0.0,
    "prompt_cache_key": "conformance",
    "reasoning_effort": "low",
    "response_format": {"type": "text"},
    "safety_identifier": "user-1",
    "seed": 1,
    "service_tier": "auto",
    "stop": ["\n\n\n"],
    "store": True,
    "temperature": 0.5,
    "top_p": 1.0,
    "user": "user-1",
    "verbosity": "medium",
}


@case
async def chat_completion(t: Target) -> None:
    reply = await t.sdk.chat.completions.create(model="echo", messages=say())
    assert reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "stop"


@case
async def chat_completion_with_every_field(t: Target) -> None:
    reply = await t.sdk.chat.completions.create(model="echo", messages=say(), **CHAT_FIELDS)
    assert reply.choices[0].message.content


@case
async def chat_completion_in_a_session(t: Target) -> None:
    sid = await t.new_session()
    reply = await t.sdk.chat.completions.create(
        model="echo", messages=say(), extra_body={"session_id": sid}
    )
    assert reply.model_extra == {"session_id": sid, "seq": 2}
    stream = await t.sdk.chat.completions.create(
        model="echo", messages=say(), stream=True, extra_body={"session_id": sid}
    )
    assert [c async for c in stream]


@case
async def chat_completion_cut_at_max_tokens(t: Target) -> None:
    reply = await t.sdk.chat.completions.create(
        model="echo", messages=say("one two three"), max_tokens=1
    )
    if not t.upstream:  # the stub ignores limits; the echo backend honours them
        assert reply.choices[0].finish_reason == "length"


@case
async def chat_completion_with_a_reply_sent_back(t: Target) -> None:
    # As a client keeps the conversation: the SDK's own reply object, sent back as given.
    first = await t.sdk.chat.completions.create(model="echo", messages=say())
    # ...and as OpenAI's replies carry it, every field of an assistant message present.
    full = {"role": "assistant", "content": "hi", "name": "a", "refusal": None, "audio": None,
            "function_call": None, "tool_calls": None}  # fmt: skip
    reply = await t.sdk.chat.completions.create(
        model="echo", messages=[*say(), first.choices[0].message, full, *say("and again")]
    )
    assert reply.choices[0].message.content


@case
async def chat_tool_call_round_trip(t: Target) -> None:
    # The model asks for a tool (the echo's script, or the stub's), the client answers.
    ask = say('call noop {"why": "conformance"}')
    reply = await t.sdk.chat.completions.create(model="echo", messages=ask, tools=[TOOL])
    assert reply.choices[0].finish_reason == "tool_calls"
    [call] = reply.choices[0].message.tool_calls or []
    stream = await t.sdk.chat.completions.create(
        model="echo", messages=ask, tools=[TOOL], stream=True
    )
    assert [c async for c in stream]
    result = {"role": "tool", "tool_call_id": call.id, "content": "done"}
    final = await t.sdk.chat.completions.create(
        model="echo", messages=[*ask, reply.choices[0].message, result], tools=[TOOL]
    )
    assert final.choices[0].message.content


@case
async def chat_tool_result_answering_no_call(t: Target) -> None:
    result = {"role": "tool", "tool_call_id": "call_none", "content": "done"}
    with pytest.raises(openai.BadRequestError) as info:
        await t.sdk.chat.completions.create(model="echo", messages=[*say(), result])
    assert info.value.code == "unknown_tool_call"
    assert info.value.param == "messages[1].tool_call_id"


@case
async def chat_stream(t: Target) -> None:
    stream = await t.sdk.chat.completions.create(model="echo", messages=say(), stream=True)
    chunks = [c async for c in stream]
    assert all(c.usage is None for c in chunks)


@case
async def chat_stream_with_usage(t: Target) -> None:
    stream = await t.sdk.chat.completions.create(
        model="echo",
        messages=say(),
        stream=True,
        stream_options={"include_usage": True},
        **CHAT_FIELDS,
    )
    chunks = [c async for c in stream]
    assert chunks[-1].usage is not None and chunks[-1].choices == []


@case
async def chat_unknown_field(t: Target) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await t.sdk.chat.completions.create(
            model="echo", messages=say(), extra_body={"tempreature": 1}
        )
    assert info.value.code == "unknown_parameter" and info.value.param == "tempreature"


@case
async def models(t: Target) -> None:
    listed = await t.sdk.models.list()
    assert [m.id for m in listed.data] == ["echo", "slow"]
    model = await t.sdk.models.retrieve("echo")
    assert model.created > 0


@case
async def responses_create_and_retrieve(t: Target) -> None:
    response = await t.sdk.responses.create(model="echo", input="hello there", metadata={"a": "b"})
    assert response.status == "completed"
    assert (await t.sdk.responses.retrieve(response.id)).output_text == response.output_text


@case
async def responses_stream(t: Target) -> None:
    stream = await t.sdk.responses.create(model="echo", input="hello there", stream=True)
    events = [e async for e in stream]
    assert events[-1].type == "response.completed"


@case
async def responses_cut_at_max_output_tokens(t: Target) -> None:
    response = await t.sdk.responses.create(
        model="echo", input="one two three", max_output_tokens=16
    )
    stream = await t.sdk.responses.create(
        model="echo", input="one two three", max_output_tokens=16, stream=True
    )
    events = [e async for e in stream]
    if not t.upstream:
        # 16 is OpenAI's least limit: a longer echo is cut.
        long = await t.sdk.responses.create(model="echo", input="w " * 20, max_output_tokens=16)
        assert long.status == "incomplete" and long.incomplete_details is not None
        assert response.status == "completed" and events[-1].type == "response.completed"


@case
async def responses_background(t: Target) -> None:
    queued = await t.sdk.responses.create(model="echo", input="hello there", background=True)

    async def done() -> Any:
        response = await t.sdk.responses.retrieve(queued.id)
        return response if response.status == "completed" else None

    await wait_until(done, 30, f"{queued.id} to complete", poll_s=0.05)
    replay = await t.sdk.responses.retrieve(queued.id, stream=True)
    events = [e async for e in replay]
    assert events[0].type == "response.created" and events[-1].type == "response.completed"


@case
async def responses_background_stream(t: Target) -> None:
    stream = await t.sdk.responses.create(
        model="echo", input="hello there", background=True, stream=True
    )
    events = [e async for e in stream]
    assert events[-1].type == "response.completed"


@case
async def responses_unknown_field(t: Target) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await t.sdk.responses.create(model="echo", input="hi", extra_body={"tempreature": 1})
    assert info.value.code == "unknown_parameter" and info.value.param == "tempreature"


@case
async def responses_cancel(t: Target) -> None:
    words = " ".join(f"w{i}" for i in range(200))  # about 10 s at 20 words a second
    job = await t.sdk.responses.create(model="slow", input=words, background=True)

    async def running() -> bool:
        return (await t.sdk.responses.retrieve(job.id)).status == "in_progress"

    await wait_until(running, 30, f"{job.id} to run", poll_s=0.05)
    cancelled = await t.sdk.responses.cancel(job.id)
    # As OpenAI's: the answer is the stopped response, not a snapshot still running.
    assert cancelled.status == "cancelled" and cancelled.id == job.id
    # Its stream, played again, ends with the response cancelled.
    events = [e async for e in await t.sdk.responses.retrieve(job.id, stream=True)]
    assert events[-1].response.status == "cancelled"  # type: ignore[union-attr]
    with pytest.raises(openai.BadRequestError):  # only a background response can be
        await t.sdk.responses.cancel((await t.sdk.responses.create(model="echo", input="done")).id)


@case
async def responses_delete(t: Target) -> None:
    response = await t.sdk.responses.create(model="echo", input="hello there")
    assert await t.sdk.responses.delete(response.id) is None  # the SDK keeps no body
    with pytest.raises(openai.NotFoundError):
        await t.sdk.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError):
        await t.sdk.responses.delete(response.id)


@case
async def responses_input_items(t: Target) -> None:
    response = await t.sdk.responses.create(
        model="echo",
        input=[
            {"role": "user", "content": "one"},
            {"role": "assistant", "content": "two"},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "3"}]},
        ],
    )
    listed = await t.sdk.responses.input_items.list(response.id)
    assert [item.type for item in listed.data] == ["message"] * 3
    first = await t.sdk.responses.input_items.list(response.id, order="asc", limit=1)
    assert first.has_more and first.data[0].role == "user"  # type: ignore[union-attr]
    rest = await t.sdk.responses.input_items.list(
        response.id,
        order="asc",
        after=first.data[0].id,  # type: ignore[union-attr]
    )
    assert len(rest.data) == 2 and not rest.has_more


@case
async def conversations_create(t: Target) -> None:
    conv = await t.sdk.conversations.create(
        items=[{"type": "message", "role": "user", "content": "hi"}], metadata={"a": "b"}
    )
    assert conv.id.startswith("conv_") and conv.metadata == {"a": "b"}
    assert (await t.sdk.conversations.create()).id != conv.id


@case
async def conversations_retrieve(t: Target) -> None:
    conv = await t.sdk.conversations.create()
    got = await t.sdk.conversations.retrieve(conv.id)
    assert (got.id, got.created_at) == (conv.id, conv.created_at)
    with pytest.raises(openai.NotFoundError):
        await t.sdk.conversations.retrieve("conv_missing")


@case
async def conversations_update(t: Target) -> None:
    conv = await t.sdk.conversations.create(metadata={"a": "b"})
    updated = await t.sdk.conversations.update(conv.id, metadata={"a": "c"})
    assert updated.metadata == {"a": "c"}


@case
async def conversations_delete(t: Target) -> None:
    conv = await t.sdk.conversations.create()
    deleted = await t.sdk.conversations.delete(conv.id)
    assert deleted.deleted and deleted.id == conv.id
    with pytest.raises(openai.NotFoundError):
        await t.sdk.conversations.retrieve(conv.id)


@case
async def conversation_items_create(t: Target) -> None:
    conv = await t.sdk.conversations.create()
    added = await t.sdk.conversations.items.create(
        conv.id,
        items=[
            {"type": "message", "role": "user", "content": "hi"},
            {"role": "assistant", "content": [{"type": "output_text", "text": "hello"}]},
        ],
    )
    assert [item.role for item in added.data] == ["user", "assistant"]  # type: ignore[union-attr]


@case
async def conversation_items_list(t: Target) -> None:
    conv = await t.sdk.conversations.create(
        items=[{"role": "user", "content": "one"}, {"role": "assistant", "content": "two"}]
    )
    listed = await t.sdk.conversations.items.list(conv.id)
    assert len(listed.data) == 2 and not listed.has_more
    page = await t.sdk.conversations.items.list(conv.id, order="asc", limit=1)
    assert page.has_more and page.data[0].id == listed.data[-1].id  # type: ignore[union-attr]


@case
async def conversation_items_retrieve(t: Target) -> None:
    conv = await t.sdk.conversations.create(items=[{"role": "user", "content": "hi"}])
    [item] = (await t.sdk.conversations.items.list(conv.id)).data
    got = await t.sdk.conversations.items.retrieve(item.id, conversation_id=conv.id)  # type: ignore[union-attr]
    assert got == item
    with pytest.raises(openai.NotFoundError):
        await t.sdk.conversations.items.retrieve("msg_999", conversation_id=conv.id)


@case
async def conversation_items_delete(t: Target) -> None:
    conv = await t.sdk.conversations.create(
        items=[{"role": "user", "content": "one"}, {"role": "user", "content": "two"}]
    )
    newest = (await t.sdk.conversations.items.list(conv.id)).data[0]
    after = await t.sdk.conversations.items.delete(newest.id, conversation_id=conv.id)  # type: ignore[union-attr]
    assert after.id == conv.id
    assert len((await t.sdk.conversations.items.list(conv.id)).data) == 1


@case
async def responses_in_a_conversation(t: Target) -> None:
    conv = await t.sdk.conversations.create(items=[{"role": "user", "content": "first"}])
    response = await t.sdk.responses.create(model="echo", input="second", conversation=conv.id)
    assert response.conversation is not None and response.conversation.id == conv.id
    stream = await t.sdk.responses.create(
        model="echo", input="third", conversation=conv.id, stream=True
    )
    assert [e async for e in stream][-1].type == "response.completed"
    items = await t.sdk.conversations.items.list(conv.id, order="asc")
    assert len(items.data) == 5  # first, second and its reply, third and its reply


@case
async def embeddings_float_and_base64(t: Target) -> None:
    floats = await t.sdk.embeddings.create(
        model="echo", input="hello there", encoding_format="float"
    )
    # Without a format, the SDK asks for base64 and decodes it itself.
    packed = await t.sdk.embeddings.create(model="echo", input=["hello there", "other"])
    assert [round(x, 5) for x in packed.data[0].embedding] == [
        round(x, 5) for x in floats.data[0].embedding
    ]
    assert [item.index for item in packed.data] == [0, 1]


@case
async def completions(t: Target) -> None:
    body = await t.sdk.completions.create(model="echo", prompt="say this back", max_tokens=16)
    assert body.choices[0].text and body.choices[0].finish_reason in ("stop", "length")


@case
async def completions_stream(t: Target) -> None:
    stream = await t.sdk.completions.create(
        model="echo",
        prompt="one two three",
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    assert "".join(c.choices[0].text for c in chunks if c.choices).endswith("one two three")


@SHARED
@pytest.mark.parametrize("name", list(CASES))
async def test_every_answer_conforms_to_the_sdk(target: Target, name: str) -> None:
    await CASES[name](target)
    exchanges = target.recorder.exchanges
    assert exchanges, "the case made no request"
    for exchange in exchanges:
        check_exchange(exchange)


# -- every route has its rule -----------------------------------------------------------


def v1_routes() -> set[tuple[str, str]]:
    """The (method, path template) of every ``/v1/`` route the app registers (HEAD is
    aiohttp's own twin of each GET)."""
    app = create_app(from_dict({}))
    return {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None
        and route.resource.canonical.startswith("/v1/")
        and route.method != "HEAD"
    }


def sample(template: str) -> str:
    """A path of the route ``template``: a value for each ``{name}``."""
    return re.sub(r"\{[^}/]+\}", "x_1", template)


def rules_of(method: str, template: str) -> list[Rule]:
    return [r for r in RULES if r.method == method and re.fullmatch(r.path, sample(template))]


async def test_every_v1_route_has_a_rule_or_is_agentd_only() -> None:
    routes = v1_routes()
    missing = sorted(r for r in routes - AGENTD_ONLY if not rules_of(*r))
    assert not missing, (
        f"/v1/ routes with no conformance rule: {missing}; add a Rule and a @case for "
        "each, or (if the SDK has no method for it) an entry in AGENTD_ONLY"
    )
    assert AGENTD_ONLY <= routes, f"AGENTD_ONLY names no route: {AGENTD_ONLY - routes}"
    assert not [r for r in AGENTD_ONLY if rules_of(*r)], "a route both ruled and agentd-only"
    used = {id(rule) for route in routes for rule in rules_of(*route)}
    unused = [(r.method, r.path) for r in RULES if id(r) not in used]
    assert not unused, f"rules of no route agentd serves: {unused}"


# -- the request side --------------------------------------------------------------------


def test_every_field_of_the_sdks_chat_request_is_accepted() -> None:
    # The installed SDK's list of fields, so this follows the SDK as it grows.
    sdk_fields = set(CompletionCreateParamsBase.__annotations__) | {"stream"}
    tables = (
        set(fastpath.CHAT_PARAMS) | set(fastpath.CHAT_IGNORED_FIELDS) | fastpath.CHAT_LOCAL_FIELDS
    )
    assert sdk_fields - tables == set()


def test_every_field_of_the_sdks_chat_messages_is_accepted() -> None:
    roles = set()
    for kind in typing.get_args(ChatCompletionMessageParam):
        assert set(kind.__annotations__) <= fastpath.CHAT_MESSAGE_FIELDS, kind.__name__
        roles |= set(typing.get_args(typing.get_type_hints(kind)["role"]))
    # "function" is the deprecated role of function results (now "tool"), refused.
    assert roles - fastpath.CHAT_ROLES == {"function"}


def test_the_cases_send_every_field_the_sdk_declares() -> None:
    sdk_fields = set(CompletionCreateParamsBase.__annotations__)
    assert sdk_fields - set(CHAT_FIELDS) == {"messages", "model", "stream_options"}
