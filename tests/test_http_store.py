"""The store's HTTP surface (sessions and shared state) against a real server socket.

Each test runs a worker's full application (middleware, store started by its startup
hook) behind aiohttp's TestServer and talks to it over TCP. Hostile requests must get
a 4xx with agentd's error body, and the server must keep answering afterwards.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer

from agentd.config import from_dict
from agentd.server.app import create_app
from agentd.server.http import MAX_DEPTH
from agentd.server.keys import STORE

MAX_REQUEST = 16384  # server.max_request_bytes: deep-nesting bodies still fit below it
MAX_VALUE = 2048  # state.max_value_bytes: below the request limit, to reach the store's
DOC = "/v1/state/ns/doc"
MERGE = {"Content-Type": "application/merge-patch+json"}


@pytest.fixture
async def client() -> AsyncIterator[TestClient]:
    config = from_dict(
        {"server": {"max_request_bytes": MAX_REQUEST}, "state": {"max_value_bytes": MAX_VALUE}}
    )
    async with TestClient(TestServer(create_app(config))) as client:
        yield client
        # Whatever a test sent, the worker still serves.
        resp = await client.get("/healthz")
        assert resp.status == 200


async def error(resp: ClientResponse, status: int, code: str) -> dict[str, Any]:
    """Assert an agentd error reply; return its error object."""
    body = await resp.json()
    assert resp.status == status, body
    assert resp.content_type == "application/json"
    err = body["error"]
    assert err["code"] == code, err
    assert isinstance(err["message"], str) and err["message"]
    assert err["type"] == ("invalid_request_error" if status < 500 else "server_error")
    await assert_alive(str(resp.url.with_path("/healthz").with_query(None)))
    return err


async def assert_alive(url: str) -> None:
    """The server still accepts a new connection and answers after a hostile request."""
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        assert resp.status == 200
        assert await resp.json() == {"status": "ok"}


async def doc(resp: ClientResponse, status: int, value: Any, version: int) -> None:
    """Assert a state document reply, with its ETag."""
    body = await resp.json()
    assert resp.status == status, body
    assert body == {"value": value, "version": version}
    assert resp.headers["ETag"] == f'"{version}"'


def nested(depth: int, leaf: bytes = b"1") -> bytes:
    """A JSON document of ``depth`` nested objects: {"a":{"a":...}}."""
    return b'{"a":' * depth + leaf + b"}" * depth


# -- sessions ---------------------------------------------------------------------------


async def test_create_session_with_no_body_gets_a_server_chosen_id(client: TestClient) -> None:
    resp = await client.post("/v1/sessions")
    body = await resp.json()
    assert resp.status == 201
    assert body["id"].startswith("s_")
    assert body["object"] == "session"
    assert body["tenant"] is None
    assert body["agent"] is None
    assert body["metadata"] == {}
    assert body["last_seq"] == 0
    assert resp.headers["Location"] == f"/v1/sessions/{body['id']}"
    again = await client.get(f"/v1/sessions/{body['id']}")
    assert again.status == 200
    assert await again.json() == body


async def test_create_session_with_id_agent_and_metadata(client: TestClient) -> None:
    meta = {"user": "u1", "tags": ["a", "b"], "n": 1.5}
    resp = await client.post(
        "/v1/sessions", json={"id": "chat-1", "agent": "support", "metadata": meta}
    )
    assert resp.status == 201
    body = await resp.json()
    assert (body["id"], body["agent"], body["metadata"]) == ("chat-1", "support", meta)
    got = await (await client.get("/v1/sessions/chat-1")).json()
    assert got == body


async def test_create_session_with_explicit_nulls(client: TestClient) -> None:
    resp = await client.post("/v1/sessions", json={"id": None, "agent": None, "metadata": None})
    assert resp.status == 201
    assert (await resp.json())["id"].startswith("s_")


async def test_create_session_twice_is_409(client: TestClient) -> None:
    assert (await client.post("/v1/sessions", json={"id": "dup"})).status == 201
    await error(await client.post("/v1/sessions", json={"id": "dup"}), 409, "session_exists")


@pytest.mark.parametrize(
    "session_id", ["", "has space", "{tag}", "-leading", "x" * 129, "é", 123, ["a"]]
)
async def test_create_session_with_a_bad_id_is_400(client: TestClient, session_id: Any) -> None:
    await error(
        await client.post("/v1/sessions", json={"id": session_id}), 400, "invalid_session_id"
    )


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{", "invalid_json"),
        (b"{'id': 'x'}", "invalid_json"),
        (b'{"id": "\xff"}', "invalid_json"),  # not UTF-8
        (b'{"id": "\\ud800"}', "invalid_json"),  # a lone surrogate
        (b"NaN", "invalid_json"),
        (b"null", "invalid_request"),
        (b'["id", "x"]', "invalid_request"),
        (b'"x"', "invalid_request"),
        (b'{"idd": "typo"}', "invalid_request"),
        (b'{"metadata": [1]}', "invalid_request"),
        (b'{"metadata": "x"}', "invalid_request"),
        (b'{"agent": 5}', "invalid_agent"),
        (b'{"agent": "no spaces"}', "invalid_agent"),
    ],
)
async def test_create_session_hostile_bodies_are_400(
    client: TestClient, body: bytes, code: str
) -> None:
    await error(await client.post("/v1/sessions", data=body), 400, code)


async def test_create_session_body_over_the_limit_is_413(client: TestClient) -> None:
    body = orjson.dumps({"metadata": {"pad": "x" * MAX_REQUEST}})
    await error(await client.post("/v1/sessions", data=body), 413, "request_too_large")


async def test_deeply_nested_metadata_is_400_not_500(client: TestClient) -> None:
    for depth in (MAX_DEPTH, 300, 1024, 1025):
        resp = await client.post("/v1/sessions", data=b'{"metadata":' + nested(depth) + b"}")
        await error(resp, 400, "invalid_json")


async def test_metadata_at_the_depth_limit_round_trips(client: TestClient) -> None:
    metadata = orjson.loads(nested(MAX_DEPTH - 1))  # the body adds one level
    resp = await client.post("/v1/sessions", json={"id": "deep", "metadata": metadata})
    assert resp.status == 201
    assert (await (await client.get("/v1/sessions/deep")).json())["metadata"] == metadata


async def test_get_and_delete_a_missing_session_are_404(client: TestClient) -> None:
    await error(await client.get("/v1/sessions/nope"), 404, "session_not_found")
    await error(await client.delete("/v1/sessions/nope"), 404, "session_not_found")
    await error(await client.get("/v1/sessions/nope/messages"), 404, "session_not_found")


async def test_delete_session(client: TestClient) -> None:
    await client.post("/v1/sessions", json={"id": "gone"})
    resp = await client.delete("/v1/sessions/gone")
    assert resp.status == 204
    assert await resp.read() == b""
    await error(await client.get("/v1/sessions/gone"), 404, "session_not_found")
    await error(await client.delete("/v1/sessions/gone"), 404, "session_not_found")


@pytest.mark.parametrize("path", ["%20", "x" * 129, "%FF", "caf%C3%A9", ".dot"])
async def test_bad_session_ids_in_the_url_are_400(client: TestClient, path: str) -> None:
    for method in ("GET", "DELETE"):
        resp = await client.request(method, f"/v1/sessions/{path}")
        await error(resp, 400, "invalid_session_id")
    await error(await client.get(f"/v1/sessions/{path}/messages"), 400, "invalid_session_id")


@pytest.mark.parametrize(
    "path", ["/v1/sessions/a%7Bb%7D", "/v1/state/%7Bns%7D/k", "/v1/state/ns/k%7D"]
)
async def test_braces_in_names_match_no_route(client: TestClient, path: str) -> None:
    """aiohttp's router never matches a brace in a path segment: no store key sees one."""
    await error(await client.get(path), 404, "not_found")


