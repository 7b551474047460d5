"""Start-up says what the instance serves: agents, backends, store, partitions, address."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from .procs import AgentdProcess, RedisServer

pytestmark = pytest.mark.slow

Start = Callable[..., AgentdProcess]

CONFIG = """
[server]
workers = 2
partitions = ["bulk"]

[redis]
urls = ["{redis}"]

[[backends]]
name = "echo"
type = "echo"

[[backends]]
name = "gpu"
type = "openai"
urls = ["http://127.0.0.1:9/v1", "http://127.0.0.1:10/v1"]

[[agents]]
name = "helpdesk"
backend = "gpu"

[[agents]]
name = "batch"
backend = "echo"

[[partitions]]
name = "bulk"
agents = ["batch"]
"""


def _line(log: str, prefix: str) -> str:
    found = [line.split("agentd.proc.supervisor: ", 1)[1] for line in log.splitlines()
             if f"agentd.proc.supervisor: {prefix}" in line]  # fmt: skip
    assert len(found) == 1, (prefix, log)
    return found[0]


def test_start_up_says_what_the_instance_serves(
    agentd_instance: Start, redis_standalone: RedisServer
) -> None:
    proc = agentd_instance(CONFIG.replace("{redis}", redis_standalone.url))
    log = proc.log()
    assert _line(log, "agents: ") == "agents: helpdesk (backend gpu), batch (backend echo)"
    assert _line(log, "backends: ") == "backends: echo (echo, 1 node), gpu (openai, 2 nodes)"
    assert _line(log, "store: ") == f"store: one Redis: {redis_standalone.url}"
    assert _line(log, "partitions: ") == (
        "partitions: bulk (batch); default (helpdesk); "
        "this instance runs the background jobs of: bulk"
    )
    base = f"127.0.0.1:{proc.port}"
    assert _line(log, "api: ") == (
        f"api: http://{base}/v1 (OpenAI base_url), WebSocket ws://{base}/v1/ws, "
        f"health http://{base}/readyz"
    )


def test_standalone_start_up_names_the_memory_store(
    agentd_instance: Start,
) -> None:
    proc = agentd_instance()
    log = proc.log()
    assert _line(log, "store: ").startswith("store: in this worker's memory")
    assert _line(log, "agents: ") == "agents: echo (backend echo)"
    assert _line(log, "partitions: ") == (
        "partitions: default (echo); this instance runs the background jobs of: all"
    )


def test_a_redis_password_is_not_logged() -> None:
    from agentd.config import from_dict
    from agentd.proc.banner import describe

    config = from_dict({"redis": {"urls": ["redis://:s3cret@10.0.0.1:6379/0", "redis://h:1"]}})
    lines = describe(config, "0.0.0.0", 8080)
    assert not any("s3cret" in line for line in lines)
    assert (
        "store: sharded by hash slot over 2 Redis servers: redis://:***@10.0.0.1:6379/0, redis://h:1"
        in lines
    )
