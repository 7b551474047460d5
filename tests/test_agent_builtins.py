"""agentd's own tools (agentd/agent/builtins.py): an agent calls another agent, and
agents share versioned documents, on the memory store and on a real redis-server.

The agents run on the echo model, whose calls are scripted: a user message (here, also
a ``call_agent`` input) made of ``call NAME ARGS`` lines is a reply of those calls, and
the reply after tool results is ``NAME: RESULT`` per call."""

from __future__ import annotations

import asyncio
import re
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer

from agentd.agent import Agents, TurnRequest, TurnResult
from agentd.agent.builtins import builtin_specs
from agentd.auth import ALL_SCOPES, Identity
from agentd.config import BUILTIN_TOOLS, ConfigError, from_dict
from agentd.errors import UpstreamTimeout
from agentd.server.app import create_app
from agentd.server.keys import AGENTS
from agentd.tools import ToolSpec

from .chat_helpers import post
from .mcp_servers.procs import HttpToolbox
from .procs import RedisServer
from .waiting import wait_until

DOCS = Path(__file__).resolve().parent.parent / "docs" / "tools.md"
STATE = ["agentd:state_get", "agentd:state_put", "agentd:state_patch"]

Start = Callable[..., Awaitable[TestServer]]


@pytest.fixture(params=["memory", "redis"])
async def start(request: pytest.FixtureRequest) -> AsyncIterator[Start]:
    """Start an app with config overrides, on the memory store or on a real Redis."""
    redis: RedisServer | None = None
    if request.param == "redis":
        redis = request.getfixturevalue("redis_standalone")
    servers: list[TestServer] = []

    async def run(**raw: Any) -> TestServer:
        raw.setdefault("cache", {"disk_path": ""})
        if redis is not None:
            raw["redis"] = {"urls": [redis.url]}
        server = TestServer(create_app(from_dict(raw)), host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return server

    yield run
    for server in servers:
        await server.close()


async def agents_of(start: Start, **raw: Any) -> Agents:
    return (await start(**raw)).app[AGENTS]


def who(tenant: str, agents: list[str] | None = None, scopes: Any = ALL_SCOPES) -> Identity:
    return Identity(
        tenant=tenant,
        scopes=frozenset(scopes),
        kind="token",
        agents=None if agents is None else frozenset(agents),
    )


async def turn(agents: Agents, agent: str, script: str, identity: Identity) -> TurnResult:
    req = TurnRequest(agent, [{"role": "user", "content": script}])
    req.tenant, req.identity = identity.tenant, identity
    return await agents.run(req, deadline=asyncio.get_running_loop().time() + 30)


def call(name: str, **arguments: Any) -> str:
    """A script line of the echo model: a call of tool ``name``."""
    return f"call {name} {orjson.dumps(arguments).decode()}"


def result_of(text: str, *tools: str) -> Any:
    """The JSON result in an echo reply ``TOOL: TOOL: ... RESULT``, each prefix checked."""
    for tool in tools:
        assert text.startswith(f"{tool}: "), text
        text = text[len(tool) + 2 :]
    return orjson.loads(text)


# -- configuration ----------------------------------------------------------------------


def test_the_builtin_specs_are_the_tools_the_config_knows() -> None:
    specs = builtin_specs(from_dict({"agents": [{"name": "a"}, {"name": "b"}]}))
    assert tuple(s.name for s in specs) == BUILTIN_TOOLS
    assert specs[0].input_schema["properties"]["agent"]["enum"] == ["a", "b"]
    for spec in specs:
        assert spec.input_schema["type"] == "object"
        assert set(spec.input_schema["required"]) <= set(spec.input_schema["properties"])


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"mcp_servers": [{"label": "agentd", "url": "http://h/mcp"}]},
            "mcp_servers[0].label: 'agentd' is reserved for agentd's own tools",
        ),
        (
            {"agents": [{"name": "a", "tools": ["agentd:state_del"]}]},
            "agents[0].tools[0]: agentd has no tool 'state_del' (its tools: call_agent, "
            "state_get, state_put, state_patch)",
        ),
        (
            {"agents": [{"name": "a", "tools": ["agentd:"]}]},
            "agents[0].tools[0]: 'agentd:' names no tool after ':'",
        ),
        ({"tools": {"max_agent_depth": 0}}, "tools.max_agent_depth"),
    ],
)
def test_the_config_refuses_misuse_of_the_agentd_label(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        from_dict(raw)
    assert any(e.startswith(message) for e in caught.value.errors), caught.value.errors


async def test_an_agent_gets_the_builtins_it_names_and_no_others(start: Start) -> None:
    agents = await agents_of(
        start, agents=[{"name": "all", "tools": ["agentd"]}, {"name": "some", "tools": STATE}]
    )
    assert agents.tools is not None
    every = await agents.tools.for_agent("all", builtins=agents.builtin_specs)
    assert [f.name for f in every.functions] == list(BUILTIN_TOOLS)
    assert {f.label for f in every.functions} == {"agentd"}
    some = await agents.tools.for_agent("some", builtins=agents.builtin_specs)
    assert [f.name for f in some.functions] == ["state_get", "state_put", "state_patch"]
    # An agent without the tool cannot call it: its model is told which it has.
    done = await turn(agents, "some", call("call_agent", agent="all", input="hi"), who("t"))
    assert done.text.startswith("call_agent: there is no tool named 'call_agent'")


# -- call_agent -------------------------------------------------------------------------


async def test_an_agent_calls_another_which_runs_with_its_own_tools_in_the_callers_tenant(
    start: Start,
) -> None:
    agents = await agents_of(
        start,
        agents=[
            {"name": "planner", "tools": ["agentd:call_agent"]},
            {"name": "scribe", "tools": STATE},
        ],
    )
    # The scribe's own tool writes the note; the planner has no state tool itself.
    note = call("state_put", namespace="notes", key="n1", value={"by": "scribe"})
    script = call("call_agent", agent="scribe", input=note)
    done = await turn(agents, "planner", script, who("acme"))
    written = result_of(done.text, "call_agent", "state_put")
    assert written == {"value": {"by": "scribe"}, "version": 1}
    assert [(r.server, r.tool, r.result.outcome) for r in done.tool_runs] == [
        ("agentd", "call_agent", "ok")
    ]
    assert done.steps == 2
    assert 'tool;desc="agentd/call_agent"' in done.timings.loop
    acme = await agents.store.for_tenant("acme").state_get("notes", "n1")
    assert acme.value == {"by": "scribe"}


async def test_an_agent_that_calls_itself_stops_at_the_depth_limit(start: Start) -> None:
    agents = await agents_of(
        start,
        agents=[{"name": "looper", "tools": ["agentd:call_agent"]}],
        tools={"max_agent_depth": 2},
    )
    # A script that calls itself five times over: the third call would run at depth 3.
    script = "hello"
    for _ in range(5):
        script = call("call_agent", agent="looper", input=script)
    done = await turn(agents, "looper", script, who("acme"))
    # Depths 0, 1 and 2 each called once; the call from depth 2 was refused.
    error = result_of(done.text, "call_agent", "call_agent", "call_agent")["error"]
    assert error["code"] == "agent_depth_exceeded"
    assert "max_agent_depth = 2" in error["message"]
    assert "this turn is 2 deep" in error["message"]
    assert done.tool_runs[0].result.outcome == "ok"  # the error is the inner turns' answer


async def test_an_identity_narrowed_to_some_agents_cannot_call_others(start: Start) -> None:
    agents = await agents_of(
        start,
        agents=[
            {"name": "planner", "tools": ["agentd:call_agent"]},
            {"name": "scribe", "tools": STATE},
        ],
    )
    note = call("state_put", namespace="notes", key="n1", value=1)
    script = call("call_agent", agent="scribe", input=note)
    done = await turn(agents, "planner", script, who("acme", agents=["planner"]))
    error = result_of(done.text, "call_agent")["error"]
    assert error["code"] == "permission_denied"
    assert "may not use agent 'scribe'" in error["message"]
    assert done.tool_runs[0].result.is_error
    # The scribe never ran: nothing was written.
    assert (await _read(agents, "acme", "notes", "n1")) is None
    # The same call by an identity that may use both agents goes through.
    done = await turn(agents, "planner", script, who("acme", agents=["planner", "scribe"]))
    assert result_of(done.text, "call_agent", "state_put")["version"] == 1


async def test_a_call_of_an_unknown_agent_is_an_error_result_naming_the_agents(
    start: Start,
) -> None:
    agents = await agents_of(start, agents=[{"name": "planner", "tools": ["agentd"]}])
    done = await turn(agents, "planner", call("call_agent", agent="nobody", input="x"), who("t"))
    error = result_of(done.text, "call_agent")["error"]
    assert error["code"] == "model_not_found"
    assert "(agents: planner)" in error["message"]
    done = await turn(agents, "planner", call("call_agent", agent="planner"), who("t"))
    assert result_of(done.text, "call_agent")["error"]["message"] == (
        "'input' must be a string, and is missing"
    )


async def test_a_called_agent_is_a_tool_call_within_its_callers_limits(start: Start) -> None:
    # The sleepy agent's model takes 60 s to answer.
    backends = [{"name": "echo"}, {"name": "slow", "type": "echo", "latency_ms": 60_000}]
    callers = [
        {"name": "hasty", "tools": ["agentd:call_agent"], "tool_limits": {"tool_timeout_s": 0.5}},
        {"name": "brief", "tools": ["agentd:call_agent"], "tool_limits": {"max_turn_s": 0.5}},
    ]
    agents = await agents_of(
        start, backends=backends, agents=[*callers, {"name": "sleepy", "backend": "slow"}]
    )
    script = call("call_agent", agent="sleepy", input="hi")
    # Past the caller's tool_timeout_s, the call is a timeout its model reads.
    done = await asyncio.wait_for(turn(agents, "hasty", script, who("t")), 20)
    assert done.tool_runs[0].result.outcome == "timeout"
    error = result_of(done.text, "call_agent")["error"]
    assert error["code"] == "upstream_timeout"
    assert error["message"].startswith("agent 'sleepy' did not answer within the call's deadline")
    # The called turn has no time of its own: at the caller's deadline both end.
    with pytest.raises(UpstreamTimeout):
        await asyncio.wait_for(turn(agents, "brief", script, who("t")), 20)


async def test_a_called_turn_has_its_callers_request_class_and_admission(start: Start) -> None:
    # One interactive turn at most in the worker: the caller's. Its called turn is part of
    # it, so it is not refused; and it calls the model in the caller's request class.
    server = await start(
        server={"max_inflight_turns": 1},
        backends=[{"name": "echo"}, {"name": "slow", "type": "echo", "latency_ms": 60_000}],
        agents=[
            {"name": "planner", "tools": ["agentd:call_agent"]},
            {"name": "sleepy", "backend": "slow"},
        ],
    )
    agents = server.app[AGENTS]
    url = str(server.make_url("")).rstrip("/")

    async def at_the_slow_model(http: aiohttp.ClientSession, kind: str) -> bool:
        async with http.get(url + "/metrics") as r:
            metrics = await r.text()
        line = f'agentd_upstream_inflight{{backend="slow",kind="{kind}",node="echo"}} 1.0'
        return line in metrics.splitlines()

    script = call("call_agent", agent="sleepy", input="hi")
    async with aiohttp.ClientSession() as http:
        for request_class in ("interactive", "background"):
            req = TurnRequest("planner", [{"role": "user", "content": script}])
            req.tenant, req.identity, req.request_class = "t", who("t"), request_class
            running = asyncio.ensure_future(
                agents.run(req, deadline=asyncio.get_running_loop().time() + 60)
            )
            try:
                await wait_until(lambda k=request_class: at_the_slow_model(http, k), 20,
                                 f"the called turn at the model, {request_class}")  # fmt: skip
                assert not running.done()
            finally:
                running.cancel()
                await asyncio.gather(running, return_exceptions=True)
            assert agents.admission.inflight == 0


async def test_a_background_response_calls_agents_from_the_job_queue(start: Start) -> None:
    server = await start(
        agents=[
            {"name": "planner", "tools": ["agentd:call_agent"]},
            {"name": "scribe", "tools": STATE},
        ]
    )
    url = str(server.make_url("")).rstrip("/")
    note = call("state_put", namespace="notes", key="bg", value="queued")
    body = {"model": "planner", "input": call("call_agent", agent="scribe", input=note),
            "background": True}  # fmt: skip
    async with aiohttp.ClientSession() as http:
        status, _, queued = await post(http, url + "/v1/responses", body)
        assert status == 200, queued

        async def ended() -> Any:
            async with http.get(f"{url}/v1/responses/{queued['id']}") as r:
                found = await r.json()
            return found if found["status"] not in ("queued", "in_progress") else None

        done = await wait_until(ended, 30, "the background response to end")
    assert done["status"] == "completed", done
    # The built-in call shows as an mcp_call item of the server "agentd", then the answer.
    assert [item["type"] for item in done["output"]] == ["mcp_call", "message"]
    assert done["output"][0]["server_label"] == "agentd"
    text = done["output"][1]["content"][0]["text"]
    assert result_of(text, "call_agent", "state_put") == {"value": "queued", "version": 1}
    doc = await server.app[AGENTS].store.state_get("notes", "bg")
    assert doc.value == "queued"


@pytest.fixture(scope="module")
def toolbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpToolbox]:
    server = HttpToolbox(tmp_path_factory.mktemp("builtins-toolbox"))
    yield server
    server.kill()