# -- history ----------------------------------------------------------------------------


async def session_with(client: TestClient, count: int) -> str:
    """A session holding ``count`` messages, appended through the store itself."""
    sid = (await (await client.post("/v1/sessions")).json())["id"]
    messages = [{"role": "user", "content": f"m{i}"} for i in range(1, count + 1)]
    if messages:
        await client.server.app[STORE].append(sid, messages)
    return sid


async def page(client: TestClient, sid: str, query: str = "") -> tuple[list[int], bool]:
    resp = await client.get(f"/v1/sessions/{sid}/messages{query}")
    body = await resp.json()
    assert resp.status == 200, body
    assert body["object"] == "list"
    for message in body["data"]:
        assert message["content"] == f"m{message['seq']}"
        assert message["role"] == "user"
    return [m["seq"] for m in body["data"]], body["has_more"]


async def test_messages_of_an_empty_session(client: TestClient) -> None:
    sid = await session_with(client, 0)
    assert await page(client, sid) == ([], False)
    assert await page(client, sid, "?after=0") == ([], False)


async def test_messages_without_after_are_the_latest(client: TestClient) -> None:
    sid = await session_with(client, 5)
    assert await page(client, sid) == ([1, 2, 3, 4, 5], False)
    assert await page(client, sid, "?limit=5") == ([1, 2, 3, 4, 5], False)
    assert await page(client, sid, "?limit=2") == ([4, 5], True)
    assert await page(client, sid, "?limit=0") == ([], True)


