"""What an instance serves, said at start-up: one log line per part.

An operator reading the log of a fresh start should see, without opening the config,
which agents answer, on which backends (and how many nodes each), which store holds
the state, which job partitions this instance works for, and where to point a client.
"""

from __future__ import annotations

from ..config import SENTINEL_SCHEME, Config, parse_sentinel_url, redact_url

__all__ = ("describe",)


def _server(url: str) -> str:
    """One shard, as an operator knows it: a URL, or a Sentinel group (by its name: its
    master changes with failovers, the group does not)."""
    if not url.startswith(SENTINEL_SCHEME):
        return redact_url(url)
    group = parse_sentinel_url(url)
    return f"Sentinel group {group.group} (sentinels {group.addresses})"


def _count(n: int, what: str) -> str:
    return f"{n} {what}" if n == 1 else f"{n} {what}s"


def _store(config: Config) -> str:
    where = _layout(config)
    kinds = config.redis.replica_reads
    if kinds and config.mode != "standalone":
        bound = f"{config.redis.replica_max_lag:g} s"
        where += f"; reads of {', '.join(kinds)} from replicas within {bound} of their master"
    return where


def _layout(config: Config) -> str:
    urls = ", ".join(_server(u) for u in config.redis.urls)
    sentinel = any(u.startswith(SENTINEL_SCHEME) for u in config.redis.urls)
    if config.mode == "standalone":
        return "in this worker's memory (standalone: lost at restart or reload)"
    if config.mode == "cluster":
        return f"Redis Cluster, seed {_count(len(config.redis.urls), 'node')}: {urls}"
    if config.mode == "sharded":
        what = "shard" if sentinel else "Redis server"
        return f"sharded by hash slot over {_count(len(config.redis.urls), what)}: {urls}"
    return f"one Redis: {urls}"


def _cache(config: Config) -> str:
    """Where L2 lives when not on the store's servers ([cache] redis_url)."""
    url = config.cache.redis_url
    return f"; L2 cache on {_server(url)}" if url and config.mode != "standalone" else ""


def _partitions(config: Config) -> str:
    listed = {a for p in config.partitions for a in p.agents}
    unlisted = [a.name for a in config.agents if a.name not in listed]
    parts = []
    for p in config.all_partitions():
        agents = [*p.agents, *unlisted] if p.name == "default" else list(p.agents)
        parts.append(f"{p.name} ({', '.join(agents) or 'no agents'})")
    runs = ", ".join(config.server.partitions) or "all"
    return f"{'; '.join(parts)}; this instance runs the background jobs of: {runs}"


def describe(config: Config, host: str, port: int) -> list[str]:
    """The start-up lines, in the order they are logged."""
    shown = f"[{host}]" if ":" in host else host
    base = f"http://{shown}:{port}"
    agents = ", ".join(f"{a.name} (backend {a.backend})" for a in config.agents)
    backends = ", ".join(
        f"{b.name} ({b.type}, {_count(len(b.urls) if b.urls else 1, 'node')})"
        for b in config.backends
    )
    return [
        f"agents: {agents}",
        f"backends: {backends}",
        f"store: {_store(config)}{_cache(config)}",
        f"partitions: {_partitions(config)}",
        f"api: {base}/v1 (OpenAI base_url), WebSocket {base.replace('http', 'ws', 1)}/v1/ws, "
        f"health {base}/readyz",
    ]
