"""asyncio helpers every layer may use."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator
from typing import Any, TypeVar

__all__ = ("end_if_cancelled", "in_task", "start")

T = TypeVar("T")


def end_if_cancelled() -> None:
    """Raise CancelledError if the running task is being cancelled.

    Python 3.11's ``asyncio.wait_for`` (inside redis-py's reads) can drop a cancellation
    that lands as the awaited call returns; the task still counts the request. A loop
    that must end when cancelled calls this before each wait, so a dropped cancellation
    ends it at its next turn instead of never."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def in_task() -> None:
    """Suspend once when running outside any task, so that what follows runs in a task.

    The HTTP front runs a request's first step in its own call, with no task (an L1 hit
    then costs none: server/front_chat.py ``start``); the first suspension moves the rest
    into a task it makes. Code about to call the store goes there first: the store's
    timeouts (``asyncio.timeout``) need a task."""
    if asyncio.current_task() is None:
        await asyncio.sleep(0)


def start(coro: Coroutine[Any, Any, T]) -> T | asyncio.Task[T]:
    """Run ``coro`` in the caller's call until it first waits: its result if it never
    does (no task, no scheduling), else a task that goes on from where it waits."""
    try:
        waiting = coro.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    return asyncio.get_running_loop().create_task(_Started(coro, waiting))


_NOTHING: Any = object()


class _Started(Coroutine[Any, Any, T]):
    """A coroutine already run to its first wait, as a task's coroutine: the task's first
    step waits for what it waits for; every later step goes to it, a cancel that lands
    before that first step included (the coroutine hears it, and answers it its way)."""

    __slots__ = ("_coro", "_waiting")

    def __init__(self, coro: Coroutine[Any, Any, T], waiting: Any) -> None:
        self._coro, self._waiting = coro, waiting

    def send(self, value: Any) -> Any:
        waiting = self._waiting
        if waiting is not _NOTHING:
            self._waiting = _NOTHING
            return waiting
        return self._coro.send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        self._waiting = _NOTHING
        if val is None and tb is None:
            return self._coro.throw(typ)
        return self._coro.throw(typ, val, tb)

    def close(self) -> None:
        self._coro.close()

    def __await__(self) -> Generator[Any, None, T]:
        return self  # type: ignore[return-value]

    def __next__(self) -> Any:
        return self.send(None)
