"""Connection tokens: JWTs minted by the operator's backend, accepted over HTTP
(``Authorization: Bearer``) and over the WebSocket the browser way (a ``bearer.<token>``
subprotocol); expired, forged and ill-formed ones refused with their codes; a WebSocket
closed when its token expires unless refreshed in-band."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from agentd.auth.tokens import DEFAULT_TOKEN_SCOPES, TokenVerifier
from agentd.config import ConfigError, TokensConfig, from_dict
from agentd.errors import Unauthorized

from .chat_helpers import Factory, chat_body, post
from .procs import AgentdProcess, fresh_connections
from .waiting import wait_until

SECRET = "s" * 48
LEEWAY_S = 5.0


# -- keys and tokens ---------------------------------------------------------------------


class Signer:
    """One algorithm's key pair (or secret) and the server config that trusts it."""

    def __init__(self, algorithm: str, tmp: Path) -> None:
        self.algorithm = algorithm
        self.public_pem = b""
        if algorithm == "HS256":
            self.key: Any = SECRET
            self.tokens: dict[str, Any] = {"algorithm": "HS256"}
            return
        if algorithm == "RS256":
            private: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            private = ec.generate_private_key(ec.SECP256R1())
        self.key = private
        self.public_pem = private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        path = tmp / f"{algorithm}.pem"
        path.write_bytes(self.public_pem)
        self.tokens = {"algorithm": algorithm, "public_key_file": str(path)}

    def token(self, **claims: Any) -> str:
        """A token with sensible claims; ``name=None`` leaves a claim out."""
        body: dict[str, Any] = {"tenant": "acme", "sub": "user-1", "exp": time.time() + 300}
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        return jwt.encode(body, self.key, algorithm=self.algorithm)

    def config(self, **tokens: Any) -> dict[str, Any]:
        return {"auth": {"mode": "keys", "tokens": {"leeway_s": LEEWAY_S, **self.tokens, **tokens}}}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(claims: dict[str, Any], alg: str = "none") -> str:
    """A token whose header says ``alg`` and that carries no signature."""
    head = b64(orjson.dumps({"alg": alg, "typ": "JWT"}))
    return f"{head}.{b64(orjson.dumps(claims))}."


def hs256_by_hand(claims: dict[str, Any], secret: bytes) -> str:
    """HS256 over any bytes: PyJWT refuses a PEM key as an HMAC secret, an attacker does not."""
    signing = b64(orjson.dumps({"alg": "HS256", "typ": "JWT"})) + "." + b64(orjson.dumps(claims))
    mac = hmac.new(secret, signing.encode(), hashlib.sha256).digest()
    return f"{signing}.{b64(mac)}"


