"""Fuzzing the WebSocket protocol of a real ``agentd serve``, in memory and on Redis.

Every client frame type (hello, message, cancel, ping, an unknown type, and frames that
are not frames: binary, not JSON, too deep, too large, invalid UTF-8), with hostile
values: each mistake gets an error frame with a code the source names and the
connection lives on (it answers a ping after), except where docs/protocol.md closes it
(1009 too large, 1007 invalid UTF-8). Some connections go away at once, as clients do.
When a module's examples are done, no handler, lease or worker restart is left (see
``fuzz_strategies.fuzzed_server``).
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
from hypothesis import given, settings

from bench.fuzzconn import FRAME_KINDS, ws_input

from .fuzz_strategies import FUZZ, Fuzzed, check, draws, fuzzed_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=["memory", "redis"])
def fuzzed(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fuzzed]:
    yield from fuzzed_server(request.param, tmp_path_factory.mktemp("fuzz-ws"))


@pytest.mark.parametrize("kind", FRAME_KINDS)
@settings(FUZZ, max_examples=15)
@given(rnd=draws)
def test_every_frame_gets_an_answer_and_the_connection_lives_on(
    fuzzed: Fuzzed, kind: str, rnd: random.Random
) -> None:
    check(fuzzed, ws_input(rnd, kind, fuzzed.ctx))
