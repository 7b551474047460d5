"""A turn's reply: as it arrives (from the model, the cache, or an earlier run's
recorded step), what the turn stores of it, and a reply an earlier attempt of the same
turn already stored, told again."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..backends import whole_deltas
from ..config import AgentConfig
from ..errors import BadRequest
from .loop import ToolLoop
from .types import Listener, Timings, TurnRequest, TurnResult

__all__ = (
    "Reply", "messages_to_store", "replay_calls", "stored_reply", "summed_usage", "text_chars",
    "told_again", "unrelayed",
)  # fmt: skip


class Reply:
    """A reply as it arrives, from the model or replayed from the cache."""

    __slots__ = (
        "calls", "cancelled", "finish", "level", "node", "parts", "prompt_chars", "relayed",
        "told", "usage",
    )  # fmt: skip

    def __init__(self, level: str) -> None:
        self.parts: list[str] = []
        self.finish, self.usage, self.node = "stop", {}, ""
        self.cancelled = False
        self.calls: list[dict[str, Any]] | None = None
        self.relayed = False  # tool call pieces reached the listener as they came
        self.level = level  # where it came from: a cache level, miss or bypass
        self.prompt_chars = 0  # the prompt's length, for a token estimate (with limits)
        self.told = False  # the listener heard the reply ended (Listener.ended)

    def end(self, finish: str | None, usage: dict[str, Any] | None, node: str | None) -> None:
        self.finish = finish or self.finish
        self.usage = usage or self.usage
        self.node = node or self.node

    def cancel(self) -> None:
        self.cancelled, self.finish = True, "cancelled"

    @classmethod
    def made(cls, said: Mapping[str, Any], usage: dict[str, Any]) -> Reply:
        """A reply an earlier run of the turn got (a recorded step of its loop)."""
        reply = cls("bypass")
        text = said.get("content") or ""
        if text:
            reply.parts.append(text)
        reply.calls, reply.usage, reply.finish = said.get("tool_calls"), usage, "tool_calls"
        return reply


def messages_to_store(
    reply: Reply,
    calls: list[dict[str, Any]] | None,
    cancelled: bool,
    in_step: bool,
    tool_loop: ToolLoop | None,
) -> list[dict[str, Any]]:
    """What a turn stores after the request's messages: the loop's steps, then the final
    reply (none when the turn ended with a step's calls for the client; an empty one,
    cancelled, when it was interrupted among them, so the turn still ends in a reply)."""
    said = [m for step in tool_loop.steps for m in step.messages()] if tool_loop else []
    if not in_step:
        final: dict[str, Any] = {"role": "assistant", "content": "".join(reply.parts)}
        if calls:
            # OpenAI's shape: content null when the reply is only calls.
            final["content"] = final["content"] or None
            final["tool_calls"] = calls
        said.append(final)
    elif cancelled:
        said.append({"role": "assistant", "content": ""})
    if cancelled:
        said[-1]["status"] = "cancelled"
    return said


async def replay_calls(
    reply: Reply, calls: list[dict[str, Any]], listener: Listener | None
) -> None:
    """A cached or shared reply's tool calls: whole, one piece each to the listener."""
    reply.calls = calls
    if listener is not None:
        await listener.tool_deltas(whole_deltas(calls))


def unrelayed(calls: Sequence[Mapping[str, Any]]) -> BadRequest:
    """A reply of tool calls to a caller that cannot relay them (the WebSocket; a
    Responses turn without function tools)."""
    names = ", ".join(sorted({str(c.get("function", {}).get("name")) for c in calls}))
    return BadRequest(
        f"the model asked for tool calls ({names}) of tools the request did not give: "
        "nothing of this turn was stored",
        code="tool_calls_unsupported",
    )


def stored_reply(turn_id: str, history: Sequence[Mapping[str, Any]]) -> Any:
    """The reply a turn with this id already stored, if the history read under the lease
    holds it: a retried job's attempt overtaken by an earlier one that finished."""
    for message in reversed(history):
        if message.get("turn") == turn_id and message.get("role") == "assistant":
            return message
    return None


async def told_again(
    said: Mapping[str, Any],
    agent: AgentConfig,
    req: TurnRequest,
    timings: Timings,
    listener: Listener | None,
) -> TurnResult:
    """The result of a turn stored before: its reply, told again, and nothing stored."""
    text = said.get("content") or ""
    calls = said.get("tool_calls")
    if calls and not req.tool_calls:
        raise unrelayed(calls)
    if listener is not None:
        listener.source("bypass")
        if text:
            await listener.delta(text)
        if calls:
            await listener.tool_deltas(whole_deltas(calls))
    cancelled = said.get("status") == "cancelled"
    return TurnResult(text, "tool_calls" if calls else "stop", {}, "", agent.upstream_model,
                      [dict(said)], timings, "bypass", req.turn_id or "", cancelled,
                      tool_calls=calls)  # fmt: skip


def text_chars(message: Mapping[str, Any]) -> int:
    """A message's length in characters, for a token estimate when usage is missing."""
    content = message.get("content")
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        return sum(len(p.get("text") or "") for p in content if isinstance(p, dict))
    return 0


def summed_usage(usages: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The usage of a turn's model calls together: their counts added up."""
    total: dict[str, Any] = {}
    for usage in usages:
        for name, count in usage.items():
            if isinstance(count, int) and not isinstance(count, bool):
                total[name] = total.get(name, 0) + count
    return total
