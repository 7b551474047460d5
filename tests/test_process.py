"""The process model, against real ``agentd serve`` processes and real signals."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from .conftest import PROBE
from .procs import START_LIMIT, AgentdProcess, RedisServer, http_get, http_json
from .waiting import wait_until_sync

pytestmark = pytest.mark.slow

Start = Callable[..., AgentdProcess]

TEMPLATE = f"""
[server]
workers = 2
shutdown_timeout = 10.0
heartbeat_timeout = 6.0
{PROBE}
[redis]
urls = ["{{redis}}"]
"""


@pytest.fixture
def cfg(redis_standalone: RedisServer) -> str:
    """Two workers on a real Redis (more than one worker needs a shared store)."""
    return TEMPLATE.replace("{redis}", redis_standalone.url)


def _pids_answering(proc: AgentdProcess, want: int, limit: float = 30.0) -> set[int]:
    """Ask /v1/info over fresh connections until ``want`` distinct workers answered."""
    seen: set[int] = set()

    def enough() -> bool:
        seen.add(proc.info()["worker"]["pid"])
        return len(seen) >= want

    wait_until_sync(enough, limit, f"{want} distinct workers to answer")
    return seen


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _metrics(proc: AgentdProcess) -> str:
    status, _, body = http_get(proc.url + "/metrics")
    assert status == 200
    return body.decode()


def test_two_workers_answer_and_metrics_sum_over_them(agentd_instance: Start, cfg: str) -> None:
    proc = agentd_instance(cfg)
    pids = _pids_answering(proc, 2)
    assert pids == proc.worker_pids()
    info = proc.info()
    assert info["workers"] == 2 and info["mode"] == "redis"
    assert info["fastpath"] in ("cython", "python") and info["loop"] == "uvloop"
    assert proc.get("/healthz") == (200, {"status": "ok"})

    # Each request lands on one worker; /metrics must count all of them, whichever
    # worker renders it. A worker's counts reach it within metrics.hot.FLUSH_INTERVAL_S:
    # first the one health check so far.
    before = 1
    wait_until_sync(
        lambda: _metric(_metrics(proc), "agentd_http_requests_total", route="/healthz") == before,
        what="the first health check counted",
    )
    answered_by: set[int] = set()
    for _ in range(40):
        status, _, _ = http_get(proc.url + "/healthz")
        assert status == 200
    for _ in range(20):
        answered_by.add(proc.info()["worker"]["pid"])
    wait_until_sync(
        lambda: (
            _metric(_metrics(proc), "agentd_http_requests_total", route="/healthz") >= before + 40
        ),
        what="40 health checks counted",
    )
    after = [
        _metric(_metrics(proc), "agentd_http_requests_total", route="/healthz") for _ in range(6)
    ]
    assert all(value - before == 40 for value in after), (before, after)
    assert len(answered_by) == 2


def test_errors_are_json_with_stable_codes(agentd_instance: Start, cfg: str) -> None:
    proc = agentd_instance(cfg.replace("workers = 2", "workers = 1"))
    status, body = proc.get("/no/such/route")
    assert status == 404
    assert body == {
        "error": {"message": "no such route", "type": "invalid_request_error", "code": "not_found"}
    }
    request = b"DELETE /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", proc.port)) as s:
        s.sendall(request)
        reply = s.makefile("rb").read()
    assert reply.startswith(b"HTTP/1.1 405") and b'"code":"method_not_allowed"' in reply
    # Hostile input the HTTP parser rejects before any route runs: a 400, and the
    # worker lives on.
    hostile = [
        b"\x00\xff GARBAGE \r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ]
    pid = proc.info()["worker"]["pid"]
    for data in hostile:
        with socket.create_connection(("127.0.0.1", proc.port)) as s:
            s.sendall(data)
            status_line = s.makefile("rb").readline()
        assert re.match(rb"HTTP/1\.[01] (400|431) ", status_line), (data[:40], status_line)
    assert proc.get("/healthz")[0] == 200
    assert proc.info()["worker"]["pid"] == pid


def test_a_killed_worker_is_replaced_and_the_port_keeps_answering(
    agentd_instance: Start, cfg: str
) -> None:
    proc = agentd_instance(cfg)
    victim = sorted(_pids_answering(proc, 2))[0]
    os.kill(victim, signal.SIGKILL)
    failures = 0

    def replaced() -> bool:
        """Ask the port once (counting failures); whether the victim has a successor."""
        nonlocal failures
        try:
            status, _ = proc.get("/healthz", timeout=5)
            failures += status != 200
        except OSError:
            failures += 1
        pids = proc.worker_pids()
        return victim not in pids and len(pids) == 2

    # The port is asked without pause while the worker is replaced.
    wait_until_sync(replaced, 30, "the killed worker to be replaced", poll_s=0)
    assert failures <= 1  # only a request already accepted by the victim can fail
    new = _pids_answering(proc, 2)
    assert victim not in new
    text = _metrics(proc)
    assert _metric(text, "agentd_worker_restarts_total", reason="signal") == 1
    assert re.search(
        rf"worker \d \(pid {victim}\) exited unexpectedly: killed by SIGKILL", proc.log()
    )


def test_a_stuck_worker_is_killed_and_replaced(agentd_instance: Start, cfg: str) -> None:
    proc = agentd_instance(cfg)
    victim = sorted(proc.worker_pids())[0]
    os.kill(victim, signal.SIGSTOP)  # its event loop no longer turns: no heartbeats
    wait_until_sync(lambda: victim not in proc.worker_pids() and len(proc.worker_pids()) == 2,
                    30, "the stuck worker to be replaced")  # fmt: skip
    assert "unresponsive" in proc.log()
    assert proc.get("/healthz")[0] == 200


def test_sigterm_lets_an_in_flight_request_finish_then_exits_0(
    agentd_instance: Start, cfg: str
) -> None:
    proc = agentd_instance(cfg.replace("workers = 2", "workers = 1"))
    result: dict[str, tuple[int, dict]] = {}

    def slow() -> None:
        result["reply"] = http_json(proc.url + "/test/slow?seconds=2", timeout=30)

    thread = threading.Thread(target=slow)
    thread.start()
    wait_until_sync(
        lambda: proc.get("/test/in-flight")[1]["in_flight"] == 1, 10, "the slow request"
    )
    proc.send(signal.SIGTERM)
    assert proc.wait_exit(30) == 0
    thread.join(10)
    assert result["reply"] == (200, {"slept": 2.0, "pid": result["reply"][1]["pid"]})
    # Once stopped, nothing listens any more.
    with pytest.raises(OSError):
        http_get(proc.url + "/healthz", timeout=2)


async def test_sigterm_closes_websockets_with_1001(agentd_instance: Start, cfg: str) -> None:
    proc = agentd_instance(cfg)
    async with aiohttp.ClientSession() as session, session.ws_connect(proc.url + "/test/ws") as ws:
        assert (await ws.receive_str(timeout=10)) == "hello"
        text = await asyncio.to_thread(_metrics, proc)
        assert _metric(text, "agentd_websocket_connections") == 1
        proc.send(signal.SIGTERM)
        msg = await ws.receive(timeout=30)
        assert msg.type == aiohttp.WSMsgType.CLOSE
        assert msg.data == 1001
    assert await asyncio.to_thread(proc.wait_exit, 30) == 0


def _steady_client(
    url: str, stop: threading.Event, results: list[tuple[int, int | str, float]]
) -> None:
    """Request ``url`` in a loop, each time on a new connection, recording every outcome
    and when its request began."""
    while not stop.is_set():
        began = time.monotonic()
        try:
            status, body = http_json(url, timeout=10)
            results.append((status, body["worker"]["generation"], began))
        except Exception as exc:  # any failure counts
            results.append((0, repr(exc), began))


def test_sighup_under_load_fails_no_request_and_applies_the_new_config(
    agentd_instance: Start, cfg: str
) -> None:
    proc = agentd_instance(cfg)
    stop = threading.Event()
    results: list[tuple[int, int | str, float]] = []
    # When each reload was seen complete: connections made after it meet its workers only.
    complete: dict[int, float] = {}
    clients = [threading.Thread(target=_steady_client, args=(proc.url + "/v1/info", stop, results))
               for _ in range(4)]  # fmt: skip
    for t in clients:
        t.start()
    try:
        wait_until_sync(lambda: len(results) > 50, 30, "traffic to flow")
        for generation, workers in ((2, 1), (3, 2), (4, 2)):
            proc.config_path.write_text(cfg.replace("workers = 2", f"workers = {workers}"))
            proc.send(signal.SIGHUP)
            done = f"reload complete: generation {generation} serving"
            wait_until_sync(lambda d=done: d in proc.log(), 30, done)
            complete[generation] = time.monotonic()
            mark = len(results)
            wait_until_sync(lambda m=mark: len(results) > m + 50, 30, "traffic after the reload")
    finally:
        stop.set()
        for t in clients:
            t.join(30)
    failures = [r for r in results if r[0] != 200]
    assert not failures, failures[:5]
    assert {g for _, g, _ in results} >= {1, 2, 3, 4}
    for generation, seen in complete.items():
        late = [g for _, g, began in results if began > seen and g < generation]
        assert not late, f"{len(late)} request(s) after reload {generation} met older workers"
    info = proc.info()
    assert info["workers"] == 2 and info["worker"]["generation"] == 4
    wait_until_sync(lambda: len(proc.worker_pids()) == 2, 30, "old workers to exit")


def test_a_reload_is_complete_only_once_the_old_workers_stopped_accepting(
    agentd_instance: Start, cfg: str, tmp_path: Path
) -> None:
    """An old worker accepts on its slot's socket until it has handled SIGTERM; "reload
    complete" waits for that, so a client that saw it never meets the old config."""
    proc = agentd_instance(cfg.replace("workers = 2", "workers = 1"))
    old = proc.info()["worker"]["pid"]
    fifo = tmp_path / "hold"
    os.mkfifo(fifo)
    held: list[tuple[int, Any]] = []
    holder = threading.Thread(
        target=lambda: held.append(http_json(f"{proc.url}/test/hold?fifo={fifo}", timeout=60))
    )
    holder.start()

    def held_up() -> bool:
        try:
            proc.get("/healthz", timeout=0.5)
        except OSError:  # no answer: the loop is held
            return True
        return False

    wait_until_sync(held_up, 30, "the old worker's loop to be held")
    proc.send(signal.SIGHUP)
    serving = "serving (generation 2"
    wait_until_sync(lambda: serving in proc.log(), 60, "the new worker to serve")
    # The old worker goes on only now that its successor serves: it has not drained.
    with open(fifo, "wb") as release:
        release.write(b"go")
    done = "reload complete: generation 2 serving"
    wait_until_sync(lambda: done in proc.log(), 60, done)
    log = proc.log()
    assert "worker 0 draining" in log[: log.index(done)], "complete before the old one drained"
    holder.join(60)
    assert held and held[0][0] == 200 and held[0][1]["pid"] == old
    assert proc.info()["worker"]["generation"] == 2


