"""An OpenAI-compatible stub upstream (:class:`tests.openai_stub.StubNode`) run on its
own event loop in a thread, for synchronous tests (the browser tests drive Playwright's
sync API): a real loopback port an ``agentd serve`` subprocess calls, whose ``mode`` the
test sets between steps (``stub.node.mode = Normal()``)."""

from __future__ import annotations

import asyncio
import threading

from .openai_stub import Mode, StubNode

__all__ = ("ThreadedStub",)

START_LIMIT_S = 30.0


class ThreadedStub:
    def __init__(self, mode: Mode) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

        async def start() -> StubNode:
            return await StubNode(mode).start()

        self.node = asyncio.run_coroutine_threadsafe(start(), self.loop).result(START_LIMIT_S)

    @property
    def url(self) -> str:
        return self.node.url

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.node.close(), self.loop).result(START_LIMIT_S)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(START_LIMIT_S)
        self.loop.close()
