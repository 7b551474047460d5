"""The toolbox MCP server (``toolbox.py``) as a test process: over streamable HTTP on
a free port (restartable on the same port), or as the command of a stdio server."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from agentd.config import McpServerConfig

from ..procs import START_LIMIT, free_port
from ..waiting import wait_until_sync

TOOLBOX = str(Path(__file__).with_name("toolbox.py"))


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def stdio_server(state: Path, label: str = "local", **options: object) -> McpServerConfig:
    return McpServerConfig(
        label=label,
        command=sys.executable,
        args=(TOOLBOX, "stdio"),
        env={"TOOLBOX_STATE": str(state)},
        **options,  # type: ignore[arg-type]
    )


class HttpToolbox:
    """``toolbox.py http PORT [TOKEN]`` in a subprocess; its pid file is in ``state``."""

    def __init__(self, state: Path, token: str | None = None) -> None:
        self.state = state
        self.token = token
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def config(self, label: str = "web", **options: object) -> McpServerConfig:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return McpServerConfig(label=label, url=self.url, headers=headers, **options)  # type: ignore[arg-type]

    def start(self) -> None:
        args = [sys.executable, TOOLBOX, "http", str(self.port)]
        env = {**os.environ, "TOOLBOX_STATE": str(self.state)}
        log = open(self.state / "http.log", "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen([*args, *([self.token] if self.token else [])], env=env,
                                     stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        log.close()

        def listening() -> bool:
            assert self.proc is not None and self.proc.poll() is None, (
                self.state / "http.log"
            ).read_text()
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0

        wait_until_sync(listening, START_LIMIT, "the toolbox to listen")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
