"""The agent loop: the model asks for tools, agentd runs them, the model goes on.

A turn of an agent with tools (:class:`~agentd.tools.ToolSet`) offers them to the model
next to the client's own function tools. When a reply asks for calls of the agent's
tools, :class:`ToolLoop` runs them concurrently, adds the calls and their results to the
conversation, and calls the model again; until a reply asks for none of them, or the
turn's step limit:

- ``max_steps`` model calls at most; the last one is made with ``tool_choice: "none"``,
  so the model has to answer in words (a model that asks for tools anyway has its calls
  dropped, and the turn ends with ``finish_reason: "length"``);
- a call that ends in an error or a timeout is a result the model reads, never a failed
  turn; the turn's deadline (``max_turn_s``) bounds every call;
- an interrupt (another turn of the session, a cancelled job) stops the loop between
  steps and inside running calls, which are cancelled on their servers.

A reply that also asks for the client's own function tools (chat completions, and the
Responses API's function tools) ends the loop: the agent's calls in it are run and stored,
and the client gets its own calls to answer, as if the agent's were never there. A call
of a tool that is neither the agent's nor the client's is an error result the model
reads.

Only the loop's first model call keeps the request's ``tool_choice``: a choice that
forces a tool would otherwise call it at every step.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..config import BUILTIN_LABEL, AgentConfig
from ..errors import param_error
from ..tools import FunctionTool, ToolResult, Tools, ToolSet, failure
from .builtins import Builtins
from .lease import Interrupt
from .types import Checkpoint, Listener, RecordedStep, Timings, ToolRun

__all__ = ("STEP_SEPARATOR", "ClientView", "Step", "ToolLoop", "merge_tools")

# Between the texts of two steps of one reply (the model said something, ran tools, and
# went on): what a streaming client sees, and what the whole reply's text holds.
STEP_SEPARATOR = "\n\n"
# Why a call the loop stopped had no result.
INTERRUPTED = "the call was cancelled: the turn was interrupted"


def _name(call: Mapping[str, Any]) -> str:
    function = call.get("function")
    return str(function.get("name")) if isinstance(function, Mapping) else ""


def merge_tools(params: Mapping[str, Any], tools: ToolSet) -> dict[str, Any]:
    """The model call's parameters with the agent's tools after the client's own; a
    client tool named like one of the agent's is refused (the model could not tell which
    one it calls)."""
    own = params.get("tools") or []
    names = {t.name for t in tools.functions}
    for i, tool in enumerate(own):
        function = tool.get("function") if isinstance(tool, Mapping) else None
        name = function.get("name") if isinstance(function, Mapping) else None
        if name in names:
            raise param_error(
                f"tools[{i}] is named {name!r}, like one of the agent's own tools: rename it",
                "tool_name_conflict",
                f"tools[{i}].function.name",
            )
    return {**params, "tools": [*own, *tools.chat()]}


class ClientView(Listener):
    """What a listener hears of a looping turn: the text of every step (steps apart by
    :data:`STEP_SEPARATOR`), the pieces of the client's own tool calls only (renumbered
    from 0, as if the agent's calls were never there), and the agent's calls as they
    start and end."""

    __slots__ = ("_index", "_inner", "_said", "_step_began", "_tools")

    def __init__(self, inner: Listener, client_tools: frozenset[str]) -> None:
        self._inner, self._tools = inner, client_tools
        self._index: dict[int, int | None] = {}  # the model's index -> the client's
        self._said = False  # some text reached the client
        self._step_began = False  # a new step began since the last text

    def next_step(self) -> None:
        self._index.clear()
        self._step_began = True

    def source(self, cache: str) -> None:
        self._inner.source(cache)

    def limits(self, headers: Mapping[str, str]) -> None:
        self._inner.limits(headers)

    async def delta(self, text: str) -> None:
        if self._step_began and self._said:
            await self._inner.delta(STEP_SEPARATOR)
        self._step_began = False
        self._said = True
        await self._inner.delta(text)

    async def tool_deltas(self, pieces: list[dict[str, Any]]) -> None:
        out = []
        for piece in pieces:
            index = piece.get("index", 0)
            if index not in self._index:
                # A call's first piece names it: only the client's tools are the client's.
                clients = sum(1 for v in self._index.values() if v is not None)
                self._index[index] = clients if _name(piece) in self._tools else None
            mine = self._index[index]
            if mine is not None:
                out.append({**piece, "index": mine})
        if out:
            await self._inner.tool_deltas(out)

    async def tool_step(self, calls: Sequence[Mapping[str, Any]]) -> None:
        await self._inner.tool_step(calls)

    async def tool_call(self, call: Mapping[str, Any], server: str) -> None:
        await self._inner.tool_call(call, server)

    async def tool_result(self, call: Mapping[str, Any], result: ToolResult) -> None:
        await self._inner.tool_result(call, result)


@dataclass
class Step:
    """A model reply that asked for tools, and the messages it adds to the
    conversation: the assistant's message with its calls, and a result per call the
    agent ran."""

    said: dict[str, Any]
    results: list[dict[str, Any]] = field(default_factory=list)

    def messages(self) -> list[dict[str, Any]]:
        return [self.said, *self.results]


class ToolLoop:
    """Runs the agent's tool calls of one turn (see the module's docstring)."""

    def __init__(
        self,
        tools: Tools,
        agent: AgentConfig,
        toolset: ToolSet,
        client_tools: frozenset[str],
        interrupt: Interrupt,
        listener: Listener | None,
        builtins: Builtins | None = None,
    ) -> None:
        self.tools, self.agent, self.toolset = tools, agent, toolset
        # agentd's own tools (label "agentd") as this turn calls them.
        self.builtins = builtins
        # The client's own function tools, whose calls go back to it (chat completions).
        self.client_tools = client_tools
        self.interrupt = interrupt
        self.listener = ClientView(listener, client_tools) if listener is not None else None
        self.max_steps = tools.limits(agent).max_steps
        self.steps: list[Step] = []
        self.runs: list[ToolRun] = []

    def ours(self, calls: Sequence[Mapping[str, Any]] | None) -> bool:
        """Whether some of a reply's calls are the loop's to run (not the client's)."""
        return bool(calls) and any(_name(c) not in self.client_tools for c in calls)  # type: ignore[union-attr]

    def client_calls(self, calls: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """The calls of a reply that are the client's to answer."""
        return [dict(c) for c in calls if _name(c) in self.client_tools]

    async def run_step(
        self,
        text: str,
        calls: Sequence[Mapping[str, Any]],
        deadline: float,
        timings: Timings,
    ) -> Step:
        """Run a reply's calls of the agent's tools at once (the client's are left for
        the client); the step, with a result for every call run."""
        mine = [c for c in calls if _name(c) not in self.client_tools]
        step = Step({"role": "assistant", "content": text or None, "tool_calls": list(calls)})
        loop = asyncio.get_running_loop()
        started = loop.time()
        if mine and self.listener is not None:
            await self.listener.tool_step(mine)
        tasks = [asyncio.ensure_future(self._run_one(c, deadline)) for c in mine]
        try:
            waiter = self.interrupt.waiter()
            pending = set(tasks)
            while pending and not waiter.done():
                _, pending = await asyncio.wait(
                    {*pending, waiter}, return_when=asyncio.FIRST_COMPLETED
                )
                pending.discard(waiter)  # type: ignore[arg-type]
        finally:
            for task in tasks:
                task.cancel()
            # Cancelled calls end (their servers told) before the turn goes on.
            await asyncio.gather(*tasks, return_exceptions=True)
        timings.tools += loop.time() - started
        for call, task in zip(mine, tasks, strict=True):
            run = task.result() if not task.cancelled() else None
            if run is None:
                target = self.toolset.find(_name(call))
                result = failure(INTERRUPTED, "cancelled")
                run = ToolRun(call, target.label if target else "", _name(call), result, 0.0)
            self.runs.append(run)
            message = {"role": "tool", "tool_call_id": call.get("id"), "content": run.result.text}
            if run.result.is_error:
                message["status"] = run.result.outcome
            step.results.append(message)
            if task.cancelled() and self.listener is not None:
                await self.listener.tool_result(call, run.result)
        self.steps.append(step)
        return step

    # -- durable loops: a checkpoint records each step; a later run goes on after them --

    async def record(self, checkpoint: Checkpoint, usage: dict[str, Any]) -> None:
        """Record the step just run (every call of it ended), with the usage of the model
        call that asked for it."""
        step = self.steps[-1]
        await checkpoint.step(RecordedStep(step.said, step.results, usage))

    async def resume(self, checkpoint: Checkpoint) -> list[RecordedStep]:
        """Take the steps an earlier run of the turn recorded as made, up to the last
        step that may ask for tools: their calls are not run again, their text and
        their calls with the recorded results are told to the listener again (a caller
        that streamed them before skips what it streamed)."""
        recorded = list(checkpoint.recorded()[: self.max_steps - 1])
        for i, step in enumerate(recorded):
            if self.listener is not None:
                if i:
                    self.listener.next_step()
                if text := step.said.get("content"):
                    await self.listener.delta(text)
                await self._retell(self.listener, step)
            self.steps.append(Step(step.said, step.results))
        if recorded and self.listener is not None:
            self.listener.next_step()
        return recorded

    async def _retell(self, listener: Listener, step: RecordedStep) -> None:
        """Tell ``listener`` a recorded step's calls, then their recorded results."""
        calls = {c.get("id"): c for c in step.said.get("tool_calls") or ()}
        ran = [(calls[m.get("tool_call_id")], m) for m in step.results
               if m.get("tool_call_id") in calls]  # fmt: skip
        for call, _ in ran:
            target = self.toolset.find(_name(call))
            await listener.tool_call(call, target.label if target is not None else "")
        for call, message in ran:
            outcome = message.get("status")  # only on an error's result
            result = ToolResult(str(message.get("content") or ""), is_error=outcome is not None,
                                outcome=outcome or "ok")  # fmt: skip
            await listener.tool_result(call, result)

    async def _run_one(self, call: Mapping[str, Any], deadline: float) -> ToolRun:
        name = _name(call)
        target: FunctionTool | None = self.toolset.find(name)
        server = target.label if target is not None else ""
        if self.listener is not None:
            await self.listener.tool_call(call, server)
        loop = asyncio.get_running_loop()
        started = loop.time()
        function = call.get("function")
        arguments = function.get("arguments") if isinstance(function, Mapping) else None
        result = await self._call(target, name, arguments, deadline)
        run = ToolRun(call, server, target.tool if target else name, result,
                      loop.time() - started)  # fmt: skip
        if self.listener is not None:
            await self.listener.tool_result(call, result)
        return run

    async def _call(
        self, target: FunctionTool | None, name: str, arguments: Any, deadline: float
    ) -> ToolResult:
        """A call of the agent's tool ``name``: agentd's own by their label, the rest
        through its tool servers."""
        if target is not None and target.label == BUILTIN_LABEL and self.builtins is not None:
            return await self.builtins.call(target.tool, name, arguments, deadline)
        return await self.tools.call(self.agent, self.toolset, name, arguments, deadline)