@pytest.fixture
def signer(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Signer:
    monkeypatch.setenv("AGENTD_TOKEN_SECRET", SECRET)
    return Signer(getattr(request, "param", "HS256"), tmp_path)


ALGORITHMS = pytest.mark.parametrize("signer", ["HS256", "RS256", "ES256"], indirect=True)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def browser(token: str) -> dict[str, Any]:
    """What ``new WebSocket(url, ["agentd.v1", "bearer." + token])`` sends."""
    return {"protocols": ("agentd.v1", "bearer." + token)}


async def receive(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    msg = await ws.receive(timeout=30)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    return orjson.loads(msg.data)


async def until(ws: aiohttp.ClientWebSocketResponse, kind: str) -> dict[str, Any]:
    while (frame := await receive(ws))["type"] != kind:
        pass
    return frame


async def closed(ws: aiohttp.ClientWebSocketResponse) -> tuple[int | None, list[dict]]:
    """Read until the server closes; its close code and the frames before it."""
    frames = []
    while True:
        msg = await ws.receive(timeout=30)
        if msg.type == aiohttp.WSMsgType.TEXT:
            frames.append(orjson.loads(msg.data))
        elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
            return ws.close_code, frames
        else:
            raise AssertionError(f"unexpected {msg}")


async def chat_turn(ws: aiohttp.ClientWebSocketResponse, content: str = "hi there") -> dict:
    await ws.send_json({"type": "message", "id": "m1", "content": content})
    return await until(ws, "done")


# -- accepted ----------------------------------------------------------------------------


@ALGORITHMS
async def test_a_token_is_accepted_over_http_and_over_the_browser_websocket(
    serve: Factory, signer: Signer
) -> None:
    url = await serve(**signer.config())
    token = signer.token()
    async with aiohttp.ClientSession() as http:
        status, _, body = await post(
            http, url + "/v1/chat/completions", chat_body(), headers=bearer(token)
        )
        assert status == 200, body
        async with http.ws_connect(url + "/v1/ws", **browser(token)) as ws:
            # A browser fails the connection unless the server picks an offered protocol.
            assert ws.protocol == "agentd.v1"
            done = await chat_turn(ws, "alpha beta")
            assert done["message"]["content"] == "alpha beta"
        async with http.ws_connect(url + "/v1/ws", headers=bearer(token)) as ws:
            await ws.send_json({"type": "ping"})
            assert (await receive(ws))["type"] == "pong"


async def test_the_websocket_upgrade_without_a_token_is_refused(
    serve: Factory, signer: Signer
) -> None:
    url = await serve(**signer.config())
    async with aiohttp.ClientSession() as http:
        for kw in ({}, {"protocols": ("agentd.v1",)}, browser("not.a.token")):
            with pytest.raises(aiohttp.WSServerHandshakeError) as err:
                await http.ws_connect(url + "/v1/ws", **kw)
            assert err.value.status == 401
        # The subprotocol carries a credential on the WebSocket upgrade only.
        headers = {"Sec-WebSocket-Protocol": "agentd.v1, bearer." + signer.token()}
        status, _, body = await post(
            http, url + "/v1/chat/completions", chat_body(), headers=headers
        )
        assert status == 401 and body["error"]["code"] == "missing_api_key"


# -- refused -----------------------------------------------------------------------------

NOW = time.time


def _other_key(signer: Signer) -> Any:
    if signer.algorithm == "HS256":
        return "o" * 48
    if signer.algorithm == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


REFUSALS: dict[str, tuple[Callable[[Signer], str], str]] = {
    "expired beyond the leeway": (
        lambda s: s.token(exp=NOW() - LEEWAY_S - 10),
        "token_expired",
    ),
    "not valid before a future nbf": (
        lambda s: s.token(nbf=NOW() + LEEWAY_S + 60),
        "token_not_yet_valid",
    ),
    "issued in the future": (
        lambda s: s.token(iat=NOW() + LEEWAY_S + 60),
        "token_not_yet_valid",
    ),
    "forged signature": (
        lambda s: jwt.encode(
            {"tenant": "acme", "sub": "u", "exp": NOW() + 60}, _other_key(s), algorithm=s.algorithm
        ),
        "invalid_token",
    ),
    "tampered claims": (
        lambda s: ".".join(
            [
                s.token().split(".")[0],
                b64(orjson.dumps({"tenant": "evil", "sub": "u", "exp": NOW() + 60})),
                s.token().split(".")[2],
            ]
        ),
        "invalid_token",
    ),
    "alg none": (
        lambda s: unsigned({"tenant": "acme", "sub": "u", "exp": NOW() + 60}),
        "invalid_token",
    ),
    "missing tenant": (lambda s: s.token(tenant=None), "invalid_token"),
    "missing sub": (lambda s: s.token(sub=None), "invalid_token"),
    "missing exp": (lambda s: s.token(exp=None), "invalid_token"),
    "bad tenant": (lambda s: s.token(tenant="Acme Corp"), "invalid_token"),
    "tenant not a string": (lambda s: s.token(tenant=7), "invalid_token"),
    "empty sub": (lambda s: s.token(sub=""), "invalid_token"),
    "exp as a string": (lambda s: s.token(exp=str(int(NOW()) + 60)), "invalid_token"),
    "admin scope": (lambda s: s.token(scope="chat admin"), "invalid_token"),
    "unknown scope": (lambda s: s.token(scope="chat everything"), "invalid_token"),
    "empty scope": (lambda s: s.token(scope=" "), "invalid_token"),
    "scope as a list": (lambda s: s.token(scope=["chat"]), "invalid_token"),
    "sessions not a list": (lambda s: s.token(sessions="s1"), "invalid_token"),
    "agents of non-strings": (lambda s: s.token(agents=["echo", 3]), "invalid_token"),
    "an audience agentd was not told to accept": (lambda s: s.token(aud="other"), "invalid_token"),
    "garbage": (lambda s: "abc.def.ghi", "invalid_token"),
}


@pytest.mark.parametrize("signer", ["HS256", "ES256"], indirect=True)
@pytest.mark.parametrize("case", list(REFUSALS))
async def test_a_bad_token_is_401_with_its_code(serve: Factory, signer: Signer, case: str) -> None:
    make, code = REFUSALS[case]
    url = await serve(**signer.config())
    async with aiohttp.ClientSession() as http:
        status, _, body = await post(
            http, url + "/v1/chat/completions", chat_body(), headers=bearer(make(signer))
        )
    assert status == 401, body
    assert body["error"]["code"] == code, body


@pytest.mark.parametrize("signer", ["RS256"], indirect=True)
async def test_an_hs256_token_signed_with_the_public_key_is_refused(
    serve: Factory, signer: Signer
) -> None:
    """The algorithm-confusion attack: the public key, being public, used as an HMAC secret."""
    url = await serve(**signer.config())
    forged = hs256_by_hand({"tenant": "acme", "sub": "u", "exp": NOW() + 60}, signer.public_pem)
    async with aiohttp.ClientSession() as http:
        status, _, body = await post(
            http, url + "/v1/chat/completions", chat_body(), headers=bearer(forged)
        )
        assert status == 401 and body["error"]["code"] == "invalid_token", body
        assert "only RS256" in body["error"]["message"]
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await http.ws_connect(url + "/v1/ws", **browser(forged))
        assert err.value.status == 401


@pytest.mark.parametrize(
    ("claims", "accepted"),
    [
        ({"iss": "https://app.example", "aud": "agentd"}, True),
        ({"iss": "https://evil.example", "aud": "agentd"}, False),
        ({"iss": "https://app.example", "aud": "other"}, False),
        ({"iss": "https://app.example", "aud": ["other", "agentd"]}, True),
        ({"aud": "agentd"}, False),  # no iss
        ({"iss": "https://app.example"}, False),  # no aud
    ],
)
async def test_issuer_and_audience_must_match_when_configured(
    serve: Factory, signer: Signer, claims: dict[str, Any], accepted: bool
) -> None:
    url = await serve(**signer.config(issuer="https://app.example", audience="agentd"))
    async with aiohttp.ClientSession() as http:
        status, _, body = await post(
            http, url + "/v1/chat/completions", chat_body(), headers=bearer(signer.token(**claims))
        )
    if accepted:
        assert status == 200, body
    else:
        assert status == 401 and body["error"]["code"] == "invalid_token", body


async def test_tokens_are_refused_when_not_configured(serve: Factory, signer: Signer) -> None:
    url = await serve(auth={"mode": "keys"})
    async with aiohttp.ClientSession() as http:
        status, _, body = await post(
            http, url + "/v1/chat/completions", chat_body(), headers=bearer(signer.token())
        )
    assert status == 401 and body["error"]["code"] == "invalid_api_key"


# -- what a token may do -----------------------------------------------------------------


async def test_a_token_without_scope_gets_the_default_and_never_admin(
    serve: Factory, signer: Signer
) -> None:
    assert {"chat", "responses", "sessions"} == DEFAULT_TOKEN_SCOPES
    url = await serve(**signer.config())
    headers = bearer(signer.token())
    async with aiohttp.ClientSession() as http:
        for path in ("/v1/cache", "/v1/admin/keys"):
            async with http.get(url + path, headers=headers) as r:
                body = await r.json()
                assert r.status == 403 and body["error"]["code"] == "permission_denied", body
        async with http.get(url + "/v1/state/ns/k", headers=headers) as r:
            assert r.status == 403  # shared state is not in the default
        async with http.post(url + "/v1/sessions", json={}, headers=headers) as r:
            assert r.status in (200, 201), await r.text()


async def test_a_token_narrowed_by_scope_gets_403_elsewhere(serve: Factory, signer: Signer) -> None:
    url = await serve(**signer.config())
    headers = bearer(signer.token(scope="chat"))
    async with aiohttp.ClientSession() as http:
        async with http.post(url + "/v1/sessions", json={}, headers=headers) as r:
            assert r.status == 403
        status, _, _ = await post(http, url + "/v1/chat/completions", chat_body(), headers=headers)
        assert status == 200


async def test_a_token_narrowed_to_sessions_sees_no_other_session_over_the_websocket(
    serve: Factory, signer: Signer
) -> None:
    url = await serve(**signer.config())
    wide = signer.token()
    async with aiohttp.ClientSession() as http:
        ids = []
        for _ in range(2):
            async with http.post(url + "/v1/sessions", json={}, headers=bearer(wide)) as r:
                ids.append((await r.json())["id"])
        mine, other = ids
        narrow = signer.token(sessions=[mine])
        async with http.ws_connect(url + "/v1/ws", **browser(narrow)) as ws:
            await ws.send_json({"type": "hello", "session_id": other})
            error = await receive(ws)
            # As if it did not exist: the same answer as for an unknown session.
            assert error["type"] == "error" and error["code"] == "session_not_found", error
            await ws.send_json({"type": "hello"})  # a new session is not among its sessions
            error = await receive(ws)
            assert error["code"] == "permission_denied", error
            await ws.send_json({"type": "hello", "session_id": mine})
            assert (await receive(ws))["type"] == "ready"


# -- expiry and refresh on a WebSocket ---------------------------------------------------

GRACE_S = 0.5


def short_lived(signer: Signer, seconds: float = 1.0, **claims: Any) -> str:
    return signer.token(exp=time.time() + seconds, **claims)


@ALGORITHMS
async def test_a_websocket_is_warned_then_closed_with_4001_when_its_token_expires(
    serve: Factory, signer: Signer
) -> None:
    url = await serve(**signer.config(leeway_s=0.0, ws_grace_s=GRACE_S))
    token = short_lived(signer)
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(url + "/v1/ws", **browser(token)) as ws,
    ):
        await ws.send_json({"type": "hello"})
        code, frames = await closed(ws)
    assert code == 4001
    assert [f["type"] for f in frames if f["type"] == "ready"] == ["ready"]
    warned = [f for f in frames if f["type"] == "auth_expired"]
    assert len(warned) == 1 and warned[0]["closes_in_s"] == GRACE_S
    assert warned[0]["expired_at"] == pytest.approx(
        jwt.decode(token, options={"verify_signature": False})["exp"]
    )


async def test_a_websocket_refreshed_in_band_stays_open(serve: Factory, signer: Signer) -> None:
    # A grace long enough for the client to answer the warning on a busy machine.
    url = await serve(**signer.config(leeway_s=0.0, ws_grace_s=2.0))
    async with (
        aiohttp.ClientSession() as http,
        # Lives long enough for both handshakes on a busy machine (an expired token gets 401).
        http.ws_connect(url + "/v1/ws", **browser(short_lived(signer, 3.0))) as kept,
    ):
        await kept.send_json({"type": "hello"})
        await until(kept, "ready")
        # A witness with the same kind of token, expiring a little later and never
        # refreshed: once it is closed, the kept one would have been too.
        async with http.ws_connect(url + "/v1/ws", **browser(short_lived(signer, 3.3))) as witness:
            await until(kept, "auth_expired")
            fresh = signer.token(exp=time.time() + 300)
            await kept.send_json({"type": "auth", "token": fresh})
            ack = await until(kept, "auth_ok")
            assert ack["expires_at"] == pytest.approx(time.time() + 300, abs=30)
            code, _ = await closed(witness)
            assert code == 4001
        await kept.send_json({"type": "ping"})
        assert (await receive(kept))["type"] == "pong"
        done = await chat_turn(kept, "still here")
        assert done["message"]["content"] == "still here"
        assert not kept.closed


async def test_a_refresh_before_expiry_moves_the_deadline(serve: Factory, signer: Signer) -> None:
    url = await serve(**signer.config(leeway_s=0.0, ws_grace_s=GRACE_S))
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(url + "/v1/ws", **browser(short_lived(signer, 60))) as ws,
    ):
        await ws.send_json({"type": "auth", "token": short_lived(signer, 1.0)})
        assert (await until(ws, "auth_ok"))["expires_at"] < time.time() + 2
        code, frames = await closed(ws)
    assert code == 4001 and [f["type"] for f in frames] == ["auth_expired"]


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ({"type": "auth"}, "invalid_frame"),
        ({"type": "auth", "token": 5}, "invalid_frame"),
        ({"type": "auth", "token": ""}, "invalid_frame"),
        ({"type": "auth", "token": "abc.def.ghi"}, "invalid_token"),
        ({"type": "auth", "token": "sk-not-a-key"}, "invalid_api_key"),
    ],
)
async def test_a_bad_auth_frame_gets_an_error_and_the_connection_lives_on(
    serve: Factory, signer: Signer, frame: dict[str, Any], code: str
) -> None:
    url = await serve(**signer.config())
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(url + "/v1/ws", **browser(signer.token())) as ws,
    ):
        await ws.send_json(frame)
        error = await receive(ws)
        assert error["type"] == "error" and error["code"] == code, error
        await ws.send_json({"type": "ping"})
        assert (await receive(ws))["type"] == "pong"


