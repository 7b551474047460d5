"""The built-in ``echo`` model: replies with the last user message, word by word.

It is the out-of-the-box default and the model of load tests, so its path is cheap: one
regex split in C, no sleeping and no await at all when ``latency_ms`` and
``tokens_per_s`` are 0.

Usage accounting: ``prompt_tokens`` is the characters of all messages' text / 4
(rounded up), ``completion_tokens`` the number of chunks streamed (about one per word).

A token of the echo is one of those chunks (a word with the whitespace around it): with
``max_tokens`` or ``max_completion_tokens`` (the Responses API's ``max_output_tokens``
arrives as ``max_tokens``) it stops after that many, with ``finish_reason`` ``length``,
so limits can be tested with no model.

Tool calls, scripted (so tool round trips and loops can be tested and load-tested with
no model; docs/protocol.md, "The echo backend's tool calls"):

- When the request has ``tools`` (and ``tool_choice`` is not ``"none"``) and its last
  message is a user message whose every non-blank line reads ``call NAME ARGUMENTS``,
  the reply is those calls, in order (several lines: parallel calls), with
  ``finish_reason: "tool_calls"``. ``ARGUMENTS`` is sent verbatim (``{}`` when absent),
  even when it is not JSON, as a model may. Each call's id is ``call_`` and 24 hex
  digits of SHA-256 over the messages and its place: the same request gets the same
  ids, different conversations different ones. Streamed like a real provider's: a first
  piece with the id, type and name, then the arguments in pieces of at most
  :data:`ARGUMENT_PIECE` characters, one call after the other.
- When the conversation ends with tool results whose every non-blank line reads
  ``call NAME ARGUMENTS``, the reply is those calls: a tool can script the next step of
  an agent's loop.
- Otherwise, when the last message is a ``tool`` message, the reply is text built from
  the tool results that end the conversation: one line ``NAME: CONTENT`` per result,
  NAME being the name of the call it answers.
- Otherwise the echo is as above.

System and developer messages that end the conversation are skipped when looking at its
end. A scripted call counts its pieces as completion tokens and is never cut by the
token limits.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import orjson

from ..config import BackendConfig
from ..errors import UpstreamTimeout
from .types import (
    ChatRequest,
    Chunk,
    Message,
    ToolCall,
    estimate_tokens,
    last_user_text,
    message_chars,
    usage_dict,
)

__all__ = (
    "ARGUMENT_PIECE",
    "ECHO_NODE",
    "EchoNode",
    "output_limit",
    "scripted_calls",
    "split_words",
    "tool_results_text",
)

ECHO_NODE = "echo"

# A word with the whitespace around it: the pieces concatenate back to the input
# exactly (leading whitespace rides on the first word).
_WORD = re.compile(r"\s*\S+\s*")


def split_words(text: str) -> list[str]:
    """``text`` in pieces of about one word whose concatenation is exactly ``text``."""
    words = text.split()
    if words and " ".join(words) == text:
        # Words between single spaces (most text): the regex's pieces at half its cost
        # (str.split's whitespace is the regex's \s).
        parts = [word + " " for word in words]
        parts[-1] = words[-1]
        return parts
    parts = _WORD.findall(text)
    if not parts and text:
        return [text]  # only whitespace
    return parts


# The most characters of a call's arguments one streamed piece carries.
ARGUMENT_PIECE = 8
# One scripted call: "call", its name, then (optionally) its arguments.
_CALL = re.compile(r"\s*call\s+([A-Za-z0-9_-]{1,64})(?:\s+(.*?))?\s*")


def _text_of(message: Mapping[str, Any]) -> str:
    return last_user_text([{"role": "user", "content": message.get("content")}])


def scripted_calls(messages: Sequence[Message], params: Mapping[str, Any]) -> list[ToolCall]:
    """The tool calls a request scripts (see the module's docstring); [] when none."""
    if not messages or not params.get("tools") or params.get("tool_choice") == "none":
        return []
    last = messages[-1]
    if last.get("role") == "user":
        text = _text_of(last)
    elif last.get("role") == "tool":  # results that read as calls script the next step
        results = []
        for message in reversed(messages):
            if message.get("role") != "tool":
                break
            results.append(_text_of(message))
        text = "\n".join(reversed(results))
    else:
        return []
    lines = [line for line in text.splitlines() if line.strip()]
    matches = [_CALL.fullmatch(line) for line in lines]
    if not matches or not all(matches):
        return []
    seed = hashlib.sha256(orjson.dumps(messages, option=orjson.OPT_SORT_KEYS)).digest()
    calls = []
    for i, match in enumerate(matches):
        assert match is not None
        call_id = "call_" + hashlib.sha256(seed + i.to_bytes(4, "little")).hexdigest()[:24]
        arguments = match.group(2) or "{}"
        calls.append(
            {"id": call_id, "type": "function",
             "function": {"name": match.group(1), "arguments": arguments}}
        )  # fmt: skip
    return calls


def tool_results_text(messages: Sequence[Message]) -> str:
    """The reply to a conversation that ends with tool results: ``NAME: CONTENT`` per
    result, NAME the name of the call it answers (its id when no call has it)."""
    results: list[Message] = []
    names: dict[str, str] = {}
    for message in reversed(messages):
        if message.get("role") == "tool":
            results.append(message)
            continue
        calls = message.get("tool_calls")
        for call in calls if isinstance(calls, list) else ():
            if isinstance(call, dict) and isinstance(call.get("function"), dict):
                names[str(call.get("id"))] = str(call["function"].get("name"))
        break
    lines = []
    for message in reversed(results):
        call_id = str(message.get("tool_call_id"))
        lines.append(f"{names.get(call_id, call_id)}: {_text_of(message)}")
    return "\n".join(lines)


def _call_pieces(calls: list[ToolCall]) -> list[ToolCall]:
    """The calls as a provider streams them: the head of each, then its arguments."""
    pieces: list[ToolCall] = []
    for i, call in enumerate(calls):
        function = call["function"]
        pieces.append({"index": i, "id": call["id"], "type": "function",
                       "function": {"name": function["name"], "arguments": ""}})  # fmt: skip
        arguments = function["arguments"]
        for at in range(0, len(arguments), ARGUMENT_PIECE):
            piece = arguments[at : at + ARGUMENT_PIECE]
            pieces.append({"index": i, "function": {"arguments": piece}})
    return pieces


def output_limit(params: Mapping[str, Any]) -> int | None:
    """The most tokens the reply may have: the smaller of ``max_tokens`` and
    ``max_completion_tokens`` when either is set (never below 0), else None."""
    limits = [
        value
        for value in (params.get("max_tokens"), params.get("max_completion_tokens"))
        if isinstance(value, int) and not isinstance(value, bool)
    ]
    return max(min(limits), 0) if limits else None


class EchoNode:
    """The single virtual node of an ``echo`` backend."""

    name = ECHO_NODE

    def __init__(self, config: BackendConfig) -> None:
        self.latency = config.latency_ms / 1000.0
        self.interval = 1.0 / config.tokens_per_s if config.tokens_per_s > 0 else 0.0

    async def stream(self, request: ChatRequest, deadline: float) -> AsyncIterator[Chunk]:
        """Stream the echo; paced by absolute times, so slow consumers do not slow it down
        further, and sleeping past ``deadline`` raises :class:`UpstreamTimeout` instead."""
        messages = request.messages
        # Instructions after the conversation (a Responses turn that answers tool calls
        # with its instructions) are not what it ends with.
        end = len(messages)  # the window is not copied: sessions send theirs each turn
        while end and messages[end - 1].get("role") in ("system", "developer"):
            end -= 1
        if request.params and (calls := scripted_calls(messages[:end], request.params)):
            async for chunk in self._calls(request, calls, deadline):
                yield chunk
            return
        if end and messages[end - 1].get("role") == "tool":
            parts = split_words(tool_results_text(messages[:end]))
        else:
            parts = split_words(last_user_text(messages))
        finish = "stop"
        limit = output_limit(request.params) if request.params else None
        if limit is not None and len(parts) > limit:
            parts, finish = parts[:limit], "length"
        prompt = estimate_tokens(message_chars(messages))
        usage = usage_dict(prompt, len(parts))
        name = ECHO_NODE
        if not self.latency and not self.interval:
            # The hot path: everything at once, never suspending.
            last = len(parts) - 1
            for i in range(last):
                yield Chunk(parts[i], None, None, name)
            yield Chunk(parts[last] if parts else "", finish, usage, name)
            return
        loop = asyncio.get_running_loop()
        due = loop.time() + self.latency
        last = len(parts) - 1
        for i in range(max(last, 0) + 1):
            now = loop.time()
            if due > now:
                if due > deadline:
                    await asyncio.sleep(max(deadline - now, 0.0))
                    raise UpstreamTimeout("echo: the deadline passed before the reply ended")
                await asyncio.sleep(due - now)
            due += self.interval
            if i < last:
                yield Chunk(parts[i], None, None, name)
            else:
                yield Chunk(parts[last] if parts else "", finish, usage, name)

    async def _calls(
        self, request: ChatRequest, calls: list[ToolCall], deadline: float
    ) -> AsyncIterator[Chunk]:
        """A scripted reply of tool calls, piece by piece, paced like the echo."""
        pieces = _call_pieces(calls)
        usage = usage_dict(estimate_tokens(message_chars(request.messages)), len(pieces))
        loop = asyncio.get_running_loop()
        due = loop.time() + self.latency
        for piece in pieces:
            if self.latency or self.interval:
                now = loop.time()
                if due > now:
                    if due > deadline:
                        await asyncio.sleep(max(deadline - now, 0.0))
                        raise UpstreamTimeout("echo: the deadline passed before the reply ended")
                    await asyncio.sleep(due - now)
                due += self.interval
            yield Chunk("", None, None, ECHO_NODE, [piece])
        yield Chunk("", "tool_calls", usage, ECHO_NODE, None, calls)