async def test_builtins_and_a_servers_tools_of_one_name_are_told_apart(
    start: Start, toolbox: HttpToolbox
) -> None:
    agents = await agents_of(
        start,
        mcp_servers=[{"label": "web", "url": toolbox.url}],
        agents=[{"name": "both", "tools": ["web:echo", "web:add", "agentd"]}],
    )
    assert agents.tools is not None
    clash = ToolSpec("echo", "agentd's echo", {"type": "object"})
    tools = await agents.tools.for_agent("both", builtins=[*agents.builtin_specs, clash])
    named = {f.name: (f.label, f.tool) for f in tools.functions}
    assert named == {
        **{tool: ("agentd", tool) for tool in BUILTIN_TOOLS},
        "agentd__echo": ("agentd", "echo"),
        "web__echo": ("web", "echo"),
        "add": ("web", "add"),
    }
    # In a turn (no built-in echo there), the server's tool is called on its server, a
    # built-in by agentd.
    script = call("echo", text="hi") + "\n" + call("state_get", namespace="n", key="k")
    done = await turn(agents, "both", script, who("t"))
    assert done.text == 'echo: hi\nstate_get: {"value":null,"version":0}'
    assert [r.server for r in done.tool_runs] == ["web", "agentd"]


# -- shared state -----------------------------------------------------------------------


