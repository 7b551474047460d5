"""Send the inputs of :mod:`bench.fuzzgen` to a running agentd and judge its answers.

The properties, for every input: no 5xx, ever (also not inside a started stream); every
4xx carries ``{"error": {"message", "type", "code"}}`` whose code is one the source
names (a stable code, not one made up on the spot); a WebSocket answers a bad frame with
an error frame and lives on (it answers a ping after), unless the protocol says it
closes (1007 invalid UTF-8, 1009 a frame too large). After a run: no handler left (the
WebSocket gauge is back at its baseline), no session locked, no worker restarted.

Each ``send_*`` returns a :class:`Result`: labels to count (``http 400 invalid_json``,
``ws error invalid_frame``, ``ws close 1009``, ``raw 400``) and violations, each a
sentence with the input that caused it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from yarl import URL

from .fuzzgen import AGENT, HttpInput, RawInput, WsInput

__all__ = (
    "MAX_FRAME_BYTES",
    "Result",
    "known_codes",
    "locked_sessions",
    "scrape",
    "send_http",
    "send_raw",
    "send_ws",
    "server_config",
)

SOURCE = Path(__file__).resolve().parent.parent / "agentd"
# The fuzz server's limits: small, so that inputs over them are cheap to send.
MAX_FRAME_BYTES = 65_536
ANSWER_S = 15.0  # an answer that takes longer counts as none
STREAM_QUIET_S = 0.3  # an event stream that is this quiet is left (it may never end)
STREAM_MAX_BYTES = 65_536


def server_config(workers: int = 1, redis_url: str | None = None) -> str:
    """The fuzzed server's config: small limits, ``reject`` for a busy session (a lease
    left behind shows at once as 409 ``session_busy``) and a lease far longer than the
    checks wait, so a leaked one cannot expire before it is seen."""
    redis = f'[redis]\nurls = ["{redis_url}"]\n' if redis_url else ""
    return f"""\
[server]
workers = {workers}
max_request_bytes = 65536
max_inflight_turns = 100000
turn_timeout = 10.0
shutdown_timeout = 5.0
{redis}[sessions]
max_message_bytes = 4096
concurrent_turns = "reject"
turn_lease = 30.0
[state]
max_value_bytes = 8192
[websocket]
max_frame_bytes = {MAX_FRAME_BYTES}
max_inflight_turns = 2
idle_timeout = 60.0
[log]
level = "info"
[[backends]]
name = "echo"
type = "echo"
[[agents]]
name = "{AGENT}"
backend = "echo"
"""


@dataclass
class Result:
    labels: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)


@cache
def known_codes() -> frozenset[str]:
    """Every snake_case string literal of agentd's source: an error code the server
    sends must be one of them (written down, hence stable), never one built at run time."""
    found: set[str] = set()
    for path in SOURCE.rglob("*.py"):
        text = path.read_text()
        found.update(re.findall(r'"([a-z][a-z0-9_]*)"', text))
        # schema.validate_name's code is invalid_ and the kind of name it checks.
        found.update("invalid_" + k for k in re.findall(r"validate_name\(\s*[\"']([a-z_]+)", text))
    return frozenset(found)


def _error_body(body: bytes) -> tuple[str | None, str | None]:
    """(code, problem) of an HTTP error body."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, f"an error body that is not JSON: {body[:200]!r}"
    error = value.get("error") if isinstance(value, dict) else None
    if not isinstance(error, dict):
        return None, f"an error body without an error object: {body[:200]!r}"
    code = error.get("code")
    if not all(isinstance(error.get(k), str) for k in ("message", "type", "code")):
        return None, f"an error object without message, type and code strings: {error}"
    return code, _bad_code(code)


def _bad_code(code: Any) -> str | None:
    if code == "internal_error":
        return "an internal_error"
    if not isinstance(code, str) or code not in known_codes():
        return f"an error code the source does not name: {code!r}"
    return None


def _show(inp: object) -> str:
    text = repr(inp)
    return text if len(text) < 600 else text[:500] + f"... ({len(text)} chars)"


# -- HTTP -----------------------------------------------------------------------------------


