"""The rules that involve more than one key (names defined twice, references to what
is not defined, settings that need others), run after every section is read."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from .agents import POLICIES
from .fields import check_name
from .redis_urls import SENTINEL_SCHEME, parse_sentinel_url
from .root import Config
from .server import is_loopback, parse_bind
from .storage import RedisConfig
from .tools import BUILTIN_LABEL, BUILTIN_TOOLS, ENV_REF


def error_path(error: str) -> str:
    """The key path an error message is about (``server.workers: ...``)."""
    return error.partition(": ")[0]


def cross_checks(raw: dict[str, Any], config: Config, errors: list[str]) -> Config:
    """Rules that involve more than one key.

    They run even when single keys are wrong, so that every problem is reported at
    once; a rule that reads a key with an error of its own is skipped (a wrong key keeps
    its default, and a rule about the default would report a problem that is not there).
    """
    failed = [error_path(e) for e in errors]

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
            if msg := check_name(request_class):
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
