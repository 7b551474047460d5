"""The admin API of background work (``/v1/admin/jobs``): each partition's figures, and
dead letters listed, retried until the response completes, and discarded, on every store
layout; what it refuses, and to whom."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from .conftest import TOPOLOGIES
from .openai_stub import Fail, Normal, StartStub, StubNode
from .test_keys import ADMIN, ADMIN_KEY, Api, bearer
from .waiting import wait_until

JOBS = "/v1/admin/jobs"
DEAD = "/v1/admin/jobs/dead"
LIMIT_S = 60.0


class Jobs(Api):
    def __init__(self, http: aiohttp.ClientSession, url: str, node: StubNode) -> None:
        super().__init__(http, url)
        self.node = node

    async def submit(self, key: str | None = None) -> str:
        body = {"model": "helper", "input": "hello again", "background": True}
        headers = ADMIN if key is None else bearer(key)
        status, made = await self.call("POST", "/v1/responses", body, headers)
        assert status == 200, made
        return made["id"]  # type: ignore[no-any-return]

    async def status_of(self, rid: str, key: str | None = None) -> str:
        headers = ADMIN if key is None else bearer(key)
        status, body = await self.call("GET", f"/v1/responses/{rid}", headers=headers)
        assert status == 200, body
        return body["status"]  # type: ignore[no-any-return]

    async def figures(self) -> dict[str, Any]:
        status, page = await self.call("GET", JOBS)
        assert status == 200 and page["object"] == "list", page
        return {p["partition"]: p for p in page["data"]}

    async def dead(self, query: str = "partition=default") -> tuple[int, Any]:
        return await self.call("GET", f"{DEAD}?{query}")

    async def wait_dead(self, count: int) -> list[dict[str, Any]]:
        async def reached() -> Any:
            status, page = await self.dead()
            assert status == 200, page
            # In a tuple: an empty list is what waiting for no dead letter looks for.
            return (page["data"],) if len(page["data"]) == count else None

        (letters,) = await wait_until(reached, LIMIT_S, f"{count} dead letter(s)")
        return letters  # type: ignore[no-any-return]


@pytest.fixture(params=TOPOLOGIES)
async def api(
    request: pytest.FixtureRequest, stub: StartStub, monkeypatch: pytest.MonkeyPatch, serve: Any
) -> AsyncIterator[Jobs]:
    """A server in keys mode on each store layout, its agent on a stub that fails (503)
    until told otherwise, and one attempt per job."""
    monkeypatch.setenv("AGENTD_ADMIN_KEY", ADMIN_KEY)
    node = await stub(Fail(503))
    raw: dict[str, Any] = {
        "auth": {"mode": "keys"},
        "jobs": {"max_attempts": 1},
        "backends": [
            {"name": "up", "type": "openai", "urls": [node.url], "breaker_failures": 1000}
        ],
        "agents": [{"name": "helper", "backend": "up", "cache": {"mode": "off"}}],
    }
    if request.param == "single":
        raw["redis"] = {"urls": [request.getfixturevalue("redis_standalone").url]}
    elif request.param == "sharded":
        raw["redis"] = {"urls": [s.url for s in request.getfixturevalue("redis_shards")]}
    elif request.param == "cluster":
        raw["redis"] = {"urls": request.getfixturevalue("redis_cluster").urls, "cluster": True}
    url = await serve(**raw)
    async with aiohttp.ClientSession() as http:
        yield Jobs(http, url, node)


async def test_a_dead_letter_retried_runs_and_completes(api: Jobs) -> None:
    tenant_key = (await api.create(tenant="acme"))["key"]
    rid = await api.submit(tenant_key)
    [letter] = await api.wait_dead(1)
    assert letter == {
        "id": letter["id"],
        "partition": "default",
        "response_id": rid,
        "tenant": "acme",
        "attempts": 1,
        "error": {"code": letter["error"]["code"], "message": letter["error"]["message"]},
        "failed_at": letter["failed_at"],
    }
    assert letter["error"]["code"] and letter["error"]["message"]
    assert await api.status_of(rid, tenant_key) == "failed"
    figures = (await api.figures())["default"]
    assert figures["dead"] == 1 and figures["depth"] == 0 and figures["oldest_age_s"] is None

    api.node.mode = Normal()
    status, body = await api.call("POST", f"{DEAD}/{letter['id']}/retry?partition=default")
    assert (status, body) == (
        200,
        {"id": letter["id"], "partition": "default", "response_id": rid, "status": "queued"},
    )

    async def completed() -> bool:
        return await api.status_of(rid, tenant_key) == "completed"

    await wait_until(completed, LIMIT_S, "the retried response to complete")
    status, body = await api.call("GET", f"/v1/responses/{rid}", headers=bearer(tenant_key))
    assert body["error"] is None and body["output"][0]["content"][0]["text"]
    assert await api.wait_dead(0) == []
    assert (await api.figures())["default"]["dead"] == 0
    # It is gone: a second retry finds nothing.
    status, body = await api.call("POST", f"{DEAD}/{letter['id']}/retry?partition=default")
    assert status == 404 and body["error"]["code"] == "dead_letter_not_found"


async def test_a_dead_letter_discarded_is_gone(api: Jobs, caplog: pytest.LogCaptureFixture) -> None:
    rid = await api.submit()
    [letter] = await api.wait_dead(1)
    assert (letter["response_id"], letter["tenant"]) == (rid, "")
    path = f"{DEAD}/{letter['id']}?partition=default"
    with caplog.at_level(logging.INFO, logger="agentd.audit"):
        assert await api.call("DELETE", path) == (200, {"id": letter["id"], "deleted": True})
        assert (await api.dead())[1]["data"] == []
        assert (await api.figures())["default"]["dead"] == 0
        status, body = await api.call("DELETE", path)
    assert status == 404 and body["error"]["code"] == "dead_letter_not_found"
    # One audit line per discard, done or refused; none for reading.
    lines = [r for r in caplog.records if r.name == "agentd.audit"]
    assert [(r.action, r.id, r.partition, r.outcome) for r in lines] == [  # type: ignore[attr-defined]
        ("dead_letter.discard", letter["id"], "default", "ok"),
        ("dead_letter.discard", letter["id"], "default", "refused: dead_letter_not_found"),
    ]
    assert lines[0].response == rid  # type: ignore[attr-defined]
    assert await api.status_of(rid) == "failed"  # the response itself stays as it ended


async def test_dead_letters_page_with_a_cursor(api: Jobs) -> None:
    rids = [await api.submit() for _ in range(3)]
    letters = await api.wait_dead(3)
    assert sorted(d["response_id"] for d in letters) == sorted(rids)
    times = [d["failed_at"] for d in letters]
    assert times == sorted(times, reverse=True)  # newest first
    status, first = await api.dead("partition=default&limit=2")
    assert status == 200 and first["has_more"] and len(first["data"]) == 2
    status, rest = await api.dead(f"partition=default&limit=2&after={first['next_after']}")
    assert status == 200 and not rest["has_more"] and rest["next_after"] is None
    assert [d["id"] for d in first["data"] + rest["data"]] == [d["id"] for d in letters]


async def test_bad_input_gets_a_400_with_a_stable_code(api: Jobs) -> None:
    cases = {
        "": "missing_required_parameter",
        "partition=nope": "unknown_partition",
        "partition=default&after=xyz": "invalid_cursor",
        "partition=default&after=1-2-3": "invalid_cursor",
        "partition=default&limit=abc": "invalid_range",
        "partition=default&limit=5000": "invalid_range",
        "partition=default&limit=-1": "invalid_range",
    }
    for query, code in cases.items():
        status, body = await api.dead(query)
        assert (status, body["error"]["code"]) == (400, code), query
    for method, path in (("POST", f"{DEAD}/1-1/retry"), ("DELETE", f"{DEAD}/1-1")):
        status, body = await api.call(method, f"{path}?partition=nope")
        assert (status, body["error"]["code"]) == (400, "unknown_partition")
        status, body = await api.call(method, path)
        assert (status, body["error"]["code"]) == (400, "missing_required_parameter")
    for bad in ("1-1", "not-an-id", "99999999999999999999999-1"):
        status, body = await api.call("DELETE", f"{DEAD}/{bad}?partition=default")
        assert (status, body["error"]["code"]) == (404, "dead_letter_not_found"), bad
    # The server lives on.
    assert "default" in await api.figures()


async def test_only_admin_keys_may_look(api: Jobs) -> None:
    key = (await api.create(tenant="acme"))["key"]
    for method, path in (
        ("GET", JOBS),
        ("GET", f"{DEAD}?partition=default"),
        ("POST", f"{DEAD}/1-1/retry?partition=default"),
        ("DELETE", f"{DEAD}/1-1?partition=default"),
        ("GET", "/v1/admin/instances"),
    ):
        status, body = await api.call(method, path, headers=bearer(key))
        assert (status, body["error"]["code"]) == (403, "permission_denied"), path
        status, body = await api.call(method, path, headers={})
        assert status == 401, path


async def test_an_in_process_worker_lists_itself(api: Jobs) -> None:
    async def listed() -> Any:
        status, page = await api.call("GET", "/v1/admin/instances")
        assert status == 200 and page["object"] == "list", page
        return page["data"] or None

    [me] = await wait_until(listed, LIMIT_S, "the worker's first heartbeat")
    assert me["id"] == f"{me['instance']}/0" and me["worker"] == 0
    assert set(me) == {
        "id", "instance", "worker", "address", "pid", "version", "partitions", "started_at",
        "last_seen", "stats",
    }  # fmt: skip
    assert me["partitions"] == ["default"]
    stats = me["stats"]
    assert set(stats) == {
        "requests", "errors", "latency_ms", "cache", "jobs_done", "ws_connections", "backends",
    }  # fmt: skip
    assert set(stats["cache"]) == {"l1_hits", "l2_hits", "misses"}
    assert stats["backends"] == [
        {
            "backend": "up",
            "node": stats["backends"][0]["node"],
            "latency_ms": stats["backends"][0]["latency_ms"],
            "in_flight": 0,
            "breaker": "closed",
        }
    ]

    # Requests are counted, and the latency window has them.
    async def counted() -> Any:
        page = await listed()
        return page if page and page[0]["stats"]["requests"] >= 2 else None

    [later] = await wait_until(counted, LIMIT_S, "the requests to show in the stats")
    assert later["stats"]["latency_ms"]["p50"] is not None
    assert later["last_seen"] >= me["last_seen"]
    assert orjson.dumps(later)  # plain JSON
