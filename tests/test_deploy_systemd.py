"""The systemd units in deploy/: valid for systemd, hardened, and the template the same
unit as the single one."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from agentd.config import Config

from .deploy_tools import DEPLOY, run

UNIT = DEPLOY / "agentd.service"
TEMPLATE = DEPLOY / "agentd@.service"
EXEC = "/opt/agentd/venv/bin/agentd"

# What the template says differently: its instance's name (%i) in these values.
PER_INSTANCE = {
    "Description": "agentd, a server for AI agents (instance %i)",
    "ExecStart": f"{EXEC} serve -c /etc/agentd/%i.toml",
    "EnvironmentFile": "-/etc/agentd/%i.env",
    "CacheDirectory": "agentd/%i",
    "Environment": "AGENTD_CACHE__DISK_PATH=/var/cache/agentd/%i/responses.sqlite",
}


def _directives(path: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) of every setting, in order, comments left out."""
    section, out = "", []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.append((section, key, value))
    return out


def _systemd_version() -> int:
    out = run("systemd-analyze", "--version").stdout
    return int(re.match(r"systemd (\d+)", out).group(1))  # type: ignore[union-attr]


def _runnable_copy(unit: Path, tmp_path: Path) -> Path:
    """The unit with ExecStart on this machine's Python: verify checks that it exists."""
    copy = tmp_path / unit.name
    copy.write_text(unit.read_text().replace(EXEC, f"{sys.executable} -m agentd"))
    return copy


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify exits 0 even on unknown keys or bad values: what it prints is the verdict.
    tolerated = []
    if _systemd_version() < 253:  # Type=notify-reload is newer (documented in the unit)
        tolerated.append("Failed to parse service type, ignoring: notify-reload")
    for unit in (UNIT, TEMPLATE):
        result = run("systemd-analyze", "verify", str(_runnable_copy(unit, tmp_path)))
        complaints = [
            line
            for line in (result.stdout + result.stderr).splitlines()
            if line.strip() and not any(t in line for t in tolerated)
        ]
        assert result.returncode == 0 and complaints == [], (unit.name, complaints)


def test_units_score_ok_or_better_in_systemd_analyze_security(tmp_path: Path) -> None:
    for unit in (UNIT, TEMPLATE):
        copy = _runnable_copy(unit, tmp_path)
        result = run("systemd-analyze", "security", "--offline=yes", str(copy))
        assert result.returncode == 0, result.stderr
        match = re.search(r"Overall exposure level for \S+: ([\d.]+) (\w+)", result.stdout)
        assert match, result.stdout[-500:]
        # systemd's bands: 0 PERFECT, < 1 SAFE, < 5 OK, < 7.5 MEDIUM, then worse.
        assert match.group(2) in ("PERFECT", "SAFE", "OK"), match.group(0)
        assert float(match.group(1)) < 5.0


def test_the_template_is_the_unit_with_an_instance_name() -> None:
    unit, template = _directives(UNIT), _directives(TEMPLATE)
    assert [(s, k) for s, k, _ in unit] == [(s, k) for s, k, _ in template]
    for (_, key, value), (_, _, value_t) in zip(unit, template, strict=True):
        if value != value_t:
            assert PER_INSTANCE.get(key) == value_t, (key, value, value_t)
            assert "%i" not in value


def test_the_unit_is_hardened() -> None:
    settings = {(k, v) for _, k, v in _directives(UNIT)}
    for pair in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("CapabilityBoundingSet", ""),
        ("AmbientCapabilities", ""),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("DynamicUser", "yes"),
        ("LimitNOFILE", "1048576"),
        ("SystemCallFilter", "@system-service"),
        ("MemoryDenyWriteExecute", "yes"),
    ]:
        assert pair in settings, pair


def test_systemd_waits_for_the_drain_before_killing() -> None:
    # Defaults: no drain delay, shutdown_timeout of in-flight requests; then a margin.
    server = Config().server
    stop = {k: v for _, k, v in _directives(UNIT)}["TimeoutStopSec"]
    assert float(stop) >= server.drain_delay_s + server.shutdown_timeout + 10
