"""The Responses API on a real ``agentd serve`` (standalone, in memory), driven by the
official ``openai`` SDK; upstream is the echo backend or an OpenAI-compatible stub."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from aiohttp import web

from .openai_stub import Fail, Slow, StartStub, StubNode
from .procs import AgentdProcess, metric, metrics
from .waiting import wait_until

Start = Callable[..., AgentdProcess]

# The echo backend's interactive calls in flight (a turn calling the model).
AT_THE_MODEL = 'agentd_upstream_inflight{backend="echo",kind="interactive",node="echo"}'
JOBS_AT_THE_MODEL = 'agentd_upstream_inflight{backend="echo",kind="background",node="echo"}'

SLOW_ECHO = """
[[backends]]
name = "echo"
type = "echo"
tokens_per_s = 20.0
"""


def client(proc: AgentdProcess) -> openai.AsyncOpenAI:
    # Retries cover a connection to a worker a test has just killed.
    return openai.AsyncOpenAI(base_url=proc.url + "/v1", api_key="unused", max_retries=3)


FINAL = frozenset({"completed", "failed", "cancelled", "incomplete"})


async def wait_status(
    sdk: openai.AsyncOpenAI, rid: str, done: tuple[str, ...] = ("completed",), limit: float = 30
) -> Any:
    """Poll until the response reaches one of ``done`` (or any final state)."""

    async def reached() -> Any:
        response = await sdk.responses.retrieve(rid)
        return response if response.status in done or response.status in FINAL else None

    return await wait_until(reached, limit, f"{rid} to reach {done}", poll_s=0.05)


async def metric_is(proc: AgentdProcess, sample: str, value: float) -> None:
    """Wait until the instance's /metrics shows ``sample`` at ``value``."""

    async def shown() -> bool:
        return await asyncio.to_thread(metric, proc, sample) == value

    await wait_until(shown, what=f"{sample} = {value}", poll_s=0.05)


async def history(proc: AgentdProcess, sid: str) -> list[dict[str, Any]]:
    url = f"{proc.url}/v1/sessions/{sid}/messages?limit=1000"
    async with aiohttp.ClientSession() as http, http.get(url) as r:
        assert r.status == 200
        return orjson.loads(await r.read())["data"]


@pytest.fixture
async def upstream(stub: StartStub) -> StubNode:
    return await stub()


def stub_config(node: StubNode, extra: str = "") -> str:
    return f"""
[[backends]]
name = "up"
type = "openai"
urls = ["{node.url}"]
breaker_failures = 1000
[[agents]]
name = "helper"
backend = "up"
[agents.cache]
mode = "off"
{extra}
"""


async def test_background_runs_on_the_queue(agentd_instance: Start) -> None:
    proc = agentd_instance()
    sdk = client(proc)
    queued = await sdk.responses.create(model="echo", input="hello there", background=True)
    assert queued.status in ("queued", "in_progress") and queued.background is True
    done = await wait_status(sdk, queued.id)
    assert done.status == "completed"
    assert done.output_text == "hello there"
    assert done.usage is not None and done.usage.output_tokens > 0
    assert metric(proc, 'agentd_jobs_start_delay_seconds_count{partition="default"}') == 1.0
    finished = 'agentd_jobs_finished_total{partition="default",status="completed"}'
    assert metric(proc, finished) == 1.0
    sid = done.model_extra["session_id"]
    messages = await history(proc, sid)
    assert [(m["role"], m["content"], m["turn"]) for m in messages] == [
        ("user", "hello there", queued.id),
        ("assistant", "hello there", queued.id),
    ]


