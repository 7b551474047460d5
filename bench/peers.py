"""Peer servers the bench compares agentd with, installed as they come from PyPI, each in
a virtualenv of its own under ``.bench-peers/`` (git-ignored; ``BENCH_PEERS_DIR`` moves
it), never into agentd's environment.

LiteLLM's proxy: ``pip install 'litellm[proxy]'`` into ``.bench-peers/litellm``, started
with a config of one model at an OpenAI-compatible upstream and its response cache on.
Nothing here reaches the network but that one install: the proxy runs with its local
model cost map, telemetry off, and every outbound HTTP(S) request sent to a closed
loopback port (a fetch fails at once instead of hanging), loopback excepted.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.procs import ROOT, free_port

from . import targets

__all__ = (
    "LITELLM_SPEC",
    "Peer",
    "ensure_litellm",
    "install_allowed",
    "litellm",
    "litellm_config",
    "litellm_env",
    "peers_dir",
)

LITELLM_SPEC = "litellm[proxy]"
INSTALL_LIMIT = 900.0  # seconds: pip's whole install, on a slow shared machine
START_LIMIT = 180.0  # the proxy imports a great deal before it listens
DEAD_PROXY = "http://127.0.0.1:9"  # nothing listens there: outbound requests fail at once


def peers_dir() -> Path:
    """Where the peers' virtualenvs live: ``BENCH_PEERS_DIR`` or ``.bench-peers/``."""
    return Path(os.environ.get("BENCH_PEERS_DIR") or ROOT / ".bench-peers").resolve()


def install_allowed() -> bool:
    """Whether this run may install software (not ``--no-install``, not ``--tiny``)."""
    return os.environ.get("BENCH_NO_INSTALL", "") != "1"


@dataclass(frozen=True)
class Peer:
    """An installed peer: its executable and version, or why it is not there."""

    exe: Path | None
    version: str = ""
    problem: str = ""
    installed_now: bool = False


def _version(venv: Path) -> str:
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import importlib.metadata as m; "
         "print(m.version('litellm'))"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    return done.stdout.strip() if done.returncode == 0 else ""


def ensure_litellm(
    venv: Path, install: bool, pip_env: dict[str, str] | None = None, python: str = sys.executable
) -> Peer:
    """LiteLLM's proxy in ``venv``: found there, or (with ``install``) installed there from
    PyPI first. A peer that is not there says why (``problem``); it is never faked."""
    exe = venv / "bin" / "litellm"
    if exe.is_file() and os.access(exe, os.X_OK):
        return Peer(exe, _version(venv))
    if not install:
        return Peer(
            None,
            problem=f"LiteLLM not installed ({venv} has no bin/litellm; a run without "
            "--no-install or --tiny installs it there)",
        )
    env = {**os.environ, **(pip_env or {}), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("PYTHONPATH", None)
    steps = (
        [python, "-m", "venv", str(venv)],
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", LITELLM_SPEC],
    )
    for step in steps:
        try:
            done = subprocess.run(
                step, capture_output=True, text=True, env=env, timeout=INSTALL_LIMIT, check=False
            )
        except subprocess.TimeoutExpired:
            return Peer(None, problem=f"LiteLLM install timed out after {INSTALL_LIMIT:g} s")
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip()[-600:]
            return Peer(None, problem=f"LiteLLM install failed ({' '.join(step)}): {tail}")
    if not (exe.is_file() and os.access(exe, os.X_OK)):
        return Peer(None, problem=f"LiteLLM install left no {exe}")
    return Peer(exe, _version(venv), installed_now=True)


def litellm_config(upstream_v1: str, model: str = "echo") -> str:
    """The proxy's config.yaml: one model, ``model``, at the OpenAI-compatible upstream
    ``upstream_v1`` (its ``/v1`` base URL), and the response cache on, in memory
    (``type: local``: one worker's own cache, no round trip; LiteLLM's docs keep Redis for
    more than one worker). No database, no callbacks, and no master key: agentd runs with
    auth off too, and LiteLLM (which refuses to start without one unless told, as here,
    that this is on purpose) then checks no key, so it does less per request, not more."""
    return f"""\
model_list:
  - model_name: {model}
    litellm_params:
      model: openai/{model}
      api_base: {upstream_v1}
      api_key: bench-not-a-key
litellm_settings:
  cache: true
  cache_params:
    type: local
  set_verbose: false
  telemetry: false
  turn_off_message_logging: true
general_settings:
  disable_spend_logs: true
  dangerously_permit_weak_or_unset_master_key: true
"""


def litellm_env() -> dict[str, str]:
    """The proxy's environment: nothing fetched from the network, quiet logs."""
    return {
        "PYTHONPATH": "",  # the proxy's own venv only, not agentd's tree
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # the bundled cost map, not GitHub's
        "LITELLM_TELEMETRY": "False",
        "LITELLM_MODE": "PRODUCTION",  # no .env loading
        "LITELLM_LOG": "ERROR",
        "LITELLM_DONT_SHOW_FEEDBACK_BOX": "True",
        "DISABLE_ADMIN_UI": "True",
        "HF_HUB_OFFLINE": "1",
        "HTTP_PROXY": DEAD_PROXY,
        "HTTPS_PROXY": DEAD_PROXY,
        "http_proxy": DEAD_PROXY,
        "https_proxy": DEAD_PROXY,
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }


def litellm(
    workdir: Path, cpus: list[int], exe: Path, upstream_v1: str, name: str = "litellm"
) -> contextlib.AbstractContextManager[targets.Target]:
    """``litellm --config ...`` with one worker on a free loopback port, pinned to ``cpus``;
    ready when ``/health/liveliness`` answers."""
    port = free_port()
    config = workdir / f"litellm-{port}.yaml"
    config.write_text(litellm_config(upstream_v1))
    command = [str(exe), "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
               "--num_workers", "1"]  # fmt: skip
    return targets.start(
        name, command, cpus, workdir, port, "/health/liveliness", env=litellm_env(),
        limit=START_LIMIT,
    )  # fmt: skip
