"""Request classes and a node's room for them: how many background calls a node may
hold, and the line of calls waiting for a node with room (interactive calls first).
The pool (:mod:`.pool`) decides which node has room; the line keeps the order."""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable

from .balance import Policy
from .nodes import Node

__all__ = ("BACKGROUND", "INTERACTIVE", "WaitLine", "Waiter", "background_limit")

# Request classes: interactive calls (chat, WebSocket, foreground responses) and the
# default class of background jobs. Every class but INTERACTIVE is background work.
INTERACTIVE = "interactive"
BACKGROUND = "background"


def background_limit(max_inflight: int, share: float) -> int:
    """Calls of background classes one node may hold: ``floor(max_inflight x share)``,
    at least 1 when the share is above 0 (a small node still serves jobs)."""
    # The epsilon keeps products such as 100 x 0.29 = 28.999... from losing a slot.
    limit = math.floor(max_inflight * share + 1e-9)
    return max(limit, 1) if share > 0 else 0


class Waiter:
    """A call waiting for room; ``future`` gets ``(node, probe)`` with the node already
    taken for it, or ``None`` when no healthy node is left (it then decides again)."""

    __slots__ = ("background", "future", "policy", "session_id", "tried")

    def __init__(
        self,
        future: asyncio.Future[tuple[Node, bool] | None],
        session_id: str | None,
        tried: list[Node],
        background: bool,
        policy: Policy,
    ) -> None:
        self.future = future
        self.session_id = session_id
        self.tried = tried
        self.background = background
        self.policy = policy


class WaitLine:
    """Calls waiting for a node with room, one line per kind: interactive calls are
    served first, each line in order."""

    __slots__ = ("background", "interactive")

    def __init__(self) -> None:
        self.interactive: deque[Waiter] = deque()
        self.background: deque[Waiter] = deque()

    def __bool__(self) -> bool:
        return bool(self.interactive or self.background)

    def counts(self) -> dict[str, int]:
        return {INTERACTIVE: len(self.interactive), BACKGROUND: len(self.background)}

    def join(self, waiter: Waiter) -> None:
        (self.background if waiter.background else self.interactive).append(waiter)

    def leave(self, waiter: Waiter) -> None:
        (self.background if waiter.background else self.interactive).remove(waiter)

    def serve(
        self,
        pick: Callable[[Waiter], tuple[Node | None, bool]],
        take: Callable[[Node, bool], bool],
    ) -> None:
        """Hand nodes to waiting calls in order: ``pick(waiter)`` is the pool's choice
        for it (``(None, True)``: nodes exist but all are full), ``take(node,
        background)`` counts the call on the node and says if it is the breaker's probe.
        A waiter may skip ahead only of one that already tried the free node."""
        for queue in (self.interactive, self.background):
            i = 0
            while i < len(queue):
                waiter = queue[i]
                node, full = pick(waiter)
                if node is None and full:
                    if not waiter.tried:
                        # No node has room for this line: none for those behind either,
                        # and if no interactive call fits, no background call does.
                        if queue is self.interactive:
                            return
                        break
                    i += 1
                    continue
                del queue[i]
                taken = None if node is None else (node, take(node, waiter.background))
                waiter.future.set_result(taken)