async def _read(agents: Agents, tenant: str, namespace: str, key: str) -> Any:
    store = agents.store.for_tenant(tenant)
    try:
        doc = await store.state_get(namespace, key)
    except Exception:
        return None
    return {"value": doc.value, "version": doc.version}


async def test_a_compare_and_set_conflict_is_a_result_with_the_current_document(
    start: Start,
) -> None:
    agents = await agents_of(start, agents=[{"name": "w", "tools": ["agentd"]}])
    store = agents.store.for_tenant("acme")
    await store.state_put("docs", "d", {"a": 1})
    await store.state_put("docs", "d", {"a": 2})  # version 2: the writer read version 1
    stale = call("state_put", namespace="docs", key="d", value={"a": 10}, if_version=1)
    done = await turn(agents, "w", stale, who("acme"))
    error = result_of(done.text, "state_put")["error"]
    assert error["code"] == "version_conflict"
    assert error["current"] == {"value": {"a": 2}, "version": 2}
    assert done.tool_runs[0].result.is_error
    assert await _read(agents, "acme", "docs", "d") == {"value": {"a": 2}, "version": 2}
    # Over the current version the write goes through.
    fresh = call("state_put", namespace="docs", key="d", value={"a": 10}, if_version=2)
    done = await turn(agents, "w", fresh, who("acme"))
    assert result_of(done.text, "state_put") == {"value": {"a": 10}, "version": 3}
    # if_version 0 creates only what does not exist; a conflict on a missing document
    # has no current one.
    exists = call("state_put", namespace="docs", key="d", value=0, if_version=0)
    done = await turn(agents, "w", exists, who("acme"))
    assert result_of(done.text, "state_put")["error"]["current"]["version"] == 3
    missing = call("state_put", namespace="docs", key="new", value=0, if_version=4)
    done = await turn(agents, "w", missing, who("acme"))
    assert result_of(done.text, "state_put")["error"]["current"] is None
    # state_get: the document, or version 0 for none.
    read = (
        call("state_get", namespace="docs", key="d")
        + "\n"
        + call("state_get", namespace="docs", key="none")
    )
    done = await turn(agents, "w", read, who("acme"))
    first, second = done.text.split("\n")
    assert result_of(first, "state_get") == {"value": {"a": 10}, "version": 3}
    assert result_of(second, "state_get") == {"value": None, "version": 0}