async def test_messages_after_page_forward(client: TestClient) -> None:
    sid = await session_with(client, 5)
    assert await page(client, sid, "?after=0&limit=2") == ([1, 2], True)
    assert await page(client, sid, "?after=2&limit=2") == ([3, 4], True)
    assert await page(client, sid, "?after=4&limit=2") == ([5], False)
    assert await page(client, sid, "?after=3&limit=2") == ([4, 5], False)
    assert await page(client, sid, "?after=5") == ([], False)
    assert await page(client, sid, "?after=99") == ([], False)
    assert await page(client, sid, "?after=0&limit=0") == ([], True)
    assert await page(client, sid, "?after=5&limit=0") == ([], False)


async def test_messages_default_limit_is_100(client: TestClient) -> None:
    sid = await session_with(client, 101)
    seqs, more = await page(client, sid)
    assert (seqs, more) == (list(range(2, 102)), True)
    seqs, more = await page(client, sid, "?after=0")
    assert (seqs, more) == (list(range(1, 101)), True)
    assert await page(client, sid, "?after=100") == ([101], False)


@pytest.mark.parametrize(
    "query",
    [
        "limit=abc",
        "limit=-1",
        "limit=1001",
        "limit=",
        "limit=1.5",
        "limit=%2B1",  # +1
        "limit=1e2",
        "limit=%D9%A1",  # an Arabic-Indic one: int() would take it
        "limit=99999999999999999999999999",
        "after=-1",
        "after=x",
        "after=1_0",
        "after=9007199254740992",  # 2**53: past what Redis's Lua counts exactly
        "after=9223372036854775807",
        "after=" + "9" * 5000,
    ],
)
async def test_bad_limit_or_after_is_400(client: TestClient, query: str) -> None:
    sid = await session_with(client, 1)
    await error(await client.get(f"/v1/sessions/{sid}/messages?{query}"), 400, "invalid_range")


@pytest.mark.parametrize(
    "query, header",
    [
        ("after=%C2%B2", None),  # a superscript two: isdigit() says yes, int() says no
        ("after=%D9%A1", None),  # an Arabic-Indic one
        ("after=" + "9" * 5000, None),  # past Python's int-digits limit
        ("after=9223372036854775808", None),  # 2**63: Redis refuses it as a stream id
        ("after=9007199254740992", None),
        ("after=-1", None),
        ("", "\u00b2"),
        ("", "9" * 5000),
        ("", "9223372036854775808"),
    ],
)
async def test_a_bad_after_on_the_event_stream_is_400(
    client: TestClient, query: str, header: str | None
) -> None:
    sid = await session_with(client, 1)
    headers = {} if header is None else {"Last-Event-ID": header}
    resp = await client.get(f"/v1/sessions/{sid}/events?{query}", headers=headers)
    await error(resp, 400, "invalid_range")


async def test_limit_1000_and_the_largest_after_are_accepted(client: TestClient) -> None:
    sid = await session_with(client, 2)
    assert await page(client, sid, "?limit=1000") == ([1, 2], False)
    assert await page(client, sid, "?after=9007199254740991") == ([], False)


# -- state: read and write --------------------------------------------------------------


async def test_get_missing_state_is_404(client: TestClient) -> None:
    await error(await client.get(DOC), 404, "state_not_found")


