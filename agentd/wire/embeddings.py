"""OpenAI's embeddings reply (``CreateEmbeddingResponse``) as agentd sends it: a pure
function of the backend's vectors, no I/O.

``encoding_format: "base64"`` (what the official SDKs ask for unless told otherwise)
sends each vector as the base64 of its little-endian float32 values; ``"float"`` as a
list of numbers. A backend's vectors come in either form and are converted as needed.
"""

from __future__ import annotations

import base64
import sys
from array import array
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ("embeddings_object", "from_base64", "to_base64")

_SWAP = sys.byteorder != "little"


def to_base64(vector: Sequence[float]) -> str:
    """A vector as OpenAI's base64: little-endian float32 values."""
    values = array("f", vector)
    if _SWAP:
        values.byteswap()
    return base64.b64encode(values.tobytes()).decode()


def from_base64(text: str) -> list[float]:
    """The floats of an OpenAI base64 vector."""
    values = array("f")
    values.frombytes(base64.b64decode(text))
    if _SWAP:
        values.byteswap()
    return values.tolist()


def _encoded(vector: Sequence[float] | str, encoding: str) -> list[float] | str:
    if encoding == "base64":
        return vector if isinstance(vector, str) else to_base64(vector)
    return from_base64(vector) if isinstance(vector, str) else list(vector)


def embeddings_object(
    model: str,
    vectors: Sequence[Sequence[float] | str],
    usage: Mapping[str, Any],
    encoding: str,
) -> dict[str, Any]:
    """The ``list`` of ``embedding`` objects, in input order, with the usage OpenAI
    always sends (``prompt_tokens``, ``total_tokens``)."""
    prompt = int(usage.get("prompt_tokens") or 0)
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": _encoded(vector, encoding)}
            for i, vector in enumerate(vectors)
        ],
        "model": model,
        "usage": {
            "prompt_tokens": prompt,
            "total_tokens": int(usage.get("total_tokens") or prompt),
        },
    }
