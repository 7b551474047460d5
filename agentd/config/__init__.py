"""agentd's configuration: the TOML schema, its defaults, env overrides and validation.

The schema is a tree of frozen dataclasses. Each field carries its constraints in
``metadata`` (see :func:`opt`); :func:`load` reads a TOML file, applies
``AGENTD_<SECTION>__<KEY>`` environment overrides, validates everything and either
returns a :class:`Config` or raises :class:`ConfigError` listing *every* problem, each
prefixed with the key path (``server.workers: must be >= 1, got 0``).

Where each part lives: :mod:`.fields` (how a field is declared), the sections by group
(:mod:`.server`, :mod:`.storage`, :mod:`.agents`, :mod:`.jobs`, :mod:`.auth`,
:mod:`.tools`; Redis URLs in :mod:`.redis_urls`), the root :class:`Config` in
:mod:`.root`, reading a table by its fields in :mod:`.validate`, the rules across keys in
:mod:`.checks`, and files, environment and TOML output in :mod:`.loader`. Import the
names from here.
"""

from __future__ import annotations

from .agents import (
    BACKEND_TYPES,
    PASSTHROUGH_ENDPOINTS,
    POLICIES,
    AgentCacheConfig,
    AgentConfig,
    BackendConfig,
    ToolLimits,
)
from .auth import (
    SCOPES,
    TENANT_RE,
    TOKEN_ALGORITHMS,
    AuthConfig,
    LimitsConfig,
    TenantConfig,
    TokensConfig,
)
from .fields import opt
from .jobs import JobsConfig, PartitionConfig
from .loader import DEFAULT_FILE, ENV_PREFIX, ConfigError, dump_toml, from_dict, load
from .redis_urls import (
    SENTINEL_PORT,
    SENTINEL_SCHEME,
    SentinelUrl,
    parse_sentinel_url,
    redact_url,
)
from .root import Config
from .server import LogConfig, ServerConfig, WebSocketConfig, is_loopback, parse_bind
from .storage import REPLICA_READS, CacheConfig, RedisConfig, SessionsConfig, StateConfig
from .tools import (
    BUILTIN_LABEL,
    BUILTIN_TOOLS,
    ENV_REF,
    LABEL_RE,
    McpServerConfig,
    ToolsConfig,
)

__all__ = (
    "BACKEND_TYPES",
    "BUILTIN_LABEL",
    "BUILTIN_TOOLS",
    "DEFAULT_FILE",
    "ENV_PREFIX",
    "ENV_REF",
    "LABEL_RE",
    "PASSTHROUGH_ENDPOINTS",
    "POLICIES",
    "REPLICA_READS",
    "SCOPES",
    "SENTINEL_PORT",
    "SENTINEL_SCHEME",
    "TENANT_RE",
    "TOKEN_ALGORITHMS",
    "AgentCacheConfig",
    "AgentConfig",
    "AuthConfig",
    "BackendConfig",
    "CacheConfig",
    "Config",
    "ConfigError",
    "JobsConfig",
    "LimitsConfig",
    "LogConfig",
    "McpServerConfig",
    "PartitionConfig",
    "RedisConfig",
    "SentinelUrl",
    "ServerConfig",
    "SessionsConfig",
    "StateConfig",
    "TenantConfig",
    "TokensConfig",
    "ToolLimits",
    "ToolsConfig",
    "WebSocketConfig",
    "dump_toml",
    "from_dict",
    "is_loopback",
    "load",
    "opt",
    "parse_bind",
    "parse_sentinel_url",
    "redact_url",
)
