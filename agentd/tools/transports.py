"""Opening an MCP transport for a configured server: streamable HTTP or stdio.

Header and environment values ``env:NAME`` are read from agentd's environment when the
connection opens (secrets stay out of the config file). A stdio server is started
through :mod:`agentd.tools.launch`, which makes the kernel kill it if its worker dies.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import httpx2
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from ..config import ENV_REF, McpServerConfig

__all__ = ("MissingSecret", "open_transport", "resolve")

# Run as a file, not a module: importing agentd.tools would cost the server's start.
LAUNCH = str(Path(__file__).with_name("launch.py"))
# An HTTP server's connect and write deadline; reads are bounded per call instead.
CONNECT_TIMEOUT_S = 10.0


class MissingSecret(Exception):
    """A header or env value names an environment variable that is not set."""


def resolve(values: Mapping[str, str], what: str, environ: Mapping[str, str]) -> dict[str, str]:
    """``values`` with every ``env:NAME`` replaced by ``$NAME``; :class:`MissingSecret`
    names the first variable that is not set (never a value)."""
    out = {}
    for key, value in values.items():
        if value.startswith(ENV_REF):
            name = value[len(ENV_REF) :]
            if name not in environ:
                raise MissingSecret(
                    f"{what} {key!r} names the environment variable {name}, which is not set"
                )
            value = environ[name]
        out[key] = value
    return out


@contextlib.asynccontextmanager
async def open_transport(
    server: McpServerConfig, environ: Mapping[str, str] | None = None, literal: bool = False
) -> AsyncIterator[tuple[Any, Any]]:
    """The read and write streams of one connection to ``server``; closing the context
    ends the connection (and a stdio server's process). ``literal``: header values are
    sent as written, without reading ``env:NAME``."""
    environ = os.environ if environ is None else environ
    if server.url:
        headers = dict(server.headers) if literal else resolve(server.headers, "header", environ)
        timeout = httpx2.Timeout(CONNECT_TIMEOUT_S, read=None)
        async with (
            httpx2.AsyncClient(headers=headers, timeout=timeout) as client,
            streamable_http_client(server.url, http_client=client) as streams,
        ):
            yield streams
        return
    env = resolve(server.env, "env", environ)
    params = StdioServerParameters(
        command=sys.executable,
        args=[LAUNCH, str(os.getpid()), server.command, *server.args],
        env=env,
    )
    async with stdio_client(params) as streams:
        yield streams
