"""The ``peer-litellm`` bench scenario's plumbing, without installing LiteLLM: the proxy's
config and environment, a run whose peer virtualenv is absent (reported as not run, no
figure), and a failed install (pip's own failure, offline), reported as such."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bench import peers
from bench.scenarios import SCENARIOS
from bench.schema import load_schema, validate

ROOT = Path(__file__).resolve().parent.parent


def _block(config: str, key: str) -> list[str]:
    """The lines of the top-level YAML block ``key`` (the config is plain block YAML)."""
    lines = config.splitlines()
    start = lines.index(f"{key}:")
    out = []
    for line in lines[start + 1 :]:
        if line and not line.startswith(" "):
            break
        out.append(line.strip())
    return out


def test_litellm_config_is_one_model_at_the_upstream_with_its_memory_cache_on() -> None:
    config = peers.litellm_config("http://127.0.0.1:4321/v1")
    models = _block(config, "model_list")
    assert models[0] == "- model_name: echo"
    assert "model: openai/echo" in models
    assert "api_base: http://127.0.0.1:4321/v1" in models
    assert sum(line.startswith("- model_name:") for line in models) == 1
    settings = _block(config, "litellm_settings")
    assert "cache: true" in settings
    assert settings[settings.index("cache_params:") + 1] == "type: local"
    assert "telemetry: false" in settings
    # No database and no master key: the proxy does what agentd (auth off) does, and is
    # told that this is on purpose (it refuses to start otherwise).
    assert "database_url" not in config
    general = _block(config, "general_settings")
    assert "dangerously_permit_weak_or_unset_master_key: true" in general
    assert not any(line.startswith("master_key:") for line in general)


def test_litellm_env_keeps_the_proxy_off_the_network() -> None:
    env = peers.litellm_env()
    assert env["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"
    assert env["LITELLM_TELEMETRY"] == "False"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        assert env[name].startswith("http://127.0.0.1:")
    assert "127.0.0.1" in env["NO_PROXY"].split(",")  # the upstream stub stays reachable
    assert env["PYTHONPATH"] == ""


def test_peer_litellm_runs_only_when_named() -> None:
    assert SCENARIOS["peer-litellm"].default is False


def test_bench_peer_litellm_without_its_venv_is_reported_not_run(tmp_path: Path) -> None:
    out, empty = tmp_path / "results", tmp_path / "peers"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "peer-litellm", "--tiny", "--out", str(out)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "BENCH_PEERS_DIR": str(empty)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads((out / "results.json").read_text())
    assert validate(results, load_schema()) == []
    (scenario,) = results["scenarios"]
    assert scenario["name"] == "peer-litellm"
    assert scenario["status"] == "skipped"
    assert scenario["reason"].startswith("not run: LiteLLM not installed")
    assert str(empty / "litellm") in scenario["reason"]
    assert scenario["runs"] == [] and scenario["ratios"] == []
    assert not empty.exists()  # a tiny run installs nothing
    assert "not run: LiteLLM not installed" in (out / "report.md").read_text()


def test_a_failed_litellm_install_is_reported_and_leaves_no_peer(tmp_path: Path) -> None:
    venv = tmp_path / "litellm"
    # pip with no index and no local wheels: its real failure, without the network.
    offline = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "", "PIP_CONFIG_FILE": os.devnull}
    peer = peers.ensure_litellm(venv, install=True, pip_env=offline)
    assert peer.exe is None
    assert peer.problem.startswith("LiteLLM install failed")
    assert "litellm" in peer.problem.lower()
    # And the next run still finds no proxy there.
    again = peers.ensure_litellm(venv, install=False)
    assert again.exe is None and again.problem.startswith("LiteLLM not installed")
