"""asyncio helpers every layer may use."""

from __future__ import annotations

import asyncio

__all__ = ("end_if_cancelled",)


def end_if_cancelled() -> None:
    """Raise CancelledError if the running task is being cancelled.

    Python 3.11's ``asyncio.wait_for`` (inside redis-py's reads) can drop a cancellation
    that lands as the awaited call returns; the task still counts the request. A loop
    that must end when cancelled calls this before each wait, so a dropped cancellation
    ends it at its next turn instead of never."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
