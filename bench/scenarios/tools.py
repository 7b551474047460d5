"""What the agent tool loop costs: a chat turn that makes one MCP tool call, server-side,
as a ratio to calling the same tool directly with the ``mcp`` client SDK, and to the
plain echo turn without tools.

One MCP server (``bench/baselines/mcp_tools.py``, tool ``echo``) and agentd share the
server CPU. The tool turn is two model steps (the echo model scripts the call, then
answers ``echo: RESULT``) and one call through agentd's MCP session to the server; the
direct call is the load generator's own MCP session to the same server. agentd's CPU is
told apart from the tool server's (``extra_cpu_s`` of a run: the tool server's share).
"""

from __future__ import annotations

import json
import re
import urllib.request
from typing import Any

from .. import targets
from ..measure import Bench, Served
from ..stats import ratio
from .common import CHAT, Scenario
from .common import run_seconds as _secs

__all__ = ("TOOL_LOOP",)

MCP_PATH = "/mcp"
TEXT = "hello there"
ARGUMENTS = {"text": TEXT}
# The echo model reads "call NAME ARGUMENTS" as a tool call, then answers "NAME: RESULT".
TOOL_CHAT = json.dumps(
    {
        "model": "tooled",
        "messages": [{"role": "user", "content": f"call echo {json.dumps(ARGUMENTS)}"}],
    },
    separators=(",", ":"),
)
ANSWER = f"echo: {TEXT}"
TOOLS_CONFIG = """
[[mcp_servers]]
label = "bench"
url = "{url}"

[[agents]]
name = "tooled"
backend = "echo"
tools = ["bench"]
"""
METRICS = (
    ("rps", "turns/s", True),
    ("server_cpu_s_per_1k", "CPU s/1k turns", False),
    ("p99", "p99 ms", False),
)


