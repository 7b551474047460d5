"""RFC 6455 framing, server side: the opening handshake's answer, client frames parsed
from the bytes as they arrive, server frames built. agentd offers no extension
(permessage-deflate is not negotiated), so a frame with a reserved bit set is a
protocol error. Parsing keeps no state between calls but the unparsed bytes: a
connection that is not in the middle of a frame holds nothing for it.
"""

from __future__ import annotations

import base64
import hashlib
import struct

from aiohttp import web

__all__ = (
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONTINUATION",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "FrameError",
    "accept_key",
    "build",
    "close_payload",
    "next_frame",
    "text",
)

OP_CONTINUATION, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA
_OPCODES = frozenset((OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG))

CLOSE_PROTOCOL_ERROR = 1002
CLOSE_INVALID_TEXT = 1007
CLOSE_TOO_BIG = 1009
# Close codes a peer may send (RFC 6455 §7.4): the defined ones below 3000, any above.
_PEER_CLOSE_CODES = frozenset((1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012,
                               1013, 1014))  # fmt: skip

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_U16 = struct.Struct("!H")
_U64 = struct.Struct("!Q")


class FrameError(Exception):
    """The peer broke the protocol: close the connection with ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


def accept_key(request: web.BaseRequest) -> str:
    """``Sec-WebSocket-Accept`` for a valid opening handshake; 400 otherwise (the checks
    and messages aiohttp's own WebSocket response makes)."""
    headers = request.headers
    if headers.get("Upgrade", "").lower().strip() != "websocket":
        raise web.HTTPBadRequest(text=f"No WebSocket UPGRADE hdr: {headers.get('Upgrade')}")
    if "upgrade" not in headers.get("Connection", "").lower():
        raise web.HTTPBadRequest(text=f"No CONNECTION upgrade hdr: {headers.get('Connection')}")
    version = headers.get("Sec-WebSocket-Version", "")
    if version not in ("13", "8", "7"):
        raise web.HTTPBadRequest(text=f"Unsupported version: {version}")
    key = headers.get("Sec-WebSocket-Key", "")
    try:
        valid = len(base64.b64decode(key, validate=True)) == 16
    except ValueError:
        valid = False
    if not valid:
        raise web.HTTPBadRequest(text=f"Handshake error: {key!r}")
    return base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()


def _unmask(mask: bytes, payload: bytes) -> bytes:
    n = len(payload)
    if not n:
        return payload
    # One big-integer XOR: C speed without a per-byte loop in Python.
    key = int.from_bytes((mask * ((n >> 2) + 1))[:n], "little")
    return (int.from_bytes(payload, "little") ^ key).to_bytes(n, "little")


def next_frame(buf: bytes, start: int, max_size: int) -> tuple[bool, int, bytes, int] | None:
    """The frame at ``buf[start:]`` as (fin, opcode, payload, end), or None when it has
    not all arrived. A frame larger than ``max_size`` is refused from its header, before
    its payload is read."""
    have = len(buf) - start
    if have < 2:
        return None
    first, second = buf[start], buf[start + 1]
    if first & 0x70:
        raise FrameError(CLOSE_PROTOCOL_ERROR, "frame with non-zero reserved bits")
    opcode, fin = first & 0x0F, bool(first & 0x80)
    if opcode not in _OPCODES:
        raise FrameError(CLOSE_PROTOCOL_ERROR, f"unexpected opcode {opcode}")
    length, head = second & 0x7F, 2
    if opcode >= OP_CLOSE and (not fin or length > 125):
        raise FrameError(CLOSE_PROTOCOL_ERROR, "control frame fragmented or over 125 bytes")
    if length == 126:
        if have < 4:
            return None
        length, head = _U16.unpack_from(buf, start + 2)[0], 4
    elif length == 127:
        if have < 10:
            return None
        length, head = _U64.unpack_from(buf, start + 2)[0], 10
    if length > max_size:
        raise FrameError(CLOSE_TOO_BIG, f"message size {length} exceeds limit {max_size}")
    masked = second & 0x80
    body = start + head + (4 if masked else 0)
    end = body + length
    if len(buf) < end:
        return None
    payload = bytes(buf[body:end])
    if masked:
        payload = _unmask(bytes(buf[body - 4 : body]), payload)
    return fin, opcode, payload, end


def close_payload(payload: bytes) -> int:
    """The code of a peer's close frame (1005, none, for an empty one)."""
    if not payload:
        return 1005
    if len(payload) < 2:
        raise FrameError(CLOSE_PROTOCOL_ERROR, "close frame of one byte")
    code = _U16.unpack_from(payload)[0]
    if code < 3000 and code not in _PEER_CLOSE_CODES:
        raise FrameError(CLOSE_PROTOCOL_ERROR, f"invalid close code {code}")
    try:
        payload[2:].decode()
    except UnicodeDecodeError:
        raise FrameError(CLOSE_INVALID_TEXT, "close reason is not UTF-8") from None
    return int(code)


# The headers of server text frames under 126 bytes (most: a turn's deltas), by length.
_TEXT_HEADS = tuple(bytes((0x80 | OP_TEXT, n)) for n in range(126))


def text(payload: bytes) -> bytes:
    """:func:`build` of a text frame."""
    if len(payload) < 126:
        return _TEXT_HEADS[len(payload)] + payload
    return build(OP_TEXT, payload)


def build(opcode: int, payload: bytes) -> bytes:
    """One unmasked, unfragmented server frame."""
    n = len(payload)
    if n < 126:
        return bytes((0x80 | opcode, n)) + payload
    if n < 1 << 16:
        return bytes((0x80 | opcode, 126)) + _U16.pack(n) + payload
    return bytes((0x80 | opcode, 127)) + _U64.pack(n) + payload