async def test_an_expired_refresh_is_refused_and_the_old_deadline_stands(
    serve: Factory, signer: Signer
) -> None:
    url = await serve(**signer.config(leeway_s=0.0, ws_grace_s=GRACE_S))
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(url + "/v1/ws", **browser(short_lived(signer))) as ws,
    ):
        await ws.send_json({"type": "auth", "token": signer.token(exp=time.time() - 60)})
        code, frames = await closed(ws)
    assert code == 4001
    assert [f.get("code") for f in frames if f["type"] == "error"] == ["token_expired"]
    assert [f["type"] for f in frames if f["type"] != "error"] == ["auth_expired"]


@pytest.mark.parametrize(
    "claims",
    [{"tenant": "globex"}, {"sub": "user-2"}, {"scope": "sessions"}, {"sessions": ["elsewhere"]}],
    ids=["another tenant", "another subject", "without chat", "not this session"],
)
async def test_a_refresh_for_another_identity_or_not_covering_the_connection_closes_it(
    serve: Factory, signer: Signer, claims: dict[str, Any]
) -> None:
    url = await serve(**signer.config())
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(url + "/v1/ws", **browser(signer.token())) as ws,
    ):
        await ws.send_json({"type": "hello"})
        await until(ws, "ready")
        await ws.send_json({"type": "auth", "token": signer.token(**claims)})
        code, frames = await closed(ws)
    assert code == 4003
    assert not [f for f in frames if f["type"] == "auth_ok"]


