"""``ASKING`` and the command it allows, on one connection (a redis-py fix).

While a slot migrates, its source answers ``ASK`` for a key already on the target, and
the client must send ``ASKING`` then the command to the target, *on the same
connection*: ``ASKING`` allows only the next command of its own connection. redis-py's
asyncio cluster client sends ``ASKING`` as a command of its own, which takes a free
connection of the node and puts it back at the end of the free queue; the command then
takes the *first* free connection, another one whenever the node has two free. The
target answers that command ``MOVED`` (to the source, which still owns the slot), the
source ``ASK`` again, and so on until redis-py gives up ("TTL exhausted"): every call on
a key already moved fails until the migration ends, i.e. for as long as a large slot
takes to move.

The fix: a node hands out the connection put back last. Nothing can run between
``ASKING``'s release and the command's acquisition (no await separates them), so the
command goes on ``ASKING``'s connection. Pipelines are not concerned: each sends its
commands for one node on one connection (as :mod:`.acks` does with ``ASKING``).

The connection handed out is checked first (:func:`.idle.checked`): one the server closed
while it was idle is opened again, not used.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio.cluster import ClusterNode

from .idle import checked

__all__ = ("keep_asking_on_its_connection",)

_first_free = ClusterNode.acquire_connection


def _last_released(node: ClusterNode) -> Any:
    """The connection released last (checked), or a new one (redis-py's) when none is free."""
    if node._free:
        return checked(node._free.pop())
    return _first_free(node)


def keep_asking_on_its_connection() -> None:
    """Install the fix on redis-py's cluster nodes (every client of the process; once)."""
    ClusterNode.acquire_connection = _last_released  # type: ignore[method-assign]
