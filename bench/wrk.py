"""wrk as the HTTP load generator: the Lua script per run, and its JSON summary.

wrk is closed loop (each connection sends its next request when the last answered);
the open-loop mode uses the Python generator. The Lua ``done`` hook prints one line
of JSON with wrk's own percentiles (microseconds, from its histogram).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ("lua_script", "parse_output", "wrk_command")

MARK = "BENCH-JSON "

_DONE = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%s{"duration_us":%d,"requests":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%.1f,"p90":%.1f,"p99":%.1f,"p99.9":%.1f,"mean":%.1f,"max":%.1f}}\n',
    "MARK", summary.duration, summary.requests, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.mean, latency.max))
end
""".replace("MARK", MARK)


def _lua_string(text: str) -> str:
    level = 0
    while f"]{'=' * level}]" in text:
        level += 1
    return f"[{'=' * level}[{text}]{'=' * level}]"


def lua_script(
    method: str = "GET",
    body: str | None = None,
    sessions: list[str] | None = None,
    headers: dict[str, str] | None = None,
) -> str:
    """The Lua for one run: method, headers and body, and with ``sessions`` a
    ``session_id`` rotated per request (``body`` then holds ``%s`` where the id goes)."""
    lines = [f'wrk.method = "{method}"']
    lines += [
        f"wrk.headers[ {_lua_string(k)} ] = {_lua_string(v)}" for k, v in (headers or {}).items()
    ]
    if body is not None:
        lines.append('wrk.headers["Content-Type"] = "application/json"')
        if sessions:
            quoted = ", ".join(f'"{s}"' for s in sessions)
            lines += [
                f"local sessions = {{{quoted}}}",
                f"local template = {_lua_string(body)}",
                "local n = 0",
                "request = function()",
                "  n = n + 1",
                "  local body = string.format(template, sessions[(n % #sessions) + 1])",
                "  return wrk.format(nil, nil, nil, body)",
                "end",
            ]
        else:
            lines.append(f"wrk.body = {_lua_string(body)}")
    return "\n".join(lines) + "\n" + _DONE


def wrk_command(
    url: str, script: Path, connections: int, seconds: float, threads: int = 1
) -> list[str]:
    """The wrk command line (threads never exceed connections)."""
    threads = max(1, min(threads, connections))
    return [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        url,
    ]


def parse_output(stdout: str) -> dict[str, Any]:
    """wrk's summary in the harness's units: latency in ms, errors by kind."""
    for line in stdout.splitlines():
        if line.startswith(MARK):
            raw = json.loads(line[len(MARK) :])
            break
    else:
        raise RuntimeError(f"wrk printed no summary:\n{stdout[-2000:]}")
    seconds = raw["duration_us"] / 1e6
    errors = {k: v for k, v in raw["errors"].items() if v}
    return {
        "generator": "wrk",
        "duration_s": round(seconds, 3),
        "requests": raw["requests"],
        "errors": errors,
        "error_count": sum(errors.values()),
        "rps": round(raw["requests"] / seconds, 1) if seconds else 0.0,
        "latency_ms": {k: round(v / 1000.0, 4) for k, v in raw["latency_us"].items()},
    }