async def test_put_creates_201_then_overwrites_200(client: TestClient) -> None:
    await doc(await client.put(DOC, json={"a": 1}), 201, {"a": 1}, 1)
    await doc(await client.get(DOC), 200, {"a": 1}, 1)
    await doc(await client.put(DOC, json=[1, "two"]), 200, [1, "two"], 2)
    await doc(await client.get(DOC), 200, [1, "two"], 2)


@pytest.mark.parametrize("value", [None, 0, -1.5, "text", True, [], {}, {"x": [{}, []]}])
async def test_any_json_value_is_a_document(client: TestClient, value: Any) -> None:
    await doc(await client.put(DOC, data=orjson.dumps(value)), 201, value, 1)
    await doc(await client.get(DOC), 200, value, 1)


async def test_big_integers_survive(client: TestClient) -> None:
    value = {"i": 2**63 - 1, "u": 2**64 - 1, "neg": -(2**63), "f": 0.1}
    await doc(await client.put(DOC, data=orjson.dumps(value)), 201, value, 1)
    await doc(await client.get(DOC), 200, value, 1)


async def test_namespaces_and_keys_are_separate(client: TestClient) -> None:
    await client.put("/v1/state/a/k", json=1)
    await client.put("/v1/state/b/k", json=2)
    await client.put("/v1/state/a/j", json=3)
    await doc(await client.get("/v1/state/a/k"), 200, 1, 1)
    await doc(await client.get("/v1/state/b/k"), 200, 2, 1)
    await doc(await client.get("/v1/state/a/j"), 200, 3, 1)


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/v1/state/bad%20ns/k", "invalid_namespace"),
        ("/v1/state/ns/bad%20key", "invalid_key"),
        ("/v1/state/ns/%FF", "invalid_key"),
        ("/v1/state/ns/" + "k" * 201, "invalid_key"),
        ("/v1/state/_ns/k", "invalid_namespace"),
    ],
)
async def test_bad_names_are_400(client: TestClient, path: str, code: str) -> None:
    await error(await client.get(path), 400, code)
    await error(await client.put(path, json=1), 400, code)
    await error(await client.patch(path, json={}, headers=MERGE), 400, code)
    await error(await client.delete(path), 400, code)
    await error(await client.post(path + "/increment", json={"path": ["n"]}), 400, code)


async def test_put_with_if_match_is_compare_and_set(client: TestClient) -> None:
    await client.put(DOC, json={"v": 1})
    await doc(await client.put(DOC, json={"v": 2}, headers={"If-Match": '"1"'}), 200, {"v": 2}, 2)
    await doc(await client.put(DOC, json={"v": 3}, headers={"If-Match": "2"}), 200, {"v": 3}, 3)
    resp = await client.put(DOC, json={"v": 4}, headers={"If-Match": '"2"'})
    err = await error(resp, 412, "version_conflict")
    assert err["current"] == {"value": {"v": 3}, "version": 3}
    await doc(await client.get(DOC), 200, {"v": 3}, 3)


async def test_put_with_if_match_on_a_missing_document_is_412(client: TestClient) -> None:
    err = await error(
        await client.put(DOC, json=1, headers={"If-Match": '"1"'}), 412, "version_conflict"
    )
    assert err["current"] is None
    await error(await client.get(DOC), 404, "state_not_found")


async def test_put_with_if_none_match_star_creates_only(client: TestClient) -> None:
    await doc(await client.put(DOC, json="first", headers={"If-None-Match": "*"}), 201, "first", 1)
    resp = await client.put(DOC, json="second", headers={"If-None-Match": "*"})
    err = await error(resp, 412, "version_conflict")
    assert err["current"] == {"value": "first", "version": 1}
    await doc(await client.get(DOC), 200, "first", 1)


async def test_concurrent_compare_and_set_has_one_winner(client: TestClient) -> None:
    await client.put(DOC, json=0)
    resps = await asyncio.gather(
        *(client.put(DOC, json=i, headers={"If-Match": '"1"'}) for i in range(10))
    )
    statuses = sorted(r.status for r in resps)
    assert statuses == [200] + [412] * 9
    winner = next(r for r in resps if r.status == 200)
    value = (await winner.json())["value"]
    for r in resps:
        if r.status == 412:
            assert (await r.json())["error"]["current"] == {"value": value, "version": 2}
    await doc(await client.get(DOC), 200, value, 2)


