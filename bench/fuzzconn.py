"""Hostile input at the connection level, from a ``Random``: raw HTTP bytes an HTTP
parser must refuse or accept in an odd shape, and WebSocket connections with frames of
every type (hello, message, cancel, ping, unknown, and frames that are no frames).

The values inside come from :mod:`bench.fuzzgen`, like the HTTP requests'.
"""

from __future__ import annotations

import json
import random
from typing import Any

from .fuzzgen import AGENT, Context, RawInput, WsInput, hostile_body, mutate, to_json

__all__ = ("FRAME_KINDS", "RAW_CASES", "raw_input", "ws_input")


# -- raw HTTP -----------------------------------------------------------------------------


def _request(method: str, path: str, headers: list[str], body: bytes = b"") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n" + "".join(h + "\r\n" for h in headers)
    return head.encode("latin-1", "replace") + b"\r\n" + body


RAW_CASES = (
    "bad request line", "huge url", "raw bytes in path", "bad header", "huge header",
    "many headers", "truncated body", "body longer than length", "bad chunked",
    "chunked and length", "pipelined", "ws bad upgrade", "expect",
)  # fmt: skip
BAD_REQUEST_LINES = (
    b"GARBAGE\r\n\r\n", b"GET\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n", b"GET / HTTP/1.1 x\r\n\r\n",
    b"\r\n\r\n\r\n", b"G\x00T / HTTP/1.1\r\n\r\n", b"GET /v1/info HTTP/1.1\n\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
)  # fmt: skip
BAD_HEADERS = (
    "NoColon", "X: a\x00b", " folded: x", "X-Session-Id: \xff", "Content-Length: -1",
    "Content-Length: 1, 2", "Transfer-Encoding: gzip", "Host: a\r\nHost: b",
)  # fmt: skip
BAD_CHUNKS = (
    b"zz\r\n{}\r\n0\r\n\r\n", b"5\r\n{}\r\n", b"-1\r\n\r\n", b"ffffffffffffffff\r\n{}\r\n0\r\n\r\n",
)  # fmt: skip
JSON_TYPE = "Content-Type: application/json"
CLOSE = "Connection: close"


def _raw_bytes(rnd: random.Random, case: str, sid: str) -> tuple[bytes, bool]:
    """The bytes of one raw case, and whether to half-close after them (the server
    would otherwise wait for the rest)."""
    chat = json.dumps(
        {"model": AGENT, "messages": [{"role": "user", "content": "hi"}], "session_id": sid}
    ).encode()
    length = f"Content-Length: {len(chat)}"
    post = "/v1/chat/completions"
    if case == "bad request line":
        return rnd.choice(BAD_REQUEST_LINES), False
    if case == "huge url":
        return _request("GET", "/v1/" + "a" * rnd.choice((9000, 70_000)), [CLOSE]), False
    if case == "raw bytes in path":
        path = b"/v1/sessions/\xff\xfe%zz%/messages?after=%ff&limit=\xc3"
        return b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", False
    if case == "bad header":
        return _request("GET", "/v1/info", [rnd.choice(BAD_HEADERS), CLOSE]), False
    if case == "huge header":
        return _request("GET", "/v1/info", ["X-Big: " + "b" * 70_000, CLOSE]), False
    if case == "many headers":
        return _request("GET", "/v1/info", [f"X-{i}: {i}" for i in range(500)] + [CLOSE]), False
    if case == "truncated body":
        return _request(
            "POST", post, [JSON_TYPE, length, CLOSE], chat[: rnd.randrange(len(chat))]
        ), True
    if case == "body longer than length":
        return _request("POST", post, [JSON_TYPE, "Content-Length: 5", CLOSE], chat), False
    if case == "bad chunked":
        chunked = [JSON_TYPE, "Transfer-Encoding: chunked", CLOSE]
        return _request("POST", post, chunked, rnd.choice(BAD_CHUNKS)), True
    if case == "chunked and length":
        both = ["Transfer-Encoding: chunked", "Content-Length: 2", CLOSE]
        return _request("POST", "/v1/sessions", both, b"2\r\n{}\r\n0\r\n\r\n"), False
    if case == "pipelined":
        first = _request("GET", "/v1/info", []) + _request("POST", post, [JSON_TYPE, length], chat)
        return first + _request("GET", f"/v1/sessions/{sid}/messages?limit=2", [CLOSE]), False
    if case == "ws bad upgrade":
        key = rnd.choice(("Sec-WebSocket-Key: short", "Sec-WebSocket-Version: 99",
                          "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="))  # fmt: skip
        return _request("GET", "/v1/ws", ["Upgrade: websocket", "Connection: Upgrade", key]), True
    # "expect"
    return _request(
        "POST", "/v1/sessions", ["Expect: 100-continue", "Content-Length: 2", CLOSE], b"{}"
    ), False