def test_sighup_with_a_broken_config_keeps_the_old_workers(
    agentd_instance: Start, cfg: str
) -> None:
    proc = agentd_instance(cfg)
    old = proc.worker_pids()
    proc.config_path.write_text(cfg.replace("workers = 2", "workers = 0"))
    proc.send(signal.SIGHUP)
    wait_until_sync(lambda: "reload refused" in proc.log(), 30, "the refusal to be logged")
    assert "server.workers: must be >= 1, got 0" in proc.log()
    assert proc.get("/healthz")[0] == 200
    assert proc.worker_pids() == old and proc.info()["worker"]["generation"] == 1


def test_a_reload_whose_workers_cannot_start_is_rolled_back(
    agentd_instance: Start, cfg: str
) -> None:
    proc = agentd_instance(cfg)
    old = proc.worker_pids()
    broken = cfg.replace("probe:setup", "probe:broken")
    proc.config_path.write_text(broken)
    proc.send(signal.SIGHUP)
    wait_until_sync(lambda: "reload failed" in proc.log(), 30, "the failed reload to be logged")
    assert "this plugin refuses to load" in proc.log()
    wait_until_sync(lambda: proc.worker_pids() == old, 30, "only the old workers to remain")
    assert proc.info()["worker"]["generation"] == 1
    assert proc.get("/test/slow?seconds=0")[0] == 200


