"""This worker in the service registry: it notes itself in the store every
``BEAT_INTERVAL_S`` (one round trip: its entry with its figures, ``worker_stats``), is
listed while its last beat is younger than ``TTL_S`` (three missed beats and a margin),
and removes its entry when it starts draining. ``GET /v1/admin/instances`` lists the
registry (``cluster_admin``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from typing import Any

import orjson
from aiohttp import web

from .. import __version__
from ..aio import end_if_cancelled
from ..config import parse_bind
from ..errors import AgentdError
from ..runtime import instance_id
from .keys import CONFIG, RUNNER, STATE, STORE
from .worker_stats import snapshot

__all__ = ("BEAT_INTERVAL_S", "TTL_S", "Presence")

log = logging.getLogger(__name__)

BEAT_INTERVAL_S = 1.0
TTL_S = 3 * BEAT_INTERVAL_S + 0.5
# How long a draining worker waits to remove its entry: a store that does not answer must
# not hold up the drain (the entry then ends with its ttl).
LEAVE_LIMIT_S = 0.5


def _address(bind: str) -> str:
    """Where this worker can be reached: the bind address, with the host's name for a
    wildcard host."""
    host, port = parse_bind(bind)
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Presence:
    """The worker's heartbeat into the store's registry."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        config = app[CONFIG]
        info = app[STATE].info
        self.instance = info.instance or instance_id(config.server.instance_id, config.server.bind)
        self.worker_id = f"{self.instance}/{info.id}"
        self._static: dict[str, Any] = {
            "id": self.worker_id,
            "instance": self.instance,
            "worker": info.id,
            "address": _address(config.server.bind),
            "pid": os.getpid(),
            "version": __version__,
            "partitions": [p.name for p in app[RUNNER].partitions],
            "started_at": time.time(),
        }
        self._task: asyncio.Task[None] | None = None

    def entry(self) -> bytes:
        return orjson.dumps({**self._static, "stats": snapshot(self.app)})

    async def beat(self) -> None:
        await self.app[STORE].registry.beat(self.worker_id, self.entry(), TTL_S)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._beat_forever())

    async def leave(self) -> None:
        """Stop beating and remove the entry (the worker drains)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            await asyncio.wait_for(self.app[STORE].registry.leave(self.worker_id), LEAVE_LIMIT_S)
        except (AgentdError, TimeoutError) as exc:  # the entry ends with its ttl
            log.info("registry entry %s not removed (%s)", self.worker_id, exc)

    async def _beat_forever(self) -> None:
        while True:
            end_if_cancelled()
            try:
                await self.beat()
            except AgentdError as exc:
                # An unreachable store is logged once per outage by the store itself.
                log.debug("registry heartbeat failed: %s", exc.message)
            except Exception:
                log.exception("registry heartbeat failed")
            await asyncio.sleep(BEAT_INTERVAL_S)