# -- key material at start-up ------------------------------------------------------------


def _pem(key: Any) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.mark.parametrize(
    ("algorithm", "content", "message"),
    [
        ("RS256", None, "cannot be read"),
        ("RS256", b"not a key", "is not a PEM public key"),
        ("RS256", "ec", "is not an RSA public key"),
        ("ES256", "rsa", "is not a P-256"),
        ("ES256", "p384", "is not a P-256"),
        ("RS256", "rsa1024", "1024-bit RSA key"),
        ("RS256", "private", "holds a private key"),
    ],
)
def test_an_unusable_public_key_file_is_a_start_up_error_naming_the_key(
    tmp_path: Path, algorithm: str, content: Any, message: str
) -> None:
    path = tmp_path / "key.pem"
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if content == "ec":
        path.write_bytes(_pem(ec.generate_private_key(ec.SECP256R1())))
    elif content == "p384":
        path.write_bytes(_pem(ec.generate_private_key(ec.SECP384R1())))
    elif content == "rsa":
        path.write_bytes(_pem(rsa_key))
    elif content == "rsa1024":
        path.write_bytes(_pem(rsa.generate_private_key(public_exponent=65537, key_size=1024)))
    elif content == "private":
        path.write_bytes(
            rsa_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError) as err:
        TokenVerifier.from_config(TokensConfig(algorithm=algorithm, public_key_file=str(path)))
    (error,) = err.value.errors
    assert error.startswith("auth.tokens.public_key_file:") and message in error, error


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        ("", "is empty"),
        ("short", "holds 5 bytes; HS256 needs a random secret of at least 32"),
        ("-----BEGIN PUBLIC KEY-----\n" + "A" * 64, "holds a PEM key"),
    ],
)
def test_an_unusable_hs256_secret_is_a_start_up_error_naming_the_key(
    monkeypatch: pytest.MonkeyPatch, secret: str, message: str
) -> None:
    monkeypatch.setenv("MY_TOKEN_SECRET", secret)
    with pytest.raises(ConfigError) as err:
        TokenVerifier.from_config(TokensConfig(algorithm="HS256", secret_env="MY_TOKEN_SECRET"))
    (error,) = err.value.errors
    assert error.startswith("auth.tokens.secret_env: $MY_TOKEN_SECRET") and message in error


