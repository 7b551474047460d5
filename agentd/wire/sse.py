"""Server-sent event framing: every event stream agentd writes (chat chunks, session
events, Responses events) is framed here."""

from __future__ import annotations

__all__ = ("comment", "frame")


def frame(data: bytes, event: str | None = None, event_id: int | None = None) -> bytes:
    """One event: ``id:`` (when given), ``event:`` (when given), then ``data:`` and the
    blank line that ends it. ``data`` is one line (compact JSON, or ``[DONE]``)."""
    if event is None and event_id is None:  # chat chunks: the most frequent frame
        return b"data: " + data + b"\n\n"
    head = b"" if event_id is None else b"id: %d\n" % event_id
    if event is not None:
        head += b"event: " + event.encode() + b"\n"
    return head + b"data: " + data + b"\n\n"


def comment(text: bytes) -> bytes:
    """A comment line, which clients ignore: a heartbeat, or a note at a stream's start."""
    return b": " + text + b"\n\n"
