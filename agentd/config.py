"""agentd's configuration: the TOML schema, its defaults, env overrides and validation.

The schema is a tree of frozen dataclasses. Each field carries its constraints in
``metadata`` (see :func:`opt`); :func:`load` reads a TOML file, applies
``AGENTD_<SECTION>__<KEY>`` environment overrides, validates everything and either
returns a :class:`Config` or raises :class:`ConfigError` listing *every* problem, each
prefixed with the key path (``server.workers: must be >= 1, got 0``).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import time
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

__all__ = (
    "BUILTIN_LABEL",
    "BUILTIN_TOOLS",
    "SCOPES",
    "TENANT_RE",
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
    "ServerConfig",
    "SessionsConfig",
    "StateConfig",
    "TenantConfig",
    "TokensConfig",
    "ToolLimits",
    "ToolsConfig",
    "WebSocketConfig",
    "dump_toml",
    "is_loopback",
    "load",
    "parse_bind",
)

ENV_PREFIX = "AGENTD_"
DEFAULT_FILE = "config.toml"


class ConfigError(Exception):
    """The configuration is invalid; ``errors`` holds one message per problem."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("invalid configuration:\n  " + "\n  ".join(errors))


def opt(
    default: Any,
    *,
    min: float | None = None,
    max: float | None = None,
    choices: tuple[str, ...] | None = None,
    auto: Any = None,
    check: typing.Callable[[Any], str | None] | None = None,
) -> Any:
    """Declare a config field: its default and the constraints :func:`load` enforces.

    ``auto`` is a zero-argument callable: the string ``"auto"`` is then accepted and
    replaced by its result. ``check`` returns an error message or ``None``.
    """
    meta = {"min": min, "max": max, "choices": choices, "auto": auto, "check": check}
    if isinstance(default, (list, dict)):
        raise TypeError("use a tuple for sequence defaults")
    return field(default=default, metadata=meta)


def parse_bind(value: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[v6]:PORT`` for IPv6) into its parts; ``ValueError`` if malformed."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"must be HOST:PORT, got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"an IPv6 host must be in brackets ([::1]:8080), got {value!r}")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be 0..65535, got {port}")
    return host, port


_INSTANCE_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def _check_instance_id(value: str) -> str | None:
    if value and not _INSTANCE_ID_RE.fullmatch(value):
        return f"must be 1-128 of A-Z, a-z, 0-9, '.', '_', ':' and '-', got {value[:140]!r}"
    return None


def _check_bind(value: str) -> str | None:
    try:
        parse_bind(value)
    except ValueError as exc:
        return str(exc)
    return None


SENTINEL_SCHEME = "redis+sentinel://"
SENTINEL_PORT = 26379
_SENTINEL_QUERY = ("sentinel_username", "sentinel_password")


@dataclass(frozen=True)
class SentinelUrl:
    """A Sentinel-monitored master/replica group, from
    ``redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/group[/db]``
    (query: ``sentinel_username``, ``sentinel_password`` for the sentinels themselves).
    The group's name, not its current master's address, is its identity."""

    sentinels: tuple[tuple[str, int], ...]
    group: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None

    @property
    def addresses(self) -> str:
        """The sentinels as ``host:port,host:port`` (no credentials: safe to log)."""
        return ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.sentinels)


def _sentinel_host(item: str) -> tuple[str, int]:
    if item.startswith("["):  # [IPv6]:port
        host, _, rest = item[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else rest
    else:
        host, _, port_text = item.partition(":")
    if not host:
        raise ValueError(f"empty sentinel host in {item!r}")
    try:
        port = int(port_text) if port_text else SENTINEL_PORT
    except ValueError:
        raise ValueError(f"bad sentinel port in {item!r}") from None
    if not 0 < port < 65536:
        raise ValueError(f"sentinel port must be 1..65535, got {port}")
    return host, port


def redact_url(url: str) -> str:
    """The URL without its password (a Redis URL may carry one), for logs and errors."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + host))


def parse_sentinel_url(url: str) -> SentinelUrl:
    """The group a ``redis+sentinel://`` URL names; ValueError says what is wrong."""
    if not url.startswith(SENTINEL_SCHEME):
        raise ValueError(f"must start with {SENTINEL_SCHEME}")
    rest, _, query = url[len(SENTINEL_SCHEME) :].partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    if not at:
        hosts = netloc
    username = password = None
    if userinfo:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    if not hosts:
        raise ValueError("names no sentinel (host:port[,host:port...])")
    sentinels = tuple(_sentinel_host(h) for h in hosts.split(","))
    parts = [p for p in path.split("/") if p]
    if not parts:
        raise ValueError("names no group: add /<master name> after the sentinels")
    if len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
        raise ValueError(f"path must be /<master name>[/<db number>], got /{path}")
    options = parse_qs(query, keep_blank_values=True)
    unknown = sorted(set(options) - set(_SENTINEL_QUERY))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)}; known: {', '.join(_SENTINEL_QUERY)}"
        )
    return SentinelUrl(
        sentinels=sentinels,
        group=unquote(parts[0]),
        db=int(parts[1]) if len(parts) == 2 else 0,
        username=username,
        password=password,
        sentinel_username=options.get("sentinel_username", [None])[-1],
        sentinel_password=options.get("sentinel_password", [None])[-1],
    )