def test_the_verifier_refuses_what_it_must_without_a_server(signer: Signer) -> None:
    verifier = TokenVerifier.from_config(from_dict(signer.config()).auth.tokens)
    assert verifier is not None
    identity = verifier.verify(signer.token(sessions=["s1"], agents=["echo"], scope="chat state"))
    assert (identity.tenant, identity.kind, identity.subject) == ("acme", "token", "user-1")
    assert identity.sessions == {"s1"} and identity.agents == {"echo"}
    assert identity.scopes == {"chat", "state"} and identity.expires_at is not None
    assert identity.who == "token sub='user-1'"
    with pytest.raises(Unauthorized) as err:
        verifier.verify(signer.token(tenant="x" * 65))
    assert err.value.code == "invalid_token" and err.value.status == 401


# -- a real `agentd serve` ---------------------------------------------------------------


def test_agentd_serve_refuses_to_start_without_the_token_secret(
    agentd_instance: Callable[..., AgentdProcess],
) -> None:
    config = '[auth]\nmode = "keys"\n[auth.tokens]\nalgorithm = "HS256"\n'
    proc = agentd_instance(config, env={"AGENTD_TOKEN_SECRET": ""}, ready=False)
    assert proc.wait_exit() == 2
    assert "auth.tokens.secret_env: $AGENTD_TOKEN_SECRET is empty" in proc.log()
    assert "listening" not in proc.log()


