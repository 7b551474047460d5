"""The sections of one instance's serving: ``[server]`` (its address, workers, limits),
``[websocket]`` and ``[log]``; the bind address parsed."""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass

from .fields import opt


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


def is_loopback(host: str) -> bool:
    """Whether a bind host only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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


@dataclass(frozen=True)
class WebSocketConfig:
    max_frame_bytes: int = opt(1024 * 1024, min=1024, max=64 * 1024 * 1024)
    max_inflight_turns: int = opt(4, min=1, max=1000)
    send_queue: int = opt(256, min=1, max=100000)
    idle_timeout: float = opt(300.0, min=1.0, max=86400.0)
    heartbeat: float = opt(30.0, min=1.0, max=3600.0)


@dataclass(frozen=True)
class LogConfig:
    level: str = opt("info", choices=("debug", "info", "warning", "error"))
    format: str = opt("text", choices=("text", "json"))
    access: bool = opt(False)
