"""The strict SDK check refuses what the SDK's own models would let through."""

from __future__ import annotations

from typing import Any

import pytest
from openai.types.chat import ChatCompletion

from .sdk_strict import strictly

GOOD: dict[str, Any] = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "m",
    "choices": [
        {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "hi"}}
    ],
}


def test_a_well_formed_body_passes() -> None:
    assert strictly(ChatCompletion, GOOD).choices[0].message.content == "hi"


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ({**GOOD, "extra": 1}, r"\$\.extra"),
        ({**GOOD, "created": "1"}, "created"),
        (
            {**GOOD, "choices": [{**GOOD["choices"][0], "message": {"role": "assistant", "x": 1}}]},
            r"\$\.choices\[0\]\.message\.x",
        ),
    ],
)
def test_undeclared_or_mistyped_fields_fail(body: dict[str, Any], why: str) -> None:
    with pytest.raises(AssertionError, match=why):
        strictly(ChatCompletion, body)