def raw_input(rnd: random.Random, ctx: Context) -> RawInput:
    """Bytes an HTTP parser must refuse, or accept in an odd shape (pipelined, chunked,
    sent a few bytes at a time)."""
    case = rnd.choice(RAW_CASES)
    data, half_close = _raw_bytes(rnd, case, rnd.choice(ctx.sessions))
    pieces: tuple[bytes, ...] = (data,)
    if rnd.random() < 0.25 and len(data) < 4096:  # a slow sender: a few bytes at a time
        step = rnd.randrange(1, 16)
        pieces = tuple(data[i : i + step] for i in range(0, len(data), step))
    return RawInput(pieces, half_close, case)


# -- WebSocket frames -----------------------------------------------------------------------

FRAME_KINDS = ("hello", "message", "cancel", "ping", "unknown", "structure")


def _frame_value(rnd: random.Random, kind: str, ctx: Context, turn_ids: list[Any]) -> Any:
    if kind == "hello":
        frame: dict[str, Any] = {"type": "hello"}
        if rnd.random() < 0.7:
            frame["session_id"] = rnd.choice(ctx.sessions)
        if rnd.random() < 0.5:
            frame["after"] = rnd.choice((0, 1, 3))
        if rnd.random() < 0.3:
            frame["agent"] = AGENT
        return frame
    if kind == "message":
        turn_id: Any = rnd.choice((len(turn_ids), f"t{len(turn_ids)}", "same", 0))
        turn_ids.append(turn_id)
        frame = {"type": "message", "id": turn_id, "content": rnd.choice(("hi", "more"))}
        if rnd.random() < 0.2:
            frame["agent"] = AGENT
        return frame
    if kind == "cancel":
        return {"type": "cancel", "id": rnd.choice(turn_ids) if turn_ids else 0}
    if kind == "ping":
        return {"type": "ping"}
    return {"type": rnd.choice(("pong", "", "HELLO", "ready", "done", "error")), "id": 1}


def _frame(
    rnd: random.Random, kind: str, ctx: Context, turn_ids: list[Any]
) -> tuple[str, bytes, str]:
    """One frame: ``(opcode, data, what)``."""
    if kind == "structure":
        pick = rnd.randrange(6)
        if pick == 0:
            return "binary", to_json(rnd, {"type": "ping"}), "binary"
        if pick == 1:
            return "text", b"\xff\xfe{}", "invalid utf-8"
        if pick == 2:
            return "text", b"x" * rnd.choice((65_537, 200_000)), "oversized"
        base = _frame_value(rnd, rnd.choice(FRAME_KINDS[:4]), ctx, turn_ids)
        return "text", hostile_body(rnd, base), "not a frame"
    value = _frame_value(rnd, kind, ctx, turn_ids)
    if rnd.random() < 0.7:
        value = mutate(rnd, value)
        if isinstance(value, dict) and rnd.random() < 0.8:
            value["type"] = kind if kind != "unknown" else value.get("type")
    # ASCII JSON: a lone surrogate is escaped, so only "invalid utf-8" frames close 1007.
    return "text", to_json(rnd, value, ascii_only=True), kind


def ws_input(rnd: random.Random, kind: str, ctx: Context) -> WsInput:
    """A connection whose frames are mostly of ``kind`` (one of :data:`FRAME_KINDS`),
    after an optional hello."""
    frames: list[tuple[str, bytes]] = []
    kinds: list[str] = []
    turn_ids: list[Any] = []
    if kind != "hello" and rnd.random() < 0.5:
        frames.append(("text", json.dumps({"type": "hello"}).encode()))
        kinds.append("hello")
    for _ in range(rnd.randrange(1, 5)):
        this = kind if rnd.random() < 0.8 else rnd.choice(FRAME_KINDS)
        opcode, data, what = _frame(rnd, this, ctx, turn_ids)
        frames.append((opcode, data))
        kinds.append(what)
    return WsInput(tuple(frames), tuple(kinds), abrupt=rnd.random() < 0.15)
