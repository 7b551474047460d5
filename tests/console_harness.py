"""What the console's browser tests share (tests/test_console.py): the server's
configuration, a second client of the same server, signing in, keys and tokens."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

import jwt
from playwright.sync_api import Locator, Page, expect

from .cut_proxy import CutProxy
from .procs import RedisServer

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
