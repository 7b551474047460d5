"""Where an idle WebSocket's memory goes: ``python -m bench.ws_idle_trace [--target T]``.

Serves agentd's app (the bench's echo config, memory store) or the aiohttp baseline in
this process, opens N idle connections (``hello`` each) from a ``bench.loadgen ws-idle``
client process, then N more, and diffs what was allocated between the two (tracemalloc)
and which objects appeared (``gc`` counts by type), both per connection. Tracing costs
memory and time: RSS figures come from the ``ws-idle`` scenario, not from here.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import subprocess
import sys
import tempfile
import tracemalloc
from pathlib import Path

from aiohttp import web

from .targets import AGENTD_CONFIG, free_port

TOP = 25


def _agentd_app(workdir: Path) -> web.Application:
    from agentd import config as config_mod
    from agentd.server.app import create_app

    path = workdir / "agentd.toml"
    path.write_text(AGENTD_CONFIG.format(workers=1, redis="", backend_type="echo", urls="[]"))
    return create_app(config_mod.load(path))


def _aiohttp_app() -> web.Application:
    from .baselines import aiohttp_app

    app = web.Application()
    app.router.add_get("/v1/ws", aiohttp_app.websocket)
    return app


def _open(url: str, count: int) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "bench.loadgen", "ws-idle", "--url", url]
    cmd += ["--connections", str(count), "--procs", "1", "--hold", "600"]
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


async def _wait_open(proc: subprocess.Popen[str], count: int) -> None:
    assert proc.stdout is not None
    line = await asyncio.get_running_loop().run_in_executor(None, proc.stdout.readline)
    if line.split() != ["open", str(count)]:
        raise SystemExit(f"client did not open {count} connections: {line!r}")
    await asyncio.sleep(1.0)  # let the last hellos' replies and tasks settle


def _types() -> collections.Counter[str]:
    gc.collect()
    return collections.Counter(type(o).__qualname__ for o in gc.get_objects())


def _close(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.write("close\n")
    proc.stdin.flush()
    proc.wait(timeout=60)


async def _run(target: str, count: int, frames: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        app = _agentd_app(Path(tmp)) if target == "agentd" else _aiohttp_app()
        runner = web.AppRunner(app, handle_signals=False)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        url = f"http://127.0.0.1:{port}/v1/ws"
        procs = [_open(url, count)]  # warm-up: first-use caches are not per connection
        await _wait_open(procs[0], count)
        tracemalloc.start(frames)
        types1, snap1 = _types(), tracemalloc.take_snapshot()
        procs.append(_open(url, count))
        await _wait_open(procs[1], count)
        types2, snap2 = _types(), tracemalloc.take_snapshot()
        tracemalloc.stop()
        _report(target, count, snap1, snap2, types1, types2)
        for proc in procs:
            await asyncio.get_running_loop().run_in_executor(None, _close, proc)
        await runner.cleanup()


def _report(
    target: str,
    count: int,
    snap1: tracemalloc.Snapshot,
    snap2: tracemalloc.Snapshot,
    types1: collections.Counter[str],
    types2: collections.Counter[str],
) -> None:
    noise = [tracemalloc.Filter(False, tracemalloc.__file__)]
    snap1, snap2 = snap1.filter_traces(noise), snap2.filter_traces(noise)
    lines = snap2.compare_to(snap1, "lineno")
    total = sum(s.size_diff for s in lines)
    print(f"# {target}: {count} idle connections more; per connection: {total / count:.0f} B")
    print("\n## allocated, by line (bytes per connection, blocks per connection)")
    for stat in lines[:TOP]:
        frame = stat.traceback[0]
        where = f"{_short(frame.filename)}:{frame.lineno}"
        print(f"{stat.size_diff / count:8.0f} B {stat.count_diff / count:6.2f}  {where}")
    print("\n## new objects by type (per connection)")
    grown = {k: types2[k] - types1.get(k, 0) for k in types2}
    for name, n in sorted(grown.items(), key=lambda kv: -kv[1])[:TOP]:
        if n > 0:
            print(f"{n / count:6.2f}  {name}")
    print("\n## allocated, by caller stack (top 8, bytes per connection)")
    for stat in snap2.compare_to(snap1, "traceback")[:8]:
        print(f"\n{stat.size_diff / count:.0f} B")
        for frame in list(stat.traceback)[-6:]:
            print(f"    {_short(frame.filename)}:{frame.lineno}")


def _short(filename: str) -> str:
    for mark in ("site-packages/", "/agentd/", "/bench/", "python3.11/"):
        if mark in filename:
            return filename.split(mark, 1)[1]
    return filename


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ws_idle_trace", description=__doc__)
    parser.add_argument("--target", choices=("agentd", "aiohttp"), default="agentd")
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--frames", type=int, default=12, help="traceback depth kept")
    args = parser.parse_args(argv)
    import uvloop

    uvloop.run(_run(args.target, args.connections, args.frames))


if __name__ == "__main__":
    main()