@pytest.mark.parametrize(
    "if_match",
    [
        '"abc"',
        "abc",
        'W/"1"',
        '"1", "2"',
        "*",
        '"0"',
        "0",
        '"-1"',
        '"1',
        "1.0",
        "99999999999999999999",
        "",
        '""',
    ],
)
async def test_malformed_if_match_is_400(client: TestClient, if_match: str) -> None:
    await client.put(DOC, json=1)
    await error(
        await client.put(DOC, json=2, headers={"If-Match": if_match}), 400, "invalid_if_match"
    )
    await error(await client.delete(DOC, headers={"If-Match": if_match}), 400, "invalid_if_match")
    await doc(await client.get(DOC), 200, 1, 1)


@pytest.mark.parametrize(
    "headers",
    [{"If-None-Match": '"1"'}, {"If-None-Match": "*", "If-Match": '"1"'}],
)
async def test_unsupported_put_preconditions_are_400(
    client: TestClient, headers: dict[str, str]
) -> None:
    await error(await client.put(DOC, json=1, headers=headers), 400, "invalid_precondition")
    await error(await client.get(DOC), 404, "state_not_found")


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"", "invalid_json"),
        (b"{", "invalid_json"),
        (b"[1,]", "invalid_json"),
        (b'{"a": "\xc3\x28"}', "invalid_json"),  # invalid UTF-8
        (b"\xef\xbb\xbf{}", "invalid_json"),  # a byte-order mark
        (b"Infinity", "invalid_json"),
        (b"1e999", "invalid_json"),
        (nested(MAX_DEPTH + 1), "invalid_json"),
        (nested(1024), "invalid_json"),
        (nested(1025), "invalid_json"),
        (b"[" * 2000 + b"]" * 2000, "invalid_json"),
    ],
)
async def test_put_hostile_bodies_are_400(client: TestClient, body: bytes, code: str) -> None:
    await error(await client.put(DOC, data=body), 400, code)
    await error(await client.get(DOC), 404, "state_not_found")


async def test_put_body_over_the_request_limit_is_413(client: TestClient) -> None:
    body = orjson.dumps("x" * MAX_REQUEST)
    await error(await client.put(DOC, data=body), 413, "request_too_large")
    await error(await client.get(DOC), 404, "state_not_found")


async def test_chunked_body_over_the_request_limit_is_413(client: TestClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'"'
        for _ in range(MAX_REQUEST // 1000 + 1):
            yield b"x" * 1000
        yield b'"'

    await error(await client.put(DOC, data=chunks()), 413, "request_too_large")
    await error(await client.get(DOC), 404, "state_not_found")


async def test_document_over_the_value_limit_is_413(client: TestClient) -> None:
    body = orjson.dumps("x" * MAX_VALUE)
    assert len(body) < MAX_REQUEST
    await error(await client.put(DOC, data=body), 413, "value_too_large")
    await error(await client.get(DOC), 404, "state_not_found")


async def test_a_document_at_the_depth_limit_is_served_back_everywhere(
    client: TestClient,
) -> None:
    deep = orjson.loads(nested(MAX_DEPTH))
    await doc(await client.put(DOC, json=deep), 201, deep, 1)
    await doc(await client.get(DOC), 200, deep, 1)
    # The deepest envelope: a 412 carries the current document inside the error object.
    err = await error(
        await client.put(DOC, json=1, headers={"If-Match": '"7"'}), 412, "version_conflict"
    )
    assert err["current"] == {"value": deep, "version": 1}
    err = await error(
        await client.delete(DOC, headers={"If-Match": '"7"'}), 412, "version_conflict"
    )
    assert err["current"] == {"value": deep, "version": 1}


# -- state: merge patch -----------------------------------------------------------------


async def test_patch_merges_rfc_7386(client: TestClient) -> None:
    await client.put(DOC, json={"a": "b", "c": {"d": "e", "f": "g"}, "keep": [1]})
    patch = {"a": "z", "c": {"f": None, "h": 1}, "new": {"x": [2]}}
    resp = await client.patch(DOC, json=patch, headers=MERGE)
    want = {"a": "z", "c": {"d": "e", "h": 1}, "keep": [1], "new": {"x": [2]}}
    await doc(resp, 200, want, 2)
    await doc(await client.get(DOC), 200, want, 2)


async def test_patch_creates_a_missing_document(client: TestClient) -> None:
    resp = await client.patch(DOC, json={"a": 1, "gone": None}, headers=MERGE)
    await doc(resp, 200, {"a": 1}, 1)


async def test_a_non_object_patch_replaces_the_document(client: TestClient) -> None:
    await client.put(DOC, json={"a": 1})
    await doc(await client.patch(DOC, json=[1, 2], headers=MERGE), 200, [1, 2], 2)


async def test_patch_content_type_may_carry_a_charset(client: TestClient) -> None:
    headers = {"Content-Type": "application/merge-patch+json; charset=utf-8"}
    await doc(await client.patch(DOC, data=b'{"a":1}', headers=headers), 200, {"a": 1}, 1)


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "text/plain", "application/json-patch+json", None],
)
async def test_patch_with_another_content_type_is_415(
    client: TestClient, content_type: str | None
) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    resp = await client.patch(
        DOC, data=b'{"a":1}', headers=headers, skip_auto_headers=["Content-Type"]
    )
    await error(resp, 415, "unsupported_media_type")
    await error(await client.get(DOC), 404, "state_not_found")