def _check_redis_url(value: str) -> str | None:
    if value.startswith(SENTINEL_SCHEME):
        try:
            parse_sentinel_url(value)
        except ValueError as exc:
            return f"{exc}; expected {SENTINEL_SCHEME}host:port[,host:port...]/<master name>"
        return None
    if not value.startswith(("redis://", "rediss://", "unix://")):
        return f"must start with redis://, rediss://, unix:// or {SENTINEL_SCHEME}, got {value!r}"
    return None


def _check_plugin(value: str) -> str | None:
    module, sep, attr = value.partition(":")
    names = [*module.split("."), attr]
    if not sep or not all(n.isidentifier() for n in names):
        return f"must be 'package.module:function', got {value!r}"
    return None


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class ServerConfig:
    bind: str = opt("127.0.0.1:8080", check=_check_bind)
    workers: int = opt("auto", min=1, max=1024, auto=_cpu_count)
    backlog: int = opt(2048, min=1, max=65535)
    reuse_port: bool = opt(True)
    shutdown_timeout: float = opt(30.0, min=0.0, max=3600.0)
    # Seconds an instance told to stop keeps serving with /readyz failing, so load
    # balancers take it out of rotation before it drains.
    drain_delay_s: float = opt(0.0, min=0.0, max=3600.0)
    max_request_bytes: int = opt(4 * 1024 * 1024, min=1024, max=1024 * 1024 * 1024)
    keepalive_timeout: float = opt(75.0, min=0.0, max=3600.0)
    # The front (server/front.py) answers health checks and plain chat completions itself
    # and gives every other request to aiohttp; false: aiohttp reads every connection.
    front: bool = opt(True)
    heartbeat_timeout: float = opt(30.0, min=1.0, max=3600.0)
    plugins: tuple[str, ...] = opt((), check=_check_plugin)
    # Turns one worker runs at once; beyond it requests get 503 overloaded at once.
    max_inflight_turns: int = opt(1024, min=1, max=1_000_000)
    # Seconds a whole turn (waiting for the session, the model, storing) may take.
    turn_timeout: float = opt(120.0, min=0.1, max=86400.0)
    # The job partitions this instance consumes (empty: all); it serves interactive
    # requests for every agent either way.
    partitions: tuple[str, ...] = opt(())
    # This instance's name in the service registry ("": hostname:port:start time).
    instance_id: str = opt("", check=_check_instance_id)


REPLICA_READS = ("state", "cache", "keys")


def _check_replica_read(value: str) -> str | None:
    if value not in REPLICA_READS:
        return f"must be one of {', '.join(REPLICA_READS)}; got {value!r}"
    return None


@dataclass(frozen=True)
class RedisConfig:
    urls: tuple[str, ...] = opt((), check=_check_redis_url)
    cluster: bool = opt(False)
    pool_size: int = opt(64, min=1, max=10000)
    connect_timeout: float = opt(1.0, min=0.01, max=60.0)
    timeout: float = opt(2.0, min=0.01, max=300.0)
    # Seconds a shard found unreachable is failed fast before agentd tries it again.
    down_retry: float = opt(1.0, min=0.0, max=60.0)
    # Durable acknowledgements: a write agentd acknowledges (a turn, a state write, a
    # job submission, a response record) is answered only after this many replicas
    # confirmed it (WAIT, pipelined with the write); 0 = as soon as the master has it.
    wait_replicas: int = opt(0, min=0, max=100)
    # Milliseconds a write waits for those confirmations; fewer in time is 503
    # store_not_durable (the write is applied on the master, not confirmed durable).
    wait_timeout_ms: int = opt(500, min=1, max=300000)
    # WAITAOF (Redis >= 7.2) instead of WAIT: the replicas confirm the write is fsynced
    # to their append-only file, not only received; wait_local_aof: the master's own too.
    wait_aof: bool = opt(False)
    wait_local_aof: bool = opt(False)
    # Reads that replicas may serve (docs/state.md#reads-from-replicas): "state" (shared
    # state documents read by GET / state_get), "cache" (L2 response cache entries),
    # "keys" (API key records a worker refreshes); empty: every read on the master.
    replica_reads: tuple[str, ...] = opt((), check=_check_replica_read)
    # Staleness bound, seconds: a replica is read only while it holds every write its
    # master acknowledged this long ago (checked every quarter of it).
    replica_max_lag: float = opt(1.0, min=0.1, max=60.0)


@dataclass(frozen=True)
class SessionsConfig:
    ttl: int = opt(7 * 24 * 3600, min=1, max=10 * 365 * 24 * 3600)
    max_messages: int = opt(1000, min=1, max=1_000_000)
    max_message_bytes: int = opt(256 * 1024, min=64, max=64 * 1024 * 1024)
    # What a turn gets while another turn of the same session runs: wait for it
    # (enqueue), 409 session_busy (reject), or stop it and go next (interrupt).
    concurrent_turns: str = opt("enqueue", choices=("enqueue", "reject", "interrupt"))
    # Seconds a turn's session lease lasts unless renewed (it is, every third of it): a
    # session whose turn died with its process is free again after at most this long.
    turn_lease: float = opt(2.0, min=0.5, max=3600.0)


