"""``python -m bench.auth_path`` on a short run: the identity and limits of a request
with an API key are found in process against a real redis-server, nearly every request
is admitted on the worker's leases, and the reply carries OpenAI's six headers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def test_the_auth_path_is_measured_on_leases_with_openais_headers() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.auth_path", "--requests", "1280", "--repeat", "1", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert result["agentd"] == str(ROOT / "agentd")
    assert result["us_per_request"] > 0
    assert result["leased_share"] >= 0.9, result
    headers = result["headers"]
    assert headers["x-ratelimit-limit-requests"] == str(10**9)
    assert headers["x-ratelimit-limit-tokens"] == str(10**12)
    for kind in ("requests", "tokens"):
        assert int(headers[f"x-ratelimit-remaining-{kind}"]) > 0
        assert headers[f"x-ratelimit-reset-{kind}"].endswith("s")
