"""The whole configuration: :class:`Config`, one field per section."""

from __future__ import annotations

from dataclasses import dataclass, field

from .agents import AgentConfig, BackendConfig
from .auth import AuthConfig
from .fields import opt
from .jobs import JobsConfig, PartitionConfig
from .server import LogConfig, ServerConfig, WebSocketConfig
from .storage import CacheConfig, RedisConfig, SessionsConfig, StateConfig
from .tools import McpServerConfig, ToolsConfig


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    sessions: SessionsConfig = field(default_factory=SessionsConfig)
    state: StateConfig = field(default_factory=StateConfig)
    websocket: WebSocketConfig = field(default_factory=WebSocketConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    jobs: JobsConfig = field(default_factory=JobsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    backends: tuple[BackendConfig, ...] = opt((BackendConfig(),))
    agents: tuple[AgentConfig, ...] = opt((AgentConfig(),))
    partitions: tuple[PartitionConfig, ...] = opt(())
    tools: ToolsConfig = field(default_factory=ToolsConfig)
    mcp_servers: tuple[McpServerConfig, ...] = opt(())
    source: str | None = field(default=None, metadata={"internal": True})
    # When the config was written (the file's modification time), else loaded: Unix
    # seconds, the default ``created`` of the agents' model objects.
    written_at: int = field(default=0, compare=False, metadata={"internal": True})

    @property
    def mode(self) -> str:
        """``standalone`` (in memory), ``redis``, ``sharded`` or ``cluster``."""
        if self.redis.cluster:
            return "cluster"
        if not self.redis.urls:
            return "standalone"
        return "redis" if len(self.redis.urls) == 1 else "sharded"

    def all_partitions(self) -> tuple[PartitionConfig, ...]:
        """Every partition, ``default`` included (from ``[jobs]`` unless defined)."""
        if any(p.name == "default" for p in self.partitions):
            return self.partitions
        default = PartitionConfig("default", (), self.jobs.concurrency, self.jobs.queue_shards, 0)
        return (*self.partitions, default)

    def partition_of(self, agent: str) -> str:
        for p in self.partitions:
            if agent in p.agents:
                return p.name
        return "default"
