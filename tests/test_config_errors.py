"""`agentd check-config` reports every problem at once and says where each came from."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agentd.config import ConfigError, from_dict, load

from .procs import ROOT

BAD_URL_AND_BAD_REFERENCE = """
[[backends]]
name = "up"
type = "openai"
urls = ["localhost:9000"]

[[agents]]
name = "helpdesk"
backend = "nowhere"
"""


def _errors(text: str, tmp_path: Path, environ: dict[str, str] | None = None) -> list[str]:
    path = tmp_path / "agentd.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load(path, environ=environ or {})
    return info.value.errors


def test_a_bad_backend_url_does_not_hide_a_bad_agent_reference(tmp_path: Path) -> None:
    errors = _errors(BAD_URL_AND_BAD_REFERENCE, tmp_path)
    assert errors == [
        "backends[0].urls[0]: must start with http:// or https://, got 'localhost:9000'",
        "agents[0].backend: no backend named 'nowhere' (defined: up)",
    ]


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        # A backend whose name is wrong keeps the default name; the agent naming the
        # intended backend must not get a second, misleading error.
        (
            {"backends": [{"name": 5}], "agents": [{"backend": "gpu"}]},
            "backends[0].name: expected string, got integer 5",
        ),
        # A wrong URL list must not add "an openai backend needs at least one URL".
        (
            {"backends": [{"type": "openai", "urls": "http://x"}]},
            "backends[0].urls: expected array, got string 'http://x'",
        ),
        # A wrong worker count must not add the standalone rule's complaint.
        ({"server": {"workers": "four"}}, 'server.workers: expected an integer or "auto"'),
    ],
)
def test_a_wrong_key_gets_one_error_not_consequences(raw: dict, error: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_dict(raw)
    assert len(info.value.errors) == 1 and info.value.errors[0].startswith(error), info.value


def test_a_worker_count_in_words_says_what_is_accepted() -> None:
    with pytest.raises(ConfigError) as info:
        from_dict({"server": {"workers": "four"}})
    assert info.value.errors == [
        "server.workers: expected an integer or \"auto\", got string 'four'"
    ]


def test_an_error_in_a_value_from_the_environment_names_the_variable(tmp_path: Path) -> None:
    env = {
        "AGENTD_SERVER__WORKERS": "four",
        "AGENTD_LOG__LEVL": "debug",
        "AGENTD_REDIS__URLS": '["http://x"]',
        "AGENTD_SERVER__BACKLOG": "16",  # fine: not named anywhere
    }
    errors = _errors("[server]\nshutdown_timeout = -1\n", tmp_path, env)
    assert sorted(errors) == sorted(
        [
            "server.workers: expected an integer or \"auto\", got string 'four' "
            "(from environment variable AGENTD_SERVER__WORKERS)",
            "server.shutdown_timeout: must be >= 0.0, got -1.0",
            "log.levl: unknown key (known: level, format, access) "
            "(from environment variable AGENTD_LOG__LEVL)",
            "redis.urls[0]: must start with redis://, rediss://, unix:// or redis+sentinel://, "
            "got 'http://x' "
            "(from environment variable AGENTD_REDIS__URLS)",
        ]
    )


def test_a_flag_that_replaces_a_variable_is_not_blamed_on_it(tmp_path: Path) -> None:
    path = tmp_path / "agentd.toml"
    path.write_text("")
    with pytest.raises(ConfigError) as info:
        load(path, environ={"AGENTD_SERVER__WORKERS": "2"}, overrides={"server": {"workers": 0}})
    assert info.value.errors == ["server.workers: must be >= 1, got 0"]


def test_a_variable_that_could_not_apply_is_not_blamed(tmp_path: Path) -> None:
    errors = _errors("server = 3\n", tmp_path, {"AGENTD_SERVER__WORKERS": "2"})
    assert errors == ["server: expected table, got integer 3"]


def test_check_config_prints_every_error_with_its_variable(tmp_path: Path) -> None:
    path = tmp_path / "agentd.toml"
    path.write_text(BAD_URL_AND_BAD_REFERENCE)
    result = subprocess.run(
        [sys.executable, "-m", "agentd", "check-config", "-c", str(path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "AGENTD_SERVER__WORKERS": "four"},
    )
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert lines[0] == "agentd: invalid configuration:"
    assert set(lines[1:]) == {
        "  backends[0].urls[0]: must start with http:// or https://, got 'localhost:9000'",
        "  agents[0].backend: no backend named 'nowhere' (defined: up)",
        "  server.workers: expected an integer or \"auto\", got string 'four' "
        "(from environment variable AGENTD_SERVER__WORKERS)",
    }
