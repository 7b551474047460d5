"""Webhooks against a real receiver on a loopback port: what is sent verifies with the
official openai SDK, tampering does not, and delivery retries, times out and gives up
as documented."""

from __future__ import annotations

import asyncio
import base64
import logging
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import openai
import pytest
from aiohttp import web
from openai.types.webhooks import (
    ResponseCancelledWebhookEvent,
    ResponseCompletedWebhookEvent,
    ResponseFailedWebhookEvent,
    ResponseIncompleteWebhookEvent,
)

from agentd.jobs.webhooks import (
    WebhookSender,
    decode_secret,
    event_id_for,
    headers,
    sign,
    webhook_event,
)

SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
RAW_SECRET = "a plain secret, taken as its UTF-8 bytes"
OTHER_SECRET = "whsec_" + base64.b64encode(bytes(range(1, 33))).decode()

EVENT_CLASSES = {
    "response.completed": ResponseCompletedWebhookEvent,
    "response.failed": ResponseFailedWebhookEvent,
    "response.cancelled": ResponseCancelledWebhookEvent,
    "response.incomplete": ResponseIncompleteWebhookEvent,
}


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


class Receiver:
    """A webhook endpoint on 127.0.0.1:<free port>. It answers ``statuses`` in order, then
    200; with ``hang`` it reads the request and never answers (until closed)."""

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.hang = False
        self.requests: list[Received] = []
        self.arrived = asyncio.Event()  # set at each request
        self.port = 0
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/{path:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]
        return self

    async def close(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests.append(Received(request.path, dict(request.headers), await request.read()))
        self.arrived.set()
        if self.hang:
            await self._release.wait()
        status = self.statuses.pop(0) if self.statuses else 200
        return web.Response(status=status, headers={"Location": "/elsewhere"})


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    started = await Receiver().start()
    yield started
    await started.close()


@pytest.fixture
async def make_sender() -> AsyncIterator[Callable[..., WebhookSender]]:
    """``make(secret_text=SECRET, **options)``: a sender with test-sized pauses; closed after."""
    made: list[WebhookSender] = []

    def make(secret_text: str = SECRET, **options: Any) -> WebhookSender:
        options = {"backoff_s": 0.01, "max_backoff_s": 0.05, "timeout_s": 2.0} | options
        sender = WebhookSender(decode_secret(secret_text), **options)
        made.append(sender)
        return sender

    yield make
    for sender in made:
        await sender.close()


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound (so no one else takes it), not
    listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def unwrap(request: Received, secret_text: str = SECRET, body: bytes | None = None) -> Any:
    client = openai.OpenAI(api_key="x", webhook_secret=secret_text)
    return client.webhooks.unwrap(request.body if body is None else body, request.headers)


# -- what is sent -----------------------------------------------------------------------


@pytest.mark.parametrize("secret_text", [SECRET, RAW_SECRET], ids=["whsec", "raw"])
@pytest.mark.parametrize("event_type", sorted(EVENT_CLASSES))
async def test_delivered_event_verifies_with_the_openai_sdk(
    receiver: Receiver,
    make_sender: Callable[..., WebhookSender],
    event_type: str,
    secret_text: str,
) -> None:
    event = webhook_event(event_type, "resp_abc123", 1_750_000_000)
    delivered = await make_sender(secret_text).deliver(receiver.url, event, event_id=event["id"])

    assert delivered
    [request] = receiver.requests
    parsed = unwrap(request, secret_text)
    assert isinstance(parsed, EVENT_CLASSES[event_type])
    assert parsed.type == event_type
    assert parsed.data.id == "resp_abc123"
    assert parsed.id == event["id"] == event_id_for("resp_abc123", event_type)
    assert parsed.id.startswith("evt_")
    assert parsed.object == "event"
    assert parsed.created_at == 1_750_000_000
    assert request.headers["webhook-id"] == event["id"]
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["User-Agent"].startswith("agentd/")


async def test_tampered_body_or_wrong_secret_fails_verification(
    receiver: Receiver, make_sender: Callable[..., WebhookSender]
) -> None:
    event = webhook_event("response.completed", "resp_abc123", 1_750_000_000)
    assert await make_sender().deliver(receiver.url, event, event_id=event["id"])
    [request] = receiver.requests
    assert unwrap(request).data.id == "resp_abc123"

    tampered = request.body.replace(b"resp_abc123", b"resp_evil00")
    with pytest.raises(openai.InvalidWebhookSignatureError):
        unwrap(request, body=tampered)
    with pytest.raises(openai.InvalidWebhookSignatureError):
        unwrap(request, OTHER_SECRET)


def test_signature_matches_the_standard_webhooks_reference_vector() -> None:
    # The example of the Standard Webhooks reference libraries, independent of the SDK.
    secret = decode_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    body = b'{"test": 2432232314}'
    expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == expected
    assert headers(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == {
        "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "webhook-timestamp": "1614265330",
        "webhook-signature": expected,
        "Content-Type": "application/json",
    }


def test_event_id_is_stable_per_response_and_type() -> None:
    first = webhook_event("response.completed", "resp_1", 1)
    assert webhook_event("response.completed", "resp_1", 2)["id"] == first["id"]
    assert webhook_event("response.failed", "resp_1", 1)["id"] != first["id"]
    assert webhook_event("response.completed", "resp_2", 1)["id"] != first["id"]
    assert webhook_event("response.completed", "resp_1", 1, event_id="evt_x")["id"] == "evt_x"
    with pytest.raises(ValueError, match="unknown webhook event type"):
        webhook_event("response.started", "resp_1", 1)


def test_decode_secret_reads_the_sdk_formats() -> None:
    assert decode_secret(SECRET) == bytes(range(32))
    assert decode_secret(RAW_SECRET) == RAW_SECRET.encode()


@pytest.mark.parametrize(
    "text",
    [
        "",
        "whsec_",
        "whsec_not*base64!",
        "whsec_AAAAA",  # bad padding
        "whsec_AAA-AAA_",  # URL-safe alphabet: the SDK would decode another key
        SECRET + "\n",
        " " + SECRET,
    ],
)
def test_decode_secret_rejects_malformed_text(text: str) -> None:
    with pytest.raises(ValueError, match="webhook secret") as caught:
        decode_secret(text)
    assert SECRET not in str(caught.value)


def test_sender_requires_a_secret() -> None:
    with pytest.raises(ValueError, match="secret"):
        WebhookSender(b"")


# -- retries and giving up ----------------------------------------------------------------


async def test_retries_after_500s_and_delivers_on_the_third_attempt(
    receiver: Receiver, make_sender: Callable[..., WebhookSender]
) -> None:
    receiver.statuses = [500, 500]
    event = webhook_event("response.completed", "resp_retry", 1_750_000_000)

    assert await make_sender(max_attempts=5).deliver(receiver.url, event, event_id=event["id"])

    assert len(receiver.requests) == 3
    assert {r.headers["webhook-id"] for r in receiver.requests} == {event["id"]}
    for request in receiver.requests:  # every attempt is signed afresh and verifies
        assert unwrap(request).data.id == "resp_retry"


async def test_gives_up_after_max_attempts_of_500(
    receiver: Receiver,
    make_sender: Callable[..., WebhookSender],
    caplog: pytest.LogCaptureFixture,
) -> None:
    receiver.statuses = [500] * 10
    url = receiver.url.replace("127.0.0.1", "user:hunter2@127.0.0.1") + "?token=t0k3n"
    event = webhook_event("response.failed", "resp_down", 1_750_000_000)

    with caplog.at_level(logging.DEBUG, logger="agentd.jobs.webhooks"):
        delivered = await make_sender(max_attempts=3).deliver(url, event, event_id=event["id"])

    assert delivered is False
    assert len(receiver.requests) == 3
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    message = warning.getMessage()
    assert receiver.url in message and "HTTP 500" in message and "3 attempts" in message
    logged = caplog.text
    assert "hunter2" not in logged and "t0k3n" not in logged
    assert SECRET not in logged and SECRET[6:] not in logged


async def test_unanswered_attempts_time_out_and_are_retried(
    receiver: Receiver,
    make_sender: Callable[..., WebhookSender],
    caplog: pytest.LogCaptureFixture,
) -> None:
    receiver.hang = True
    event = webhook_event("response.incomplete", "resp_slow", 1_750_000_000)
    sender = make_sender(timeout_s=0.2, max_attempts=2)

    assert await sender.deliver(receiver.url, event, event_id=event["id"]) is False
    assert len(receiver.requests) == 2
    assert "no answer within 0.2s" in caplog.text


async def test_connection_refused_returns_false(
    refused_port: int, make_sender: Callable[..., WebhookSender]
) -> None:
    event = webhook_event("response.completed", "resp_x", 1_750_000_000)
    url = f"http://127.0.0.1:{refused_port}/hooks"
    assert await make_sender(max_attempts=2).deliver(url, event, event_id=event["id"]) is False


async def test_redirects_are_not_followed(
    receiver: Receiver, make_sender: Callable[..., WebhookSender]
) -> None:
    receiver.statuses = [307, 307]
    event = webhook_event("response.completed", "resp_x", 1_750_000_000)

    sender = make_sender(max_attempts=2)
    assert await sender.deliver(receiver.url, event, event_id=event["id"]) is False
    assert [r.path for r in receiver.requests] == ["/hooks", "/hooks"]


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/hooks", "http://"])
async def test_invalid_url_gives_up_at_once(
    url: str, make_sender: Callable[..., WebhookSender]
) -> None:
    event = webhook_event("response.completed", "resp_x", 1_750_000_000)
    assert await make_sender(backoff_s=10.0).deliver(url, event, event_id=event["id"]) is False


async def test_cancellation_propagates(
    receiver: Receiver, make_sender: Callable[..., WebhookSender]
) -> None:
    receiver.hang = True
    event = webhook_event("response.completed", "resp_x", 1_750_000_000)
    task = asyncio.create_task(make_sender().deliver(receiver.url, event, event_id=event["id"]))
    await receiver.arrived.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