@dataclass(frozen=True)
class WebSocketConfig:
    max_frame_bytes: int = opt(1024 * 1024, min=1024, max=64 * 1024 * 1024)
    max_inflight_turns: int = opt(4, min=1, max=1000)
    send_queue: int = opt(256, min=1, max=100000)
    idle_timeout: float = opt(300.0, min=1.0, max=86400.0)
    heartbeat: float = opt(30.0, min=1.0, max=3600.0)


@dataclass(frozen=True)
class StateConfig:
    max_value_bytes: int = opt(1024 * 1024, min=64, max=512 * 1024 * 1024)


BACKEND_TYPES = ("echo", "openai")
POLICIES = ("p2c", "least_inflight", "round_robin", "affinity")


def _check_http_url(value: str) -> str | None:
    if not value.startswith(("http://", "https://")):
        return f"must start with http:// or https://, got {value!r}"
    return None


def _check_webhook_url(value: str) -> str | None:
    return _check_http_url(value) if value else None


def _check_name(value: str) -> str | None:
    if not value or not all(c.isalnum() or c in "._-" for c in value) or len(value) > 64:
        return f"must be 1-64 characters of letters, digits, '.', '_' or '-', got {value!r}"
    return None


PASSTHROUGH_ENDPOINTS = ("embeddings", "completions")


def _check_endpoint(value: str) -> str | None:
    if value not in PASSTHROUGH_ENDPOINTS:
        return f"must be one of {', '.join(PASSTHROUGH_ENDPOINTS)}; got {value!r}"
    return None


def _check_request_class(value: str) -> str | None:
    return _check_name(value) if value else None


@dataclass(frozen=True)
class BackendConfig:
    """A pool of model nodes. ``echo`` is built in (for load tests); ``openai`` speaks the
    OpenAI Chat Completions API to each URL."""

    name: str = opt("echo", check=_check_name)
    type: str = opt("echo", choices=BACKEND_TYPES)
    urls: tuple[str, ...] = opt((), check=_check_http_url)
    # The API key is read from this environment variable, never from the file.
    api_key_env: str = opt("")
    policy: str = opt("p2c", choices=POLICIES)
    # The policy per request class ({ background = "least_inflight" }); a class not
    # listed uses `policy`. Checked in _cross_checks (a table's values have no opt()).
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
    endpoints: tuple[str, ...] = opt(PASSTHROUGH_ENDPOINTS, check=_check_endpoint)


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

    name: str = opt("echo", check=_check_name)
    backend: str = opt("echo", check=_check_name)
    # The model name sent upstream ("" = the agent's name).
    model: str = opt("")
    system_prompt: str = opt("")
    # Messages of session history sent with each turn.
    history: int = opt(20, min=0, max=10000)
    params: dict[str, Any] = field(default_factory=dict, metadata={})
    # Where this agent's background responses report ("" = [jobs] webhook_url).
    webhook_url: str = opt("", check=_check_webhook_url)
    # The request class of this agent's background model calls ("" = "background");
    # its interactive calls are always "interactive".
    request_class: str = opt("", check=_check_request_class)
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


@dataclass(frozen=True)
class CacheConfig:
    """The response cache's tiers (per agent policy is in ``[agents.cache]``)."""

    l1_max_bytes: int = opt(64 * 1024 * 1024, min=0, max=64 * 1024**3)
    # Seconds between a worker's checks of the cache epoch: the longest an L1 entry can
    # outlive a cache clear whose invalidation message the worker missed.
    l1_max_staleness: float = opt(5.0, min=0.1, max=3600.0)
    # The L3 file (SQLite, shared by the instance's workers); "" turns L3 off.
    disk_path: str = opt("agentd-cache/responses.sqlite")
    disk_max_bytes: int = opt(1024**3, min=1024, max=10 * 1024**4)
    # Seconds a single-flight leader's lock lasts unless renewed (a dead leader's
    # followers take over after at most this long).
    flight_lease: float = opt(10.0, min=0.1, max=600.0)
    # L2 on a Redis of its own (one server or a Sentinel group; "" = on the store's
    # servers): one that may evict (allkeys-lru) while the store's must not.
    redis_url: str = opt("", check=lambda v: _check_redis_url(v) if v else None)


@dataclass(frozen=True)
class JobsConfig:
    """Background responses: the job queue, its consumers and webhooks."""

    # Seconds a running job's lease lasts unless renewed (it is, every third of it): a
    # job whose worker died is taken over by another consumer after about this long.
    lease_s: float = opt(30.0, min=0.5, max=3600.0)
    # Deliveries of one job before it goes to the dead-letter stream as failed.
    max_attempts: int = opt(3, min=1, max=100)
    # Jobs waiting or running per partition; beyond it a submission gets 429.
    max_queued: int = opt(100_000, min=1, max=1_000_000_000)
    # Seconds a background turn may run (the model, the session, storing).
    timeout_s: float = opt(3600.0, min=0.1, max=7 * 86400.0)
    # Seconds a response's object is kept after it is created, and its events (for
    # resuming a stream) after the last one (at most result_ttl_s).
    result_ttl_s: int = opt(7 * 24 * 3600, min=1, max=10 * 365 * 24 * 3600)
    events_ttl_s: int = opt(24 * 3600, min=1, max=10 * 365 * 24 * 3600)
    # The default partition's jobs run at once per worker, and its streams.
    concurrency: int = opt(32, min=1, max=100_000)
    queue_shards: int = opt(4, min=1, max=1024)
    # While a worker serves interactive turns, a partition starts new jobs only while
    # fewer than this share of its concurrency run (at least one): people first.
    busy_share: float = opt(0.125, min=0.0, max=1.0)
    # Where response.completed / failed / cancelled events go ("" = nowhere); an
    # agent's own webhook_url overrides it. The signing secret is read from the
    # environment variable named here (Standard Webhooks "whsec_..." format).
    webhook_url: str = opt("", check=_check_webhook_url)
    webhook_secret_env: str = opt("AGENTD_WEBHOOK_SECRET")