async def test_a_merge_patch_changes_only_the_fields_it_names(start: Start) -> None:
    agents = await agents_of(start, agents=[{"name": "w", "tools": ["agentd:state_patch"]}])
    store = agents.store.for_tenant("acme")
    await store.state_put("docs", "d", {"title": "Q3", "parts": {"a": "x", "b": "y"}, "tmp": 1})
    patch = {"parts": {"b": "z", "c": []}, "tmp": None}
    done = await turn(agents, "w", call("state_patch", namespace="docs", key="d", patch=patch),
                      who("acme"))  # fmt: skip
    merged = {"title": "Q3", "parts": {"a": "x", "b": "z", "c": []}}
    assert result_of(done.text, "state_patch") == {"value": merged, "version": 2}
    # With if_version, only over that version: a stale one is a conflict, nothing changes.
    stale = call("state_patch", namespace="docs", key="d", patch={"title": "Q4"}, if_version=1)
    done = await turn(agents, "w", stale, who("acme"))
    error = result_of(done.text, "state_patch")["error"]
    assert error["code"] == "version_conflict"
    assert error["current"] == {"value": merged, "version": 2}
    fresh = call("state_patch", namespace="docs", key="d", patch={"title": "Q4"}, if_version=2)
    done = await turn(agents, "w", fresh, who("acme"))
    assert result_of(done.text, "state_patch")["value"]["title"] == "Q4"
    assert await _read(agents, "acme", "docs", "d") == {
        "value": {**merged, "title": "Q4"}, "version": 3
    }  # fmt: skip
    # A patch that is not an object is refused, and so is an unknown argument.
    bad = (
        call("state_patch", namespace="docs", key="d", patch=[1])
        + "\n"
        + call("state_patch", namespace="docs", key="d", patch={}, version=3)
    )
    done = await turn(agents, "w", bad, who("acme"))
    first, second = done.text.split("\n")
    assert "'patch' must be a JSON object" in result_of(first, "state_patch")["error"]["message"]
    assert "unknown arguments 'version'" in result_of(second, "state_patch")["error"]["message"]