async def _read_stream(response: aiohttp.ClientResponse) -> tuple[bytes, bool]:
    """An event stream's first bytes (until it ends, is quiet a moment, or is long), and
    whether the server cut it off (closed the connection in the middle)."""
    data = b""
    while len(data) < STREAM_MAX_BYTES:
        try:
            chunk = await asyncio.wait_for(response.content.readany(), STREAM_QUIET_S)
        except TimeoutError:
            break
        except (RuntimeError, aiohttp.ClientError):  # aiohttp: "Connection closed."
            return data, True
        if not chunk:
            break
        data += chunk
    return data, False


async def send_http(http: aiohttp.ClientSession, base: str, inp: HttpInput) -> Result:
    result = Result()
    cut = False
    try:
        async with http.request(
            inp.method,
            URL(base + inp.path, encoded=True),
            headers=list(inp.headers),
            data=inp.body,
            timeout=aiohttp.ClientTimeout(total=ANSWER_S),
            skip_auto_headers=("Content-Type",),
        ) as response:
            status, content_type = response.status, response.content_type
            stream = content_type == "text/event-stream"
            if stream:
                body, cut = await _read_stream(response)
            else:
                body = await response.read()
    except TimeoutError:
        result.violations.append(f"HTTP no answer within {ANSWER_S}s: {_show(inp)}")
        result.labels.append("http timeout")
        return result
    except aiohttp.ClientError as exc:
        result.labels.append(f"http {type(exc).__name__}")
        # A body over max_request_bytes may be refused before the client has sent it
        # all; a HEAD answer cannot carry the HTTP parser's plain-text 400.
        if not (inp.body and len(inp.body) > 65_536) and inp.method != "HEAD":
            result.violations.append(f"HTTP no answer: {exc!r}: {_show(inp)}")
        return result
    label = f"http {status}"
    if status >= 500:
        result.violations.append(f"HTTP {status}: {body[:300]!r}: {_show(inp)}")
    elif status == 400 and content_type == "text/plain":
        # Documented (docs/operations.md): a request the HTTP parser refuses before
        # routing gets aiohttp's plain-text 400.
        label += " parser"
    elif status >= 400 and inp.method != "HEAD":
        code, problem = _error_body(body)
        label += f" {code}"
        if problem:
            result.violations.append(f"HTTP {status} with {problem}: {_show(inp)}")
    if stream:
        label += " stream"
        if b"internal_error" in body or re.search(rb"HTTP/1\.[01] 5\d\d", body):
            result.violations.append(f"a server error in a stream: {body[-300:]!r}: {_show(inp)}")
        if cut:
            result.violations.append(f"a stream cut off: {body[-300:]!r}: {_show(inp)}")
    result.labels.append(label)
    return result


# -- raw HTTP --------------------------------------------------------------------------------

RAW_WAIT_S = 5.0


async def send_raw(host: str, port: int, inp: RawInput) -> Result:
    result = Result()
    reader, writer = await asyncio.open_connection(host, port)
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    data = b""
    try:
        with contextlib.suppress(OSError):  # the server may close before it has all
            for piece in inp.pieces:
                writer.write(piece)
                await writer.drain()
                if len(inp.pieces) > 1:
                    await asyncio.sleep(0.001)
            if inp.half_close:
                writer.write_eof()
        try:
            async with asyncio.timeout(RAW_WAIT_S):
                while chunk := await reader.read(65_536):
                    data += chunk
        except TimeoutError:
            result.labels.append("raw left open")
        except OSError:
            pass
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    statuses = re.findall(rb"HTTP/1\.[01] (\d{3}) ", data)
    result.labels.append("raw " + (statuses[0].decode() if statuses else "closed"))
    if any(s.startswith(b"5") for s in statuses):
        result.violations.append(f"raw HTTP 5xx ({inp.case}): {data[:300]!r}: {_show(inp)}")
    return result


# -- WebSocket --------------------------------------------------------------------------------


def _pings(data: bytes) -> int:
    """1 if the server reads this frame as a ping (it parses with orjson too)."""
    try:
        frame = orjson.loads(data)
    except orjson.JSONDecodeError:
        return 0
    return int(isinstance(frame, dict) and frame.get("type") == "ping")


def _expected_close(opcode: str, data: bytes) -> int | None:
    """The close code the protocol gives this frame, if it ends the connection."""
    if len(data) > MAX_FRAME_BYTES:
        return 1009
    if opcode == "text":
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            return 1007
    return None


