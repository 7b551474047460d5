"""What a worker imports, and when: the supervisor imports what its config's workers
will use before forking them (they share it), and nothing a config does not use.

Each case runs in a fresh interpreter, whose ``sys.modules`` is the evidence."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

# The supervisor's imports, its preload for a config, then a worker's app for it: which
# modules were loaded at each step.
PROBE = """
import json, sys
import agentd.cli, agentd.proc.supervisor
from agentd.config import from_dict
from agentd.server import create_app, preload
config = from_dict(json.loads(sys.argv[1]))
def loaded():
    return {name for name in sys.modules if name.split(".")[0] in ("mcp", "redis", "agentd")}
supervisor = loaded()
preload(config)
preloaded = loaded()
create_app(config)
worker = loaded() - preloaded
print(json.dumps({"supervisor": sorted(supervisor), "preloaded": sorted(preloaded),
                  "worker": sorted(worker)}))
"""

REDIS = {"redis": {"urls": ["redis://127.0.0.1:1"]}}
MCP = {"mcp_servers": [{"label": "t", "url": "http://127.0.0.1:1/mcp"}]}
URLS = {"tools": {"allowed_server_urls": ["http://127.0.0.1:1/"]}}


def probe(raw: dict[str, Any]) -> dict[str, set[str]]:
    out = subprocess.run([sys.executable, "-c", PROBE, json.dumps(raw)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120, check=True)  # fmt: skip
    return {step: set(names) for step, names in json.loads(out.stdout).items()}


def has(modules: set[str], package: str) -> bool:
    return any(name == package or name.startswith(package + ".") for name in modules)


@pytest.mark.parametrize("raw", [{}, REDIS, MCP, URLS, {**REDIS, **MCP}])
def test_a_worker_imports_nothing_its_supervisor_did_not(raw: dict[str, Any]) -> None:
    seen = probe(raw)
    assert seen["worker"] == set()
    assert not has(seen["supervisor"], "mcp") and not has(seen["supervisor"], "redis")
    assert has(seen["preloaded"], "mcp") == bool("mcp_servers" in raw or "tools" in raw)
    assert has(seen["preloaded"], "agentd.store.redis") == ("redis" in raw)
    assert has(seen["preloaded"], "agentd.store.memory") == ("redis" not in raw)
