"""Configuration: defaults, the shipped file, env overrides and every validation message."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from agentd.config import Config, ConfigError, dump_toml, from_dict, load

from .procs import ROOT


def test_shipped_config_documents_every_key_with_its_default() -> None:
    shipped = tomllib.loads((ROOT / "config.toml").read_text())
    defaults = tomllib.loads(dump_toml(from_dict({})))
    # "auto" resolves to the CPU count; everything else must read back identically.
    assert shipped["server"].pop("workers") == "auto"
    defaults["server"].pop("workers")
    assert shipped == defaults


REDIS = {"urls": ["redis://127.0.0.1:6390"]}


def test_defaults_are_standalone_with_one_worker() -> None:
    config = from_dict({})
    assert config.mode == "standalone"
    assert config.server.workers == 1
    assert from_dict({"redis": REDIS}).server.workers == len(os.sched_getaffinity(0))


def test_standalone_refuses_more_than_one_worker() -> None:
    with pytest.raises(ConfigError) as info:
        from_dict({"server": {"workers": 2}})
    assert info.value.errors[0].startswith("server.workers: standalone mode")
    assert from_dict({"server": {"workers": 2}, "redis": REDIS}).server.workers == 2


def test_effective_config_round_trips_through_toml() -> None:
    config = from_dict(
        {
            "server": {"workers": 3, "bind": "[::1]:9000"},
            "redis": {"urls": ["redis://a:1", "redis://b:2"]},
        }
    )
    again = from_dict(tomllib.loads(dump_toml(config)))
    assert again == config
    assert again.mode == "sharded"


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[server]\nworkers = 2\n[log]\nlevel = "debug"\n')
    env = {
        "AGENTD_SERVER__WORKERS": "5",
        "AGENTD_REDIS__URLS": '["redis://127.0.0.1:7000"]',
        "AGENTD_LOG__FORMAT": "json",  # a bare word is a string
        "AGENTD_NO_EXTENSIONS": "1",  # not a config variable: no "__"
    }
    config = load(path, environ=env)
    assert config.server.workers == 5
    assert config.redis.urls == ("redis://127.0.0.1:7000",)
    assert config.log.level == "debug" and config.log.format == "json"
    assert config.mode == "redis"


def test_flags_override_the_environment(tmp_path: Path) -> None:
    env = {"AGENTD_SERVER__WORKERS": "5", "AGENTD_REDIS__URLS": '["redis://h:1"]'}
    config = load(None, environ=env, overrides={"server": {"workers": 7}})
    assert config.server.workers == 7


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"server": {"workers": 0}}, "server.workers: must be >= 1, got 0"),
        (
            {"server": {"workers": "many"}},
            "server.workers: expected an integer or \"auto\", got string 'many'",
        ),
        (
            {"server": {"workers": True}},
            'server.workers: expected an integer or "auto", got boolean True',
        ),
        ({"server": {"bind": "localhost"}}, "server.bind: must be HOST:PORT"),
        ({"server": {"bind": "::1:80"}}, "server.bind: an IPv6 host must be in brackets"),
        ({"server": {"bind": "h:70000"}}, "server.bind: port must be 0..65535"),
        ({"server": {"shutdown_timeout": -1}}, "server.shutdown_timeout: must be >= 0.0"),
        ({"server": {"max_request_bytes": 1}}, "server.max_request_bytes: must be >= 1024"),
        (
            {"server": {"plugins": ["nocolon"]}},
            "server.plugins[0]: must be 'package.module:function'",
        ),
        ({"server": {"colour": "red"}}, "server.colour: unknown key"),
        ({"servr": {}}, "servr: unknown key"),
        ({"server": 3}, "server: expected table, got integer 3"),
        ({"redis": {"urls": "redis://x"}}, "redis.urls: expected array"),
        ({"redis": {"urls": ["http://x"]}}, "redis.urls[0]: must start with redis://"),
        ({"redis": {"urls": [1]}}, "redis.urls[0]: expected string, got integer 1"),
        ({"log": {"level": "loud"}}, "log.level: must be one of debug, info, warning, error"),
        ({"log": {"format": "xml"}}, "log.format: must be one of text, json"),
        ({"redis": {"cluster": True}}, "redis.cluster: needs at least one seed URL"),
        ({"sessions": {"ttl": 0}}, "sessions.ttl: must be >= 1, got 0"),
        (
            {"agents": [{"name": "a", "backend": "nope"}]},
            "agents[0].backend: no backend named 'nope'",
        ),
        ({"agents": [{"name": "a"}, {"name": "a"}]}, "agents[1].name: 'a' is defined twice"),
        (
            {"backends": [{"name": "x", "type": "openai"}], "agents": []},
            "backends[0].urls: an openai backend needs",
        ),
        ({"backends": [{"type": "grpc"}]}, "backends[0].type: must be one of echo, openai"),
        ({"backends": [{"policy": "random"}]}, "backends[0].policy: must be one of p2c"),
        ({"backends": [{"urls": ["ftp://x"]}]}, "backends[0].urls[0]: must start with http://"),
        ({"backends": [{"name": "a b"}]}, "backends[0].name: must be 1-64 characters"),
        (
            {"agents": [{"params": {"nested": {"t": 1}}}]},
            "agents[0].params.nested: expected a string",
        ),
        ({"agents": [{"history": -1}]}, "agents[0].history: must be >= 0"),
        ({"state": {"max_value_bytes": "big"}}, "state.max_value_bytes: expected integer"),
    ],
)
def test_invalid_values_name_their_key(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_dict(raw)
    assert any(e.startswith(message) for e in info.value.errors), info.value.errors


def test_every_error_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        from_dict({"server": {"workers": 0, "backlog": 0, "nope": 1}, "log": {"level": "x"}})
    assert len(info.value.errors) == 4


def _agentd(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agentd", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )


def test_check_config_prints_the_effective_config(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(
        '[server]\nworkers = 3\n[redis]\nurls = ["redis://h:1"]\n'
    )
    result = _agentd("check-config", cwd=tmp_path)  # ./config.toml is the default file
    assert result.returncode == 0, result.stderr
    printed = tomllib.loads(result.stdout)
    assert printed["server"]["workers"] == 3
    assert from_dict(printed) == from_dict(
        {"server": {"workers": 3}, "redis": {"urls": ["redis://h:1"]}}
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[server]\nworkers = 0\n", "server.workers: must be >= 1, got 0"),
        ("[server\n", "not valid TOML"),
        ("[log]\nlevel = 3\n", "log.level: expected string, got integer 3"),
    ],
)
def test_check_config_and_serve_exit_2_naming_the_key(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    for command in ("check-config", "serve"):
        result = _agentd(command, "-c", str(path), cwd=tmp_path)
        assert result.returncode == 2, (command, result.stderr)
        assert message in result.stderr


def test_a_missing_file_is_an_error(tmp_path: Path) -> None:
    result = _agentd("check-config", "-c", str(tmp_path / "absent.toml"), cwd=tmp_path)
    assert result.returncode == 2
    assert "cannot read" in result.stderr


def test_version_names_python_loop_and_fastpath(tmp_path: Path) -> None:
    result = _agentd("--version", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.startswith("agentd ")
    assert (
        "Python 3." in result.stdout and "fastpath " in result.stdout and "uvloop" in result.stdout
    )


def test_defaults_when_no_file_exists(tmp_path: Path) -> None:
    config = load(None, environ={})
    assert isinstance(config, Config)
    assert config.source is None or Path(config.source).name == "config.toml"


def test_a_config_file_is_dated_by_its_modification_time(tmp_path: Path) -> None:
    path = tmp_path / "agentd.toml"
    path.write_text('[[agents]]\nname = "echo"\n')
    os.utime(path, (1_600_000_000, 1_600_000_000))
    assert load(path, environ={}).written_at == 1_600_000_000
    # Not part of what the config says: the same settings compare equal.
    same = from_dict({"agents": [{"name": "echo"}]}, source=str(path.resolve()), written_at=1)
    assert load(path, environ={}) == same
