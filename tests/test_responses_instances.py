"""Background responses across real ``agentd serve`` instances sharing Redis: resumed
streams, workers killed mid-job, partitions, and a cluster."""

from __future__ import annotations

import asyncio
import os
import random
import signal
from collections.abc import Callable
from typing import Any

import openai
import pytest
import redis

from agentd.config import from_dict
from agentd.store.keys import dead_key, queue_key, record_keys

from .openai_stub import Fail, Hang, Normal, StubNode
from .procs import AgentdProcess, RedisClusterProcs, RedisServer, metric
from .test_responses import client, history, stub_config, wait_status
from .waiting import wait_until

pytestmark = pytest.mark.slow

Start = Callable[..., AgentdProcess]


def _config(urls: list[str], *, workers: int = 1, extra: str = "", cluster: bool = False) -> str:
    return f"""
[server]
workers = {workers}
shutdown_timeout = 2.0
[redis]
urls = {urls!r}
cluster = {"true" if cluster else "false"}
[jobs]
lease_s = 1.0
{extra}
[[backends]]
name = "echo"
type = "echo"
tokens_per_s = 40.0
""".replace("'", '"')


async def test_a_dropped_stream_resumes_on_another_instance(
    agentd_instance: Start, redis_standalone: RedisServer
) -> None:
    a = agentd_instance(_config([redis_standalone.url]))
    b = agentd_instance(_config([redis_standalone.url]))
    words = " ".join(f"w{i}" for i in range(40))
    job = await client(a).responses.create(model="echo", input=words, background=True)
    first = []
    stream = await client(a).responses.retrieve(job.id, stream=True)
    async for event in stream:
        first.append(event)
        if event.type == "response.output_text.delta" and len(first) >= 10:
            break
    await stream.close()
    last = first[-1].sequence_number
    rest = [
        e
        async for e in await client(b).responses.retrieve(job.id, stream=True, starting_after=last)
    ]
    numbers = [e.sequence_number for e in first + rest]
    assert numbers == list(range(len(numbers)))  # no gap, no duplicate
    text = "".join(e.delta for e in first + rest if e.type == "response.output_text.delta")
    assert text == words
    assert rest[-1].type == "response.completed"
    # After the end, a late reader gets the whole stream from any instance.
    late = [e async for e in await client(b).responses.retrieve(job.id, stream=True)]
    assert [e.sequence_number for e in late] == numbers


def _runner_pid(redis_url: str, rid: str) -> int | None:
    """The pid of the worker running (or that ran) the job, from its record."""
    with redis.Redis.from_url(redis_url) as r:
        by = r.hget(record_keys(rid)[0], "by")
    return None if by is None else int(by.split(b":")[1])


def _queued(redis_url: str, partition: str, shards: int) -> int:
    """Entries in the partition's queue streams: jobs waiting or running."""
    with redis.Redis.from_url(redis_url) as r:
        return sum(r.xlen(queue_key(partition, shard)) for shard in range(shards))


async def test_kill_9_the_worker_running_a_job(
    agentd_instance: Start, redis_standalone: RedisServer
) -> None:
    a = agentd_instance(_config([redis_standalone.url], workers=2))
    b = agentd_instance(_config([redis_standalone.url], workers=2))
    sdk = client(a)
    words = " ".join(f"w{i}" for i in range(80))  # about 2 s at 40 tokens/s
    job = await sdk.responses.create(model="echo", input=words, background=True)
    await wait_status(sdk, job.id, ("in_progress",))
    pid = await wait_until(
        lambda: _runner_pid(redis_standalone.url, job.id), what="the job's worker to be noted"
    )
    assert pid in a.worker_pids() | b.worker_pids()
    os.kill(pid, signal.SIGKILL)
    done = await wait_status(sdk, job.id, limit=60)
    assert done.status == "completed" and done.output_text == words
    assert _runner_pid(redis_standalone.url, job.id) != pid
    messages = await history(a, done.model_extra["session_id"])
    # The turn is in the session once, however many attempts ran.
    assert [(m["role"], m["turn"]) for m in messages] == [
        ("user", job.id),
        ("assistant", job.id),
    ]
    assert messages[1]["content"] == words


async def test_a_draining_worker_hands_its_job_back(
    agentd_instance: Start, redis_standalone: RedisServer
) -> None:
    async with StubNode(Hang()) as node:
        # A long lease: the job must come back through the hand-over, not a reclaim.
        config = (
            (_config([redis_standalone.url]).split("[[backends]]")[0] + stub_config(node))
            .replace("lease_s = 1.0", "lease_s = 120.0")
            .replace("shutdown_timeout = 2.0", "shutdown_timeout = 0.5")
        )
        a = agentd_instance(config)
        job = await client(a).responses.create(model="helper", input="handed", background=True)
        # a's call hangs: a holds the job, unfinished, however long b takes to start (a
        # timed job once ended on a before a loaded machine had started b).
        await wait_until(lambda: len(node.requests) == 1, what="a's call to the model")
        b = agentd_instance(config)
        node.mode = Normal()  # for b's attempt: a's call keeps hanging
        a.send(signal.SIGTERM)
        assert a.wait_exit() == 0
        try:
            done = await wait_status(client(b), job.id, limit=90)  # a reclaim takes 120 s
        except AssertionError as exc:  # say where the job went
            raise AssertionError(f"{exc}\n--- a's log\n{a.log()}\n--- b's log\n{b.log()}") from None
    assert done.status == "completed" and done.output_text == "stub:handed"
    assert len(node.requests) == 2  # a's attempt, handed back unfinished, then b's
    assert _runner_pid(redis_standalone.url, job.id) in b.worker_pids()
    assert "took over job" not in b.log()  # handed back at once, not reclaimed
    messages = await history(b, done.model_extra["session_id"])
    assert [(m["role"], m["turn"]) for m in messages] == [("user", job.id), ("assistant", job.id)]


