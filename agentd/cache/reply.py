"""What the response cache keeps: a whole reply with its chunk boundaries (so a cached
reply streams like the original), where a reply came from, and which replies may be kept."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from ..config import AgentCacheConfig

__all__ = ("CachedReply", "Served", "cacheable")


@dataclass(frozen=True, slots=True)
class CachedReply:
    """A whole reply as the model streamed it: its text chunks, then its tool calls
    (whole; a replay streams each as one piece)."""

    chunks: list[str]
    finish_reason: str
    usage: dict[str, Any]
    node: str = ""
    tool_calls: list[dict[str, Any]] | None = None

    def encode(self) -> bytes:
        doc = {"c": self.chunks, "f": self.finish_reason, "u": self.usage, "n": self.node}
        if self.tool_calls:
            doc["tc"] = self.tool_calls
        return orjson.dumps(doc)

    @classmethod
    def decode(cls, data: bytes) -> CachedReply:
        doc = orjson.loads(data)
        return cls(doc["c"], doc["f"], doc["u"], doc.get("n", ""), doc.get("tc"))


@dataclass(frozen=True, slots=True)
class Served:
    """A reply and where it came from: ``hit-l1``, ``hit-l2``, ``hit-l3``, or ``miss``
    when a model call made it."""

    reply: CachedReply
    level: str


def cacheable(policy: AgentCacheConfig, params: dict[str, Any]) -> bool:
    """Whether a request's reply may be cached: never with mode off; with deterministic,
    only at temperature 0 (an absent temperature means the upstream default, not 0)."""
    if policy.mode == "off":
        return False
    if policy.mode == "always":
        return True
    return params.get("temperature") == 0
