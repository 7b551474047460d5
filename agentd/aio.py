"""asyncio helpers every layer may use."""

from __future__ import annotations

import asyncio

__all__ = ("end_if_cancelled", "in_task")


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