async def test_many_jobs_over_two_instances_while_workers_die(
    agentd_instance: Start, redis_standalone: RedisServer
) -> None:
    fast = _config([redis_standalone.url], workers=2).replace(
        "tokens_per_s = 40.0", "tokens_per_s = 0.0"
    )
    a = agentd_instance(fast)
    b = agentd_instance(fast)
    sdk_a, sdk_b = client(a), client(b)
    count = 1000
    created = await asyncio.gather(
        *(
            (sdk_a if i % 2 else sdk_b).responses.create(
                model="echo", input=f"job {i}", background=True
            )
            for i in range(count)
        )
    )
    ids = [r.id for r in created]
    for _ in range(4):
        await asyncio.sleep(0.2)  # a pause, not a wait: the kills are spread while jobs run
        victims = list(a.worker_pids() | b.worker_pids())
        os.kill(random.choice(victims), signal.SIGKILL)

    # At most 100 pollers at once: a thousand polling every 50 ms are a connection storm
    # that overflows a loaded machine's accept queues (connect timeouts in the client),
    # which is not what this test is about.
    pollers = asyncio.Semaphore(100)

    async def finished(rid: str) -> Any:
        async with pollers:
            return await wait_status(sdk_a if hash(rid) % 2 else sdk_b, rid, limit=120)

    results = await asyncio.gather(*(finished(rid) for rid in ids))
    assert [r.status for r in results] == ["completed"] * count
    assert [r.output_text for r in results] == [f"job {i}" for i in range(count)]
    # Each turn once in its session, however many attempts ran.
    for rid, result in random.sample(list(zip(ids, results, strict=True)), 100):
        turns = [m["turn"] for m in await history(a, result.model_extra["session_id"])]
        assert turns == [rid, rid]
    shards = from_dict({}).jobs.queue_shards  # the default partition's
    assert _queued(redis_standalone.url, "default", shards) == 0  # all acknowledged


async def test_partitions_are_consumed_only_where_assigned(
    agentd_instance: Start, redis_standalone: RedisServer
) -> None:
    pause_s = 1.0
    parts = """
[[agents]]
name = "a-agent"
backend = "echo"
[[agents]]
name = "b-agent"
backend = "echo"
[[partitions]]
name = "a"
agents = ["a-agent"]
queue_shards = 2
[[partitions]]
name = "b"
agents = ["b-agent"]
queue_shards = 2
"""
    config = _config([redis_standalone.url]) + parts
    only_a = agentd_instance(config, "--partitions", "a")
    sdk = client(only_a)
    a_job = await sdk.responses.create(model="a-agent", input="for a", background=True)
    b_job = await sdk.responses.create(model="b-agent", input="for b", background=True)
    assert (await wait_status(sdk, a_job.id)).output_text == "for a"
    # A negative check, so a pause and not a wait: no event shows that only_a leaves b's
    # queue alone, only b's job still waiting a while later (a's, queued after it, is done).
    await asyncio.sleep(pause_s)
    assert (await sdk.responses.retrieve(b_job.id)).status == "queued"
    assert _queued(redis_standalone.url, "b", 2) == 1
    assert metric(only_a, 'agentd_jobs_queued{partition="b"}') == 1.0
    assert metric(only_a, 'agentd_jobs_queued{partition="a"}') == 0.0
    # It was queued before the pause began.
    assert metric(only_a, 'agentd_jobs_oldest_queued_seconds{partition="b"}') >= pause_s
    only_b = agentd_instance(config, "--partitions", "b")
    assert (await wait_status(sdk, b_job.id)).output_text == "for b"
    assert metric(only_a, 'agentd_jobs_queued{partition="b"}') == 0.0
    finished = 'agentd_jobs_finished_total{partition="b",status="completed"}'
    assert metric(only_b, finished) == 1.0
    assert metric(only_a, finished) is None  # only the instance that ran it counts it


async def test_dead_letter_after_max_attempts(
    agentd_instance: Start, redis_standalone: RedisServer
) -> None:
    node = await StubNode(Fail(503)).start()
    try:
        config = _config([redis_standalone.url], extra="max_attempts = 2") + stub_config(node)
        proc = agentd_instance(config)
        sdk = client(proc)
        job = await sdk.responses.create(model="helper", input="doomed", background=True)
        done = await wait_status(sdk, job.id)
        assert done.status == "failed" and done.error is not None
        with redis.Redis.from_url(redis_standalone.url) as r:
            [(_, fields)] = r.xrange(dead_key("default"))
        assert fields[b"id"] == job.id.encode()
    finally:
        await node.close()


async def test_jobs_on_a_redis_cluster(
    agentd_instance: Start, redis_cluster: RedisClusterProcs
) -> None:
    proc = agentd_instance(_config(redis_cluster.urls, workers=2, cluster=True))
    sdk = client(proc)
    jobs = [
        await sdk.responses.create(model="echo", input=f"cluster {i}", background=True)
        for i in range(8)
    ]
    for i, job in enumerate(jobs):
        done = await wait_status(sdk, job.id)
        assert done.output_text == f"cluster {i}"
    events = [e async for e in await sdk.responses.retrieve(jobs[0].id, stream=True)]
    assert events[-1].type == "response.completed"
    with pytest.raises(openai.NotFoundError):
        await sdk.responses.retrieve("resp_" + "0" * 48)
