"""The MCP client layer (agentd/tools): a worker's pool of tool server sessions, against
real MCP servers written with the ``mcp`` SDK (tests/mcp_servers/toolbox.py) over
streamable HTTP and stdio, well-behaved and not."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from agentd.config import ConfigError, McpServerConfig, from_dict
from agentd.metrics import ToolMetrics
from agentd.server.app import create_app
from agentd.server.keys import TOOLS
from agentd.tools import ToolPool, Tools, ToolServerError, function_name
from agentd.tools.result import truncate

from .mcp_servers.procs import TOOLBOX, HttpToolbox, alive, stdio_server
from .procs import ROOT, free_port
from .waiting import wait_until, wait_until_sync

TRANSPORTS = ("http", "stdio")


@pytest.fixture(scope="module")
def shared_http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpToolbox]:
    """One HTTP toolbox for the tests that leave it as they found it."""
    server = HttpToolbox(tmp_path_factory.mktemp("toolbox-http"), token="s3cret")
    yield server
    server.kill()


@pytest.fixture
def fresh_http(tmp_path: Path) -> Iterator[HttpToolbox]:
    """An HTTP toolbox of the test's own (for tests that change, crash or restart it)."""
    state = tmp_path / "http"
    state.mkdir()
    server = HttpToolbox(state)
    yield server
    server.kill()


@pytest.fixture(params=TRANSPORTS)
def server(
    request: pytest.FixtureRequest, shared_http: HttpToolbox, tmp_path: Path
) -> tuple[McpServerConfig, Path]:
    """A toolbox over each transport: its config, and the directory of its traces."""
    if request.param == "http":
        for trace in ("cancelled", "hang-started"):
            (shared_http.state / trace).unlink(missing_ok=True)
        return shared_http.config(), shared_http.state
    state = tmp_path / "stdio"
    state.mkdir()
    return stdio_server(state), state


@pytest.fixture
async def pools() -> AsyncIterator[list[ToolPool]]:
    """Pools made by a test; all closed at its end."""
    made: list[ToolPool] = []
    yield made
    for pool in made:
        await pool.close()


def open_pool(made: list[ToolPool], *servers: McpServerConfig) -> tuple[ToolPool, ToolMetrics]:
    metrics = ToolMetrics()
    pool = ToolPool(servers, metrics)
    made.append(pool)
    return pool, metrics


def count(metrics: ToolMetrics, server: str, tool: str, outcome: str) -> float:
    value = metrics.calls.labels(server, tool, outcome)._value.get()
    return float(value)


# -- calls over both transports ------------------------------------------------------


async def test_lists_and_calls_tools(server: tuple[McpServerConfig, Path], pools: list) -> None:
    config, _ = server
    pool, metrics = open_pool(pools, config)
    names = {t.name for t in await pool.list_tools(config.label)}
    assert {"echo", "add", "fail", "hang", "crash", "huge"} <= names

    echoed = await pool.call(config.label, "echo", {"text": "héllo"})
    assert (echoed.text, echoed.is_error, echoed.outcome) == ("héllo", False, "ok")
    added = await pool.call(config.label, "add", {"a": 2, "b": 3})
    assert added.structured == {"sum": 5} and not added.is_error
    failed = await pool.call(config.label, "fail", {"why": "testing"})
    assert failed.is_error and "failed on purpose: testing" in failed.text
    assert failed.outcome == "error"

    assert count(metrics, config.label, "echo", "ok") == 1
    assert count(metrics, config.label, "fail", "error") == 1
    assert b'agentd_tool_duration_seconds_count{server="' + config.label.encode() in (
        metrics.render()
    )


