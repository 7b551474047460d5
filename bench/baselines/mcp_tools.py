"""The ``tool-loop`` scenario's MCP tool server, written with the ``mcp`` SDK (MCPServer).

    python -m bench.baselines.mcp_tools --port PORT

Streamable HTTP at ``/mcp`` on 127.0.0.1, the SDK's defaults (stateful sessions, answers
as SSE), served by uvicorn like the SDK's own ``run("streamable-http")``; ``GET /healthz``
says it is up. One tool, ``echo``, that says its text back: the cheapest tool there is,
so a measurement shows the cost of the call itself, not of the tool's work.
"""

from __future__ import annotations

import argparse

from mcp.server.mcpserver import MCPServer
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

server = MCPServer("bench-tools")


@server.tool()
def echo(text: str) -> str:
    """Say the text back."""
    return text


@server.custom_route("/healthz", methods=["GET"])
async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.baselines.mcp_tools")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    import uvicorn

    app = server.streamable_http_app()
    uvicorn.run(
        app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False, lifespan="on"
    )


if __name__ == "__main__":
    main()