async def test_a_job_reaches_the_watchers_of_its_session(agentd_instance: Start) -> None:
    proc = agentd_instance()
    sdk = client(proc)
    async with aiohttp.ClientSession() as http:
        async with http.post(proc.url + "/v1/sessions", json={}) as r:
            sid = orjson.loads(await r.read())["id"]
        async with http.get(f"{proc.url}/v1/sessions/{sid}/events") as watch:
            job = await sdk.responses.create(
                model="echo", input="pushed", background=True, extra_body={"session_id": sid}
            )
            async for line in watch.content:
                if line.startswith(b"data: "):
                    event = orjson.loads(line[6:])
                    break
    assert [(m["role"], m["content"], m["turn"]) for m in event["messages"]] == [
        ("user", "pushed", job.id),
        ("assistant", "pushed", job.id),
    ]
    assert (await sdk.responses.retrieve(job.id)).model_extra["session_id"] == sid


async def test_an_old_stream_is_its_final_event(agentd_instance: Start) -> None:
    proc = agentd_instance("[jobs]\nevents_ttl_s = 1\n")
    sdk = client(proc)
    job = await sdk.responses.create(model="echo", input="long ago", background=True)
    done = await wait_status(sdk, job.id)
    await asyncio.sleep(2.1)  # a pause, not a wait: its events' 1 s TTL runs out
    events = [e async for e in await sdk.responses.retrieve(job.id, stream=True)]
    assert [e.type for e in events] == ["response.completed"]
    assert events[0].response.output_text == "long ago" == done.output_text
    assert events[0].sequence_number > 0  # after the numbers the expired events had


async def test_foreground_plain_and_streamed(agentd_instance: Start) -> None:
    proc = agentd_instance()
    sdk = client(proc)
    plain = await sdk.responses.create(
        model="echo", input=[{"role": "user", "content": "one two three"}]
    )
    assert (plain.status, plain.output_text, plain.background) == (
        "completed",
        "one two three",
        False,
    )
    fetched = await sdk.responses.retrieve(plain.id)
    assert fetched.output_text == "one two three"

    stream = await sdk.responses.create(model="echo", input="four five six", stream=True)
    events = [event async for event in stream]
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "four five six" == events[-1].response.output_text


async def test_store_false_runs_a_stateless_turn(agentd_instance: Start) -> None:
    proc = agentd_instance()
    sdk = client(proc)
    # As clients that keep the conversation themselves send it: the whole of it, each time.
    conversation = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "first"},
        {"role": "user", "content": "again"},
    ]
    plain = await sdk.responses.create(model="echo", input=conversation, store=False)
    assert plain.output_text == "again"
    assert plain.model_extra == {"session_id": None}  # no store: the SDK declares none
    with pytest.raises(openai.NotFoundError):
        await sdk.responses.retrieve(plain.id)  # nothing was stored
    events = [e async for e in await sdk.responses.create(
        model="echo", input="streamed too", store=False, stream=True
    )]  # fmt: skip
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == "streamed too"
    with pytest.raises(openai.BadRequestError) as e:
        await sdk.responses.create(model="echo", input="x", store=False, background=True)
    assert e.value.code == "unsupported_value"


async def test_previous_response_id_continues_and_branches(
    agentd_instance: Start, upstream: StubNode
) -> None:
    upstream.reply = lambda body: "reply to " + body["messages"][-1]["content"]
    proc = agentd_instance(stub_config(upstream))
    sdk = client(proc)
    first = await sdk.responses.create(model="helper", input="first", instructions="be brief")
    second = await sdk.responses.create(
        model="helper", input="second", previous_response_id=first.id
    )
    assert second.output_text == "reply to second"
    sent = [(m["role"], m["content"]) for m in upstream.requests[-1].json["messages"]]
    # Instructions apply to their own turn only, as OpenAI's do.
    assert sent == [
        ("user", "first"),
        ("assistant", "reply to first"),
        ("user", "second"),
    ]
    assert upstream.requests[0].json["messages"][0] == {"role": "system", "content": "be brief"}
    # Continuing from `first` again branches: the new turn does not see `second`.
    branch = await sdk.responses.create(
        model="helper", input="other", previous_response_id=first.id, background=True
    )
    branch = await wait_status(sdk, branch.id)
    assert branch.output_text == "reply to other"
    sent = [(m["role"], m["content"]) for m in upstream.requests[-1].json["messages"]]
    assert sent == [("user", "first"), ("assistant", "reply to first"), ("user", "other")]
    assert branch.model_extra["session_id"] != second.model_extra["session_id"]
    # And the original line still continues where it was.
    third = await sdk.responses.create(
        model="helper", input="third", previous_response_id=second.id
    )
    assert third.model_extra["session_id"] == second.model_extra["session_id"]
    assert [m["content"] for m in upstream.requests[-1].json["messages"]][-3:] == [
        "second",
        "reply to second",
        "third",
    ]


