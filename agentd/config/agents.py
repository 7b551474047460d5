"""The model backends (``[[backends]]``) and the agents served on them (``[[agents]]``,
with their cache policy and tool limits)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .fields import check_http_url, check_name, check_webhook_url, one_of, opt, optional

BACKEND_TYPES = ("echo", "openai")
POLICIES = ("p2c", "least_inflight", "round_robin", "affinity")


PASSTHROUGH_ENDPOINTS = ("embeddings", "completions")


@dataclass(frozen=True)
class BackendConfig:
    """A pool of model nodes. ``echo`` is built in (for load tests); ``openai`` speaks the
    OpenAI Chat Completions API to each URL."""

    name: str = opt("echo", check=check_name)
    type: str = opt("echo", choices=BACKEND_TYPES)
    urls: tuple[str, ...] = opt((), check=check_http_url)
    # The API key is read from this environment variable, never from the file.
    api_key_env: str = opt("")
    policy: str = opt("p2c", choices=POLICIES)
    # The policy per request class ({ background = "least_inflight" }); a class not
    # listed uses `policy`. Checked in checks.py (a table's values have no opt()).
    policies: dict[str, str] = field(default_factory=dict, metadata={})
    # Calls in flight per node and worker process (0 = unlimited); past it calls wait.
    max_inflight: int = opt(0, min=0, max=1_000_000)
    # The share of max_inflight that calls of classes other than "interactive" may hold,
    # so background jobs always leave room for people chatting.
    background_share: float = opt(0.5, min=0.0, max=1.0)
    timeout_s: float = opt(60.0, min=0.1, max=3600.0)
    connect_timeout_s: float = opt(5.0, min=0.1, max=300.0)
    max_connections: int = opt(100, min=1, max=100000)
    breaker_failures: int = opt(5, min=1, max=1000)
    breaker_cooldown_s: float = opt(10.0, min=0.1, max=3600.0)
    # echo only: time to first token, and streaming speed (0 = all at once).
    latency_ms: float = opt(0.0, min=0.0, max=600000.0)
    tokens_per_s: float = opt(0.0, min=0.0, max=1e9)
    # The OpenAI endpoints besides chat that the nodes serve (passed through to them).
    endpoints: tuple[str, ...] = opt(PASSTHROUGH_ENDPOINTS, check=one_of(PASSTHROUGH_ENDPOINTS))


@dataclass(frozen=True)
class AgentCacheConfig:
    """Per agent: which replies are cached and for how long."""

    # off | deterministic (only requests with temperature 0) | always
    mode: str = opt("deterministic", choices=("off", "deterministic", "always"))
    ttl_s: float = opt(300.0, min=0.001, max=365 * 24 * 3600.0)
    max_bytes: int = opt(1024 * 1024, min=1, max=512 * 1024 * 1024)


@dataclass(frozen=True)
class ToolLimits:
    """An agent's own tool loop limits, ``[agents.tool_limits]``: 0 = the ``[tools]``
    value (see there what each means)."""

    max_steps: int = opt(0, min=0, max=1000)
    tool_timeout_s: float = opt(0.0, min=0.0, max=3600.0)
    max_tool_output_bytes: int = opt(0, min=0, max=64 * 1024 * 1024)
    max_turn_s: float = opt(0.0, min=0.0, max=86400.0)


@dataclass(frozen=True)
class AgentConfig:
    """An agent: what clients name as the OpenAI ``model``."""

    name: str = opt("echo", check=check_name)
    backend: str = opt("echo", check=check_name)
    # The model name sent upstream ("" = the agent's name).
    model: str = opt("")
    system_prompt: str = opt("")
    # Messages of session history sent with each turn.
    history: int = opt(20, min=0, max=10000)
    params: dict[str, Any] = field(default_factory=dict, metadata={})
    # Where this agent's background responses report ("" = [jobs] webhook_url).
    webhook_url: str = opt("", check=check_webhook_url)
    # The request class of this agent's background model calls ("" = "background");
    # its interactive calls are always "interactive".
    request_class: str = opt("", check=optional(check_name))
    cache: AgentCacheConfig = field(default_factory=AgentCacheConfig)
    # Share cached replies between tenants (off: each tenant has its own, since a shared
    # cache answers one tenant with another's reply to the same prompt).
    shared_cache: bool = opt(False)
    # The ``created`` of its model object (Unix seconds); 0: when the config was written
    # (the config file's modification time), the same on every worker and instance.
    created: int = opt(0, min=0, max=2**40)
    # Its tools: "label" (all of an MCP server's tools) or "label:tool" (one of them);
    # the label "agentd" names agentd's own tools (BUILTIN_TOOLS).
    tools: tuple[str, ...] = opt(())
    # Its own tool loop limits (0 = the [tools] value).
    tool_limits: ToolLimits = field(default_factory=ToolLimits)

    @property
    def upstream_model(self) -> str:
        """The model name its calls send upstream."""
        return self.model or self.name

    @property
    def background_class(self) -> str:
        """The request class its background (job) model calls carry."""
        return self.request_class or "background"
