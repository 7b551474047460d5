"""``python -m bench.front_stream`` on a short run: one front connection relays every
streamed answer of ``added-latency`` from the upstream stub, whole, in no more writes than
the stub's reply took reads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def test_the_front_relays_every_stream_whole() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.front_stream", "--requests", "200"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert result["agentd"] == str(ROOT / "agentd")
    assert (result["requests"], result["incomplete"]) == (200, 0)
    assert "Content-Type: text/event-stream" in result["last_head"]
    assert "X-Cache: bypass" in result["last_head"]
    # Each stream's frames go out as the stub's reply comes: the frames of one upstream
    # read in one write, so never more writes than reads, however a busy machine splits
    # the reply (a write per frame broke this in 179 of 200 answers).
    by_writes = {int(k): n for k, n in result["answers_by_writes"].items()}
    assert sum(by_writes.values()) == 200 and min(by_writes) >= 1, result
    assert result["answers_in_more_writes_than_reads"] == 0, result