async def test_parallel_agents_patching_one_document_lose_no_update(start: Start) -> None:
    agents = await agents_of(
        start,
        agents=[
            {"name": "planner", "tools": ["agentd:call_agent"]},
            {"name": "writer", "tools": ["agentd:state_patch"]},
        ],
    )
    # Eight writers at once, each patching its own field of one document.
    calls = []
    for i in range(8):
        patch = call("state_patch", namespace="docs", key="shared", patch={f"part{i}": i})
        calls.append(call("call_agent", agent="writer", input=patch))
    done = await turn(agents, "planner", "\n".join(calls), who("acme"))
    assert [r.result.outcome for r in done.tool_runs] == ["ok"] * 8
    versions = sorted(
        result_of(line, "call_agent", "state_patch")["version"] for line in done.text.split("\n")
    )
    assert versions == list(range(1, 9))
    doc = await _read(agents, "acme", "docs", "shared")
    assert doc == {"value": {f"part{i}": i for i in range(8)}, "version": 8}


async def test_a_tenants_agent_cannot_read_or_write_another_tenants_state(start: Start) -> None:
    agents = await agents_of(start, agents=[{"name": "w", "tools": ["agentd"]}])
    write = call("state_put", namespace="docs", key="secret", value="acme's")
    done = await turn(agents, "w", write, who("acme"))
    assert result_of(done.text, "state_put")["version"] == 1
    read = call("state_get", namespace="docs", key="secret")
    done = await turn(agents, "w", read, who("initech"))
    assert result_of(done.text, "state_get") == {"value": None, "version": 0}
    # Nor through another agent it calls: the called turn is in the caller's tenant.
    done = await turn(agents, "w", call("call_agent", agent="w", input=read), who("initech"))
    assert result_of(done.text, "call_agent", "state_get") == {"value": None, "version": 0}
    # initech's own write is its own document; acme's is untouched.
    done = await turn(agents, "w", write.replace("acme's", "initech's"), who("initech"))
    assert result_of(done.text, "state_put")["version"] == 1
    assert await _read(agents, "acme", "docs", "secret") == {"value": "acme's", "version": 1}
    assert await _read(agents, "initech", "docs", "secret") == {
        "value": "initech's", "version": 1
    }  # fmt: skip


