"""``python -m bench.front_hit`` on a short run: one front connection answers every
request of ``http-chat-auth`` as an L1 hit, keyed (with OpenAI's six headers, admitted
on the worker's leases) and open (with none)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("keys", [True, False])
def test_the_front_answers_every_request_as_a_hit(keys: bool) -> None:
    command = [sys.executable, "-m", "bench.front_hit", "--requests", "300"]
    done = subprocess.run(
        command + (["--keys"] if keys else []),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert result["agentd"] == str(ROOT / "agentd")
    assert result["mode"] == ("keys" if keys else "none")
    assert result["answers"] == 300
    assert "X-Cache: hit-l1" in result["last_head"]
    ratelimit = [h for h in result["last_head"] if h.startswith("x-ratelimit-")]
    assert len(ratelimit) == (6 if keys else 0), ratelimit
    if keys:
        assert result["suspended"] <= 30, result  # nearly all admitted on the leases
