"""What the console's browser tests share (tests/test_console*.py): the server and its
configuration, a browser tab that checks itself, a second client of the same server,
signing in, keys and tokens."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jwt
from playwright.sync_api import Browser, Locator, Page, expect

from .browser import ConsoleWatch, unnamed_controls
from .cut_proxy import CutProxy
from .procs import AgentdProcess, RedisServer

ADMIN_KEY = "sk-admin-" + "c" * 40
TOKEN_SECRET = "console-test-secret-" + "s" * 32
# Echo words at this pace: a reply of ~40 words streams for about two seconds, long
# enough to see it arrive piece by piece and to cut the connection in the middle.
SLOW_TOKENS_PER_S = 20.0
WAIT_MS = 30_000


def server_config(redis: RedisServer) -> str:
    return f"""
[server]
workers = 2
shutdown_timeout = 5.0
[redis]
urls = ["{redis.url}"]
[auth]
mode = "keys"
[auth.tokens]
algorithm = "HS256"
[[backends]]
name = "echo"
type = "echo"
[[backends]]
name = "slow"
type = "echo"
tokens_per_s = {SLOW_TOKENS_PER_S}
[[agents]]
name = "echo"
backend = "echo"
tools = ["agentd:state_get"]
[[agents]]
name = "slow"
backend = "slow"
"""


@contextmanager
def console_server(base: Path) -> Iterator[AgentdProcess]:
    """``agentd serve`` with ``server_config`` on a Redis of its own, under ``base``."""
    redis = RedisServer(base)
    workdir = base / "agentd"
    workdir.mkdir()
    env = {"AGENTD_ADMIN_KEY": ADMIN_KEY, "AGENTD_TOKEN_SECRET": TOKEN_SECRET}
    proc = AgentdProcess(workdir, server_config(redis), [], env)
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()
        redis.close()


@contextmanager
def console_tab(browser: Browser, scheme: str = "light") -> Iterator[tuple[Page, ConsoleWatch]]:
    """A fresh tab whose "are you sure?" dialogs are accepted; when the test is done,
    every control of the view it ends on has an accessible name and the browser's
    console had no errors."""
    context = browser.new_context(viewport={"width": 1100, "height": 760}, color_scheme=scheme)
    tab = context.new_page()
    tab.set_default_timeout(WAIT_MS)
    tab.on("dialog", lambda dialog: dialog.accept())
    watch = ConsoleWatch(tab)
    try:
        yield tab, watch
        assert not unnamed_controls(tab), unnamed_controls(tab)
    finally:
        context.close()
    watch.check()


class Api:
    """Another client of the same server (urllib: its own connections)."""

    def __init__(self, url: str, key: str) -> None:
        self.url, self.key = url, key

    def call(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={
                "Authorization": f"Bearer {self.key}",
                "Content-Type": "application/json",
                **(headers or {}),
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            return exc.code, json.loads(raw) if raw else None


def sign_in(tab: Page, proxy: CutProxy, credential: str, view: str = "") -> None:
    tab.goto(f"{proxy.url}/console{'#' + view if view else ''}")
    tab.get_by_label("API key or token").fill(credential)
    tab.get_by_role("button", name="Sign in").click()
    expect(tab.get_by_role("navigation", name="Views")).to_be_visible()


def new_key(admin: Api, tenant: str, scopes: list[str]) -> tuple[str, str]:
    status, body = admin.call("POST", "/v1/admin/keys", {"tenant": tenant, "scopes": scopes})
    assert status == 201, body
    return body["key"], body["id"]


def words(prefix: str, n: int) -> str:
    return " ".join(f"{prefix}{i}" for i in range(n))


# The last reply is still streaming and holds some of its words but not the last one.
STREAMING_PART = """() => {
    const r = [...document.querySelectorAll('.msg[data-role="assistant"]')].pop();
    const t = r.querySelector('.text').textContent;
    return r.dataset.state === 'streaming' && t.includes('stream3') && !t.includes('stream39');
}"""


def token(tenant: str, subject: str, scope: str) -> str:
    """A connection token, as the operator's backend would mint one (docs/auth.md)."""
    claims = {"tenant": tenant, "sub": subject, "scope": scope, "exp": int(time.time()) + 600}
    return jwt.encode(claims, TOKEN_SECRET, algorithm="HS256")


def last_reply(tab: Page) -> Locator:
    return tab.locator('.msg[data-role="assistant"]').last
