"""The supervisor's leaving step (``server.drain_delay_s``) with the OS faked: which
workers are told to fail /readyz, and what a signal does meanwhile. The real processes
are in test_graceful_removal.py."""

from __future__ import annotations

import os
import signal

import pytest

from agentd.config import Config, from_dict
from agentd.proc import supervisor as supervisor_mod
from agentd.proc import worker as worker_mod
from agentd.proc.supervisor import Supervisor, Worker


def _config(drain_delay_s: float) -> Config:
    return from_dict(
        {
            "server": {"workers": 2, "drain_delay_s": drain_delay_s},
            "redis": {"urls": ["redis://127.0.0.1:1"]},
        }
    )


@pytest.fixture
def kills(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    sent: list[tuple[int, int]] = []
    monkeypatch.setattr(supervisor_mod.os, "kill", lambda pid, sig: sent.append((pid, sig)))
    return sent


def _supervisor(drain_delay_s: float) -> Supervisor:
    config = _config(drain_delay_s)
    sup = Supervisor(config, lambda: config)
    sup.workers = {
        101: Worker(slot=0, generation=1, pid=101, fd=-1, started=0.0, ready_at=1.0),
        102: Worker(slot=1, generation=1, pid=102, fd=-1, started=0.0),  # not ready yet
    }
    return sup


def test_leaving_tells_ready_workers_and_waits_the_delay(kills: list[tuple[int, int]]) -> None:
    sup = _supervisor(drain_delay_s=10.0)
    assert sup.leave(now=100.0)
    assert kills == [(101, signal.SIGUSR1)]
    assert not sup._stopping
    assert sup._next_timeout(105.0) <= 5.0
    assert not sup.leave(now=101.0), "leaving happens once"


def test_a_worker_ready_during_the_delay_is_told_too(kills: list[tuple[int, int]]) -> None:
    sup = _supervisor(drain_delay_s=10.0)
    sup.leave(now=100.0)
    read_fd, write_fd = os.pipe()
    try:
        os.set_blocking(read_fd, False)
        os.write(write_fd, worker_mod.READY)
        late = sup.workers[102]
        late.fd = read_fd
        sup._read_worker(late, now=101.0)
    finally:
        os.close(read_fd)
        os.close(write_fd)
    assert kills == [(101, signal.SIGUSR1), (102, signal.SIGUSR1)]


def test_another_sigterm_during_the_delay_drains_at_once(kills: list[tuple[int, int]]) -> None:
    sup = _supervisor(drain_delay_s=10.0)
    sup._handle_signal(signal.SIGTERM)
    assert not sup._stopping
    sup._handle_signal(signal.SIGTERM)
    assert sup._stopping
    assert sorted(k for k in kills if k[1] == signal.SIGTERM) == [
        (101, signal.SIGTERM),
        (102, signal.SIGTERM),
    ]


def test_a_reload_during_the_delay_is_ignored(
    kills: list[tuple[int, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    sup = _supervisor(drain_delay_s=10.0)
    reloads: list[bool] = []
    monkeypatch.setattr(sup, "reload", lambda: reloads.append(True))
    sup._handle_signal(signal.SIGTERM)
    sup._handle_signal(signal.SIGHUP)
    assert reloads == []


def test_without_a_delay_sigterm_drains_at_once(kills: list[tuple[int, int]]) -> None:
    sup = _supervisor(drain_delay_s=0.0)
    assert not sup.leave(now=100.0)
    sup._handle_signal(signal.SIGTERM)
    assert sup._stopping
    assert signal.SIGUSR1 not in {sig for _, sig in kills}
