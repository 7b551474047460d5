"""Load-balancing policies: each picks one node among the candidates (healthy, untried).

All are synchronous and cheap: a pick happens on every model call.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import random
from collections.abc import Sequence
from typing import Protocol

from .nodes import Node

__all__ = (
    "AFFINITY_LOAD_FACTOR",
    "P2C",
    "Affinity",
    "LeastInflight",
    "Policy",
    "RoundRobin",
    "make_policy",
    "stable_hash",
)

# Consistent hashing with bounded loads (Mirrokni et al.): a node takes at most
# ceil(c * average in-flight) calls before a session spills to the next node on the ring.
AFFINITY_LOAD_FACTOR = 1.25
# Points per node on the ring: enough for an even spread over a handful of nodes.
_VNODES = 160


class Policy(Protocol):
    def pick(self, candidates: Sequence[Node], session_id: str | None, now: float) -> Node: ...


def stable_hash(key: str) -> int:
    """A 64-bit hash that is the same in every process (``hash()`` is salted per process),
    so all workers and instances send a session to the same node."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


class P2C:
    """Power of two choices: two distinct random candidates, the one of lower
    ``latency EWMA x (in-flight + 1)`` wins."""

    def pick(self, candidates: Sequence[Node], session_id: str | None, now: float) -> Node:
        n = len(candidates)
        if n == 1:
            return candidates[0]
        i = random.randrange(n)
        j = random.randrange(n - 1)
        if j >= i:
            j += 1
        a, b = candidates[i], candidates[j]
        return a if a.cost(now) <= b.cost(now) else b


class LeastInflight:
    """The candidate with the fewest calls in flight; ties rotate."""

    def __init__(self) -> None:
        self._turn = 0

    def pick(self, candidates: Sequence[Node], session_id: str | None, now: float) -> Node:
        n = len(candidates)
        start = self._turn % n
        self._turn += 1
        best = candidates[start]
        for k in range(1, n):
            node = candidates[(start + k) % n]
            if node.inflight < best.inflight:
                best = node
        return best


class RoundRobin:
    """Each candidate in turn."""

    def __init__(self) -> None:
        self._turn = 0

    def pick(self, candidates: Sequence[Node], session_id: str | None, now: float) -> Node:
        node = candidates[self._turn % len(candidates)]
        self._turn += 1
        return node


class Affinity:
    """Consistent hashing of the session id onto the nodes, with bounded loads; calls
    without a session id are balanced by p2c."""

    def __init__(self, nodes: Sequence[Node]) -> None:
        points = sorted(
            (stable_hash(f"{node.name}#{v}"), i)
            for i, node in enumerate(nodes)
            for v in range(_VNODES)
        )
        self._keys = [key for key, _ in points]
        self._owners = [nodes[i] for _, i in points]
        self._fallback = P2C()

    def home(self, session_id: str) -> int:
        """The ring position of a session: its first candidate is the owner there."""
        return bisect.bisect(self._keys, stable_hash(session_id)) % len(self._keys)

    def pick(self, candidates: Sequence[Node], session_id: str | None, now: float) -> Node:
        if session_id is None:
            return self._fallback.pick(candidates, None, now)
        allowed = set(candidates)
        total = 0
        for node in candidates:
            total += node.inflight
        cap = math.ceil(AFFINITY_LOAD_FACTOR * (total + 1) / len(candidates))
        owners = self._owners
        size = len(owners)
        start = self.home(session_id)
        seen: set[Node] = set()
        for k in range(size):
            node = owners[(start + k) % size]
            if node in seen or node not in allowed:
                continue
            if node.inflight < cap:
                return node
            seen.add(node)
            if len(seen) == len(allowed):
                break
        # Unreachable in theory (some node is below the average); be safe anyway.
        return min(candidates, key=lambda node: node.inflight)


def make_policy(name: str, nodes: Sequence[Node]) -> Policy:
    """The policy named in ``BackendConfig.policy``."""
    if name == "p2c":
        return P2C()
    if name == "least_inflight":
        return LeastInflight()
    if name == "round_robin":
        return RoundRobin()
    if name == "affinity":
        return Affinity(nodes)
    raise ValueError(f"unknown policy {name!r}")
