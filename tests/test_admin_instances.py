"""The service registry across real ``agentd serve`` instances (``GET
/v1/admin/instances``): every worker of every instance is listed from any of them, a
killed worker drops out after its heartbeats stop, a stopped instance removes its workers
as it drains; on one Redis, a Redis Cluster and Sentinel groups."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any

import pytest

from .procs import AgentdProcess
from .test_sentinel import SentinelShards, sentinel_shards  # noqa: F401 - a fixture
from .waiting import wait_until_sync

pytestmark = pytest.mark.slow

Start = Callable[..., AgentdProcess]
LIMIT_S = 60.0
LAYOUTS = ["single", "cluster", "sentinel"]


def _urls(request: pytest.FixtureRequest) -> tuple[list[str], bool]:
    if request.param == "single":
        return [request.getfixturevalue("redis_standalone").url], False
    if request.param == "cluster":
        return request.getfixturevalue("redis_cluster").urls, True
    shards: SentinelShards = request.getfixturevalue("sentinel_shards")
    return shards.urls, False


@pytest.fixture(params=LAYOUTS)
def config(request: pytest.FixtureRequest) -> str:
    urls, cluster = _urls(request)
    listed = ", ".join(f'"{u}"' for u in urls)
    return f"""
[server]
workers = 2
shutdown_timeout = 2.0
[redis]
urls = [{listed}]
cluster = {"true" if cluster else "false"}
"""


def _listed(proc: AgentdProcess) -> list[dict[str, Any]]:
    status, page = proc.get("/v1/admin/instances")
    assert status == 200 and page["object"] == "list", page
    return page["data"]  # type: ignore[no-any-return]


def _wait_listed(
    proc: AgentdProcess, check: Callable[[list[dict[str, Any]]], bool], what: str
) -> list[dict[str, Any]]:
    def look() -> Any:
        data = _listed(proc)
        return (data,) if check(data) else None

    (data,) = wait_until_sync(look, LIMIT_S, what)
    return data  # type: ignore[no-any-return]


def _of(data: list[dict[str, Any]], proc: AgentdProcess) -> list[dict[str, Any]]:
    return [w for w in data if w["address"] == f"127.0.0.1:{proc.port}"]


async def test_every_worker_of_every_instance_is_listed_until_it_goes(
    agentd_instance: Start, config: str
) -> None:
    a = agentd_instance(config)
    b = agentd_instance(config)
    both = _wait_listed(
        a, lambda d: len(_of(d, a)) == 2 and len(_of(d, b)) == 2, "both instances' workers"
    )
    assert [w["id"] for w in both] == sorted(w["id"] for w in both)
    assert len({w["instance"] for w in both}) == 2
    for proc in (a, b):
        workers = _of(both, proc)
        assert {w["pid"] for w in workers} == proc.worker_pids()
        assert sorted(w["worker"] for w in workers) == [0, 1]
        assert all(w["id"] == f"{w['instance']}/{w['worker']}" for w in workers)
        assert all(w["partitions"] == ["default"] and w["version"] for w in workers)
    # The figures are each worker's own (read from its multiprocess metric files): the
    # listings above were requests too, counted by the workers that answered them.
    counted = _wait_listed(
        a, lambda d: sum(w["stats"]["requests"] for w in _of(d, a)) > 0, "a's requests counted"
    )
    assert all(w["stats"]["errors"] == 0 for w in counted)
    # Any instance lists the same workers.
    assert {w["id"] for w in _wait_listed(b, lambda d: len(d) == 4, "four workers")} == {
        w["id"] for w in both
    }

    # A killed worker stops beating and drops out; its slot's new worker comes in.
    victim = _of(both, b)[0]
    os.kill(victim["pid"], signal.SIGKILL)
    after = _wait_listed(
        a,
        lambda d: (
            victim["pid"] not in {w["pid"] for w in d} and any(w["id"] == victim["id"] for w in d)
        ),
        "the killed worker to drop out and its slot's new worker to come in",
    )
    [replaced] = [w for w in after if w["id"] == victim["id"]]
    assert replaced["pid"] in b.worker_pids() and replaced["started_at"] > victim["started_at"]

    # A stopped instance's workers remove themselves as they drain: gone at once.
    b.stop()
    assert _of(_listed(a), b) == []
    assert len(_of(_listed(a), a)) == 2


async def test_the_configured_instance_id_names_the_workers(
    agentd_instance: Start, config: str
) -> None:
    proc = agentd_instance(config.replace("[server]", '[server]\ninstance_id = "edge-1"'))
    data = _wait_listed(proc, lambda d: len(d) == 2, "both workers")
    assert [w["id"] for w in data] == ["edge-1/0", "edge-1/1"]
