"""What a worker process knows about itself at run time: set by ``proc``, which starts
and drains the worker, and read by ``server``, which answers /readyz and /v1/info."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ("ReadinessCheck", "WorkerInfo", "WorkerState", "instance_id")

ReadinessCheck = Callable[[], Awaitable[str | None]]


def instance_id(configured: str, bind: str) -> str:
    """The instance's id in the service registry: the configured one, else the host's
    name, the port and the start time (unique per start of an instance)."""
    if configured:
        return configured
    port = bind.rpartition(":")[2]
    return f"{socket.gethostname()}:{port}:{int(time.time())}"


@dataclass(frozen=True)
class WorkerInfo:
    """Who serves: the worker's slot id, its generation (bumped per reload) and pid, and
    its instance's id ("": an application run outside a supervisor)."""

    id: int = 0
    generation: int = 0
    pid: int = field(default_factory=os.getpid)
    instance: str = ""


@dataclass
class WorkerState:
    """A worker's run-time state."""

    info: WorkerInfo = field(default_factory=WorkerInfo)
    workers: int = 1
    # Set when the worker drains or its instance is leaving: /readyz fails from then on.
    draining: bool = False
    # Set when the worker's application shuts down: long-lived responses (SSE) end on it.
    closing: asyncio.Event = field(default_factory=asyncio.Event)
    # Each returns None when its dependency is fine, or why it is not (for /readyz).
    readiness: list[ReadinessCheck] = field(default_factory=list)
    # The open WebSockets (server/ws.py's connections: ``close(code=, message=)`` each);
    # a connection removes itself when it ends.
    websockets: set[Any] = field(default_factory=set)
