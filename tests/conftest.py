from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, settings

from agentd.backends import Backends, Pool
from agentd.config import BackendConfig, Config, from_dict
from agentd.metrics import BackendMetrics
from agentd.server.app import create_app
from agentd.store import Store, open_store

from .openai_stub import MakePool, StartStub, StubNode
from .procs import AgentdProcess, RedisClusterProcs, RedisServer

PROBE = 'plugins = ["tests.plugins.probe:setup"]'
# The suite's processes share two cores with the servers they start: how fast hypothesis
# draws or runs an example says nothing about what is tested, so its timing checks are
# off (the properties and the number of examples are unchanged).
settings.register_profile("suite", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("suite")

# `make test` runs this many pytest-xdist workers for the whole suite (README.md, Tests).
SUITE_WORKERS = 4


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: SUITE_WORKERS for the suite (or a directory), as many as the files
    named when fewer (each worker takes whole files), none for one file, whose run would
    only pay the other workers' start-up."""
    named = {arg.split("::")[0] for arg in config.args}
    if any(not arg.endswith(".py") for arg in named):
        return SUITE_WORKERS
    return 0 if len(named) <= 1 else min(SUITE_WORKERS, len(named))


# The suite's longest files, longest first (tests/longest_files.txt; README.md, Tests).
# pytest-xdist hands whole files to its workers in collection order, so a long file
# collected late (alphabetically) keeps one worker busy after the others ran out of
# files; collected first, the short files fill in around them. Files not listed keep
# their order, after these.
LONGEST_FIRST = tuple(
    line
    for line in (Path(__file__).parent / "longest_files.txt").read_text().splitlines()
    if line and not line.startswith("#")
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The files of LONGEST_FIRST first, in its order (a stable sort: each file's own
    tests, and the other files, keep their order)."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(autouse=True)
def _own_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test runs in its own directory: relative paths of the defaults (the L3 cache
    file) never carry state from one test, or one run, to the next."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def agentd_instance(tmp_path: Path) -> Iterator[Callable[..., AgentdProcess]]:
    """Start ``agentd serve`` subprocesses; each is stopped at the end of the test.

    ``start(config_text, *args, env={}, ready=True)`` writes ``config_text`` to the
    instance's config file and waits until ``/readyz`` answers 200 (unless told not to).
    """
    started: list[AgentdProcess] = []

    def start(
        config: str = "", *args: str, env: dict[str, str] | None = None, ready: bool = True
    ) -> AgentdProcess:
        workdir = tmp_path / f"agentd{len(started)}"
        workdir.mkdir()
        proc = AgentdProcess(workdir, config, list(args), env or {})
        started.append(proc)
        if ready:
            proc.wait_ready()
        return proc

    yield start
    for proc in started:
        proc.begin_stop()  # all drain at once
    for proc in started:
        proc.stop()


@pytest.fixture
def redis_cluster_node(tmp_path: Path) -> Iterator[RedisServer]:
    """One redis-server in cluster mode (no slots assigned: enough for CLUSTER KEYSLOT)."""
    server = RedisServer(tmp_path, cluster=True)
    yield server
    server.close()


# -- Redis topologies: started once per test session, emptied before each test --------


@pytest.fixture(scope="session")
def _redis_standalone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis-standalone"))
    yield server
    server.close()


@pytest.fixture(scope="session")
def _redis_shards(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RedisServer]]:
    base = tmp_path_factory.mktemp("redis-shards")
    servers = [RedisServer(base) for _ in range(3)]
    yield servers
    for server in servers:
        server.close()


@pytest.fixture(scope="session")
def _redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterProcs]:
    cluster = RedisClusterProcs(tmp_path_factory.mktemp("redis-cluster"))
    yield cluster
    cluster.close()


def _flush(ports: list[int]) -> None:
    for port in ports:
        with redis.Redis(port=port) as client:
            client.flushall()


@pytest.fixture
def redis_standalone(_redis_standalone: RedisServer) -> RedisServer:
    """One redis-server, empty."""
    _flush([_redis_standalone.port])
    return _redis_standalone


@pytest.fixture
def redis_shards(_redis_shards: list[RedisServer]) -> list[RedisServer]:
    """Three independent redis-servers (client-side sharding), empty."""
    _flush([s.port for s in _redis_shards])
    return _redis_shards


@pytest.fixture
def redis_cluster(_redis_cluster: RedisClusterProcs) -> RedisClusterProcs:
    """A 3-master Redis Cluster, empty."""
    _flush([n.port for n in _redis_cluster.nodes])
    return _redis_cluster


TOPOLOGIES = ["memory", "single", "sharded", "cluster"]
# The topology tests are about the store's semantics, not its timeouts: some open tens of
# connections at once, which a loaded machine can make slower than the default 1 s.
GENEROUS_CONNECT = {"connect_timeout": 30.0}


@pytest.fixture(params=TOPOLOGIES)
def store_config(request: pytest.FixtureRequest) -> Config:
    """A config for each store topology (the Redis servers are started on demand)."""
    topology = request.param
    if topology == "memory":
        return from_dict({})
    if topology == "single":
        urls = [request.getfixturevalue("redis_standalone").url]
        return from_dict({"redis": {"urls": urls, **GENEROUS_CONNECT}})
    if topology == "sharded":
        urls = [s.url for s in request.getfixturevalue("redis_shards")]
        return from_dict({"redis": {"urls": urls, **GENEROUS_CONNECT}})
    urls = request.getfixturevalue("redis_cluster").urls
    return from_dict({"redis": {"urls": urls, "cluster": True, **GENEROUS_CONNECT}})


@pytest.fixture
async def store(store_config: Config) -> AsyncIterator[Store]:
    """A started store of each topology: memory, single, sharded (3) and cluster (3)."""
    instance = open_store(store_config)
    await instance.start()
    yield instance
    await instance.close()


@pytest.fixture
async def stub() -> AsyncIterator[StartStub]:
    """Start OpenAI-compatible stub upstreams on free loopback ports; all are closed after
    the test."""
    started: list[StubNode] = []

    async def start(mode: Any = None, **options: Any) -> StubNode:
        node = await StubNode(mode, **options).start()
        started.append(node)
        return node

    yield start
    for node in started:
        await node.close()


@pytest.fixture
async def make_pool() -> AsyncIterator[MakePool]:
    """An ``openai`` pool over the given stub nodes (or URLs), started; closed after."""
    opened: list[Backends] = []

    async def make(
        *nodes: StubNode | str,
        metrics: BackendMetrics | None = None,
        environ: dict[str, str] | None = None,
        **options: Any,
    ) -> Pool:
        urls = tuple(n if isinstance(n, str) else n.url for n in nodes)
        config = BackendConfig(name="up", type="openai", urls=urls, **options)
        backends = Backends([config], metrics, environ=environ or {})
        await backends.start()
        opened.append(backends)
        return backends.get("up")

    yield make
    for backends in opened:
        await backends.close()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Any]]:
    """Start an app (memory store) with config overrides; returns its base URL."""
    servers: list[TestServer] = []

    async def start(**raw: Any) -> str:
        server = TestServer(create_app(from_dict(raw)), host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return str(server.make_url("")).rstrip("/")

    yield start
    for server in servers:
        await server.close()