async def test_the_tool_list_is_cached_until_the_server_says_it_changed(
    fresh_http: HttpToolbox, tmp_path: Path, pools: list
) -> None:
    for config in (fresh_http.config(), stdio_server(tmp_path)):
        pool, _ = open_pool(pools, config)
        first = await pool.list_tools(config.label)
        assert "extra" not in {t.name for t in first}
        assert await pool.list_tools(config.label) is first  # from the cache

        assert (await pool.call(config.label, "grow")).text == "grown"

        async def listed(pool: ToolPool = pool, label: str = config.label) -> bool:
            return "extra" in {t.name for t in await pool.list_tools(label)}

        await wait_until(listed, what="the new tool to be listed")
        assert (await pool.call(config.label, "extra")).text == "extra"


async def test_concurrent_calls_share_one_session(
    server: tuple[McpServerConfig, Path], pools: list
) -> None:
    config, _ = server
    pool, _ = open_pool(pools, config)
    # Each call returns only once all five are in progress on the server at once.
    results = await asyncio.gather(
        *(pool.call(config.label, "barrier", {"parties": 5}, timeout_s=20) for _ in range(5))
    )
    assert [r.text for r in results] == ["all arrived"] * 5


async def test_huge_output_is_truncated_at_the_bound(
    server: tuple[McpServerConfig, Path], pools: list
) -> None:
    config, _ = server
    pool, _ = open_pool(pools, config)
    result = await pool.call(config.label, "huge", {"size": 200_000}, max_output_bytes=1000)
    assert result.truncated and not result.is_error
    assert len(result.text.encode()) <= 1000
    assert result.text.startswith("xxxx") and "[truncated: the tool returned 200000" in result.text
    assert result.structured is None  # {"result": "xxx…"} is over the bound too

    small = await pool.call(config.label, "huge", {"size": 10}, max_output_bytes=1000)
    assert (small.text, small.truncated) == ("x" * 10, False)


# -- tools and servers that misbehave --------------------------------------------------


async def test_a_hanging_tool_times_out_and_its_call_is_cancelled(
    server: tuple[McpServerConfig, Path], pools: list
) -> None:
    config, state = server
    pool, metrics = open_pool(pools, config)
    await pool.list_tools(config.label)  # connected: the deadline is the tool's alone
    result = await pool.call(config.label, "hang", timeout_s=0.5)
    assert result.is_error and result.outcome == "timeout"
    assert "did not answer within 0.5 s" in result.text
    assert pool.in_flight() == 0
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("mcp-call:")]
    # The server was told (notifications/cancelled) and stopped the tool.
    await wait_until(lambda: (state / "cancelled").exists(), what="the server to cancel")
    assert count(metrics, config.label, "hang", "timeout") == 1
    assert (await pool.call(config.label, "echo", {"text": "after"})).text == "after"


async def test_cancelling_the_caller_cancels_the_call(
    server: tuple[McpServerConfig, Path], pools: list
) -> None:
    config, state = server
    pool, metrics = open_pool(pools, config)
    call = asyncio.create_task(pool.call(config.label, "hang", timeout_s=30))
    await wait_until(lambda: (state / "hang-started").exists(), what="the call to start")
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert pool.in_flight() == 0
    await wait_until(lambda: (state / "cancelled").exists(), what="the server to cancel")
    assert count(metrics, config.label, "hang", "cancelled") == 1


async def test_malformed_json_rpc_is_an_error_result(
    server: tuple[McpServerConfig, Path], pools: list
) -> None:
    config, _ = server
    pool, metrics = open_pool(pools, config)
    # Long deadline: the error comes from the bad message, not from waiting it out.
    result = await pool.call(config.label, "malformed", timeout_s=60)
    assert result.is_error and result.outcome == "failed"
    assert "not valid JSON-RPC" in result.text
    assert (await pool.call(config.label, "echo", {"text": "still here"})).text == "still here"
    assert count(metrics, config.label, "malformed", "failed") == 1


async def test_a_stdio_server_that_crashes_mid_call_is_restarted_on_the_next(
    tmp_path: Path, pools: list
) -> None:
    pool, _ = open_pool(pools, stdio_server(tmp_path))
    assert (await pool.call("local", "echo", {"text": "a"})).text == "a"
    first = int((tmp_path / "pid").read_text())
    result = await pool.call("local", "crash", timeout_s=60)
    assert result.is_error and result.outcome == "failed"
    assert "closed the connection" in result.text or "lost" in result.text
    wait_until_sync(lambda: not alive(first), what="the crashed server to be gone")
    assert (await pool.call("local", "echo", {"text": "b"})).text == "b"
    assert int((tmp_path / "pid").read_text()) != first