@dataclass(frozen=True)
class PartitionConfig:
    """A group of agents whose jobs have their own streams, limits and consumers."""

    name: str = opt("default", check=_check_name)
    agents: tuple[str, ...] = opt(())
    # Jobs of this partition running at once per worker process.
    concurrency: int = opt(32, min=1, max=100_000)
    # Streams (on different hash slots) that hold the partition's queue.
    queue_shards: int = opt(4, min=1, max=1024)
    # Interactive turns of its agents one worker runs at once (0 = only the worker's
    # server.max_inflight_turns): one partition's surge cannot take every worker.
    max_inflight_turns: int = opt(0, min=0, max=1_000_000)


TENANT_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
SCOPES = ("chat", "responses", "sessions", "state", "admin")
TOKEN_ALGORITHMS = ("HS256", "RS256", "ES256")


def _check_tenant(value: str) -> str | None:
    if not TENANT_RE.fullmatch(value):
        return f"must be 1-64 of a-z, 0-9, _ and -, starting with a letter or digit; got {value!r}"
    return None


@dataclass(frozen=True)
class LimitsConfig:
    """Rate limits and quotas (0 = no limit), per key or per tenant."""

    requests_per_minute: int = opt(0, min=0, max=10**9)
    # Prompt + completion tokens, from the upstream's usage (or an estimate).
    tokens_per_minute: int = opt(0, min=0, max=10**12)
    max_concurrent_turns: int = opt(0, min=0, max=10**6)
    tokens_per_day: int = opt(0, min=0, max=10**15)
    tokens_per_month: int = opt(0, min=0, max=10**15)


@dataclass(frozen=True)
class TenantConfig:
    """One tenant's own limits (every other tenant has ``[auth.tenant_limits]``)."""

    name: str = opt("", check=_check_tenant)
    limits: LimitsConfig = field(default_factory=LimitsConfig)


@dataclass(frozen=True)
class TokensConfig:
    """Connection tokens (JWTs) minted by the operator's own backend for end users."""

    # "" = connection tokens are not accepted.
    algorithm: str = opt("", choices=("", *TOKEN_ALGORITHMS))
    # HS256: the shared secret is read from this environment variable.
    secret_env: str = opt("AGENTD_TOKEN_SECRET")
    # RS256 / ES256: the PEM file of the public key.
    public_key_file: str = opt("")
    # When set, a token's ``iss`` / ``aud`` must match.
    issuer: str = opt("")
    audience: str = opt("")
    # Clock skew tolerated on ``exp`` and ``nbf``, in seconds.
    leeway_s: float = opt(30.0, min=0.0, max=3600.0)
    # A WebSocket whose token expired is closed this long after, unless refreshed.
    ws_grace_s: float = opt(30.0, min=0.0, max=3600.0)


@dataclass(frozen=True)
class AuthConfig:
    """Who may call agentd: see docs/auth.md."""

    # none: anyone who reaches the port; keys: API keys and connection tokens.
    mode: str = opt("none", choices=("none", "keys"))
    # Run with mode = "none" on an address other than loopback (refused otherwise).
    allow_open: bool = opt(False)
    # The environment variable holding the operator's admin key (never written to disk).
    admin_key_env: str = opt("AGENTD_ADMIN_KEY")
    # Seconds a worker trusts a key record it read; revocations are pushed sooner.
    key_cache_s: float = opt(2.0, min=0.0, max=3600.0)
    # Seconds an unknown key is remembered as unknown (bounds look-ups under a flood).
    negative_cache_s: float = opt(1.0, min=0.0, max=60.0)
    # Store look-ups per second a worker makes for key ids it has never seen (0 =
    # unbounded); past it such keys get 503 and a retry.
    key_lookups_per_s: float = opt(200.0, min=0.0, max=1e6)
    # What a request gets when the shard holding its limits is down: refused (closed,
    # 503) or admitted unlimited (open).
    limits_unavailable: str = opt("closed", choices=("closed", "open"))
    # Limits every tenant has unless ``[[auth.tenants]]`` names it.
    tenant_limits: LimitsConfig = field(default_factory=LimitsConfig)
    tenants: tuple[TenantConfig, ...] = opt(())
    tokens: TokensConfig = field(default_factory=TokensConfig)

    def limits_of(self, tenant: str) -> LimitsConfig:
        for t in self.tenants:
            if t.name == tenant:
                return t.limits
        return self.tenant_limits


# -- tools: MCP servers and the agent loop's limits (docs/tools.md) -----------------

