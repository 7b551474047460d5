"""A tool server for the MCP client tests, written with the ``mcp`` SDK.

    python toolbox.py stdio
    python toolbox.py http PORT [TOKEN]

Its tools behave well (echo, add, fail, huge, grow, barrier, tally, chain) or badly
(hang, crash, malformed). ``TOOLBOX_STATE`` names a directory where it leaves traces the
tests read: ``pid`` when it starts, ``hang-started`` and ``cancelled`` when a call of
``hang`` starts and is cancelled, ``tally-NAME`` (a character per call) for ``tally``
and ``chain``; ``chain`` waits for the tests' ``open-GATE`` there. Over HTTP a TOKEN
makes every request need ``Authorization: Bearer TOKEN`` (401 otherwise).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

STATE = Path(os.environ.get("TOOLBOX_STATE", "."))
TRANSPORT = sys.argv[1] if len(sys.argv) > 1 else "stdio"

server = MCPServer("toolbox")
WIRE = os.dup(1)
arrived = 0
all_arrived = anyio.Event()


@server.tool()
def echo(text: str) -> str:
    """Say the text back."""
    return text


@server.tool()
def add(a: int, b: int) -> dict[str, int]:
    """Add two integers (structured output)."""
    return {"sum": a + b}


@server.tool()
def fail(why: str) -> str:
    """Always fails with the reason given."""
    raise ToolError(f"failed on purpose: {why}")


@server.tool()
def huge(size: int) -> str:
    """A string of ``size`` x's."""
    return "x" * size


@server.tool()
async def hang() -> str:
    """Never answers; leaves traces when it starts and when it is cancelled."""
    (STATE / "hang-started").write_text("yes")
    try:
        await anyio.sleep_forever()
    finally:
        (STATE / "cancelled").write_text("yes")
    return "unreachable"


@server.tool()
def crash() -> str:
    """Kills the server process in the middle of the call."""
    os._exit(3)


@server.tool()
async def malformed() -> str:
    """stdio: writes a line that is not JSON-RPC where the answer goes, then hangs.
    (Over HTTP the garbage answer is sent by the middleware below.)"""
    # The SDK moves fd 1 away from the pipe (stray prints cannot corrupt the protocol);
    # WIRE is the pipe itself, kept before the server started.
    os.write(WIRE, b'{"jsonrpc": "2.0", "id": \n')
    await anyio.sleep_forever()
    return "unreachable"


@server.tool()
async def barrier(parties: int) -> str:
    """Answers once ``parties`` calls are in progress at once (hangs if they are serial)."""
    global arrived
    arrived += 1
    if arrived >= parties:
        all_arrived.set()
    await all_arrived.wait()
    return "all arrived"


@server.tool()
def again() -> str:
    """Asks the echo model for another call of itself (a loop that never ends alone)."""
    return "call again {}"


@server.tool()
def tally(name: str) -> str:
    """Counts its calls per ``name`` in the state directory (side effects, counted)."""
    path = STATE / f"tally-{name}"
    with path.open("a") as f:
        f.write("x")
    return f"{name} {path.stat().st_size}"


@server.tool()
async def chain(name: str, then: str = "", gate: str = "") -> str:
    """Counts its calls per ``name`` (as ``tally`` does); with a ``gate``, answers only
    once the file ``open-GATE`` is in the state directory. Answers ``then`` (call lines:
    the echo model's next step) or ``NAME done``."""
    path = STATE / f"tally-{name}"
    with path.open("a") as f:
        f.write("x")
    # The gate is a file the test writes from another process: looked for, not awaited.
    while gate and not (STATE / f"open-{gate}").exists():  # noqa: ASYNC110
        await anyio.sleep(0.02)
    return then or f"{name} done"


def extra() -> str:
    """A tool added at run time."""
    return "extra"


@server.tool()
async def grow(ctx: Context) -> str:
    """Adds the tool ``extra`` and tells the client its tool list changed."""
    server.add_tool(extra)
    await ctx.session.send_tool_list_changed()
    return "grown"


def malformed_http(app, token: str | None):  # type: ignore[no-untyped-def]
    """ASGI middleware: a bad token gets 401; a call of ``malformed`` gets a body that
    is not JSON-RPC."""

    async def middleware(scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            return await app(scope, receive, send)
        headers = dict(scope["headers"])
        if token is not None and headers.get(b"authorization") != f"Bearer {token}".encode():
            await send({"type": "http.response.start", "status": 401, "headers": []})
            await send({"type": "http.response.body", "body": b"unauthorized"})
            return None
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        if scope["method"] == "POST" and b'"malformed"' in body:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": b'{"jsonrpc": "2.0", "id": '})
            return None
        replayed = False

        async def replay():  # type: ignore[no-untyped-def]
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await app(scope, replay, send)

    return middleware


def main() -> None:
    (STATE / "pid").write_text(str(os.getpid()))
    if TRANSPORT == "stdio":
        server.run("stdio")
        return
    import uvicorn

    port = int(sys.argv[2])
    token = sys.argv[3] if len(sys.argv) > 3 else None
    app = malformed_http(server.streamable_http_app(), token)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")


if __name__ == "__main__":
    main()