async def test_an_http_server_that_crashes_mid_call_is_an_error_result(
    fresh_http: HttpToolbox, pools: list
) -> None:
    pool, _ = open_pool(pools, fresh_http.config())
    result = await pool.call("web", "crash", timeout_s=60)
    assert result.is_error and result.outcome in ("failed", "unavailable"), result


async def test_the_next_call_succeeds_once_a_restarted_http_server_is_back(
    fresh_http: HttpToolbox, pools: list
) -> None:
    pool, _ = open_pool(pools, fresh_http.config())
    assert (await pool.call("web", "echo", {"text": "1"})).text == "1"

    # Restarted between two calls: the old session is unknown to the new process.
    fresh_http.kill()
    fresh_http.start()
    assert (await pool.call("web", "echo", {"text": "2"})).text == "2"

    # Down during a call: an error result; back: the next call succeeds.
    fresh_http.kill()
    down = await pool.call("web", "echo", {"text": "3"}, timeout_s=5)
    assert down.is_error and down.outcome in ("failed", "unavailable"), down
    fresh_http.start()
    assert (await pool.call("web", "echo", {"text": "4"}, timeout_s=20)).text == "4"


async def test_a_server_that_is_down_is_unavailable_with_backoff(pools: list) -> None:
    url = f"http://127.0.0.1:{free_port()}/mcp"  # nothing listens there
    pool, metrics = open_pool(pools, McpServerConfig(label="web", url=url, timeout_s=1.0))
    first = await pool.call("web", "echo", {"text": "x"})
    assert first.is_error and first.outcome == "unavailable"
    assert "cannot connect to tool server 'web'" in first.text
    with pytest.raises(ToolServerError):
        await pool.list_tools("web")
    assert count(metrics, "web", "echo", "unavailable") == 1


# -- secrets, lifecycle ----------------------------------------------------------------