LABEL_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
# A header or environment value of this form names a variable of agentd's environment
# (read when the connection opens): secrets stay out of the file.
ENV_REF = "env:"
# The label of agentd's own tools (other agents, shared state), which no MCP server may
# take: an agent names them as "agentd" (all) or "agentd:NAME", like a server's.
BUILTIN_LABEL = "agentd"
BUILTIN_TOOLS = ("call_agent", "state_get", "state_put", "state_patch")


def _check_label(value: str) -> str | None:
    if not LABEL_RE.fullmatch(value):
        return f"must be 1-64 letters, digits, '_' or '-', got {value!r}"
    return None


def _check_mcp_url(value: str) -> str | None:
    return _check_http_url(value) if value else None


@dataclass(frozen=True)
class McpServerConfig:
    """An MCP tool server: streamable HTTP (``url``) or a local process on stdio
    (``command``), used by the agents that name its label."""

    label: str = opt("", check=_check_label)
    url: str = opt("", check=_check_mcp_url)
    # HTTP headers sent with every request; a value "env:NAME" is read from $NAME.
    headers: dict[str, str] = field(default_factory=dict, metadata={})
    command: str = opt("")
    args: tuple[str, ...] = opt(())
    # Environment of the process (besides PATH, HOME, ...); "env:NAME" is read from $NAME.
    env: dict[str, str] = field(default_factory=dict, metadata={})
    # One call's deadline and the largest result kept, whatever the agent's limits.
    timeout_s: float = opt(60.0, min=0.001, max=3600.0)
    max_output_bytes: int = opt(1024 * 1024, min=1, max=64 * 1024 * 1024)

    @property
    def transport(self) -> str:
        return "http" if self.url else "stdio"


@dataclass(frozen=True)
class ToolsConfig:
    """Tool limits every agent has, and the tool servers requests may name."""

    # URL prefixes a Responses API request may name as an MCP tool's server_url
    # (empty: none, only the configured labels).
    allowed_server_urls: tuple[str, ...] = opt((), check=_check_http_url)
    # Model calls in one turn (each may ask for tools).
    max_steps: int = opt(8, min=1, max=1000)
    # One tool call's deadline, in seconds (also bounded by its server's timeout_s).
    tool_timeout_s: float = opt(30.0, min=0.001, max=3600.0)
    # The largest tool result the model sees, in bytes (also bounded by its server's).
    max_tool_output_bytes: int = opt(65536, min=1, max=64 * 1024 * 1024)
    # The whole turn's deadline, model and tool calls included, in seconds.
    max_turn_s: float = opt(300.0, min=0.001, max=86400.0)
    # How deep agents may call agents (call_agent): a client's turn is at depth 0, the
    # turn it calls at 1, and a call that would go deeper is an error result.
    max_agent_depth: int = opt(3, min=1, max=32)

    def limits_for(self, agent: AgentConfig) -> ToolLimits:
        """The agent's limits: its own where set, else these (all non-zero)."""
        own, base = agent.tool_limits, self
        return ToolLimits(
            max_steps=own.max_steps or base.max_steps,
            tool_timeout_s=own.tool_timeout_s or base.tool_timeout_s,
            max_tool_output_bytes=own.max_tool_output_bytes or base.max_tool_output_bytes,
            max_turn_s=own.max_turn_s or base.max_turn_s,
        )

    def allows_url(self, url: str) -> bool:
        """Whether ``url`` is under one of the allowed prefixes, at a path boundary
        (``https://tools.example`` does not allow ``https://tools.example.evil``)."""
        for prefix in self.allowed_server_urls:
            if url == prefix:
                return True
            if url.startswith(prefix) and (prefix.endswith("/") or url[len(prefix)] in "/?#"):
                return True
        return False


def _check_tools(config: Config, bad: typing.Callable[..., bool], errors: list[str]) -> None:
    labels: list[str] = []
    for i, server in enumerate(config.mcp_servers):
        where = f"mcp_servers[{i}]"
        if server.label == BUILTIN_LABEL:
            errors.append(f"{where}.label: {BUILTIN_LABEL!r} is reserved for agentd's own tools")
        elif server.label in labels:
            errors.append(f"{where}.label: {server.label!r} is defined twice")
        labels.append(server.label)
        if bool(server.url) == bool(server.command) and not bad(f"{where}.url"):
            errors.append(
                f"{where}: set either url (streamable HTTP) or command (stdio), "
                f"{'not both' if server.url else 'one of them'}"
            )
        if server.command and server.headers:
            errors.append(f"{where}.headers: only for a url (streamable HTTP) server")
        if server.url and (server.args or server.env):
            errors.append(f"{where}: args and env are only for a command (stdio) server")
        for table in ("headers", "env"):
            for key, value in getattr(server, table).items():
                if not isinstance(value, str):
                    errors.append(f"{where}.{table}.{key}: expected a string, got {value!r}")
                elif value.startswith(ENV_REF) and not value[len(ENV_REF) :]:
                    errors.append(f"{where}.{table}.{key}: 'env:' needs a variable name")
    if bad("mcp_servers"):
        return
    for i, agent in enumerate(config.agents):
        for j, ref in enumerate(agent.tools):
            label, _, tool = ref.partition(":")
            if label == BUILTIN_LABEL and tool and tool not in BUILTIN_TOOLS:
                errors.append(
                    f"agents[{i}].tools[{j}]: agentd has no tool {tool!r} "
                    f"(its tools: {', '.join(BUILTIN_TOOLS)})"
                )
            elif label != BUILTIN_LABEL and label not in labels:
                errors.append(
                    f"agents[{i}].tools[{j}]: no MCP server labelled {label!r} "
                    f"(declared: {', '.join(labels) or 'none'})"
                )
            elif ":" in ref and not tool:
                errors.append(f"agents[{i}].tools[{j}]: {ref!r} names no tool after ':'")


