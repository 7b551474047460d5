"""What the WebSocket server says about a turn it runs (docs/protocol.md): the id a
message or cancel frame names it by, its delta and tool frames as the turn streams, and
its done frame."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import orjson

from ..agent import Listener, TurnResult
from ..errors import BadRequest
from ..tools import ToolResult
from ..wire.tool_progress import call_ended, call_started

__all__ = ("DeltaFrames", "Sender", "done_frame", "turn_id")


class Sender(Protocol):
    """A connection that sends frames (``ws._Connection``)."""

    def send(self, frame: dict[str, Any]) -> None: ...

    def send_json(self, doc: bytes) -> None: ...


def done_frame(frame_id: Any, done: TurnResult) -> dict[str, Any]:
    return {
        "type": "done",
        "id": frame_id,
        "seq": done.seq,
        "message": done.stored[-1] if done.stored else None,
        "usage": done.usage,
        "finish_reason": done.finish_reason,
    }


def turn_id(frame: dict[str, Any]) -> str | int:
    """The ``id`` a message or cancel frame names its turn by: a string or an integer."""
    frame_id = frame.get("id")
    if not isinstance(frame_id, (str, int)) or isinstance(frame_id, bool):
        raise BadRequest(
            f"a {frame.get('type')} frame needs an id (string or integer)", code="invalid_frame"
        )
    return frame_id


class DeltaFrames(Listener):
    """A turn's deltas, as frames to the connection that asked for it."""

    __slots__ = ("conn", "frame_id", "head")

    def __init__(self, conn: Sender, frame_id: Any) -> None:
        self.conn, self.frame_id = conn, frame_id
        # The JSON of {"type": "delta", "id": frame_id, "content": ...} up to the content,
        # made once per turn rather than a dict per delta.
        self.head = b'{"type":"delta","id":%b,"content":' % orjson.dumps(frame_id)

    async def delta(self, text: str) -> None:
        self.conn.send_json(self.head + orjson.dumps(text) + b"}")

    async def tool_call(self, call: Mapping[str, Any], server: str) -> None:
        self.conn.send({**call_started(call, server), "id": self.frame_id})

    async def tool_result(self, call: Mapping[str, Any], result: ToolResult) -> None:
        doc = call_ended(call, result.outcome, result.is_error, result.text)
        self.conn.send({**doc, "id": self.frame_id})
