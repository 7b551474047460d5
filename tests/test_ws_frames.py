"""The server's WebSocket framing (server/ws_frames.py): client frames parsed the same
whatever way the bytes are cut, limits and protocol errors from the header; and, on a
real connection, what RFC 6455 asks of the server: pings answered, fragmented messages
joined, a client's close answered."""

from __future__ import annotations

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentd.server import ws_frames
from agentd.server.ws_frames import FrameError, next_frame

from .chat_helpers import Factory
from .test_websocket import receive


def _client_frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bytes = b"") -> bytes:
    """A frame as a client sends it: masked when ``mask`` is given."""
    head = bytearray(ws_frames.build(opcode, payload)[: -len(payload) or None])
    if not fin:
        head[0] &= 0x7F
    if not mask:
        return bytes(head) + payload
    head[1] |= 0x80
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes(head) + mask + masked


def _parse_all(data: bytes, cuts: list[int], limit: int) -> list[tuple[bool, int, bytes]]:
    """Feed ``data`` in pieces cut at ``cuts``, keeping the unparsed tail as a connection
    does; the frames found."""
    found, buffer, last = [], b"", 0
    for cut in [*sorted(cuts), len(data)]:
        buffer += data[last:cut]
        last = cut
        start = 0
        while (frame := next_frame(buffer, start, limit)) is not None:
            fin, opcode, payload, start = frame
            found.append((fin, opcode, payload))
        buffer = buffer[start:]
    assert buffer == b""
    return found


# Payloads either side of 65,535 bytes (the 16-bit length's end), built by repeating a
# few drawn bytes: drawing 64 KiB byte by byte is past what hypothesis generates well.
_around_64k = st.builds(
    lambda n, unit: (unit * (n // len(unit) + 1))[:n],
    st.integers(min_value=65_530, max_value=65_540),
    st.binary(min_size=1, max_size=8),
)

frames = st.lists(
    st.tuples(
        st.sampled_from([ws_frames.OP_TEXT, ws_frames.OP_BINARY, ws_frames.OP_PING]),
        st.one_of(st.binary(max_size=130), _around_64k),
        st.binary(min_size=4, max_size=4) | st.just(b""),
    ),
    min_size=1,
    max_size=4,
)


@settings(max_examples=60, deadline=None)
@given(frames, st.lists(st.integers(min_value=0, max_value=200_000), max_size=6))
def test_frames_parse_the_same_however_the_bytes_are_cut(
    sent: list[tuple[int, bytes, bytes]], cuts: list[int]
) -> None:
    sent = [(op, p[:125] if op == ws_frames.OP_PING else p, m) for op, p, m in sent]
    data = b"".join(_client_frame(op, p, mask=m) for op, p, m in sent)
    cuts = [c for c in cuts if c <= len(data)]
    assert _parse_all(data, cuts, 1 << 20) == [(True, op, p) for op, p, _ in sent]


# A fixed mask: parameters must be the same in every test process (pytest-xdist checks).
_MASK = b"\x12\x34\x56\x78"


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (bytes((0x81 | 0x40, 0x80)) + _MASK, 1002),  # a reserved bit
        (bytes((0x83, 0x80)) + _MASK, 1002),  # opcode 3
        (bytes((0x09, 0x80)) + _MASK, 1002),  # a fragmented ping
        (bytes((0x89, 0x80 | 126)) + (200).to_bytes(2, "big"), 1002),  # a ping over 125
        (bytes((0x81, 0x80 | 127)) + (1 << 40).to_bytes(8, "big"), 1009),  # too large
    ],
)
def test_protocol_errors_are_found_from_the_header(raw: bytes, code: int) -> None:
    with pytest.raises(FrameError) as caught:
        next_frame(raw, 0, 1 << 20)
    assert caught.value.code == code


def test_close_payloads() -> None:
    assert ws_frames.close_payload(b"") == 1005
    assert ws_frames.close_payload((4001).to_bytes(2, "big") + b"bye") == 4001
    for bad, code in [(b"\x03", 1002), ((1004).to_bytes(2, "big"), 1002),
                      ((1000).to_bytes(2, "big") + b"\xff", 1007)]:  # fmt: skip
        with pytest.raises(FrameError) as caught:
            ws_frames.close_payload(bad)
        assert caught.value.code == code


async def test_pings_fragments_and_a_clients_close_on_a_real_connection(serve: Factory) -> None:
    url = await serve()
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(url + "/v1/ws", autoping=False, heartbeat=None)
        writer = ws._writer  # type: ignore[union-attr]
        await ws.ping(b"are you there")
        pong = await ws.receive(timeout=10)
        assert (pong.type, pong.data) == (aiohttp.WSMsgType.PONG, b"are you there")
        # A text message in three fragments, a ping between two of them.
        transport = writer.transport
        mask = _MASK
        transport.write(_client_frame(ws_frames.OP_TEXT, b'{"type":', fin=False, mask=mask))
        transport.write(_client_frame(ws_frames.OP_PING, b"mid", mask=mask))
        transport.write(_client_frame(ws_frames.OP_CONTINUATION, b' "pi', fin=False, mask=mask))
        transport.write(_client_frame(ws_frames.OP_CONTINUATION, b'ng"}', mask=mask))
        pong = await ws.receive(timeout=10)
        assert (pong.type, pong.data) == (aiohttp.WSMsgType.PONG, b"mid")
        assert (await receive(ws))["type"] == "pong"
        await ws.close(code=4000, message=b"done")
        assert ws.close_code == 1000  # the server answered the close