@dataclass(frozen=True)
class LogConfig:
    level: str = opt("info", choices=("debug", "info", "warning", "error"))
    format: str = opt("text", choices=("text", "json"))
    access: bool = opt(False)


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


# -- validation ---------------------------------------------------------------------

_TYPE_NAMES = {bool: "boolean", int: "integer", float: "number", str: "string"}


def _describe(value: Any) -> str:
    kind = _TYPE_NAMES.get(type(value))
    if kind is None:
        kind = (
            "array"
            if isinstance(value, list)
            else "table"
            if isinstance(value, dict)
            else type(value).__name__
        )
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    return f"{kind} {shown}"


def _scalar(path: str, tp: type, value: Any, errors: list[str]) -> Any:
    if tp is float and type(value) is int:
        value = float(value)
    if type(value) is not tp:
        errors.append(f"{path}: expected {_TYPE_NAMES[tp]}, got {_describe(value)}")
        return None
    return value


def _field_value(
    path: str, f: dataclasses.Field[Any], tp: Any, value: Any, errors: list[str]
) -> Any:
    meta = f.metadata
    if meta.get("auto") is not None:
        if value == "auto":
            return meta["auto"]()
        if type(value) is not tp and not (tp is float and type(value) is int):
            kind = _TYPE_NAMES[tp]
            article = "an" if kind[0] in "aeiou" else "a"
            errors.append(f'{path}: expected {article} {kind} or "auto", got {_describe(value)}')
            return None
    origin = typing.get_origin(tp)
    if origin is dict:
        # A free-form table of scalars (model parameters): passed through as given.
        if not isinstance(value, dict):
            errors.append(f"{path}: expected table, got {_describe(value)}")
            return None
        for k, v in value.items():
            if not isinstance(v, (str, int, float, bool)) and not (
                isinstance(v, list) and all(isinstance(x, (str, int, float, bool)) for x in v)
            ):
                errors.append(f"{path}.{k}: expected a string, number, boolean or array of them")
        return dict(value)
    if origin is tuple:
        item_tp = typing.get_args(tp)[0]
        if not isinstance(value, list):
            errors.append(f"{path}: expected array, got {_describe(value)}")
            return None
        if dataclasses.is_dataclass(item_tp):
            items = [_section(f"{path}[{i}]", item_tp, v, errors) for i, v in enumerate(value)]
        else:
            items = [_scalar(f"{path}[{i}]", item_tp, v, errors) for i, v in enumerate(value)]
            check = meta.get("check")
            if check is not None:
                for i, item in enumerate(items):
                    msg = check(item) if item is not None else None
                    if msg:
                        errors.append(f"{path}[{i}]: {msg}")
        return tuple(items)
    if dataclasses.is_dataclass(tp):
        return _section(path, tp, value, errors)
    before = len(errors)
    value = _scalar(path, tp, value, errors)
    if len(errors) > before:
        return None
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and value < lo:
        errors.append(f"{path}: must be >= {lo}, got {value}")
    elif hi is not None and value > hi:
        errors.append(f"{path}: must be <= {hi}, got {value}")
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        errors.append(f"{path}: must be one of {', '.join(choices)}; got {value!r}")
    check = meta.get("check")
    if check is not None and (msg := check(value)):
        errors.append(f"{path}: {msg}")
    return value


def _section(path: str, cls: type, raw: Any, errors: list[str]) -> Any:
    if not isinstance(raw, dict):
        errors.append(f"{path}: expected table, got {_describe(raw)}")
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    for key in raw:
        if key not in fields:
            known = ", ".join(fields)
            errors.append(f"{_join(path, key)}: unknown key (known: {known})")
    values: dict[str, Any] = {}
    for name, f in fields.items():
        tp = hints[name]
        if isinstance(tp, types.UnionType):
            tp = typing.get_args(tp)[0]
        if name not in raw:
            # Defaults need resolving too: "auto" values and nested sections.
            if f.metadata.get("auto") is not None and f.default == "auto":
                values[name] = f.metadata["auto"]()
            elif dataclasses.is_dataclass(tp):
                values[name] = _section(_join(path, name), tp, {}, errors)
            continue
        value = _field_value(_join(path, name), f, tp, raw[name], errors)
        if value is not None:
            values[name] = value
    return cls(**values)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _env_overrides(
    environ: Mapping[str, str],
) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """``AGENTD_SECTION__KEY=value`` → ``{section: {key: value}}``; values parse as TOML.

    Also returns where each key came from (``"section.key"`` → variable name), so an
    error in it can name the variable to fix rather than a key no file contains.
    """
    out: dict[str, dict[str, Any]] = {}
    origins: dict[str, str] = {}
    for name, text in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX) :].partition("__")
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text  # a bare word: take it as a string
        out.setdefault(section.lower(), {})[key.lower()] = value
        origins[f"{section.lower()}.{key.lower()}"] = name
    return out, origins


