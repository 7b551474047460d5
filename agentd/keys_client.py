"""``agentd keys create|list|show|update|revoke``: the admin API for API keys
(``/v1/admin/keys``, docs/auth.md) from a terminal, against a running server.

The admin key is read from the environment variable ``--admin-key-env`` names (by
default the config's ``auth.admin_key_env`` with ``-c``, else ``AGENTD_ADMIN_KEY``),
never from the command line, where other users of the machine could read it. Each
command prints the server's JSON answer on standard output; an error answer exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from .config import SCOPES, ConfigError, LimitsConfig, load

__all__ = ("EXIT_ERROR", "add_parser", "run_keys")

EXIT_ERROR = 1
DEFAULT_ENV = "AGENTD_ADMIN_KEY"
TIMEOUT_S = 30.0
_LIMITS = tuple(LimitsConfig.__dataclass_fields__)


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _limit(text: str) -> tuple[str, int]:
    name, sep, value = text.partition("=")
    if not sep or name not in _LIMITS or not value.isdigit():
        raise argparse.ArgumentTypeError(f"expected NAME=N with NAME one of {', '.join(_LIMITS)}")
    return name, int(value)


def add_parser(sub: Any) -> None:
    """Register ``keys`` and its commands on the ``agentd`` parser's subparsers."""
    keys = sub.add_parser("keys", help="manage API keys on a running server")
    keys.add_argument("--url", default="http://127.0.0.1:8080", help="server URL")
    keys.add_argument("-c", "--config", metavar="FILE", help="read auth.admin_key_env from it")
    keys.add_argument(
        "--admin-key-env",
        metavar="NAME",
        help=f"environment variable holding the admin key (default {DEFAULT_ENV})",
    )
    verbs = keys.add_subparsers(dest="verb", required=True, metavar="VERB")

    scopes_help = f"comma-separated, of {','.join(SCOPES)}"
    create = verbs.add_parser("create", help="create a key (shown once)")
    create.add_argument("--tenant", required=True, help='its tenant ("" = the operator\'s)')
    create.add_argument("--name")
    create.add_argument("--scopes", type=_names, help=scopes_help)
    create.add_argument("--agents", type=_names, help="comma-separated (default: every agent)")
    create.add_argument(
        "--limit", type=_limit, action="append", metavar="NAME=N", help="a limit; repeatable"
    )
    create.add_argument("--expires-at", type=float, metavar="UNIX", help="expiry, Unix seconds")

    listing = verbs.add_parser("list", help="list keys (every page)")
    listing.add_argument("--tenant", help="only this tenant's")

    show = verbs.add_parser("show", help="show a key's record")
    show.add_argument("id")

    update = verbs.add_parser("update", help="change a key")
    update.add_argument("id")
    update.add_argument("--name")
    update.add_argument("--scopes", type=_names, help=scopes_help)
    agents = update.add_mutually_exclusive_group()
    agents.add_argument("--agents", type=_names, help="comma-separated")
    agents.add_argument("--all-agents", action="store_true", help="allow every agent")
    update.add_argument(
        "--limit",
        type=_limit,
        action="append",
        metavar="NAME=N",
        help="the key's limits (replace them all); repeatable",
    )
    update.add_argument("--no-limits", action="store_true", help="remove the key's limits")
    state = update.add_mutually_exclusive_group()
    state.add_argument("--disable", action="store_true")
    state.add_argument("--enable", action="store_true")
    expiry = update.add_mutually_exclusive_group()
    expiry.add_argument("--expires-at", type=float, metavar="UNIX")
    expiry.add_argument("--no-expiry", action="store_true")

    revoke = verbs.add_parser("revoke", help="revoke a key (at once, everywhere)")
    revoke.add_argument("id")


class _Failed(Exception):
    def __init__(self, body: Any) -> None:
        super().__init__("request failed")
        self.body = body


def _call(url: str, key: str, method: str, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url.rstrip("/") + path, data=data, method=method)
    request.add_header("Authorization", f"Bearer {key}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = {"error": {"message": raw.decode(errors="replace"), "status": exc.code}}
        raise _Failed(answer) from None
    except (urllib.error.URLError, OSError) as exc:
        raise _Failed({"error": {"message": f"cannot reach {url}: {exc}"}}) from None


def _env_name(args: argparse.Namespace) -> str:
    if args.admin_key_env:
        return str(args.admin_key_env)
    if args.config:
        return load(args.config).auth.admin_key_env
    return DEFAULT_ENV


def _create_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"tenant": args.tenant}
    if args.name is not None:
        body["name"] = args.name
    if args.scopes is not None:
        body["scopes"] = args.scopes
    if args.agents is not None:
        body["agents"] = args.agents
    if args.limit:
        body["limits"] = dict(args.limit)
    if args.expires_at is not None:
        body["expires_at"] = args.expires_at
    return body


def _update_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if args.name is not None:
        body["name"] = args.name
    if args.scopes is not None:
        body["scopes"] = args.scopes
    if args.agents is not None:
        body["agents"] = args.agents
    elif args.all_agents:
        body["agents"] = None
    if args.limit:
        body["limits"] = dict(args.limit)
    elif args.no_limits:
        body["limits"] = {}
    if args.disable or args.enable:
        body["disabled"] = bool(args.disable)
    if args.expires_at is not None:
        body["expires_at"] = args.expires_at
    elif args.no_expiry:
        body["expires_at"] = None
    return body


def _list_all(url: str, key: str, tenant: str | None) -> dict[str, Any]:
    keys: list[Any] = []
    after: str | None = None
    while True:
        query: dict[str, str] = {"limit": "1000"}
        if tenant is not None:
            query["tenant"] = tenant
        if after is not None:
            query["after"] = after
        page = _call(url, key, "GET", "/v1/admin/keys?" + urllib.parse.urlencode(query))
        keys += page["data"]
        after = page.get("next_after")
        if not after:
            return {"object": "list", "data": keys}


def run_keys(args: argparse.Namespace) -> int:
    try:
        env = _env_name(args)
    except ConfigError as exc:
        print("agentd: invalid configuration:\n  " + "\n  ".join(exc.errors), file=sys.stderr)
        return EXIT_ERROR
    key = os.environ.get(env, "")
    if not key:
        print(f"agentd keys: no admin key in ${env}", file=sys.stderr)
        return EXIT_ERROR
    url, verb = args.url, args.verb
    path = "/v1/admin/keys"
    try:
        if verb == "create":
            result = _call(url, key, "POST", path, _create_body(args))
        elif verb == "list":
            result = _list_all(url, key, args.tenant)
        elif verb == "show":
            result = _call(url, key, "GET", f"{path}/{urllib.parse.quote(args.id, safe='')}")
        elif verb == "update":
            target = f"{path}/{urllib.parse.quote(args.id, safe='')}"
            result = _call(url, key, "PATCH", target, _update_body(args))
        else:
            result = _call(url, key, "DELETE", f"{path}/{urllib.parse.quote(args.id, safe='')}")
    except _Failed as exc:
        print(json.dumps(exc.body, indent=2), file=sys.stderr)
        return EXIT_ERROR
    print(json.dumps(result, indent=2))
    return 0
