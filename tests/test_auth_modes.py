"""Auth modes: open on loopback only unless said so, the operator's admin key from the
environment, 401 for a missing or wrong key, 403 for a scope the path needs."""

from __future__ import annotations

import aiohttp
import pytest

from agentd.config import ConfigError, from_dict
from agentd.server.auth import scope_for

from .chat_helpers import Factory, chat_body, post

ADMIN_KEY = "sk-admin-" + "x" * 40


@pytest.mark.parametrize("bind", ["0.0.0.0:8080", "[::]:8080", "10.0.0.5:8080"])
def test_open_mode_on_a_non_loopback_bind_is_refused_naming_the_key(bind: str) -> None:
    with pytest.raises(ConfigError) as err:
        from_dict({"server": {"bind": bind}})
    assert any(e.startswith("auth.mode:") and "auth.allow_open" in e for e in err.value.errors)


@pytest.mark.parametrize(
    "raw",
    [
        {"server": {"bind": "0.0.0.0:8080"}, "auth": {"allow_open": True}},
        {"server": {"bind": "0.0.0.0:8080"}, "auth": {"mode": "keys"}},
        {"server": {"bind": "127.0.0.1:8080"}},
        {"server": {"bind": "[::1]:8080"}},
        {"server": {"bind": "localhost:8080"}},
    ],
)
def test_open_mode_is_allowed_on_loopback_or_when_asked(raw: dict) -> None:
    from_dict(raw)


def test_rs256_tokens_need_a_public_key_file() -> None:
    with pytest.raises(ConfigError) as err:
        from_dict({"auth": {"tokens": {"algorithm": "RS256"}}})
    assert any(e.startswith("auth.tokens.public_key_file:") for e in err.value.errors)


def test_every_v1_path_needs_a_credential_and_health_checks_do_not() -> None:
    assert scope_for("/v1/chat/completions") == "chat"
    assert scope_for("/v1/ws") == "chat"
    assert scope_for("/v1/responses/resp_1/cancel") == "responses"
    assert scope_for("/v1/sessions/s1/events") == "sessions"
    assert scope_for("/v1/state/ns/k") == "state"
    assert scope_for("/v1/state") == "state"
    assert scope_for("/v1/state/ns") == "state"
    assert scope_for("/v1/admin/keys") == "admin"
    assert scope_for("/v1/cache") == "admin"
    assert scope_for("/v1/anything-else") == ""
    for path in ("/healthz", "/readyz", "/metrics"):
        assert scope_for(path) is None


async def test_keys_mode_answers_401_without_a_valid_key_and_serves_the_admin_key(
    serve: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTD_ADMIN_KEY", ADMIN_KEY)
    url = await serve(auth={"mode": "keys"})
    chat = url + "/v1/chat/completions"
    async with aiohttp.ClientSession() as http:
        status, _, body = await post(http, chat, chat_body())
        assert status == 401 and body["error"]["code"] == "missing_api_key"
        bad = {"Authorization": "Bearer sk-not-a-key"}
        status, _, body = await post(http, chat, chat_body(), headers=bad)
        assert status == 401 and body["error"]["code"] == "invalid_api_key"
        good = {"Authorization": f"Bearer {ADMIN_KEY}"}
        status, _, body = await post(http, chat, chat_body(), headers=good)
        assert status == 200, body
        async with http.get(url + "/readyz") as resp:
            assert resp.status == 200


async def test_open_mode_needs_no_credential(serve: Factory) -> None:
    url = await serve()
    async with aiohttp.ClientSession() as http:
        status, _, _ = await post(http, url + "/v1/chat/completions", chat_body())
    assert status == 200
