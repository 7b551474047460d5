"""The Python load generator: ``python -m bench.loadgen MODE --url URL [options]``.

Modes: ``http`` (closed loop, or open loop with ``--rate``), ``ws-turns``, ``ws-idle``
and ``mcp-calls`` (``--tool`` of an MCP server at ``--url`` called back to back with the
``mcp`` client SDK, ``--body`` its arguments). It forks ``--procs`` processes, each with
its own uvloop event loop and its share of the connections; they warm up, meet at a
barrier, and measure together.
On stdout it prints ``measure-start`` and ``measure-end`` as the measured window
opens and closes (the harness reads server CPU at those moments), ``open N`` for
ws-idle once N connections are up (then waits for a line on stdin, or ``--hold`` s,
before closing them), and writes its summary as JSON to ``--out`` (or stdout).
Only loopback addresses are accepted.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import multiprocessing as mp
import resource
import sys
import threading
from array import array
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..stats import summarize, windows
from .common import Spec
from .http import run_http
from .mcp import run_mcp_calls
from .ws import run_ws_idle, run_ws_turns

BARRIER_LIMIT = 120.0


def _loopback(host: str) -> str:
    if host == "localhost" or ipaddress.ip_address(host).is_loopback:
        return host
    raise SystemExit(f"refusing {host}: the load generator only targets loopback addresses")


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _child(spec: Spec, index: int, barrier: Any, release: Any, out: Connection) -> None:
    """One generator process: run its share and send its recorder back."""
    _raise_nofile()
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is an agentd dependency
        runner = asyncio.run
    try:
        if spec.mode == "http":
            rec = runner(run_http(spec, index, barrier.wait))
        elif spec.mode == "ws-turns":
            rec = runner(run_ws_turns(spec, index, barrier.wait))
        elif spec.mode == "mcp-calls":
            arguments = json.loads(spec.body or b"{}")
            rec = runner(run_mcp_calls(spec, index, barrier.wait, arguments, spec.expect))
        else:

            def opened(count: int) -> None:
                out.send({"opened": count})
                barrier.wait()

            rec = runner(run_ws_idle(spec, index, opened, release.wait))
        out.send(rec.result())
    except BaseException as exc:
        barrier.abort()
        release.abort()
        out.send({"fatal": f"{type(exc).__name__}: {exc}"})
        raise


def _merge(spec: Spec, parts: list[dict[str, Any]]) -> dict[str, Any]:
    latencies, ends, lags = array("d"), array("d"), array("d")
    errors: dict[str, int] = {}
    cpu = 0.0
    for part in parts:
        latencies.frombytes(part["latencies"])
        ends.frombytes(part["ends"])
        lags.frombytes(part["lags"])
        cpu += part["cpu"]
        for kind, count in part["errors"].items():
            errors[kind] = errors.get(kind, 0) + count
    elapsed = max((p["elapsed"] for p in parts), default=spec.duration) or spec.duration
    out: dict[str, Any] = {
        "generator": "python",
        "mode": spec.mode,
        "procs": spec.procs,
        "connections": spec.connections,
        "rate": spec.rate or None,
        "duration_s": round(elapsed, 3),
        "requests": len(latencies),
        "errors": errors,
        "error_count": sum(errors.values()),
        "rps": round(len(latencies) / elapsed, 1) if elapsed else 0.0,
        "latency_ms": summarize(latencies),
        "cpu_s": round(cpu, 3),
        "cpu_util": round(cpu / elapsed, 3) if elapsed else None,
    }
    if spec.rate > 0:
        out["lag_ms"] = summarize(lags)
    if spec.window > 0:
        out["windows"] = windows(ends, latencies, spec.window)
    return out


def run(spec: Spec, stdin_release: bool = True) -> dict[str, Any]:
    """Fork the processes, drive the phases, print the markers, return the summary."""
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(spec.procs + 1)
    release = ctx.Barrier(spec.procs + 1)
    pipes, procs = [], []
    for index in range(spec.procs):
        receiver, sender = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_child, args=(spec, index, barrier, release, sender))
        proc.start()
        pipes.append(receiver)
        procs.append(proc)
    try:
        # Opening tens of thousands of idle connections may take minutes on a busy machine.
        barrier.wait(timeout=max(spec.hold, BARRIER_LIMIT) if spec.mode == "ws-idle"
                     else BARRIER_LIMIT + spec.warmup)  # fmt: skip
    except threading.BrokenBarrierError:
        fatal = [p.recv()["fatal"] for p in pipes if p.poll(5)]
        raise SystemExit(f"load generator failed before measuring: {fatal}") from None
    if spec.mode == "ws-idle":
        opened = sum(p.recv()["opened"] for p in pipes)
        print(f"open {opened}", flush=True)
        if stdin_release:
            waiter = threading.Thread(target=sys.stdin.readline, daemon=True)
            waiter.start()
            waiter.join(timeout=spec.hold)
        release.wait(timeout=BARRIER_LIMIT)
    else:
        print("measure-start", flush=True)
    parts = [pipe.recv() for pipe in pipes]
    for proc in procs:
        proc.join(timeout=30)
    if fatal := [p["fatal"] for p in parts if "fatal" in p]:
        raise SystemExit(f"load generator failed: {fatal}")
    if spec.mode != "ws-idle":
        print("measure-end", flush=True)
    summary = _merge(spec, parts)
    if spec.mode == "ws-idle":
        summary["open"] = summary.pop("requests")
        summary["connect_ms"] = summary.pop("latency_ms")
        del summary["rps"]
    return summary


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise SystemExit(f"--header must be 'NAME: VALUE', got {text!r}")
    return name.strip(), value.strip()


def parse_args(argv: list[str] | None = None) -> tuple[Spec, Path | None]:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__)
    parser.add_argument("mode", choices=["http", "ws-turns", "ws-idle", "mcp-calls"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--method", default="GET")
    parser.add_argument("--body", default=None, help="request body (JSON text)")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rate", type=float, default=0.0, help="open loop: requests/s")
    parser.add_argument("--procs", type=int, default=1)
    parser.add_argument("--window", type=float, default=0.0)
    parser.add_argument("--sources", default="127.0.0.1", help="comma-separated addresses")
    parser.add_argument("--hold", type=float, default=600.0)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--header", action="append", default=[], help="NAME: VALUE, sent with every request"
    )
    parser.add_argument("--tool", default="", help="mcp-calls: the tool to call")
    parser.add_argument("--expect", default=None, help="mcp-calls: the text a call answers")
    args = parser.parse_args(argv)
    if args.mode == "mcp-calls" and not args.tool:
        parser.error("mcp-calls needs --tool")
    url = urlsplit(args.url)
    host = _loopback(url.hostname or "127.0.0.1")
    sources = tuple(_loopback(s.strip()) for s in args.sources.split(",") if s.strip())
    spec = Spec(
        mode=args.mode,
        host=host,
        port=url.port or 80,
        path=url.path or "/",
        method=args.method.upper(),
        body=args.body.encode() if args.body is not None else None,
        connections=args.connections,
        duration=min(args.duration, 3600.0),
        warmup=args.warmup,
        rate=args.rate,
        procs=max(1, args.procs),
        window=args.window,
        sources=sources,
        hold=min(args.hold, 3600.0),
        headers=dict(_header(h) for h in args.header),
        tool=args.tool,
        expect=args.expect,
    )
    return spec, args.out


def main(argv: list[str] | None = None) -> None:
    spec, out = parse_args(argv)
    _raise_nofile()
    summary = run(spec)
    text = json.dumps(summary, indent=2)
    if out is None:
        print(text, flush=True)
    else:
        out.write_text(text)


if __name__ == "__main__":
    main()
