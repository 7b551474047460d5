"""``python -m bench.turn_trips`` and ``python -m bench.turn_client_cpu`` on short runs: a
session turn that misses the cache makes two Redis round trips (the lease with the
history, then the stored turn with the release and the publish), counted on a real
redis-server behind a real ``agentd serve``, and the client CPU tool reports every side."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def _run(*args: str) -> object:
    done = subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def test_a_miss_turn_is_two_round_trips_with_and_without_keys() -> None:
    results = _run(
        "-m", "bench.turn_trips", "--turns", "80", "--idle", "1", "--monitor-turns", "2", "--json"
    )
    assert isinstance(results, list)
    by_mode = {r["mode"]: r for r in results}
    assert set(by_mode) == {"none", "keys"}
    for mode, r in by_mode.items():
        commands = r["commands_per_turn"]
        # The two scripts of the turn and their publish, whatever else runs per second.
        assert 1.9 <= commands["evalsha"] <= 2.5, (mode, commands)
        assert commands["publish"] == 1.0, (mode, commands)
        assert commands["xadd"] == 2.0, (mode, commands)  # the user message and the reply
        assert 1.8 <= r["round_trips_per_turn"] <= 2.5, (mode, r["round_trips_per_turn"])
        # The session's scripts (agentd/store/scripts/sessions.py), not the limiter's or registry's.
        names = [line.split()[-1] for line in r["monitor"]]
        turn_calls = [n for n in names if n.startswith("scripts.")]
        assert turn_calls == ["scripts.BEGIN_TURN", "scripts.END_TURN"] * 2, r["monitor"]
    # Without keys, nothing but the turn's two scripts rides on the turns.
    assert by_mode["none"]["round_trips_per_turn"] <= 2.2


def test_client_cpu_reports_every_side_as_a_ratio() -> None:
    result = _run("-m", "bench.turn_client_cpu", "--turns", "100", "--rounds", "1")
    assert isinstance(result, dict)
    sides = {"agentd", "pipeline", "evalsha", "evalsha_agentd_client", "agentd_redis_py"}
    assert set(result["cpu_us_per_turn"]) == sides
    assert all(v > 0 for v in result["cpu_us_per_turn"].values())
    assert result["agentd_vs_pipeline"] > 0
    assert result["agentd_redis_py_vs_pipeline"] > 0
    assert result["script_names"] == {"begin": "begin_turn", "end": "end_turn"}