async def test_concurrent_patches_all_apply(client: TestClient) -> None:
    await asyncio.gather(*(client.patch(DOC, json={f"k{i}": i}, headers=MERGE) for i in range(20)))
    await doc(await client.get(DOC), 200, {f"k{i}": i for i in range(20)}, 20)


@pytest.mark.parametrize(
    "body",
    [b"{", b"\xff", nested(MAX_DEPTH + 1), nested(900), nested(1024), nested(1025)],
)
async def test_patch_hostile_bodies_are_400_not_500(client: TestClient, body: bytes) -> None:
    await client.put(DOC, json={"a": 1})
    await error(await client.patch(DOC, data=body, headers=MERGE), 400, "invalid_json")
    await doc(await client.get(DOC), 200, {"a": 1}, 1)


async def test_patch_over_the_limits_is_413(client: TestClient) -> None:
    big = orjson.dumps({"pad": "x" * MAX_VALUE})
    await error(await client.patch(DOC, data=big, headers=MERGE), 413, "value_too_large")
    huge = orjson.dumps({"pad": "x" * MAX_REQUEST})
    await error(await client.patch(DOC, data=huge, headers=MERGE), 413, "request_too_large")
    await error(await client.get(DOC), 404, "state_not_found")


@pytest.mark.parametrize("header", ["If-Match", "If-None-Match"])
async def test_increment_refuses_preconditions(client: TestClient, header: str) -> None:
    value = '"1"' if header == "If-Match" else "*"
    resp = await client.post(DOC + "/increment", json={"path": ["n"]}, headers={header: value})
    await error(resp, 400, "invalid_precondition")
    await error(await client.get(DOC), 404, "state_not_found")


async def test_patch_with_if_match_applies_to_that_version_only(client: TestClient) -> None:
    await error(
        await client.patch(DOC, json={"a": 1}, headers={**MERGE, "If-None-Match": "*"}),
        400,
        "invalid_precondition",
    )
    await doc(await client.patch(DOC, json={"a": 1}, headers=MERGE), 200, {"a": 1}, 1)
    resp = await client.patch(DOC, json={"b": 2}, headers={**MERGE, "If-Match": '"1"'})
    await doc(resp, 200, {"a": 1, "b": 2}, 2)
    stale = await error(
        await client.patch(DOC, json={"c": 3}, headers={**MERGE, "If-Match": "1"}),
        412,
        "version_conflict",
    )
    assert stale["current"] == {"value": {"a": 1, "b": 2}, "version": 2}
    await doc(await client.get(DOC), 200, {"a": 1, "b": 2}, 2)


# -- state: increment -------------------------------------------------------------------


async def test_increment_creates_and_adds(client: TestClient) -> None:
    inc = DOC + "/increment"
    await doc(await client.post(inc, json={"path": ["a", "b"], "by": 2}), 200, {"a": {"b": 2}}, 1)
    await doc(await client.post(inc, json={"path": ["a", "b"]}), 200, {"a": {"b": 3}}, 2)
    await doc(
        await client.post(inc, json={"path": ["a", "b"], "by": -0.5}), 200, {"a": {"b": 2.5}}, 3
    )
    await doc(
        await client.post(inc, json={"path": ["c"], "by": 1}), 200, {"a": {"b": 2.5}, "c": 1}, 4
    )
    await doc(await client.get(DOC), 200, {"a": {"b": 2.5}, "c": 1}, 4)


