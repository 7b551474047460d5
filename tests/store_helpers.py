"""What the store's tests share: message and assertion helpers, a store with other
settings, and ways to read a watch with a limit (a bug fails a test instead of hanging it)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import pytest

from agentd.config import Config, from_dict
from agentd.errors import AgentdError
from agentd.store import Event, Store, open_store

E = TypeVar("E", bound=AgentdError)

# Seconds to wait for one event: a bug fails the test instead of hanging it.
TIMEOUT = 10.0
# Seconds to wait for a condition that takes time (an expiry, a lease running out): far
# more than it needs, so a slow machine only makes the test slower.
LONG = 60.0
# The shared-state namespace the tests write to.
NS = "team-1"


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def seqs(messages: list[dict[str, Any]] | tuple[dict[str, Any], ...]) -> list[int]:
    return [m["seq"] for m in messages]


def typed(value: Any) -> Any:
    """``value`` with every scalar tagged by its type, so 1, 1.0 and True compare unequal."""
    if isinstance(value, dict):
        return {k: typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [typed(v) for v in value]
    return (type(value).__name__, value)


async def fails(awaitable: Awaitable[Any], kind: type[E], code: str) -> E:
    """Await ``awaitable``, which must raise exactly ``kind`` with ``code``."""
    with pytest.raises(kind) as info:
        await awaitable
    assert type(info.value) is kind, info.value
    assert info.value.code == code, info.value
    return info.value


async def new_session(store: Store, *messages: str) -> str:
    """A fresh session holding a user message per text."""
    sid = (await store.create_session()).id
    if messages:
        await store.append(sid, [user(t) for t in messages])
    return sid


@contextlib.asynccontextmanager
async def store_with(config: Config, **sections: dict[str, Any]) -> AsyncIterator[Store]:
    """A started store on the same backend as ``config``, with other settings."""
    raw: dict[str, Any] = dict(sections)
    if config.redis.urls:
        raw["redis"] = {"urls": list(config.redis.urls), "cluster": config.redis.cluster}
    instance = open_store(from_dict(raw))
    await instance.start()
    try:
        yield instance
    finally:
        await instance.close()


async def next_event(gen: AsyncIterator[Event]) -> Event:
    return await asyncio.wait_for(anext(gen), TIMEOUT)


async def collect_messages(
    gen: AsyncIterator[Event], sid: str, until_seq: int
) -> list[dict[str, Any]]:
    """Every message of ``messages`` events, until one with ``until_seq`` arrived."""
    got: list[dict[str, Any]] = []
    while not got or got[-1]["seq"] < until_seq:
        event = await next_event(gen)
        assert event.kind == "messages", event
        assert event.session_id == sid
        assert event.messages, event
        got.extend(event.messages)
    return got


async def assert_nothing_pending(store: Store, sid: str, gen: AsyncIterator[Event]) -> None:
    """No further event is queued for the watcher: a marker published now comes next."""
    await store.publish(sid, "marker", {"n": 1})
    assert await next_event(gen) == Event(sid, "marker", data={"n": 1})