def _judge_frame(result: Result, frame: Any, inp: WsInput) -> None:
    kind = frame.get("type") if isinstance(frame, dict) else None
    if kind == "error":
        code = frame.get("code")
        result.labels.append(f"ws error {code}")
        problem = _bad_code(code)
        if not isinstance(frame.get("message"), str):
            problem = f"no message in {frame}"
        if code in ("duplicate_id", "too_many_turns") and "id" not in frame:
            problem = f"a refused message without its id: {frame}"
        if problem:
            result.violations.append(f"ws error frame with {problem}: {_show(inp)}")
    elif kind != "delta":  # deltas are many and say nothing
        result.labels.append(f"ws {kind}")


async def _send_frame(ws: aiohttp.ClientWebSocketResponse, opcode: str, data: bytes) -> bool:
    """Send one frame; False if the connection is gone (never, as the server closes
    lingering: it reads on while a frame over its limit is still on its way)."""
    msg_type = aiohttp.WSMsgType.TEXT if opcode == "text" else aiohttp.WSMsgType.BINARY
    try:
        await ws.send_frame(data, msg_type)
    except (OSError, RuntimeError, aiohttp.ClientError):
        return False
    return True


async def send_ws(http: aiohttp.ClientSession, base: str, inp: WsInput) -> Result:
    result = Result()
    expected_close: int | None = None
    pongs = 0
    async with http.ws_connect(base + "/v1/ws", autoping=True, max_msg_size=0) as ws:
        for opcode, data in inp.frames:
            expected_close = _expected_close(opcode, data)
            if not await _send_frame(ws, opcode, data):
                result.violations.append(f"ws connection lost while a frame was sent: {_show(inp)}")
                break
            pongs += _pings(data) if opcode == "text" else 0
            if expected_close is not None:
                break
        if inp.abrupt and expected_close is None:
            result.labels.append("ws abrupt close")
            return result
        if expected_close is None and await _send_frame(ws, "text", b'{"type": "ping"}'):
            pongs += 1
        try:
            async with asyncio.timeout(ANSWER_S):
                while (msg := await ws.receive()).type == aiohttp.WSMsgType.TEXT:
                    frame = orjson.loads(msg.data)
                    _judge_frame(result, frame, inp)
                    if isinstance(frame, dict) and frame.get("type") == "pong":
                        pongs -= 1
                        if pongs == 0 and expected_close is None:
                            return result
        except TimeoutError:
            result.violations.append(f"ws no pong within {ANSWER_S}s: {_show(inp)}")
            return result
    # The code of the server's close frame; 1006 when none came (the connection was lost).
    # Not ``ws.close_code``: aiohttp makes that 1006 when its answer to the close frame
    # cannot be written, as when the server's end of stream came with the close frame.
    code = msg.data if msg.type == aiohttp.WSMsgType.CLOSE else 1006
    result.labels.append(f"ws close {code}")
    if expected_close is None:
        result.violations.append(f"ws closed with {code} before the pong: {_show(inp)}")
    elif code != expected_close:
        result.violations.append(f"ws closed with {code}, not {expected_close}: {_show(inp)}")
    return result


# -- after a run ---------------------------------------------------------------------------------


async def scrape(http: aiohttp.ClientSession, base: str) -> dict[str, float]:
    """Every sample of the instance's /metrics, by its name and labels."""
    async with http.get(base + "/metrics") as response:
        text = await response.text()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def total(samples: dict[str, float], prefix: str) -> float:
    """The sum of a metric's samples over all its labels."""
    return sum(v for k, v in samples.items() if k == prefix or k.startswith(prefix + "{"))


async def locked_sessions(http: aiohttp.ClientSession, base: str, sids: Iterable[str]) -> list[str]:
    """The sessions a new turn finds busy (409 ``session_busy`` under the ``reject``
    policy): a lease some earlier turn left behind, or one still running."""
    locked = []
    for sid in sids:
        body = {"model": AGENT, "messages": [{"role": "user", "content": "are you free"}],
                "session_id": sid}  # fmt: skip
        async with http.post(base + "/v1/chat/completions", json=body) as response:
            if response.status == 409:
                locked.append(sid)
    return locked
