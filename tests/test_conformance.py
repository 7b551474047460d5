"""Conformance with OpenAI's API as the official ``openai`` SDK knows it.

Each case drives a real ``agentd serve`` through the SDK, once over the echo backend and
once over an OpenAI-compatible upstream (the stub). Every HTTP exchange the SDK makes
is recorded on the way in, and every body and every streamed event is then checked with
:func:`tests.sdk_strict.strictly` against the SDK type that its route says it is
(``RULES``): a field the SDK does not declare, or of the wrong type, fails, and so does
an exchange no rule covers.

To cover a new endpoint: add its rule to ``RULES`` and a ``@case`` that calls it.
agentd's documented extensions (``EXTENSIONS``) are taken out before the check.
"""

from __future__ import annotations

import re
import typing
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import httpx2 as httpx
import openai
import orjson
import pytest
from openai.types import Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessageParam
from openai.types.chat.completion_create_params import CompletionCreateParamsBase
from openai.types.responses import Response, ResponseStreamEvent
from openai.types.shared import ErrorObject

from agentd import fastpath

from .openai_stub import StartStub
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


RULES = (
    Rule("POST", r"/v1/chat/completions", ChatCompletion, ChatCompletionChunk),
    Rule("GET", r"/v1/models", model_list),
    Rule("GET", r"/v1/models/[^/]+", Model),
    Rule("POST", r"/v1/responses", Response, ResponseStreamEvent),
    Rule("GET", r"/v1/responses/[^/]+", Response, ResponseStreamEvent),
)

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


def conform(kind: Any, doc: Any) -> None:
    """Check one body or event against ``kind`` (an SDK type, or a checking function)."""
    if not isinstance(kind, type) and callable(kind) and kind is not ResponseStreamEvent:
        kind(doc)
        return
    try:
        strictly(kind, _without_extensions(kind, doc))
    except AssertionError as exc:  # the event union's repr is pages long
        name = "ResponseStreamEvent" if kind is ResponseStreamEvent else kind.__name__
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


UPSTREAM = """
[[backends]]
name = "up"
type = "openai"
urls = ["{url}"]

[[agents]]
name = "echo"
backend = "up"
"""


@pytest.fixture(params=["echo", "upstream"])
async def target(
    request: pytest.FixtureRequest, agentd_instance: Callable[..., AgentdProcess], stub: StartStub
) -> AsyncIterator[Target]:
    upstream = request.param == "upstream"
    config = UPSTREAM.format(url=(await stub()).url) if upstream else ""
    proc = agentd_instance(config)
    recorder = Recorder()
    sdk = openai.AsyncOpenAI(
        base_url=proc.url + "/v1",
        api_key="x",
        max_retries=0,
        http_client=httpx.AsyncClient(transport=recorder, timeout=30),
    )
    yield Target(proc, sdk, recorder, upstream)
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
    assert [m.id for m in listed.data] == ["echo"]
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


@pytest.mark.parametrize("name", list(CASES))
async def test_every_answer_conforms_to_the_sdk(target: Target, name: str) -> None:
    await CASES[name](target)
    exchanges = target.recorder.exchanges
    assert exchanges, "the case made no request"
    for exchange in exchanges:
        check_exchange(exchange)


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