async def test_the_state_tools_need_the_callers_state_scope(start: Start) -> None:
    agents = await agents_of(start, agents=[{"name": "w", "tools": ["agentd"]}])
    chat_only = who("acme", scopes={"chat", "responses", "sessions"})
    done = await turn(agents, "w", call("state_get", namespace="docs", key="d"), chat_only)
    error = result_of(done.text, "state_get")["error"]
    assert error["code"] == "permission_denied" and "'state'" in error["message"]


# -- the worked example of docs/tools.md --------------------------------------------------


def _worked_example() -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """The config and the (message, reply) pairs of docs/tools.md's worked example."""
    text = DOCS.read_text()
    section = text[text.index("### Worked example") :]
    config = re.search(r"```toml\n(.*?)```", section, re.S)
    transcript = re.search(r"```text\n(.*?)```", section, re.S)
    assert config and transcript
    lines = transcript.group(1).splitlines()
    sent = [line.removeprefix("→ planner: ") for line in lines if line.startswith("→")]
    said = [line.removeprefix("← planner: ") for line in lines if line.startswith("←")]
    assert len(sent) == len(said) == 5
    return tomllib.loads(config.group(1)), list(zip(sent, said, strict=True))


async def test_the_worked_example_of_the_docs_runs_as_written(start: Start) -> None:
    config, steps = _worked_example()
    server = await start(**config)
    url = str(server.make_url("")).rstrip("/")
    async with aiohttp.ClientSession() as http:
        for message, reply in steps:
            body = {"model": "planner", "messages": [{"role": "user", "content": message}]}
            status, headers, answer = await post(http, url + "/v1/chat/completions", body)
            assert status == 200, answer
            assert answer["choices"][0]["message"]["content"] == reply
            if "call_agent" in message:
                assert 'tool;desc="agentd/call_agent"' in headers["Server-Timing"]
        async with http.get(url + "/v1/state/docs/q3") as r:
            served = await r.json()
        async with http.get(url + "/metrics") as r:
            metrics = await r.text()
    # The document the last step read is the one the HTTP API serves.
    assert served == result_of(steps[-1][1], "state_get")
    assert served["version"] == 3 and all(served["value"].values())
    calls: dict[tuple[str, str], float] = {}
    for labels, count in re.findall(r"^agentd_tool_calls_total\{(.*)\} (\S+)$", metrics, re.M):
        label = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if label["server"] == "agentd":
            calls[label["outcome"], label["tool"]] = float(count)
    assert calls[("ok", "call_agent")] == 3  # the conflict is the writer's result, not ours
    assert calls[("error", "state_put")] == 1
    assert calls[("ok", "state_patch")] == 1
