"""The shared-state PUT body: the document itself, and the GET envelope made explicit.

GET answers ``{"value": ..., "version": N}``; a client that sends that back must not
store the wrapper (each round trip would nest the document deeper).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from agentd.config import from_dict
from agentd.server.app import create_app

from .test_http_store import doc, error

DOC = "/v1/state/ns/doc"
ENVELOPE = {"Content-Type": "application/vnd.agentd.state+json"}


@pytest.fixture
async def client() -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(create_app(from_dict({})))) as client:
        yield client


async def test_sending_back_what_get_returned_is_refused_and_nothing_is_stored(
    client: TestClient,
) -> None:
    await doc(await client.put(DOC, json={"n": 1}), 201, {"n": 1}, 1)
    read = await (await client.get(DOC)).json()
    err = await error(await client.put(DOC, json=read), 400, "state_envelope")
    assert "application/vnd.agentd.state+json" in err["message"]
    await doc(await client.get(DOC), 200, {"n": 1}, 1)


@pytest.mark.parametrize(
    "value",
    [
        {"value": 3},  # a document with a single "value" key is a document
        {"value": 3, "version": "2"},
        {"value": 3, "version": 2, "by": "me"},
        [{"value": 1, "version": 1}],
        "text",
        0,
    ],
)
async def test_any_other_body_is_the_document(client: TestClient, value: Any) -> None:
    await doc(await client.put(DOC, json=value), 201, value, 1)
    await doc(await client.get(DOC), 200, value, 1)


async def test_the_envelope_content_type_round_trips_a_get_as_compare_and_set(
    client: TestClient,
) -> None:
    await client.put(DOC, json={"n": 1})
    read = await (await client.get(DOC)).json()
    read["value"]["n"] = 2
    await doc(await client.put(DOC, json=read, headers=ENVELOPE), 200, {"n": 2}, 2)
    # The same body again names version 1, which is no longer current.
    err = await error(await client.put(DOC, json=read, headers=ENVELOPE), 412, "version_conflict")
    assert err["current"] == {"value": {"n": 2}, "version": 2}
    # Without a version it is a plain write; and it stores a GET-shaped document too.
    shaped = {"value": 1, "version": 1}
    await doc(await client.put(DOC, json={"value": shaped}, headers=ENVELOPE), 200, shaped, 3)
    await doc(await client.get(DOC), 200, shaped, 3)


@pytest.mark.parametrize(
    ("body", "headers", "code"),
    [
        ({"version": 1}, {}, "invalid_request"),
        ({"value": 1, "extra": 2}, {}, "invalid_request"),
        ([1], {}, "invalid_request"),
        ({"value": 1, "version": 0}, {}, "invalid_request"),
        ({"value": 1, "version": True}, {}, "invalid_request"),
        ({"value": 1, "version": 2}, {"If-Match": '"3"'}, "invalid_precondition"),
        ({"value": 1, "version": 2}, {"If-None-Match": "*"}, "invalid_precondition"),
    ],
)
async def test_a_malformed_envelope_is_refused(
    client: TestClient, body: Any, headers: dict[str, str], code: str
) -> None:
    resp = await client.put(DOC, json=body, headers={**ENVELOPE, **headers})
    await error(resp, 400, code)
    await error(await client.get(DOC), 404, "state_not_found")
