"""The bench's baselines send what agentd sends, so their ratios compare the same wire work."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from bench.baselines.aiohttp_app import make_app
from bench.loadgen.common import Spec

from .procs import AgentdProcess, free_port


async def _ws_turn(url: str, content: str) -> list[dict[str, Any]]:
    """The frames answering ``hello`` and then one ``message`` of ``content``."""
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        ws = await session.ws_connect(url)
        await ws.send_str('{"type":"hello"}')
        frames = [orjson.loads((await ws.receive(timeout=30)).data)]
        await ws.send_str(orjson.dumps({"type": "message", "id": 7, "content": content}).decode())
        while frames[-1]["type"] != "done":
            frames.append(orjson.loads((await ws.receive(timeout=30)).data))
        await ws.close()
    return frames


def _shape(frames: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    """What the client sees of a turn: each frame's type and its text."""
    shape = []
    for frame in frames:
        text = frame.get("content") or (frame.get("message") or {}).get("content")
        shape.append((frame["type"], text))
    return shape


async def test_the_aiohttp_websocket_baseline_answers_a_turn_with_agentds_frames(
    agentd_instance: Callable[..., AgentdProcess],
) -> None:
    content = Spec.content  # what ws-turns sends
    agentd = agentd_instance()
    runner = web.AppRunner(make_app())
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        baseline = await _ws_turn(f"ws://127.0.0.1:{port}/v1/ws", content)
    finally:
        await runner.cleanup()
    served = await _ws_turn(agentd.url.replace("http", "ws") + "/v1/ws", content)
    assert _shape(baseline) == _shape(served)
    assert [kind for kind, _ in _shape(served)].count("delta") == len(content.split())
    for ours, theirs in zip(baseline, served, strict=True):
        assert len(orjson.dumps(ours)) <= len(orjson.dumps(theirs)) + 16
