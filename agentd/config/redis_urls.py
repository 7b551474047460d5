"""Redis URLs: the ``redis+sentinel://`` form parsed into its group, passwords redacted
for logs, and the check every Redis URL setting uses."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

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


def check_redis_url(value: str) -> str | None:
    if value.startswith(SENTINEL_SCHEME):
        try:
            parse_sentinel_url(value)
        except ValueError as exc:
            return f"{exc}; expected {SENTINEL_SCHEME}host:port[,host:port...]/<master name>"
        return None
    if not value.startswith(("redis://", "rediss://", "unix://")):
        return f"must start with redis://, rediss://, unix:// or {SENTINEL_SCHEME}, got {value!r}"
    return None