def _error_path(error: str) -> str:
    return error.partition(": ")[0]


def _name_variables(errors: list[str], origins: Mapping[str, str]) -> list[str]:
    """Add the environment variable to each error about a key that came from one."""
    named = []
    for error in errors:
        path = _error_path(error)
        for key, variable in origins.items():
            # The key itself, an item of it, or its section (an unknown section).
            if path == key or path.startswith((key + ".", key + "[")) or key.startswith(path + "."):
                error += f" (from environment variable {variable})"
                break
        named.append(error)
    return named


def _check_waits(redis: RedisConfig, bad: typing.Callable[..., bool], errors: list[str]) -> None:
    """The acknowledgement waits need Redis, and must end before the socket times out
    (else a replica's slowness would mark the master unreachable)."""
    if redis.replica_reads and not redis.urls and not bad("redis"):
        errors.append("redis.replica_reads: needs Redis (redis.urls); standalone has no replicas")
    waits = redis.wait_replicas > 0 or redis.wait_local_aof
    if bad("redis") or not waits:
        return
    if not redis.urls:
        errors.append("redis.wait_replicas: needs Redis (redis.urls); standalone has no replicas")
    if redis.wait_timeout_ms >= redis.timeout * 1000:
        errors.append(
            f"redis.wait_timeout_ms: must be below redis.timeout ({redis.timeout * 1000:g} ms), "
            f"got {redis.wait_timeout_ms}"
        )
    if redis.wait_local_aof and not redis.wait_aof:
        errors.append("redis.wait_local_aof: needs redis.wait_aof = true (it is a WAITAOF)")


def _cross_checks(raw: dict[str, Any], config: Config, errors: list[str]) -> Config:
    """Rules that involve more than one key.

    They run even when single keys are wrong, so that every problem is reported at
    once; a rule that reads a key with an error of its own is skipped (a wrong key keeps
    its default, and a rule about the default would report a problem that is not there).
    """
    failed = [_error_path(e) for e in errors]

    def bad(*prefixes: str) -> bool:
        return any(p == x or p.startswith((x + ".", x + "[")) for p in failed for x in prefixes)

    def names_bad(table: str) -> bool:
        """A table's array, one of its items, or an item's name is wrong."""
        return any(
            p == table or (p.startswith(table + "[") and p.split("]", 1)[1] in ("", ".name"))
            for p in failed
        )

    backends = [b.name for b in config.backends]
    for i, name in enumerate(backends):
        if name in backends[:i]:
            errors.append(f"backends[{i}].name: {name!r} is defined twice")
    for i, b in enumerate(config.backends):
        if b.type == "openai" and not b.urls and not bad(f"backends[{i}].urls"):
            errors.append(f"backends[{i}].urls: an openai backend needs at least one URL")
        for request_class, policy in b.policies.items():
            if msg := _check_name(request_class):
                errors.append(f"backends[{i}].policies: a request class {msg}")
            elif policy not in POLICIES:
                errors.append(
                    f"backends[{i}].policies.{request_class}: must be one of "
                    f"{', '.join(POLICIES)}; got {policy!r}"
                )
    agents = [a.name for a in config.agents]
    for i, agent in enumerate(config.agents):
        if agent.name in agents[:i]:
            errors.append(f"agents[{i}].name: {agent.name!r} is defined twice")
        if (
            agent.backend not in backends
            and not names_bad("backends")
            and not bad(f"agents[{i}].backend")
        ):
            errors.append(
                f"agents[{i}].backend: no backend named {agent.backend!r} "
                f"(defined: {', '.join(backends) or 'none'})"
            )
    partitions = [p.name for p in config.partitions]
    owner: dict[str, str] = {}
    for i, p in enumerate(config.partitions):
        if p.name in partitions[:i]:
            errors.append(f"partitions[{i}].name: {p.name!r} is defined twice")
        for agent in p.agents:
            if agent not in agents:
                if names_bad("agents") or bad(f"partitions[{i}].agents"):
                    continue
                errors.append(f"partitions[{i}].agents: no agent named {agent!r}")
            elif agent in owner:
                errors.append(
                    f"partitions[{i}].agents: {agent!r} is already in partition {owner[agent]!r}"
                )
            owner.setdefault(agent, p.name)
    known = {*partitions, "default"}
    for name in config.server.partitions:
        if name not in known and not names_bad("partitions") and not bad("server.partitions"):
            errors.append(
                f"server.partitions: no partition named {name!r} "
                f"(defined: {', '.join(sorted(known))})"
            )
    _check_auth(config, bad, errors)
    _check_tools(config, bad, errors)
    if config.redis.cluster and not config.redis.urls and not bad("redis.urls", "redis"):
        errors.append("redis.cluster: needs at least one seed URL in redis.urls")
    _check_waits(config.redis, bad, errors)
    if config.cache.redis_url and not config.redis.urls and not bad("redis.urls", "redis"):
        errors.append("cache.redis_url: needs redis.urls (with no Redis, L2 is in memory)")
    _check_sentinels(config, bad, errors)
    if config.mode == "standalone":
        server = raw.get("server")
        if not isinstance(server, dict) or server.get("workers", "auto") == "auto":
            # Memory is per process: standalone state lives in exactly one worker.
            config = dataclasses.replace(
                config, server=dataclasses.replace(config.server, workers=1)
            )
        elif not bad("server.workers", "server") and config.server.workers > 1:
            errors.append(
                f"server.workers: standalone mode (no redis.urls) keeps all state in one "
                f"process's memory, so it runs one worker; got {config.server.workers}. "
                f"Configure [redis] urls to run more"
            )
    return config


