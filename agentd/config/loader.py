"""Reading the configuration: a TOML file, ``AGENTD_<SECTION>__<KEY>`` environment
overrides and command-line flags, validated into a :class:`~.root.Config` or a
:class:`ConfigError` listing every problem; and writing it back as TOML."""

from __future__ import annotations

import dataclasses
import os
import time
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .checks import cross_checks, error_path
from .root import Config
from .validate import read_section

ENV_PREFIX = "AGENTD_"
DEFAULT_FILE = "config.toml"


class ConfigError(Exception):
    """The configuration is invalid; ``errors`` holds one message per problem."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("invalid configuration:\n  " + "\n  ".join(errors))


def _env_overrides(
    environ: Mapping[str, str],
) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """``AGENTD_SECTION__KEY=value`` → ``{section: {key: value}}``; values parse as TOML.

    Also returns where each key came from (``"section.key"`` → variable name), so an
    error in it can name the variable to fix rather than a key no file contains.
    """
    out: dict[str, dict[str, Any]] = {}
    origins: dict[str, str] = {}
    for name, text in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX) :].partition("__")
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text  # a bare word: take it as a string
        out.setdefault(section.lower(), {})[key.lower()] = value
        origins[f"{section.lower()}.{key.lower()}"] = name
    return out, origins


def _name_variables(errors: list[str], origins: Mapping[str, str]) -> list[str]:
    """Add the environment variable to each error about a key that came from one."""
    named = []
    for error in errors:
        path = error_path(error)
        for key, variable in origins.items():
            # The key itself, an item of it, or its section (an unknown section).
            if path == key or path.startswith((key + ".", key + "[")) or key.startswith(path + "."):
                error += f" (from environment variable {variable})"
                break
        named.append(error)
    return named


def from_dict(
    raw: dict[str, Any], *, source: str | None = None, written_at: int | None = None
) -> Config:
    """Validate a parsed config document; raise :class:`ConfigError` with every problem.
    ``written_at`` (Unix seconds) defaults to now."""
    errors: list[str] = []
    config = read_section("", Config, raw, errors)
    config = cross_checks(raw, config, errors)
    if errors:
        raise ConfigError(errors)
    if written_at is None:
        written_at = int(time.time())
    return dataclasses.replace(config, source=source, written_at=written_at)


def load(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Config:
    """Read ``path`` (default ``./config.toml`` if present, else built-in defaults),
    apply environment then ``overrides`` (command-line flags), and validate."""
    raw: dict[str, Any] = {}
    source: str | None = None
    written_at: int | None = None
    if path is None and Path(DEFAULT_FILE).is_file():
        path = DEFAULT_FILE
    if path is not None:
        source = str(Path(path).resolve())
        try:
            with open(path, "rb") as fh:
                written_at = int(os.fstat(fh.fileno()).st_mtime)
                raw = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
    from_env, origins = _env_overrides(os.environ if environ is None else environ)
    for layer in (from_env, overrides or {}):
        for section, values in layer.items():
            target = raw.setdefault(section, {})
            if isinstance(target, dict):
                target.update(values)
            elif layer is from_env:  # not applied: the file's section is not a table
                for key in values:
                    origins.pop(f"{section}.{key}", None)
    for section, values in (overrides or {}).items():  # a flag wins over the variable
        for key in values:
            origins.pop(f"{section}.{key}", None)
    try:
        return from_dict(raw, source=source, written_at=written_at)
    except ConfigError as exc:
        raise ConfigError(_name_variables(exc.errors, origins)) from None


# -- output -------------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if dataclasses.is_dataclass(value):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def dump_toml(config: Config) -> str:
    """The effective configuration as TOML that :func:`load` reads back unchanged."""
    lines: list[str] = []
    for section in dataclasses.fields(config):
        if section.metadata.get("internal"):
            continue
        value = getattr(config, section.name)
        tables = value if isinstance(value, tuple) else (value,)
        for table in tables:
            header = f"[[{section.name}]]" if isinstance(value, tuple) else f"[{section.name}]"
            lines.append(header)
            for f in dataclasses.fields(table):
                lines.append(f"{f.name} = {_toml_value(getattr(table, f.name))}")
            lines.append("")
    return "\n".join(lines)