async def test_concurrent_increments_all_count(client: TestClient) -> None:
    resps = await asyncio.gather(
        *(client.post(DOC + "/increment", json={"path": ["n"]}) for _ in range(50))
    )
    assert {r.status for r in resps} == {200}
    await doc(await client.get(DOC), 200, {"n": 50}, 50)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{", "invalid_json"),
        (b"[]", "invalid_request"),
        (b'["a"]', "invalid_request"),
        (b'{"path": ["n"], "step": 1}', "invalid_request"),
        (b"{}", "invalid_path"),
        (b'{"path": "n"}', "invalid_path"),
        (b'{"path": "ab"}', "invalid_path"),
        (b'{"path": []}', "invalid_path"),
        (b'{"path": [""]}', "invalid_path"),
        (b'{"path": [1]}', "invalid_path"),
        (b'{"path": {"n": 1}}', "invalid_path"),
        (orjson.dumps({"path": ["a"] * (MAX_DEPTH + 1)}), "invalid_path"),
        (b'{"path": ["n"], "by": "1"}', "invalid_increment"),
        (b'{"path": ["n"], "by": true}', "invalid_increment"),
        (b'{"path": ["n"], "by": null}', "invalid_increment"),
        (b'{"path": ["n"], "by": [1]}', "invalid_increment"),
    ],
)
async def test_increment_bad_bodies_are_400(client: TestClient, body: bytes, code: str) -> None:
    await error(await client.post(DOC + "/increment", data=body), 400, code)
    await error(await client.get(DOC), 404, "state_not_found")


async def test_increment_a_non_number_is_400(client: TestClient) -> None:
    await client.put(DOC, json={"s": "text", "o": {"x": 1}})
    inc = DOC + "/increment"
    await error(await client.post(inc, json={"path": ["s"]}), 400, "invalid_path")
    await error(await client.post(inc, json={"path": ["s", "x"]}), 400, "invalid_path")
    await error(await client.post(inc, json={"path": ["o"]}), 400, "invalid_path")
    await client.put(DOC, json=[1])
    await error(await client.post(inc, json={"path": ["n"]}), 400, "invalid_path")
    await doc(await client.get(DOC), 200, [1], 2)


async def test_increment_the_deepest_path_is_served_back(client: TestClient) -> None:
    path = ["a"] * MAX_DEPTH
    resp = await client.post(DOC + "/increment", json={"path": path})
    assert resp.status == 200
    err = await error(
        await client.put(DOC, json=1, headers={"If-Match": '"9"'}), 412, "version_conflict"
    )
    assert err["current"]["version"] == 1


# -- state: delete ----------------------------------------------------------------------


async def test_delete_state(client: TestClient) -> None:
    await client.put(DOC, json=1)
    resp = await client.delete(DOC)
    assert resp.status == 204
    assert await resp.read() == b""
    await error(await client.get(DOC), 404, "state_not_found")
    await error(await client.delete(DOC), 404, "state_not_found")
    # Created again, it starts over at version 1.
    await doc(await client.put(DOC, json=2), 201, 2, 1)


async def test_delete_with_if_match(client: TestClient) -> None:
    await client.put(DOC, json="a")
    await client.put(DOC, json="b")
    err = await error(
        await client.delete(DOC, headers={"If-Match": '"1"'}), 412, "version_conflict"
    )
    assert err["current"] == {"value": "b", "version": 2}
    await doc(await client.get(DOC), 200, "b", 2)
    assert (await client.delete(DOC, headers={"If-Match": '"2"'})).status == 204
    resp = await client.delete(DOC, headers={"If-Match": '"2"'})
    await error(resp, 404, "state_not_found")


async def test_delete_refuses_if_none_match(client: TestClient) -> None:
    await client.put(DOC, json=1)
    await error(
        await client.delete(DOC, headers={"If-None-Match": "*"}), 400, "invalid_precondition"
    )
    await doc(await client.get(DOC), 200, 1, 1)
