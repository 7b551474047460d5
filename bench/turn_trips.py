"""Redis round trips of a chat turn that misses the cache, counted on the server.

    .venv/bin/python -m bench.turn_trips [--turns 200] [--idle 3] [--monitor-turns 3]

Starts a throw-away redis-server on a free loopback port and a real ``agentd serve``
(one worker, the echo backend), then, for ``auth.mode = "none"`` and for API keys with
every rate limit on, runs ``--turns`` session turns (``POST /v1/chat/completions`` with a
``session_id``, one at a time over one keep-alive connection, on 8 sessions) and reports
per turn:

- the commands redis-server ran, by name (``INFO commandstats`` deltas; a script's own
  calls are counted under their names beside ``evalsha``);
- round trips: ``INFO stats total_reads_processed`` deltas. redis-server counts one read
  per socket read event, so a pipeline or a script call sent as one write is one read,
  and with one turn in flight at a time no two round trips share a read;
- the same figures for an idle window of ``--idle`` seconds (registry heartbeats, usage
  and limit flushes), scaled to the turns' wall time and subtracted: per-turn cost apart
  from per-second cost;
- the command sequence of one turn, from ``MONITOR`` over ``--monitor-turns`` turns
  (each line: client connection, or ``lua`` for a script's own calls).

Nothing here is timed as a pass/fail figure: the counts are the result.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import importlib
import json
import secrets
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agentd.store.scripts import END_TURN, Script

from . import targets
from .scenarios.auth import ADMIN_KEY, AUTH_CONFIG, KEY_LIMITS

SESSIONS = 8
# Every module that defines the Lua scripts agentd runs: their SHA1s name MONITOR's EVALSHAs.
SCRIPT_MODULES = (
    "agentd.store.scripts",
    "agentd.store.redis.ops_scripts",
    "agentd.store.redis.limit_scripts",
    "agentd.store.redis.lease_script",
)


def script_names() -> dict[str, str]:
    """SHA1 → ``module.NAME`` of every :class:`Script` agentd defines."""
    names = {}
    for module_name in SCRIPT_MODULES:
        module = importlib.import_module(module_name)
        for attr, value in vars(module).items():
            if isinstance(value, Script):
                names[value.sha] = f"{module_name.rsplit('.', 1)[-1]}.{attr}"
    return names


def _info(port: int, section: str) -> str:
    """One ``INFO section`` reply as text (a raw socket: no client library's own calls)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"INFO {section}\r\n".encode())
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            head, _, _ = data.partition(b"\r\n")
            if b"\r\n" in data and len(data) >= len(head) + 2 + int(head[1:]) + 2:
                break
    return data.decode(errors="replace")


def _counters(port: int) -> dict[str, int]:
    """Calls per command plus ``reads`` (socket read events), less this probe's own."""
    out: dict[str, int] = {}
    for line in _info(port, "all").splitlines():
        if line.startswith("cmdstat_"):
            name, _, rest = line.partition(":")
            out[name.removeprefix("cmdstat_")] = int(rest.split(",", 1)[0].partition("=")[2])
        elif line.startswith("total_reads_processed:"):
            out["reads"] = int(line.partition(":")[2])
    out.pop("info", None)
    return out


def _delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


class _Client:
    """One keep-alive HTTP/1.1 connection to agentd."""

    def __init__(self, port: int, key: str | None) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        self.headers = {"Content-Type": "application/json"}
        if key:
            self.headers["Authorization"] = f"Bearer {key}"

    def call(self, path: str, body: Any, headers: dict[str, str] | None = None) -> Any:
        self.conn.request("POST", path, json.dumps(body), {**self.headers, **(headers or {})})
        response = self.conn.getresponse()
        data = response.read()
        if response.status not in (200, 201):
            raise RuntimeError(f"{path} answered {response.status}: {data[:300]!r}")
        return json.loads(data)

    def turn(self, sid: str, i: int) -> None:
        self.call(
            "/v1/chat/completions",
            {
                "model": "echo",
                "messages": [{"role": "user", "content": f"hello {i}"}],
                "session_id": sid,
            },
        )


@contextlib.contextmanager
def _monitor(port: int) -> Iterator[list[str]]:
    """Lines of ``MONITOR`` collected while the block runs.

    The block starts once the server answered ``+OK``: until then it may run commands
    from other connections before it reads MONITOR (a turn's first script then goes
    unseen)."""
    lines: list[str] = []
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(b"MONITOR\r\n")
    first = b""
    while b"\r\n" not in first:
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("redis-server closed the MONITOR connection")
        first += chunk
    answer, _, rest = first.partition(b"\r\n")
    if answer != b"+OK":
        raise RuntimeError(f"MONITOR answered {answer!r}")
    stop = threading.Event()

    def read() -> None:
        buf = rest
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            *done, buf = buf.split(b"\r\n")
            lines.extend(x.decode(errors="replace").removeprefix("+") for x in done)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        yield lines
    finally:
        stop.set()
        reader.join(2)
        sock.close()


def _sequence(lines: list[str]) -> list[str]:
    """MONITOR's lines as ``connection command key…`` (arguments trimmed, scripts named)."""
    out = []
    names = script_names()
    for line in lines:
        if line == "OK" or "] " not in line:
            continue
        where, _, cmd = line.partition("] ")
        source = where.rsplit(" ", 1)[-1]
        words = cmd.split('" "')
        name = words[0].strip('"').lower()
        if name in ("info", "monitor"):
            continue
        shown = " ".join(w.strip('"')[:40] for w in words[:3])
        if name == "evalsha":
            sha = words[1].strip('"')
            shown = f"EVALSHA {names.get(sha, sha[:12])}"
        out.append(f"{source:>22}  {shown}")
    return out


def _wait_ends(lines: list[str], turns: int, limit_s: float = 10.0) -> None:
    """Wait until MONITOR showed ``turns`` turn ends: a turn's reply may come before its
    end script reaches the server (or its line reaches this reader)."""
    end = f'"{END_TURN.sha}"'
    deadline = time.monotonic() + limit_s
    while sum(end in line for line in lines) < turns:
        if time.monotonic() > deadline:
            raise RuntimeError(f"MONITOR showed fewer than {turns} turn ends in {limit_s} s")
        time.sleep(0.01)


def measure(
    mode: str, turns: int, rate: float, idle: float, monitor_turns: int, work: Path
) -> dict[str, Any]:
    """One agentd on one Redis in ``mode``; ``rate`` turns/s (0: back to back)."""
    extra = AUTH_CONFIG if mode == "keys" else ""
    env = {"AGENTD_ADMIN_KEY": ADMIN_KEY} if mode == "keys" else None
    with (
        targets.redis(work, []) as redis,
        targets.agentd(work, [], redis_url=redis.url, extra_config=extra, env=env) as agentd,
    ):
        key = None
        if mode == "keys":
            admin = _Client(agentd.port, ADMIN_KEY)
            body = {"tenant": "bench", "name": "load", "limits": KEY_LIMITS}
            key = admin.call("/v1/admin/keys", body)["key"]
        client = _Client(agentd.port, key)
        # Sessions of the agent, as chat's clients make them: a turn writes its agent's
        # session index too (docs/state.md, "Searching sessions").
        sids = [client.call("/v1/sessions", {"agent": "echo"})["id"] for _ in range(SESSIONS)]
        for i in range(SESSIONS * 4):  # warm-up: every session has history, leases are taken
            client.turn(sids[i % SESSIONS], i)
        start = _counters(redis.port)
        t0 = time.monotonic()
        time.sleep(idle)  # the idle window itself is what is measured here
        idle_s = time.monotonic() - t0
        background = _delta(start, _counters(redis.port))
        before = _counters(redis.port)
        t0 = time.monotonic()
        for i in range(turns):
            if rate:  # an open schedule: turn i starts at t0 + i / rate
                time.sleep(max(0.0, t0 + i / rate - time.monotonic()))
            client.turn(sids[i % SESSIONS], i)
        busy_s = time.monotonic() - t0
        during = _delta(before, _counters(redis.port))
        with _monitor(redis.port) as lines:
            for i in range(monitor_turns):
                client.turn(sids[i % SESSIONS], i)
            _wait_ends(lines, monitor_turns)
        client.conn.close()
    scale = busy_s / idle_s
    per_turn = {
        k: round((v - background.get(k, 0) * scale) / turns, 3) for k, v in sorted(during.items())
    }
    return {
        "mode": mode,
        "turns": turns,
        "rate": rate,
        "turns_seconds": round(busy_s, 3),
        "round_trips_per_turn": per_turn.pop("reads", 0.0),
        "commands_per_turn": per_turn,
        "raw_commands_during_turns": {k: v for k, v in sorted(during.items())},
        "background_per_second": {k: round(v / idle_s, 2) for k, v in sorted(background.items())},
        "monitor": _sequence(lines),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.turn_trips", description=__doc__)
    parser.add_argument("--turns", type=int, default=200)
    parser.add_argument("--rate", type=float, default=0.0, help="turns/s (0: back to back)")
    parser.add_argument("--idle", type=float, default=3.0, help="idle window, seconds")
    parser.add_argument("--monitor-turns", type=int, default=3)
    parser.add_argument("--mode", choices=("none", "keys", "both"), default="both")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    modes = ("none", "keys") if args.mode == "both" else (args.mode,)
    results = []
    with tempfile.TemporaryDirectory(prefix="turn-trips-") as tmp:
        for mode in modes:
            work = Path(tmp) / f"{mode}-{secrets.token_hex(3)}"
            work.mkdir()
            run = (mode, args.turns, args.rate, args.idle, args.monitor_turns, work)
            results.append(measure(*run))
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for r in results:
        print(f"## auth.mode = {r['mode']!r}: {r['turns']} turns in {r['turns_seconds']} s")
        print(f"round trips per turn (reads, background subtracted): {r['round_trips_per_turn']}")
        print("commands per turn:", json.dumps(r["commands_per_turn"]))
        print("background per second:", json.dumps(r["background_per_second"]))
        print(f"MONITOR over {args.monitor_turns} turns:")
        for line in r["monitor"]:
            print("   ", line)
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
