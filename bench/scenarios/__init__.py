"""The scenarios, in the order a full run takes them (each later issue adds its own)."""

from __future__ import annotations

from .auth import HTTP_CHAT_AUTH
from .capacity import ADDED_LATENCY, OPEN_LOOP
from .common import Scenario
from .curves_fanout import CURVE_FANOUT
from .curves_jobs import CURVE_BACKLOG
from .curves_memory import CURVE_REDIS_MEMORY, CURVE_WS_MEMORY
from .curves_turns import CURVE_HISTORY, CURVE_L1
from .durable import HTTP_CHAT_DURABLE
from .http import CEILING, HTTP_CHAT_HIT, HTTP_CHAT_MISS, HTTP_HELLO, HTTP_STREAM
from .jobs import JOBS
from .peers import PEER_LITELLM
from .replicas import REPLICA_READS
from .scaling import WORKERS_SCALING
from .soak import SOAK
from .store import STORE_OPS
from .tools import TOOL_LOOP
from .ws import WS_IDLE, WS_TURNS
from .ws_capacity import WS_CAPACITY

__all__ = ("CEILING", "SCENARIOS", "Scenario")

# The generator ceiling runs first whenever an HTTP scenario does; it is not listed.
SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        HTTP_HELLO,
        HTTP_CHAT_HIT,
        HTTP_CHAT_MISS,
        HTTP_CHAT_AUTH,
        HTTP_CHAT_DURABLE,
        HTTP_STREAM,
        WS_TURNS,
        WS_IDLE,
        WS_CAPACITY,
        WORKERS_SCALING,
        OPEN_LOOP,
        ADDED_LATENCY,
        TOOL_LOOP,
        STORE_OPS,
        REPLICA_READS,
        JOBS,
        SOAK,
        CURVE_HISTORY,
        CURVE_L1,
        CURVE_REDIS_MEMORY,
        CURVE_WS_MEMORY,
        CURVE_FANOUT,
        CURVE_BACKLOG,
        PEER_LITELLM,
    )
}