async def test_cancel_a_running_job_keeps_its_partial_output(agentd_instance: Start) -> None:
    proc = agentd_instance(SLOW_ECHO)
    sdk = client(proc)
    words = " ".join(f"w{i}" for i in range(200))  # about 10 s at 20 tokens/s
    job = await sdk.responses.create(model="echo", input=words, background=True)
    with pytest.raises(openai.ConflictError) as e:
        await sdk.responses.create(model="echo", input="next", previous_response_id=job.id)
    assert e.value.code == "previous_response_running"
    stream = await sdk.responses.retrieve(job.id, stream=True)
    seen = []
    async for event in stream:
        seen.append(event)
        if event.type == "response.output_text.delta" and len(seen) > 8:
            break
    await stream.close()
    cancelled = await sdk.responses.cancel(job.id)
    # As OpenAI's: the answer is the stopped response, not a snapshot still running.
    assert cancelled.status == "cancelled" and cancelled.id == job.id
    again = await sdk.responses.cancel(job.id)  # idempotent
    assert again.status == "cancelled" and again.output_text == cancelled.output_text
    done = await sdk.responses.retrieve(job.id)
    assert done.status == "cancelled" and done.output_text == cancelled.output_text
    partial = done.output_text
    assert partial and words.startswith(partial) and partial != words
    # The stored turn is marked cancelled with the same partial text.
    messages = await history(proc, done.model_extra["session_id"])
    assert messages[-1]["status"] == "cancelled"
    assert messages[-1]["content"] == partial
    # A stream of the ended response ends, with the incomplete event OpenAI sends.
    events = [e async for e in await sdk.responses.retrieve(job.id, stream=True)]
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.status == "cancelled"


async def test_cancelling_an_ended_response_is_refused(agentd_instance: Start) -> None:
    proc = agentd_instance()
    sdk = client(proc)
    job = await sdk.responses.create(model="echo", input="quick", background=True)
    assert (await wait_status(sdk, job.id)).status == "completed"
    with pytest.raises(openai.BadRequestError) as e:
        await sdk.responses.cancel(job.id)
    assert e.value.code == "response_not_cancellable"
    assert (await sdk.responses.retrieve(job.id)).status == "completed"


async def test_cancel_a_queued_job_before_it_runs(
    agentd_instance: Start, upstream: StubNode
) -> None:
    upstream.mode = Slow(first_s=1.5)
    proc = agentd_instance(stub_config(upstream, "[jobs]\nconcurrency = 1\nqueue_shards = 1\n"))
    sdk = client(proc)
    busy = await sdk.responses.create(model="helper", input="busy", background=True)
    waiting = await sdk.responses.create(model="helper", input="waiting", background=True)
    cancelled = await sdk.responses.cancel(waiting.id)
    assert cancelled.status == "cancelled" and cancelled.output_text == ""
    assert (await wait_status(sdk, busy.id)).status == "completed"
    # The cancelled job is taken from the queue and dropped: had it run, the stub would
    # have seen it before it left the queue.
    await metric_is(proc, 'agentd_jobs_queued{partition="default"}', 0.0)
    await metric_is(proc, 'agentd_jobs_running{partition="default"}', 0.0)
    assert [r.json["messages"][-1]["content"] for r in upstream.requests] == ["busy"]
    assert (await sdk.responses.retrieve(waiting.id)).status == "cancelled"


