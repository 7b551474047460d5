"""MCP tool calls' metrics: by server, tool and outcome, and their latency."""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Histogram

from .process import ENV, render
from .worker import Metrics

__all__ = ("TOOL_BUCKETS", "ToolMetrics")

# Tool calls take from milliseconds (a local lookup) to minutes (a crawl, a build).
TOOL_BUCKETS = (
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
)  # fmt: skip


class ToolMetrics:
    """MCP tool calls of a worker: by server, tool and outcome (ok, error, timeout,
    unavailable, failed, cancelled), and their latency by server and tool. Tool names come from
    the configured servers' lists, so the series stay bounded."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        if metrics is not None:
            reg = metrics._registry
        else:
            reg = None if os.environ.get(ENV) else CollectorRegistry()
        self._registry = reg
        self.calls = Counter(
            "agentd_tool_calls",
            "Tool calls (MCP servers', and agentd's own as server \"agentd\") by server, "
            "tool and outcome (ok, error, timeout, unavailable, failed, cancelled)",
            ["server", "tool", "outcome"],
            registry=reg,
        )
        self.duration = Histogram(
            "agentd_tool_duration_seconds",
            "Time from starting an MCP tool call to its result, by server and tool",
            ["server", "tool"],
            buckets=TOOL_BUCKETS,
            registry=reg,
        )

    def call(self, server: str, tool: str, outcome: str, seconds: float) -> None:
        self.calls.labels(server, tool, outcome).inc()
        self.duration.labels(server, tool).observe(seconds)

    def render(self) -> bytes:
        """These metrics alone (tests); in a worker, ``Metrics.render`` shows them."""
        return render(self._registry)