@pytest.mark.parametrize("signer", ["ES256"], indirect=True)
async def test_agentd_serve_accepts_tokens_over_http_and_websocket(
    agentd_instance: Callable[..., AgentdProcess], signer: Signer
) -> None:
    config = (
        '[auth]\nmode = "keys"\n[auth.tokens]\n'
        f'algorithm = "ES256"\npublic_key_file = "{signer.tokens["public_key_file"]}"\n'
        "leeway_s = 0.0\nws_grace_s = 0.5\n"
    )
    proc = agentd_instance(config)
    async with aiohttp.ClientSession() as http:
        status, _, body = await post(
            http, proc.url + "/v1/chat/completions", chat_body(), headers=bearer(signer.token())
        )
        assert status == 200, body
        status, _, body = await post(
            http,
            proc.url + "/v1/chat/completions",
            chat_body(),
            headers=bearer(signer.token(exp=time.time() - 5)),
        )
        assert status == 401 and body["error"]["code"] == "token_expired"
        async with http.ws_connect(proc.url + "/v1/ws", **browser(signer.token())) as ws:
            assert ws.protocol == "agentd.v1"
            done = await chat_turn(ws, "over a real server")
            assert done["message"]["content"] == "over a real server"
        async with http.ws_connect(proc.url + "/v1/ws", **browser(short_lived(signer))) as ws:
            code, frames = await closed(ws)
        assert code == 4001 and [f["type"] for f in frames] == ["auth_expired"]
    await wait_until(lambda: "credential expired" in proc.log(), what="the close to be logged")