async def test_errors_in_openai_shape(agentd_instance: Start) -> None:
    proc = agentd_instance()
    sdk = client(proc)
    with pytest.raises(openai.NotFoundError) as e:
        await sdk.responses.create(model="nobody", input="x")
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError) as e:
        await sdk.responses.retrieve("resp_missing")
    assert e.value.code == "response_not_found"
    with pytest.raises(openai.NotFoundError):
        await sdk.responses.create(model="echo", input="x", previous_response_id="resp_nope")
    fg = await sdk.responses.create(model="echo", input="x")
    with pytest.raises(openai.BadRequestError) as e:
        await sdk.responses.cancel(fg.id)
    assert e.value.code == "not_background"
    async with aiohttp.ClientSession() as http:
        for body in (b"{", b"[]", b'{"model": "echo"}', b'{"model": "echo", "input": 5}'):
            async with http.post(proc.url + "/v1/responses", data=body) as r:
                assert r.status == 400, body
                error = orjson.loads(await r.read())["error"]
                assert error["code"] and error["message"]
        async with http.get(f"{proc.url}/v1/responses/{fg.id}?stream=true") as r:
            assert r.status == 400
        bg = await sdk.responses.create(model="echo", input="x", background=True)
        async with http.get(f"{proc.url}/v1/responses/{bg.id}?stream=true&starting_after=-1") as r:
            assert r.status == 400
    # The server lives on and answers.
    assert (await sdk.responses.create(model="echo", input="still here")).output_text == (
        "still here"
    )
    deleted = await sdk.responses.delete(bg.id)
    assert deleted is None
    with pytest.raises(openai.NotFoundError):
        await sdk.responses.retrieve(bg.id)


async def test_failing_backend_fails_after_max_attempts(
    agentd_instance: Start, upstream: StubNode
) -> None:
    upstream.mode = Fail(500)
    proc = agentd_instance(stub_config(upstream, "[jobs]\nmax_attempts = 2\n"))
    sdk = client(proc)
    job = await sdk.responses.create(model="helper", input="doomed", background=True)
    done = await wait_status(sdk, job.id)
    assert done.status == "failed"
    assert done.error is not None and done.error.message
    with pytest.raises(openai.BadRequestError) as e:
        await sdk.responses.create(model="helper", input="on", previous_response_id=job.id)
    assert e.value.code == "previous_response_unusable"
    assert len(upstream.requests) >= 2  # retried (the pool may retry within an attempt too)


async def test_webhook_is_signed_the_way_the_sdk_verifies(agentd_instance: Start) -> None:
    secret = "whsec_" + "c2VjcmV0LWtleS1mb3ItYWdlbnRkLXdlYmhvb2tz"
    received: asyncio.Queue[tuple[bytes, dict[str, str]]] = asyncio.Queue()

    async def hook(request: web.Request) -> web.Response:
        await received.put((await request.read(), dict(request.headers)))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        config = f'[jobs]\nwebhook_url = "http://127.0.0.1:{port}/hook"\n'
        proc = agentd_instance(config, env={"AGENTD_WEBHOOK_SECRET": secret})
        sdk = client(proc)
        job = await sdk.responses.create(model="echo", input="notify me", background=True)
        body, headers = await asyncio.wait_for(received.get(), 30)
        verifier = openai.OpenAI(api_key="unused", webhook_secret=secret)
        event = verifier.webhooks.unwrap(body, headers)
        assert event.type == "response.completed" and event.data.id == job.id
        with pytest.raises(openai.InvalidWebhookSignatureError):
            verifier.webhooks.unwrap(body.replace(b"completed", b"failed"), headers)
        assert received.empty()
    finally:
        await runner.cleanup()


def test_sdk_sync_client_works_too(agentd_instance: Start) -> None:
    proc = agentd_instance()
    sdk = openai.OpenAI(base_url=proc.url + "/v1", api_key="unused")
    response = sdk.responses.create(model="echo", input="sync")
    assert response.output_text == "sync"


