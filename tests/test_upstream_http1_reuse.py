"""How agentd's HTTP/1.1 client keeps its upstream connections across calls: a stream read
to its last event comes back to the pool even when the body's last chunk is late, a
caller that gives up closes its connection (the model stops), and a connection's one
deadline timer bounds each call by its own deadline."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from agentd.backends import Pool
from agentd.errors import UpstreamTimeout

from .openai_stub import MakePool
from .test_upstream_http1 import REPLY, SSE_CHUNKED, RawUpstream, ask, chunked, read_request
from .waiting import wait_until

LAST_CHUNK = b"0\r\n\r\n"


def idle_connections(pool: Pool) -> int:
    http = pool.nodes[0].transport.client.http  # type: ignore[attr-defined]
    return sum(len(origin.idle) for origin in http._pools.values())


async def test_a_stream_whose_last_chunk_is_late_keeps_its_connection(
    make_pool: MakePool,
) -> None:
    """The reply's [DONE] arrives, its body's last chunk only after the call returned:
    the connection is kept for the next call, not closed for it to open another."""
    send_rest = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await read_request(reader) is not None:
            writer.write(SSE_CHUNKED + chunked(REPLY).removesuffix(LAST_CHUNK))
            await writer.drain()
            await send_rest.wait()
            send_rest.clear()
            writer.write(LAST_CHUNK)
            await writer.drain()

    async with RawUpstream(handle) as up:
        pool = await make_pool(up.url)
        for _ in range(3):
            assert (await pool.complete(ask())).text == "hi there"
            assert idle_connections(pool) == 0  # still reading the end of the body
            send_rest.set()
            await wait_until(lambda: idle_connections(pool) == 1, what="the connection back")
        assert up.connections == 1


async def test_a_caller_that_gives_up_closes_the_connection(make_pool: MakePool) -> None:
    """A stream left after its first chunk is not read to its end: the upstream sees the
    connection close (its model stops), and the next call opens another."""
    left = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(SSE_CHUNKED + chunked(REPLY)[:120])  # the first event, then nothing
        await writer.drain()
        if await reader.read() == b"":
            left.set()

    async with RawUpstream(handle) as up:
        pool = await make_pool(up.url)
        stream = pool.stream(ask())
        async with contextlib.aclosing(stream):
            first = await anext(stream)
            assert first.text == "hi "
        await asyncio.wait_for(left.wait(), 10)
        assert idle_connections(pool) == 0


async def test_each_call_on_a_kept_connection_has_its_own_deadline(make_pool: MakePool) -> None:
    """A call with a far deadline, then one with a near deadline on the same connection
    that stalls: the second times out at its own deadline, not the first one's."""
    calls = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal calls
        while await read_request(reader) is not None:
            calls += 1
            if calls == 1:
                writer.write(SSE_CHUNKED + chunked(REPLY))
                await writer.drain()
            # the second request stalls: no answer

    async with RawUpstream(handle) as up:
        pool = await make_pool(up.url)
        loop = asyncio.get_running_loop()
        done = await pool.complete(ask(), deadline=loop.time() + 3600)
        assert done.text == "hi there"
        # (Not at the first call's deadline: wait_for's TimeoutError is no UpstreamTimeout.)
        with pytest.raises(UpstreamTimeout):
            await asyncio.wait_for(pool.complete(ask(), deadline=loop.time() + 0.3), 20)
        assert up.connections == 1
        assert pool.nodes[0].inflight == 0