def is_loopback(host: str) -> bool:
    """Whether a bind host only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_sentinels(config: Config, bad: typing.Callable[..., bool], errors: list[str]) -> None:
    """The rules between ``redis+sentinel://`` URLs and the rest of ``[redis]``."""
    if bad("redis.urls", "redis"):
        return  # the URLs have errors of their own
    sentinel = [u for u in config.redis.urls if u.startswith(SENTINEL_SCHEME)]
    if config.redis.cluster and sentinel:
        errors.append(
            "redis.cluster: a Redis Cluster fails over by itself; its seed URLs are "
            f"redis:// node addresses, not {SENTINEL_SCHEME} groups"
        )
    # Two shards on one group would be one server holding two shards' slots.
    seen: set[tuple[str, frozenset[tuple[str, int]]]] = set()
    for url in sentinel:
        group = parse_sentinel_url(url)
        key = (group.group, frozenset(group.sentinels))
        if key in seen:
            errors.append(
                f"redis.urls: Sentinel group {group.group!r} at {group.addresses} is listed "
                f"twice; each shard must be a group of its own"
            )
        seen.add(key)


def _check_auth(config: Config, bad: typing.Callable[..., bool], errors: list[str]) -> None:
    auth = config.auth
    if (
        auth.mode == "none"
        and not auth.allow_open
        and not bad("server.bind", "auth")
        and not is_loopback(parse_bind(config.server.bind)[0])
    ):
        errors.append(
            f'auth.mode: "none" lets anyone who reaches {config.server.bind} read and write '
            f'every session; set auth.mode = "keys", bind a loopback address, or set '
            f"auth.allow_open = true to run open on purpose"
        )
    names = [t.name for t in auth.tenants]
    for i, name in enumerate(names):
        if name in names[:i]:
            errors.append(f"auth.tenants[{i}].name: {name!r} is defined twice")
    tokens = auth.tokens
    needs_key = tokens.algorithm in ("RS256", "ES256") and not tokens.public_key_file
    if needs_key and not bad("auth.tokens"):
        errors.append(
            f"auth.tokens.public_key_file: {tokens.algorithm} tokens need the PEM file "
            f"of the public key that verifies them"
        )


def from_dict(
    raw: dict[str, Any], *, source: str | None = None, written_at: int | None = None
) -> Config:
    """Validate a parsed config document; raise :class:`ConfigError` with every problem.
    ``written_at`` (Unix seconds) defaults to now."""
    errors: list[str] = []
    config = _section("", Config, raw, errors)
    config = _cross_checks(raw, config, errors)
    if errors:
        raise ConfigError(errors)
    if written_at is None:
        written_at = int(time.time())
    return dataclasses.replace(config, source=source, written_at=written_at)


def load(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Config:
    """Read ``path`` (default ``./config.toml`` if present, else built-in defaults),
    apply environment then ``overrides`` (command-line flags), and validate."""
    raw: dict[str, Any] = {}
    source: str | None = None
    written_at: int | None = None
    if path is None and Path(DEFAULT_FILE).is_file():
        path = DEFAULT_FILE
    if path is not None:
        source = str(Path(path).resolve())
        try:
            with open(path, "rb") as fh:
                written_at = int(os.fstat(fh.fileno()).st_mtime)
                raw = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
    from_env, origins = _env_overrides(os.environ if environ is None else environ)
    for layer in (from_env, overrides or {}):
        for section, values in layer.items():
            target = raw.setdefault(section, {})
            if isinstance(target, dict):
                target.update(values)
            elif layer is from_env:  # not applied: the file's section is not a table
                for key in values:
                    origins.pop(f"{section}.{key}", None)
    for section, values in (overrides or {}).items():  # a flag wins over the variable
        for key in values:
            origins.pop(f"{section}.{key}", None)
    try:
        return from_dict(raw, source=source, written_at=written_at)
    except ConfigError as exc:
        raise ConfigError(_name_variables(exc.errors, origins)) from None


# -- output -------------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if dataclasses.is_dataclass(value):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def dump_toml(config: Config) -> str:
    """The effective configuration as TOML that :func:`load` reads back unchanged."""
    lines: list[str] = []
    for section in dataclasses.fields(config):
        if section.metadata.get("internal"):
            continue
        value = getattr(config, section.name)
        tables = value if isinstance(value, tuple) else (value,)
        for table in tables:
            header = f"[[{section.name}]]" if isinstance(value, tuple) else f"[{section.name}]"
            lines.append(header)
            for f in dataclasses.fields(table):
                lines.append(f"{f.name} = {_toml_value(getattr(table, f.name))}")
            lines.append("")
    return "\n".join(lines)