async def test_header_values_are_read_from_the_environment(
    shared_http: HttpToolbox, pools: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = McpServerConfig(
        label="web", url=shared_http.url, headers={"Authorization": "env:TOOLBOX_AUTH"}
    )
    pool, _ = open_pool(pools, config)
    monkeypatch.delenv("TOOLBOX_AUTH", raising=False)
    missing = await pool.call("web", "echo", {"text": "x"})
    assert missing.is_error and "TOOLBOX_AUTH, which is not set" in missing.text
    monkeypatch.setenv("TOOLBOX_AUTH", "Bearer wrong")
    refused = await pool.call("web", "echo", {"text": "x"}, timeout_s=10)
    assert refused.is_error
    monkeypatch.setenv("TOOLBOX_AUTH", "Bearer s3cret")
    assert (await pool.call("web", "echo", {"text": "ok"}, timeout_s=10)).text == "ok"


async def test_a_closed_pool_leaves_no_process_or_task(tmp_path: Path) -> None:
    before = asyncio.all_tasks()
    pool = ToolPool((stdio_server(tmp_path),), None)
    assert (await pool.call("local", "echo", {"text": "x"})).text == "x"
    pid = int((tmp_path / "pid").read_text())
    assert alive(pid)
    hanging = asyncio.create_task(pool.call("local", "hang", timeout_s=30))
    await wait_until(lambda: (tmp_path / "hang-started").exists(), what="the call to start")
    await pool.close()
    result = await hanging
    assert result.is_error and "shutting down" in result.text
    assert not alive(pid)
    assert asyncio.all_tasks() - before == set()
    after = await pool.call("local", "echo", {"text": "x"})
    assert after.is_error and after.outcome == "unavailable"


def test_a_killed_worker_takes_its_stdio_servers_with_it(tmp_path: Path) -> None:
    """SIGKILL runs no cleanup: the kernel stops the server (PR_SET_PDEATHSIG). The
    stand-in worker runs uvloop, as workers do."""
    script = textwrap.dedent(
        f"""
        import asyncio, sys, uvloop
        sys.path.insert(0, {str(ROOT)!r})
        from agentd.tools import ToolPool
        from tests.mcp_servers.procs import stdio_server
        from pathlib import Path

        async def main():
            pool = ToolPool((stdio_server(Path({str(tmp_path)!r})),), None)
            print((await pool.call("local", "echo", {{"text": "ready"}})).text, flush=True)
            await asyncio.sleep(3600)

        uvloop.run(main())
        """
    )
    worker = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    server_pid = 0
    try:
        assert worker.stdout is not None and worker.stdout.readline().strip() == b"ready"
        server_pid = int((tmp_path / "pid").read_text())
        assert alive(server_pid)
        # Stopped, the server cannot exit on its own when its stdin closes: only the
        # kernel's signal can end it.
        os.kill(server_pid, signal.SIGSTOP)
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        wait_until_sync(lambda: not alive(server_pid), what="the orphan to be killed")
    finally:
        if server_pid and alive(server_pid):
            os.kill(server_pid, signal.SIGKILL)
        worker.kill()
        worker.wait()


async def test_the_worker_app_starts_and_closes_the_pool(tmp_path: Path) -> None:
    config = from_dict(
        {
            "mcp_servers": [
                {
                    "label": "local",
                    "command": sys.executable,
                    "args": [TOOLBOX, "stdio"],
                    "env": {"TOOLBOX_STATE": str(tmp_path)},
                }
            ],
            "agents": [{"name": "echo", "tools": ["local"]}],
        }
    )
    runner = web.AppRunner(create_app(config))
    await runner.setup()
    try:
        tools = runner.app[TOOLS]
        toolset = await tools.for_agent("echo")
        assert (await tools.call("echo", toolset, "echo", '{"text": "hi"}')).text == "hi"
        pid = int((tmp_path / "pid").read_text())
        assert alive(pid)
    finally:
        await runner.cleanup()
    assert not alive(pid)


# -- the agents' view -------------------------------------------------------------------


async def test_an_agent_sees_its_tools_as_functions_namespaced_on_a_clash(
    shared_http: HttpToolbox, tmp_path: Path, pools: list
) -> None:
    raw = {
        "mcp_servers": [
            {"label": "web", "url": shared_http.url, "headers": {"Authorization": "Bearer s3cret"}},
            {
                "label": "local",
                "command": sys.executable,
                "args": [TOOLBOX, "stdio"],
                "env": {"TOOLBOX_STATE": str(tmp_path)},
            },
        ],
        "agents": [
            {"name": "both", "tools": ["web", "local:echo"]},
            {
                "name": "narrow",
                "tools": ["web:add", "web:echo"],
                "tool_limits": {"max_tool_output_bytes": 100},
            },
            {"name": "none"},
        ],
    }
    config = from_dict(raw)
    pool, _ = open_pool(pools, *config.mcp_servers)
    tools = Tools(config, pool)

    both = await tools.for_agent("both")
    names = {f.name for f in both.functions}
    assert {"web__echo", "local__echo", "add", "huge"} <= names
    assert "echo" not in names and "local__add" not in names
    add = both.find("add")
    assert add is not None and add.chat()["function"]["parameters"]["required"] == ["a", "b"]
    assert add.responses()["name"] == "add"
    result = await tools.call("both", both, "local__echo", '{"text": "from stdio"}')
    assert result.text == "from stdio"

    narrow = await tools.for_agent("narrow")
    assert sorted(f.name for f in narrow.functions) == ["add", "echo"]
    assert tools.limits("narrow").max_tool_output_bytes == 100
    assert tools.limits("narrow").tool_timeout_s == 30.0  # from [tools]
    assert (await tools.for_agent("none")).functions == ()

    bad_json = await tools.call("narrow", narrow, "echo", "{not json")
    assert bad_json.is_error and "not valid JSON" in bad_json.text
    not_object = await tools.call("narrow", narrow, "echo", "[1]")
    assert not_object.is_error and "JSON object" in not_object.text
    unknown = await tools.call("narrow", narrow, "huge", {"size": 1})
    assert unknown.is_error and "no tool named 'huge'" in unknown.text


def test_function_names_are_valid_for_openai() -> None:
    assert function_name("echo") == "echo"
    assert function_name("web", "echo") == "web__echo"
    assert function_name("files.read/all") == "files_read_all"
    long = function_name("x" * 100)
    assert len(long) == 64 and long != function_name("x" * 101)


async def test_a_server_that_cannot_list_is_named_not_fatal(pools: list) -> None:
    config = from_dict(
        {
            "mcp_servers": [{"label": "gone", "url": "http://127.0.0.1:1/mcp", "timeout_s": 1.0}],
            "agents": [{"name": "a", "tools": ["gone"]}],
        }
    )
    pool, _ = open_pool(pools, *config.mcp_servers)
    toolset = await Tools(config, pool).for_agent("a")
    assert toolset.functions == () and "gone" in toolset.unavailable


# -- configuration ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"agents": [{"name": "a", "tools": ["nope"]}]},
            "agents[0].tools[0]: no MCP server labelled 'nope' (declared: none)",
        ),
        (
            {
                "mcp_servers": [{"label": "s", "url": "http://h/mcp"}],
                "agents": [{"name": "a", "tools": ["s:echo", "t:echo"]}],
            },
            "agents[0].tools[1]: no MCP server labelled 't' (declared: s)",
        ),
        (
            {
                "mcp_servers": [{"label": "s", "url": "http://h/mcp"}],
                "agents": [{"name": "a", "tools": ["s:"]}],
            },
            "agents[0].tools[0]: 's:' names no tool after ':'",
        ),
        (
            {"mcp_servers": [{"label": "s"}]},
            "mcp_servers[0]: set either url (streamable HTTP) or command (stdio), one of them",
        ),
        (
            {"mcp_servers": [{"label": "s", "url": "http://h/", "command": "x"}]},
            "mcp_servers[0]: set either url (streamable HTTP) or command (stdio), not both",
        ),
        (
            {"mcp_servers": [{"label": "s", "url": "ftp://h/"}]},
            "mcp_servers[0].url: must start with http:// or https://, got 'ftp://h/'",
        ),
        (
            {"mcp_servers": [{"label": "a b", "command": "x"}]},
            "mcp_servers[0].label: must be 1-64 letters, digits, '_' or '-', got 'a b'",
        ),
        (
            {"mcp_servers": [{"label": "s", "command": "x"}, {"label": "s", "command": "y"}]},
            "mcp_servers[1].label: 's' is defined twice",
        ),
        (
            {"mcp_servers": [{"label": "s", "command": "x", "headers": {"A": "b"}}]},
            "mcp_servers[0].headers: only for a url (streamable HTTP) server",
        ),
        (
            {"mcp_servers": [{"label": "s", "url": "http://h/", "headers": {"A": 1}}]},
            "mcp_servers[0].headers.A: expected a string, got 1",
        ),
        (
            {"mcp_servers": [{"label": "s", "url": "http://h/", "headers": {"A": "env:"}}]},
            "mcp_servers[0].headers.A: 'env:' needs a variable name",
        ),
        (
            {"tools": {"allowed_server_urls": ["tools.example"]}},
            "tools.allowed_server_urls[0]: must start with http:// or https://",
        ),
        ({"tools": {"max_steps": 0}}, "tools.max_steps: must be >= 1, got 0"),
    ],
)
def test_config_errors(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_dict(raw)
    assert any(e.startswith(message) for e in info.value.errors), info.value.errors


def test_allowed_server_urls_match_at_a_boundary() -> None:
    tools = from_dict(
        {"tools": {"allowed_server_urls": ["https://tools.example", "http://10.0.0.5/mcp/"]}}
    ).tools
    assert tools.allows_url("https://tools.example")
    assert tools.allows_url("https://tools.example/search")
    assert not tools.allows_url("https://tools.example.evil.org/")
    assert tools.allows_url("http://10.0.0.5/mcp/a")
    assert not tools.allows_url("http://10.0.0.5/mcpx")
    assert not from_dict({}).tools.allows_url("https://tools.example")


async def test_a_stdio_command_that_cannot_start_is_unavailable(pools: list) -> None:
    config = McpServerConfig(label="nothing", command="/nonexistent/tool-server", timeout_s=10)
    pool, _ = open_pool(pools, config)
    result = await pool.call("nothing", "echo", {"text": "x"})
    assert result.is_error and result.outcome == "unavailable"
    assert "cannot connect to tool server 'nothing'" in result.text


async def test_stdio_env_values_are_read_from_the_environment(
    tmp_path: Path, pools: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOOLBOX_DIR", str(tmp_path))
    config = McpServerConfig(
        label="local",
        command=sys.executable,
        args=(TOOLBOX, "stdio"),
        env={"TOOLBOX_STATE": "env:TOOLBOX_DIR"},
    )
    pool, _ = open_pool(pools, config)
    assert (await pool.call("local", "echo", {"text": "x"})).text == "x"
    assert (tmp_path / "pid").exists()  # the server found its directory in TOOLBOX_STATE


async def test_a_server_named_by_url_must_be_allowed_and_reads_no_secret(
    shared_http: HttpToolbox, pools: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = f"http://127.0.0.1:{shared_http.port}"
    config = from_dict({"tools": {"allowed_server_urls": [f"{base}/mcp"]}})
    pool, metrics = open_pool(pools)
    tools = Tools(config, pool)
    assert tools.server_url("echo", f"http://127.0.0.1:{shared_http.port}0/mcp") is None
    assert tools.server_url("echo", "http://169.254.169.254/latest") is None

    label = tools.server_url("echo", shared_http.url, {"Authorization": "Bearer s3cret"})
    assert label is not None
    assert "echo" in {t.name for t in await pool.list_tools(label)}
    assert (await pool.call(label, "echo", {"text": "by url"})).text == "by url"
    same = tools.server_url("echo", shared_http.url, {"Authorization": "Bearer s3cret"})
    assert same == label  # one connection for the same URL and headers
    assert count(metrics, "server_url", "echo", "ok") == 1

    # A request's "env:NAME" is sent as written: agentd's environment stays its own.
    monkeypatch.setenv("TOOLBOX_AUTH", "Bearer s3cret")
    sneaky = tools.server_url("echo", shared_http.url, {"Authorization": "env:TOOLBOX_AUTH"})
    assert sneaky is not None and sneaky != label
    refused = await pool.call(sneaky, "echo", {"text": "x"}, timeout_s=5)
    assert refused.is_error and refused.outcome == "unavailable"


def test_truncation_stays_within_the_bound_and_whole_characters() -> None:
    text = "é" * 1000  # two bytes each
    for bound in (5, 64, 101, 1999, 2000):
        cut, truncated = truncate(text, bound)
        assert len(cut.encode()) <= bound
        assert truncated == (bound < 2000)
        assert cut.strip("é").startswith("\n[truncated") or cut.strip("é") == ""
    assert truncate("short", 100) == ("short", False)


async def test_a_servers_own_timeout_bounds_a_longer_one(
    shared_http: HttpToolbox, pools: list
) -> None:
    pool, _ = open_pool(
        pools,
        shared_http.config("quick", timeout_s=0.3),
        shared_http.config("small", max_output_bytes=500),
    )
    await pool.list_tools("quick", timeout_s=20)  # connected first
    slow = await pool.call("quick", "hang", timeout_s=30)
    assert slow.outcome == "timeout" and "within 0.3 s" in slow.text
    big = await pool.call("small", "huge", {"size": 5000}, max_output_bytes=10**6)
    assert big.truncated and len(big.text.encode()) <= 500
