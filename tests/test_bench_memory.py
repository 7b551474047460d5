"""``python -m bench.memory`` on a small count: it measures every kind of object on a real
``agentd serve`` and its own redis-server, and the TTLs it reports are the ones
docs/operations.md's eviction section relies on (sessions, cache entries and response
records carry one; shared-state documents do not)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow

KINDS = {
    "idle session",
    "first message of a session, 100 B",
    "history message, 100 B content",
    "history message, 1000 B content",
    "history message, 10000 B content",
    "cache entry (L2)",
    "shared-state document, 100 B",
    "shared-state document, 1000 B",
    "background response (ended)",
}


def test_memory_bench_measures_every_kind_and_their_ttls(tmp_path: Path) -> None:
    out = tmp_path / "memory.json"
    cmd = [sys.executable, "-m", "bench.memory", "--count", "100", "--out", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    kinds = json.loads(out.read_text())["kinds"]
    assert set(kinds) == KINDS
    for name, row in kinds.items():
        assert row["memory_usage_per_object"] > 0, name
        assert row["keys"], name

    def keys(kind: str, pattern: str) -> dict[str, int]:
        return kinds[kind]["keys"][pattern]  # type: ignore[no-any-return]

    meta = keys("idle session", "agentd:s:{…}:meta")
    assert meta["new_keys"] == meta["with_ttl"] == 100
    log = keys("first message of a session, 100 B", "agentd:s:{…}:log")
    assert log["new_keys"] == log["with_ttl"] == 100
    entry = keys("cache entry (L2)", "agentd:c:{…}")
    assert entry["new_keys"] == entry["with_ttl"] == 100
    document = keys("shared-state document, 100 B", "agentd:st:{…}")
    assert (document["new_keys"], document["with_ttl"]) == (100, 0)
    record = keys("background response (ended)", "agentd:r:{…}")
    assert record["new_keys"] == record["with_ttl"] == 25
    # A longer message costs more than a shorter one (the figures are the content's).
    per = {n: kinds[n]["memory_usage_per_object"] for n in KINDS if n.startswith("history")}
    assert (
        per["history message, 100 B content"]
        < per["history message, 1000 B content"]
        < per["history message, 10000 B content"]
    )
