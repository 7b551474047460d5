"""Webhooks for background responses, sent the way OpenAI sends them.

When a background response ends, its owner's endpoint receives an event such as
``{"id": "evt_…", "object": "event", "created_at": …, "type": "response.completed",
"data": {"id": "resp_…"}}``, signed per Standard Webhooks (https://www.standardwebhooks.com/):
headers ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature``
(``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``). A receiver verifies it with the
official SDKs unchanged: ``OpenAI(webhook_secret=...).webhooks.unwrap(body, headers)``.

The secret is configured as text in the SDK's format (``whsec_<base64>``, or any other
text taken as raw UTF-8 bytes); ``decode_secret`` turns it into the HMAC key.
``WebhookSender`` delivers one event with retries; what is sent, and when to redeliver
after a crash, is the job queue's business.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import random
import re
import time
from types import TracebackType
from typing import Any, Final

import aiohttp
import orjson
from yarl import URL

from agentd import __version__

__all__ = (
    "RESPONSE_EVENT_TYPES",
    "SECRET_PREFIX",
    "WebhookSender",
    "decode_secret",
    "event_id_for",
    "headers",
    "sign",
    "webhook_event",
)

log = logging.getLogger(__name__)

SECRET_PREFIX: Final = "whsec_"
# The events that end a background response (openai.types.webhooks.Response*WebhookEvent).
RESPONSE_EVENT_TYPES: Final = frozenset(
    {"response.completed", "response.failed", "response.cancelled", "response.incomplete"}
)
USER_AGENT: Final = f"agentd/{__version__} (webhooks)"
# Permanent errors: retrying the same URL cannot succeed.
_BAD_URL_ERRORS: Final = (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError)
_VISIBLE_ASCII: Final = re.compile(r"[\x21-\x7e]+")


def decode_secret(text: str) -> bytes:
    """The HMAC key for a configured secret, decoded exactly as the openai SDK does.

    ``whsec_<base64>`` (the Standard Webhooks form) → the base64-decoded bytes; any other
    text → its UTF-8 bytes. Raises ``ValueError`` (never quoting the secret) when the text
    is empty, has surrounding whitespace, or its base64 part is not strict standard base64
    with padding: the SDK's lenient decoder would silently drop such characters and derive
    a different key than the operator meant.
    """
    if not text:
        raise ValueError("webhook secret is empty")
    if text != text.strip():
        raise ValueError("webhook secret has leading or trailing whitespace")
    if not text.startswith(SECRET_PREFIX):
        try:
            return text.encode()
        except UnicodeEncodeError:
            raise ValueError("webhook secret is not valid UTF-8 text") from None
    try:
        key = base64.b64decode(text[len(SECRET_PREFIX) :], validate=True)
    except binascii.Error as exc:
        raise ValueError(
            f"webhook secret: the part after {SECRET_PREFIX!r} is not valid base64 ({exc})"
        ) from None
    if not key:
        raise ValueError(f"webhook secret: nothing after {SECRET_PREFIX!r}")
    return key


def sign(secret: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value: ``v1,<base64 HMAC-SHA256>`` of
    ``"{msg_id}.{timestamp}." + body``."""
    digest = hmac.new(secret, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(digest.digest()).decode("ascii")


def headers(secret: bytes, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The headers of one delivery attempt: the three Standard Webhooks headers and the
    content type."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
        "Content-Type": "application/json",
    }


def event_id_for(response_id: str, event_type: str) -> str:
    """The event id of ``event_type`` for ``response_id``: ``evt_`` + 32 hex digits of a
    SHA-256 over both, so the same event always gets the same id."""
    digest = hashlib.sha256(f"{event_type}\n{response_id}".encode()).hexdigest()
    return "evt_" + digest[:32]


def webhook_event(
    event_type: str, response_id: str, created_at: int, *, event_id: str | None = None
) -> dict[str, Any]:
    """The body of a ``response.*`` event in OpenAI's shape.

    The event id is the Standard Webhooks idempotency key: deliver the event with it as
    ``webhook-id`` (``WebhookSender.deliver(url, event, event_id=event["id"])``). By default
    it is derived from ``response_id`` and ``event_type`` (``event_id_for``), so a worker
    that redelivers after a crash sends the same id without storing one, and receivers
    drop the duplicate. A response ends once, so one id per (response, type) is exact.
    ``created_at`` (when the response ended, Unix seconds) must also come from the stored
    response, not the clock, for a redelivery to carry the same body.
    """
    if event_type not in RESPONSE_EVENT_TYPES:
        raise ValueError(
            f"unknown webhook event type {event_type!r}; "
            f"expected one of {sorted(RESPONSE_EVENT_TYPES)}"
        )
    if not response_id:
        raise ValueError("response_id is empty")
    return {
        "id": event_id or event_id_for(response_id, event_type),
        "object": "event",
        "created_at": created_at,
        "type": event_type,
        "data": {"id": response_id},
    }


def _redact(url: str) -> str:
    """A URL fit for logs: no credentials, query or fragment (tokens often hide there)."""
    try:
        parsed = URL(url)
        return str(parsed.with_user(None).with_query(None).with_fragment(None))
    except (ValueError, TypeError):
        return "<invalid URL>"


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds (the HTTP-date form is ignored)."""
    if value is None or not value.strip().isdigit():
        return None
    return float(value.strip())


class WebhookSender:
    """Delivers signed events over HTTP, retrying until a 2xx or ``max_attempts``.

    One per worker: it pools connections in an ``aiohttp.ClientSession`` made on first
    use; ``close()`` it at shutdown. It always signs: with no secret configured the caller
    creates no sender and sends no webhooks, since an unsigned event cannot be told from
    a forged one (and the SDKs' ``unwrap`` rejects it). Which URLs are allowed (internal
    addresses, schemes) is the caller's to check before calling ``deliver``.
    """

    def __init__(
        self,
        secret: bytes,
        *,
        timeout_s: float = 10.0,
        max_attempts: int = 5,
        backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
    ) -> None:
        if not isinstance(secret, bytes) or not secret:
            raise ValueError("WebhookSender needs a non-empty secret (see decode_secret)")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if backoff_s < 0 or max_backoff_s < 0:
            raise ValueError("backoff_s and max_backoff_s must be >= 0")
        self._secret = secret
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def __repr__(self) -> str:  # never show the secret
        return f"WebhookSender(timeout_s={self.timeout_s}, max_attempts={self.max_attempts})"

    async def deliver(self, url: str, event: dict[str, Any], *, event_id: str) -> bool:
        """POST ``event`` to ``url`` with ``event_id`` as ``webhook-id``; True on a 2xx.

        Each attempt is signed with a fresh timestamp (receivers reject old ones) and the
        same id, and has its own timeout. Network errors, timeouts and non-2xx answers
        (redirects included: they are not followed) are retried after an exponential,
        jittered backoff. Gives up with a warning and returns False; never raises for a
        delivery failure, but cancellation propagates.
        """
        if not _VISIBLE_ASCII.fullmatch(event_id):
            raise ValueError("event_id must be non-empty visible ASCII (it is a header value)")
        body = orjson.dumps(event)
        session = self._get_session()
        outcome = ""
        for attempt in range(1, self.max_attempts + 1):
            retry_after: float | None = None
            signed = headers(self._secret, event_id, int(time.time()), body)
            try:
                async with session.post(
                    url, data=body, headers=signed, allow_redirects=False, timeout=self._timeout
                ) as response:
                    if 200 <= response.status < 300:
                        log.debug("webhook %s delivered on attempt %d", event_id, attempt)
                        return True
                    outcome = f"HTTP {response.status}"
                    retry_after = _retry_after(response.headers.get("Retry-After"))
            except _BAD_URL_ERRORS:
                # The exception's text would show the URL with any credentials in it.
                log.warning("webhook %s not sent: invalid URL %s", event_id, _redact(url))
                return False
            except TimeoutError:
                outcome = f"no answer within {self.timeout_s}s"
            except (aiohttp.ClientError, OSError) as exc:
                outcome = f"{type(exc).__name__}: {exc}"
            if attempt < self.max_attempts:
                log.debug(
                    "webhook %s attempt %d to %s failed (%s); retrying",
                    event_id,
                    attempt,
                    _redact(url),
                    outcome,
                )
                await asyncio.sleep(self._backoff(attempt, retry_after))
        log.warning(
            "webhook %s to %s failed after %d attempts: %s",
            event_id,
            _redact(url),
            self.max_attempts,
            outcome,
        )
        return False

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        """The pause after failed ``attempt``: doubling up to ``max_backoff_s``, jittered so
        that the workers retrying one receiver do not hit it in step; at least the
        receiver's ``Retry-After`` (capped likewise)."""
        ceiling = min(self.max_backoff_s, self.backoff_s * 2.0 ** min(attempt - 1, 60))
        delay = ceiling * random.uniform(0.5, 1.0)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_backoff_s))
        return delay

    def _get_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("WebhookSender is closed")
        if self._session is None:
            # No cookie jar: receivers of different owners may share a host, and a cookie
            # one of them sets must not travel with another's events.
            self._session = aiohttp.ClientSession(
                headers={"User-Agent": USER_AGENT},
                cookie_jar=aiohttp.DummyCookieJar(),
                raise_for_status=False,
            )
        return self._session

    async def close(self) -> None:
        """Close the connections; the sender cannot be used afterwards."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def __aenter__(self) -> WebhookSender:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
