"""The ``agentd`` command: ``serve``, ``chat``, ``keys``, ``reshard``, ``check-config``
and ``--version``."""

from __future__ import annotations

import argparse
import platform
import sys
from collections.abc import Sequence
from typing import Any

from . import __version__, fastpath, keys_client
from .config import Config, ConfigError, dump_toml, load, parse_bind
from .reshard_cli import url_list

__all__ = ("main",)

EXIT_CONFIG = 2


def version_line() -> str:
    try:
        import uvloop

        loop = f"uvloop {uvloop.__version__}"
    except ImportError:
        loop = "asyncio"
    return (
        f"agentd {__version__} (Python {platform.python_version()}, {loop}, "
        f"fastpath {fastpath.IMPLEMENTATION})"
    )


def _bind_arg(value: str) -> str:
    try:
        parse_bind(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agentd", description="An async, high-throughput server for AI agents."
    )
    parser.add_argument("--version", action="version", version=version_line())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the server")
    serve.add_argument("-c", "--config", metavar="FILE", help="config file (default ./config.toml)")
    serve.add_argument("--bind", type=_bind_arg, metavar="HOST:PORT", help="override server.bind")
    serve.add_argument("--workers", type=int, metavar="N", help="override server.workers")
    serve.add_argument(
        "--partitions",
        type=_names_arg,
        metavar="A,B",
        help="run only these job partitions' background work (override server.partitions)",
    )

    chat = sub.add_parser("chat", help="chat with an agent over the WebSocket protocol")
    chat.add_argument("--url", default="http://127.0.0.1:8080", help="server URL")
    chat.add_argument("--agent", help="agent name (default: the server's first agent)")
    chat.add_argument("--session", help="resume this session id")

    keys_client.add_parser(sub)

    reshard = sub.add_parser(
        "reshard", help="move the keys of client-side shards to a new URL list"
    )
    reshard.add_argument("-c", "--config", metavar="FILE", help="config file (its [redis] urls)")
    reshard.add_argument(
        "--to", required=True, type=url_list, metavar="URL1,URL2", help="the new URL list"
    )
    reshard.add_argument(
        "--move",
        action="store_true",
        help="second run, once every instance serves the new list: move the keys",
    )
    reshard.add_argument(
        "--max-slots", type=int, metavar="N", help="stop after N slots (run again to go on)"
    )

    check = sub.add_parser("check-config", help="validate and print the effective config")
    check.add_argument("-c", "--config", metavar="FILE", help="config file (default ./config.toml)")
    return parser


def _names_arg(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _flag_overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    server: dict[str, Any] = {}
    if getattr(args, "bind", None) is not None:
        server["bind"] = args.bind
    if getattr(args, "workers", None) is not None:
        server["workers"] = args.workers
    if getattr(args, "partitions", None) is not None:
        server["partitions"] = args.partitions
    return {"server": server} if server else {}


def _load_or_report(args: argparse.Namespace) -> Config | None:
    try:
        return load(args.config, overrides=_flag_overrides(args))
    except ConfigError as exc:
        _report(exc)
        return None


def _report(exc: ConfigError) -> None:
    print("agentd: invalid configuration:", file=sys.stderr)
    for error in exc.errors:
        print(f"  {error}", file=sys.stderr)


def _serve(args: argparse.Namespace) -> int:
    config = _load_or_report(args)
    if config is None:
        return EXIT_CONFIG
    # Imported here: the supervisor sets up process-wide state (metrics, signals).
    from .log import setup_logging
    from .proc.fdlimit import raise_nofile
    from .proc.supervisor import Supervisor

    setup_logging(config.log.level, config.log.format, "main")
    raise_nofile()  # one descriptor per connection; the workers inherit the limit
    # A reload re-reads the same file with the same flags on top.
    supervisor = Supervisor(config, lambda: load(args.config, overrides=_flag_overrides(args)))
    try:
        return supervisor.run()
    except ConfigError as exc:  # what only starting can find (a token key it cannot read)
        _report(exc)
        return EXIT_CONFIG


def _check_config(args: argparse.Namespace) -> int:
    config = _load_or_report(args)
    if config is None:
        return EXIT_CONFIG
    print(f"# {config.source or 'built-in defaults'} ({config.mode} mode)")
    print(dump_toml(config), end="")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "keys":
        return keys_client.run_keys(args)
    if args.command == "reshard":
        from .reshard_cli import run_reshard

        return run_reshard(args, _load_or_report(args))
    if args.command == "chat":
        import asyncio

        from .chat_client import run_chat

        try:
            return asyncio.run(run_chat(args.url, args.agent, args.session))
        except KeyboardInterrupt:
            return 130
    return _check_config(args)
