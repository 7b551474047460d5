"""What a turn costs (the upstream's usage, or an estimate; nothing for a cache hit),
and a tenant's charges and usage summed per day until the limiter writes them."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ..store import USAGE_FIELDS, Batch, Charge

__all__ = ("HIT", "NO_CHARGE", "Sums", "charge_of")

HIT = Charge(cache_hit=True)


def charge_of(
    usage: Mapping[str, Any] | None, cache: str, prompt_chars: int, completion_chars: int
) -> Charge:
    """What a turn costs: the upstream's usage, else an estimate (4 characters a token).
    A cache hit calls no model: it is counted as a hit and charges no tokens."""
    if cache.startswith("hit"):
        return HIT
    prompt = completion = None
    if usage:
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if not isinstance(prompt, int) or isinstance(prompt, bool):
        prompt = math.ceil(prompt_chars / 4)
    if not isinstance(completion, int) or isinstance(completion, bool):
        completion = math.ceil(completion_chars / 4)
    return Charge(prompt + completion, prompt, completion)


NO_CHARGE = Charge()


class Sums:
    """One tenant's charges and usage of one day, summed since the last write."""

    __slots__ = ("batch", "keys")

    def __init__(self) -> None:
        self.batch = Batch()
        # Per key (its id, or the credential's kind): requests, prompt tokens, completion
        # tokens, cache hits.
        self.keys: dict[str, list[int]] = {}

    def written(self) -> Batch:
        """The batch to write: its charges and the usage counts, in total and per key."""
        usage = self.batch.usage
        for key, counts in self.keys.items():
            for name, n in zip(USAGE_FIELDS, counts, strict=True):
                if n:
                    usage[name] = usage.get(name, 0) + n
                    usage[f"{key}/{name}"] = n
        return self.batch