def _post(url: str, body: str) -> tuple[int, dict[str, Any], str]:
    request = urllib.request.Request(
        url, data=body.encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, json.loads(response.read()), response.headers["Server-Timing"] or ""


def _check_turn(served: Served) -> dict[str, Any]:
    """One tool turn before the load: it must run the tool and answer with its result,
    in two model steps, or the figures would not be those of the loop."""
    status, body, timing = _post(served.target.url("/v1/chat/completions"), TOOL_CHAT)
    content = body["choices"][0]["message"]["content"] if status == 200 else None
    steps = re.search(r"steps;desc=(\d+)", timing)
    check = {"status": status, "content": content, "steps": int(steps.group(1)) if steps else None}
    if content != ANSWER or check["steps"] != 2 or 'tool;desc="bench/echo"' not in timing:
        raise RuntimeError(f"the tool turn did not run the tool: {check} (Server-Timing {timing})")
    return check


def _tool_calls(served: Served) -> dict[str, float]:
    """agentd's ``agentd_tool_calls_total`` by outcome (all its tools)."""
    with urllib.request.urlopen(served.target.url("/metrics"), timeout=10) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("agentd_tool_calls_total{"):
            outcome = re.search(r'outcome="([^"]*)"', line)
            key = outcome.group(1) if outcome else "?"
            out[key] = out.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def _per_1k(run: dict[str, Any], extra: bool) -> float | None:
    """CPU s per 1,000 of the run's requests: agentd's alone, or the tool server's."""
    requests = run.get("requests") or 0
    if not requests:
        return None
    cpu = run.get("extra_cpu_s") or 0.0
    if not extra:
        cpu = run["server_cpu_s"] - cpu
    return round(cpu / requests * 1000.0, 5)


def _ratios(
    bench: Bench, mine: dict[str, Any], theirs: dict[str, Any], baseline: str
) -> list[dict[str, Any]]:
    out = []
    for metric, unit, higher_better in METRICS:
        if metric == "p99":
            a, b = mine["latency_ms"]["p99"], theirs["latency_ms"]["p99"]
        else:
            a, b = mine.get(metric), theirs.get(metric)
        out.append(
            {
                "metric": metric,
                "unit": unit,
                "higher_is_better": higher_better,
                "concurrency": mine["concurrency"],
                "label": mine["label"],
                "target": mine["target"],
                "baseline": baseline,
                "value": a,
                "baseline_value": b,
                "ratio": ratio(a, b),
                "errors": (mine.get("error_count") or 0) + (theirs.get("error_count") or 0),
                "other_cpu": max(
                    mine.get("other_cpu_util") or 0.0, theirs.get("other_cpu_util") or 0.0
                ),
            }
        )
    return out


def run_tool_loop(bench: Bench) -> None:
    s = bench.settings
    levels = sorted({1, s.main_concurrency})
    bench.record.setdefault("notes", []).append(
        f"agentd (1 worker) and the MCP tool server on CPU {s.server_cpus}, the Python load "
        f"generator on CPUs {s.load_cpus}, at {', '.join(map(str, levels))} connection(s). "
        "agentd = a chat turn of the agent 'tooled' (two echo model steps, one call of the "
        "tool echo through agentd's MCP session); mcp-direct = the same call from the "
        "load generator's own MCP session (mcp client SDK; its client-side cost is on the "
        "load CPUs); agentd-plain = the echo chat turn without tools. Server CPU of agentd "
        "includes the tool server's (extra_cpu_s is its share)."
    )
    direct: dict[int, dict[str, Any]] = {}
    loop: dict[int, dict[str, Any]] = {}
    plain: dict[int, dict[str, Any]] = {}
    figures: dict[str, Any] = {}
    with bench.serve(targets.mcp_tools(bench.workdir, s.server_cpus)) as mcp:
        for c in levels:
            direct[c] = bench.mcp_calls(
                mcp,
                MCP_PATH,
                tool="echo",
                arguments=ARGUMENTS,
                expect=TEXT,
                concurrency=c,
                label="tool call",
                name="mcp-direct",
            )
        config = TOOLS_CONFIG.format(url=mcp.target.url(MCP_PATH))
        cm = targets.agentd(bench.workdir, s.server_cpus, extra_config=config)
        with bench.serve(cm, extra_pids=mcp.target.pids()) as served:
            figures["turn_check"] = _check_turn(served)
            before = _tool_calls(served)
            for c in levels:
                loop[c] = bench.http(
                    served,
                    "/v1/chat/completions",
                    method="POST",
                    body=TOOL_CHAT,
                    concurrency=c,
                    generator="python",
                    label="tool turn",
                )
            after = _tool_calls(served)
            for c in levels:
                plain[c] = bench.http(
                    served,
                    "/v1/chat/completions",
                    method="POST",
                    body=CHAT,
                    concurrency=c,
                    generator="python",
                    label="plain turn",
                    name="agentd-plain",
                )
    # Every call the tool turns made (warm-ups included) answered: a turn whose call
    # failed still answers 200, with the error as the tool's result.
    figures["tool_calls_during_load"] = {k: after[k] - before.get(k, 0.0) for k in after}
    ratios = bench.record.setdefault("ratios", [])
    for c in levels:
        ratios += _ratios(bench, loop[c], direct[c], "mcp-direct")
        ratios += _ratios(bench, loop[c], plain[c], "agentd-plain")
        figures[f"cpu_ms_per_turn_c{c}"] = {
            "agentd_tool_turn": _per_1k(loop[c], extra=False),
            "agentd_plain_turn": _per_1k(plain[c], extra=False),
            "tool_server_in_turn": _per_1k(loop[c], extra=True),
            "tool_server_direct_call": direct[c]["server_cpu_s_per_1k"],
        }
    # The median is the latency figure to subtract; tails are compared as ratios (above).
    one_loop, one_direct = loop[1]["latency_ms"]["p50"], direct[1]["latency_ms"]["p50"]
    if one_loop is not None and one_direct is not None:
        figures["added_p50_ms_per_tool_call_c1"] = round(one_loop - one_direct, 4)
    main = figures[f"cpu_ms_per_turn_c{levels[-1]}"]
    if main["agentd_tool_turn"] is not None and main["agentd_plain_turn"] is not None:
        figures["added_agentd_cpu_ms_per_tool_call"] = round(
            main["agentd_tool_turn"] - main["agentd_plain_turn"], 4
        )
    bench.record["figures"] = figures


TOOL_LOOP = Scenario(
    "tool-loop",
    "a chat turn with one MCP tool call run server-side by agentd's agent loop (echo model, "
    "a local streamable-HTTP MCP server), against the same call made directly with the mcp "
    "client SDK, and against the plain echo turn without tools",
    run_tool_loop,
    lambda s: _secs(s, 6, 2) + 2.0,
)
