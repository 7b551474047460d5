"""Facts about the machine and the software a run measured, for results.json."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

__all__ = ("machine_facts", "machine_line")

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = (
    "agentd",
    "aiohttp",
    "uvloop",
    "orjson",
    "redis",
    "hiredis",
    "fastapi",
    "uvicorn",
    "pydantic",
    "httptools",
    "matplotlib",
)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _run(cmd: list[str], cwd: Path = ROOT) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False, cwd=cwd)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (done.stdout or done.stderr).strip()


def _tool_versions() -> dict[str, str | None]:
    wrk = _run(["wrk", "-v"]).splitlines()
    nginx = _run(["nginx", "-v"]) or _run(["/usr/sbin/nginx", "-v"])
    redis = _run(["redis-server", "--version"])
    return {
        "wrk": wrk[0] if wrk else None,
        "nginx": nginx.removeprefix("nginx version: ") or None,
        "redis-server": redis.split(" sha=")[0] if redis else None,
    }


def machine_facts(agentd_root: Path = ROOT) -> dict[str, Any]:
    """CPU, cores, kernel, Python, package and tool versions, git commits, load average.

    ``git_commit`` is the agentd under test (``--agentd-root``); ``harness_commit`` this
    checkout's, which differ only when another checkout is measured.
    """
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    commit = _run(["git", "rev-parse", "HEAD"], agentd_root) or None
    dirty = bool(_run(["git", "status", "--porcelain", "--untracked-files=no"], agentd_root))
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    try:
        from agentd import fastpath

        fast = fastpath.IMPLEMENTATION
    except ImportError:  # pragma: no cover
        fast = None
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count() or 0,
        "cpus_allowed": affinity,
        "memory_gib": _memory_gib(),
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "packages": versions,
        "tools": _tool_versions(),
        "git_commit": commit,
        "git_dirty": dirty,
        "agentd_root": str(agentd_root),
        "harness_commit": _run(["git", "rev-parse", "HEAD"]) or None,
        "agentd_fastpath": fast,
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def machine_line(facts: dict[str, Any]) -> str:
    """One line naming the machine and software, for the top of the report."""
    commit = (facts.get("git_commit") or "unknown")[:12]
    dirty = " (with uncommitted changes)" if facts.get("git_dirty") else ""
    return (
        f"{facts['cpu_model']}, {facts['cores']} cores, {facts.get('memory_gib')} GiB, "
        f"Linux {facts['kernel']}, Python {facts['python']}, "
        f"aiohttp {facts['packages'].get('aiohttp')}, uvloop {facts['packages'].get('uvloop')}, "
        f"agentd {facts['packages'].get('agentd')} at {commit}{dirty}"
    )
