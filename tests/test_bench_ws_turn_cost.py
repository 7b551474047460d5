"""``python -m bench.ws_turn_cost`` on a short run: one in-process worker answers every
measured turn of its client process (deltas, then done) and says what a turn cost."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def test_the_worker_answers_every_measured_turn() -> None:
    command = [sys.executable, "-m", "bench.ws_turn_cost", "--turns", "200", "--connections", "4"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert result["agentd"] == str(ROOT / "agentd")
    assert (result["turns"], result["connections"]) == (200, 4)
    # "hello there, how are you today?": six words, six deltas, then the done frame.
    assert result["frames_per_turn"] == 7.0
    assert result["cpu_us_per_turn"] > 0