def test_a_worker_that_cannot_start_stops_the_server_with_exit_1(
    agentd_instance: Start, cfg: str
) -> None:
    proc = agentd_instance(cfg.replace("probe:setup", "probe:broken"), ready=False)
    assert proc.wait_exit(60) == 1
    assert "failed to start" in proc.log()


def test_systemd_notify_protocol(agentd_instance: Start, cfg: str, tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(path))
    listener.settimeout(START_LIMIT)  # as long as a start may take
    messages: list[str] = []

    def receive_until(field: str) -> str:
        while True:
            msg = listener.recv(4096).decode()
            messages.append(msg)
            if field in msg.split("\n"):
                return msg

    try:
        env = {"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "400000"}
        proc = agentd_instance(cfg, env=env, ready=False)
        ready = receive_until("READY=1")
        assert "STATUS=serving with 2 worker(s), generation 1" in ready
        # Every worker accepts once READY=1 has been sent.
        assert len(_pids_answering(proc, 2)) == 2
        receive_until("WATCHDOG=1")
        proc.send(signal.SIGHUP)
        reloading = receive_until("RELOADING=1")
        usec = int(re.search(r"MONOTONIC_USEC=(\d+)", reloading).group(1))
        assert abs(usec / 1e6 - time.monotonic()) < 60
        assert "generation 2" in receive_until("READY=1")
        proc.send(signal.SIGTERM)
        receive_until("STOPPING=1")
        assert proc.wait_exit(30) == 0
    finally:
        listener.close()
    order = [m.split("\n")[0] for m in messages if not m.startswith("WATCHDOG")]
    assert order == ["READY=1", "RELOADING=1", "READY=1", "STOPPING=1"]


def test_json_logs_carry_the_worker_id(agentd_instance: Start, cfg: str) -> None:
    proc = agentd_instance(cfg + '[log]\nformat = "json"\nlevel = "debug"\n')
    proc.send(signal.SIGTERM)
    assert proc.wait_exit(30) == 0
    lines = [json.loads(line) for line in proc.log().splitlines()]
    assert {line["worker"] for line in lines} == {"main", "0", "1"}
    for line in lines:
        assert {"ts", "level", "pid", "logger", "msg"} <= set(line)


def test_no_extensions_forces_the_pure_fastpath(agentd_instance: Start, cfg: str) -> None:
    proc = agentd_instance(cfg, env={"AGENTD_NO_EXTENSIONS": "1"})
    assert proc.info()["fastpath"] == "python"
