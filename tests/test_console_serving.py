"""The console's files as the server serves them, and ``GET /v1/me``: in-process, on the
memory store (the page itself is driven in a real browser in test_console.py)."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agentd import __version__
from agentd.console import STATIC

from .procs import ROOT

ADMIN_KEY = "sk-admin-" + "m" * 40
Serve = Callable[..., Any]


async def test_the_page_and_its_files_are_served_with_a_strict_policy(serve: Serve) -> None:
    url = await serve()
    async with aiohttp.ClientSession() as http:
        for path in ("/console", "/console/"):
            async with http.get(url + path) as r:
                assert r.status == 200
                assert r.content_type == "text/html"
                assert "script-src 'self'" in r.headers["Content-Security-Policy"]
                assert r.headers["X-Content-Type-Options"] == "nosniff"
                page = await r.text()
        # Every file the page names is there, with its type.
        names = re.findall(r'(?:href|src)="/console/([^"]+)"', page)
        assert {"app.js", "api.js", "console.css", "icon.svg"} <= set(names)
        types = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
        for name in names:
            async with http.get(f"{url}/console/{name}") as r:
                assert r.status == 200, name
                assert r.content_type == types[Path(name).suffix], name
        # Every module a module imports, too.
        for module in STATIC.glob("*.js"):
            for name in re.findall(r'from "\./([^"]+)"|import\("\./([^"]+)"\)', module.read_text()):
                target = next(n for n in name if n)
                assert (STATIC / target).is_file(), f"{module.name} imports {target}"


async def test_the_policy_lets_the_page_reach_only_its_own_host(serve: Serve) -> None:
    url = await serve()
    host = url.removeprefix("http://")
    async with aiohttp.ClientSession() as http:
        async with http.get(url + "/console") as r:
            policy = r.headers["Content-Security-Policy"]
        assert f"connect-src 'self' ws://{host} wss://{host};" in policy
        # A Host header that is not a host cannot write itself into the policy.
        hostile = {"Host": "a; script-src *"}
        async with http.get(url + "/console", headers=hostile) as r:
            policy = r.headers["Content-Security-Policy"]
        assert "ws://invalid.invalid wss://invalid.invalid;" in policy
        assert "script-src *" not in policy


@pytest.mark.parametrize(
    "path",
    [
        "/console/..%2Fconsole%2F__init__.py",
        "/console/nothing.js",
        "/console/%2Fetc%2Fpasswd",
        "/console/..",
        "/console/app.py",
    ],
)
async def test_nothing_outside_the_static_files_is_served(serve: Serve, path: str) -> None:
    url = await serve()
    async with aiohttp.ClientSession() as http, http.get(url + path) as r:
        assert r.status == 404


async def test_settings_tell_the_page_whether_to_ask_for_a_credential(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    open_url = await serve()
    monkeypatch.setenv("AGENTD_ADMIN_KEY", ADMIN_KEY)
    keys_url = await serve(auth={"mode": "keys"})
    async with aiohttp.ClientSession() as http:
        for url, mode in ((open_url, "none"), (keys_url, "keys")):
            async with http.get(url + "/console/settings.json") as r:
                assert r.status == 200  # asked before any sign-in: no credential
                assert await r.json() == {"auth_mode": mode, "version": __version__}
        async with http.get(keys_url + "/console") as r:
            assert r.status == 200


async def test_me_describes_the_caller(serve: Serve, monkeypatch: pytest.MonkeyPatch) -> None:
    open_url = await serve()
    monkeypatch.setenv("AGENTD_ADMIN_KEY", ADMIN_KEY)
    url = await serve(auth={"mode": "keys"})
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(open_url + "/v1/me") as r:
            assert r.status == 200
            body = await r.json()
            assert (body["kind"], body["tenant"]) == ("open", "")
        async with http.get(url + "/v1/me") as r:
            assert r.status == 401
            assert (await r.json())["error"]["code"] == "missing_api_key"
        async with http.get(url + "/v1/me", headers=admin) as r:
            assert (await r.json())["kind"] == "admin"
        made = {"tenant": "acme", "scopes": ["chat", "state"], "agents": ["echo"]}
        async with http.post(url + "/v1/admin/keys", json=made, headers=admin) as r:
            assert r.status == 201
            created = await r.json()
        async with http.get(
            url + "/v1/me", headers={"Authorization": f"Bearer {created['key']}"}
        ) as r:
            assert r.status == 200
            assert await r.json() == {
                "object": "identity",
                "kind": "key",
                "tenant": "acme",
                "key_id": created["id"],
                "subject": None,
                "scopes": ["chat", "state"],
                "agents": ["echo"],
                "sessions": None,
                "expires_at": None,
            }


def test_an_installed_agentd_carries_every_console_file() -> None:
    """The package data of pyproject.toml covers each file of the static directory (a
    subdirectory there would need its own pattern)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = project["tool"]["setuptools"]["package-data"]["agentd.console"]
    package = STATIC.parent
    for path in STATIC.rglob("*"):
        assert path.is_file(), f"{path}: only files, no subdirectories, are packaged"
        assert any(path.relative_to(package).match(p) for p in patterns), path