async def test_interactive_calls_pass_a_flood_of_jobs(
    agentd_instance: Start, upstream: StubNode
) -> None:
    upstream.mode = Slow(first_s=0.4)
    upstream.reply = lambda body: "reply to " + body["messages"][-1]["content"]
    proc = agentd_instance(
        stub_config(upstream).replace(
            "breaker_failures = 1000", "breaker_failures = 1000\nmax_inflight = 2"
        )
    )
    sdk = client(proc)
    jobs = [
        await sdk.responses.create(model="helper", input=f"job {i}", background=True)
        for i in range(8)
    ]
    await wait_status(sdk, jobs[0].id, ("in_progress",))
    # Background work may hold half the node (1 call); a person's chat gets the other.
    chat = await sdk.chat.completions.create(
        model="helper", messages=[{"role": "user", "content": "a person"}]
    )
    assert chat.choices[0].message.content == "reply to a person"
    jobs_seen = sum(
        1 for r in upstream.requests if r.json["messages"][-1]["content"].startswith("job")
    )
    assert jobs_seen < len(jobs)  # the chat did not wait behind the backlog
    for job in jobs:
        assert (await wait_status(sdk, job.id)).status == "completed"
    assert upstream.peak_inflight == 2  # one job and the chat, never two jobs


async def test_a_partition_caps_its_interactive_turns(agentd_instance: Start) -> None:
    config = (
        SLOW_ECHO
        + """
[[agents]]
name = "capped"
backend = "echo"
[[agents]]
name = "free"
backend = "echo"
[[partitions]]
name = "small"
agents = ["capped"]
max_inflight_turns = 1
"""
    )
    proc = agentd_instance(config)
    sdk = client(proc)
    slow = asyncio.create_task(
        sdk.chat.completions.create(
            model="capped", messages=[{"role": "user", "content": "w " * 40}]
        )
    )

    async def second() -> openai.InternalServerError | None:
        try:
            await sdk.with_options(max_retries=0).chat.completions.create(
                model="capped", messages=[{"role": "user", "content": "second"}]
            )
        except openai.InternalServerError as exc:
            return exc
        assert not slow.done(), "the slow turn ended before a second one was refused"
        return None

    refused = await wait_until(second, what="a second turn to be refused", poll_s=0.05)
    assert refused.status_code == 503 and refused.code == "overloaded"
    other = await sdk.chat.completions.create(
        model="free", messages=[{"role": "user", "content": "not capped"}]
    )
    assert other.choices[0].message.content == "not capped"
    await slow


async def test_jobs_start_slower_while_people_chat(agentd_instance: Start) -> None:
    proc = agentd_instance(SLOW_ECHO + "[jobs]\nconcurrency = 8\nbusy_share = 0.125\n")
    sdk = client(proc)
    chat = asyncio.create_task(
        sdk.chat.completions.create(
            model="echo",
            messages=[{"role": "user", "content": "w " * 50}],  # about 2.5 s
        )
    )
    loop = asyncio.get_running_loop()
    await metric_is(proc, AT_THE_MODEL, 1.0)  # the chat turn runs
    jobs = [
        await sdk.responses.create(model="echo", input="j " * 30, background=True) for _ in range(6)
    ]

    async def at_the_model() -> tuple[float, float]:
        """Model calls in flight, the person's and the jobs', at one moment."""
        people, background = await asyncio.to_thread(metrics, proc, AT_THE_MODEL, JOBS_AT_THE_MODEL)
        return people or 0.0, background or 0.0

    async def completed() -> bool:
        replies = [await sdk.responses.retrieve(j.id) for j in jobs]
        return all(r.status == "completed" for r in replies)

    during, after = 0.0, 0.0
    until = loop.time() + 60
    while not chat.done():
        people, running = await at_the_model()
        if people:  # the sample was taken while the person's turn ran
            during = max(during, running)
        assert loop.time() < until
    await chat
    while not await completed():
        after = max(after, (await at_the_model())[1])
        assert loop.time() < until
    assert during == 1  # one job at a time beside the person's turn
    assert after > 1  # then the partition's whole concurrency