async def test_a_reload_reads_the_public_key_again_and_refuses_an_unusable_one(
    agentd_instance: Callable[..., AgentdProcess], tmp_path: Path
) -> None:
    for name in ("old", "new"):
        (tmp_path / name).mkdir()
    old, new = Signer("ES256", tmp_path / "old"), Signer("ES256", tmp_path / "new")
    key_file = tmp_path / "agentd.pem"
    key_file.write_bytes(old.public_pem)
    tokens = f'algorithm = "ES256"\npublic_key_file = "{key_file}"\n'
    proc = agentd_instance(f'[auth]\nmode = "keys"\n[auth.tokens]\n{tokens}')

    async def status(http: aiohttp.ClientSession, signer: Signer) -> int:
        url = proc.url + "/v1/chat/completions"
        return (await post(http, url, chat_body(), headers=bearer(signer.token())))[0]

    # A connection per request: a kept-alive one may belong to a worker the reload retires.
    async with fresh_connections() as http:
        assert (await status(http, old), await status(http, new)) == (200, 401)
        key_file.write_bytes(new.public_pem)
        proc.send(signal.SIGHUP)
        await wait_until(lambda: "reload complete" in proc.log(), what="the reload")
        assert (await status(http, old), await status(http, new)) == (401, 200)
        key_file.write_bytes(b"not a key")
        proc.send(signal.SIGHUP)
        await wait_until(lambda: "reload refused" in proc.log(), what="the refused reload")
        assert "auth.tokens.public_key_file:" in proc.log()
        assert await status(http, new) == 200


async def test_a_verified_token_is_refused_once_it_expires(signer: Signer) -> None:
    """Verified tokens are remembered per worker; never past their exp."""
    verifier = TokenVerifier.from_config(from_dict(signer.config(leeway_s=0.0)).auth.tokens)
    assert verifier is not None
    token = short_lived(signer, 2.0)
    assert verifier.verify(token) is verifier.verify(token)  # the second from memory

    def expired() -> bool:
        try:
            verifier.verify(token)
        except Unauthorized as exc:
            assert exc.code == "token_expired"
            return True
        return False

    await wait_until(expired, what="the token to expire")


async def test_a_token_offered_without_agentd_v1_is_400_and_never_logged(
    serve: Factory, signer: Signer, caplog: pytest.LogCaptureFixture
) -> None:
    """aiohttp logs an offer it cannot answer, whole: it must never get to see this one."""
    url = await serve(**signer.config())
    token = signer.token()
    caplog.set_level(logging.DEBUG)
    async with aiohttp.ClientSession() as http:
        for protocols in (("bearer." + token,), ("graphql-ws", "bearer." + token)):
            async with http.get(
                url + "/v1/ws",
                headers={
                    "Connection": "Upgrade",
                    "Upgrade": "websocket",
                    "Sec-WebSocket-Version": "13",
                    "Sec-WebSocket-Key": b64(b"0123456789abcdef") + "==",
                    "Sec-WebSocket-Protocol": ", ".join(protocols),
                },
            ) as r:
                body = await r.json()
                assert r.status == 400 and body["error"]["code"] == "invalid_subprotocol", body
    assert token not in caplog.text


async def test_a_websocket_on_an_api_key_that_expires_is_closed_the_same_way(
    serve: Factory, signer: Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin = "sk-admin-" + "a" * 40
    monkeypatch.setenv("AGENTD_ADMIN_KEY", admin)
    url = await serve(**signer.config(ws_grace_s=GRACE_S))
    async with aiohttp.ClientSession() as http:
        keys = []
        for expires_at in (time.time() + 1.0, None):
            body = {"tenant": "acme", "expires_at": expires_at}
            status, _, made = await post(http, url + "/v1/admin/keys", body, headers=bearer(admin))
            assert status == 201, made
            keys.append(made["key"])
        expiring, lasting = keys
        async with http.ws_connect(url + "/v1/ws", headers=bearer(expiring)) as ws:
            code, frames = await closed(ws)
        assert code == 4001 and [f["type"] for f in frames] == ["auth_expired"]
        # A token of the key's tenant is still another credential: no swapping one in.
        async with http.ws_connect(url + "/v1/ws", headers=bearer(lasting)) as ws:
            await ws.send_json({"type": "auth", "token": signer.token(tenant="acme")})
            code, _ = await closed(ws)
        assert code == 4003
