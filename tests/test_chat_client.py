"""``agentd chat`` as a person uses it: the real client in a subprocess, typing into its
standard input, against a real ``agentd serve``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .procs import ROOT, AgentdProcess
from .waiting import wait_until_sync

pytestmark = pytest.mark.slow

Start = Callable[..., AgentdProcess]
LIMIT = 60.0
# Two words a second: a turn runs long enough to be interrupted.
SLOW_ECHO = '[[backends]]\nname = "echo"\ntype = "echo"\ntokens_per_s = 2.0\n'


class Chat:
    """One ``agentd chat`` process; its output goes to files the test reads."""

    def __init__(self, workdir: Path, *args: str) -> None:
        workdir.mkdir(exist_ok=True)
        self.out_path = workdir / f"chat-{len(list(workdir.glob('chat-*.out')))}.out"
        self.err_path = self.out_path.with_suffix(".err")
        self._out = open(self.out_path, "wb")  # noqa: SIM115 - closed in close()
        self._err = open(self.err_path, "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agentd", "chat", *args],
            stdin=subprocess.PIPE,
            stdout=self._out,
            stderr=self._err,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )

    def out(self) -> str:
        return self.out_path.read_text(errors="replace")

    def err(self) -> str:
        return self.err_path.read_text(errors="replace")

    def type(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode() + b"\n")
        self.proc.stdin.flush()

    def wait_for(self, text: str, count: int = 1) -> None:
        def seen() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"chat exited {self.proc.returncode}: {self.err()}")
            return self.out().count(text) >= count

        wait_until_sync(seen, LIMIT, f"{text!r} in the chat's output:\n{self.out()}")

    def wait_exit(self) -> int:
        """The exit code; stdin stays open, so a client that waits for input hangs here."""
        try:
            return self.proc.wait(timeout=LIMIT)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"chat did not exit:\n{self.out()}\n{self.err()}") from None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self._out.close()
        self._err.close()


@pytest.fixture
def chat(tmp_path: Path) -> Iterator[Callable[..., Chat]]:
    started: list[Chat] = []

    def start(*args: str) -> Chat:
        client = Chat(tmp_path / "chat", *args)
        started.append(client)
        return client

    yield start
    for client in started:
        client.close()


def _post(url: str, body: Any) -> Any:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.loads(resp.read())


def _replies(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("assistant> ")]


@pytest.mark.parametrize(
    ("args", "code"),
    [(("--agent", "nobody"), "model_not_found"), (("--session", "nothing-here"), "not_found")],
)
def test_an_error_answering_hello_ends_the_client_with_the_error(
    agentd_instance: Start, chat: Callable[..., Chat], args: tuple[str, ...], code: str
) -> None:
    server = agentd_instance()
    client = chat("--url", server.url, *args)
    assert client.wait_exit() == 1
    assert code in client.err()
    assert client.err().startswith("agentd chat: ")


def test_a_session_lost_in_a_restart_ends_the_client_with_the_error(
    agentd_instance: Start, chat: Callable[..., Chat]
) -> None:
    server = agentd_instance()  # standalone: the session lives in the worker's memory
    client = chat("--url", server.url)
    client.wait_for("you> ")
    client.type("hello there")
    client.wait_for("assistant> hello there")
    server.stop()
    again = agentd_instance("", "--bind", f"127.0.0.1:{server.port}", ready=False)
    again.port = server.port  # the address it was told to serve, not the one it chose
    again.wait_ready()
    assert client.wait_exit() == 1
    assert "session_not_found" in client.err()


def test_prompt_labels_and_recent_history_on_resume(
    agentd_instance: Start, chat: Callable[..., Chat]
) -> None:
    server = agentd_instance()
    _post(server.url + "/v1/sessions", {"id": "talk"})
    for i in range(12):
        messages = [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]
        _post(server.url + "/v1/sessions/talk/messages", {"messages": messages})
    client = chat("--url", server.url, "--session", "talk", "--agent", "echo")
    client.wait_for("you> ")
    out = client.out()
    assert out.startswith("[session talk: 10 recent message(s)")
    history = [line for line in out.splitlines() if line.startswith(("user> ", "echo> "))]
    assert history == [
        f"{who}> {x}{i}" for i in range(7, 12) for who, x in (("user", "q"), ("echo", "a"))
    ]
    client.type("hi again")
    client.wait_for("echo> hi again\n")
    client.wait_for("you> ", 2)
    # Another connection's message shows with its speaker, and the history ended where
    # the live part begins (nothing printed twice).
    _post(
        server.url + "/v1/sessions/talk/messages",
        {"messages": [{"role": "user", "content": "from afar"}]},
    )
    client.wait_for("user> from afar\n")
    assert client.out().count("a11") == 1
    assert client.proc.stdin is not None
    client.proc.stdin.close()  # Ctrl-D
    assert client.wait_exit() == 0


def test_ctrl_c_cancels_the_running_turn_and_a_second_one_quits(
    agentd_instance: Start, chat: Callable[..., Chat]
) -> None:
    server = agentd_instance(SLOW_ECHO)
    client = chat("--url", server.url)
    client.wait_for("you> ")
    client.type("one two three four five six seven eight nine ten")
    client.wait_for("assistant> one")
    client.proc.send_signal(signal.SIGINT)
    client.wait_for("[cancelled]")
    client.wait_for("you> ", 2)  # the client lives on, ready for the next line
    assert "ten" not in _replies(client.out())[0]
    client.type("again")
    client.wait_for("assistant> again\n")
    client.type("eleven twelve thirteen fourteen fifteen sixteen")
    client.wait_for("assistant> eleven")
    client.proc.send_signal(signal.SIGINT)
    client.wait_for("[cancelled]", 2)
    client.proc.send_signal(signal.SIGINT)  # nothing is running now: quit
    assert client.wait_exit() == 130
    assert "sixteen" not in _replies(client.out())[-1]


def test_two_quick_ctrl_cs_quit_in_the_middle_of_a_turn(
    agentd_instance: Start, chat: Callable[..., Chat]
) -> None:
    server = agentd_instance(SLOW_ECHO)
    client = chat("--url", server.url)
    client.wait_for("you> ")
    client.type("one two three four five six seven eight nine ten")
    client.wait_for("assistant> one")
    client.proc.send_signal(signal.SIGINT)
    client.wait_for("[cancelling; Ctrl-C again to quit]")  # one signal at a time
    client.proc.send_signal(signal.SIGINT)
    assert client.wait_exit() == 130
