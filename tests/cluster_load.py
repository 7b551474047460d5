"""Mixed load for the Redis Cluster failover and resharding tests: chat turns on
sessions, one WebSocket watcher per session (it only listens), and background jobs.
Every request's outcome and duration is recorded; every watcher's events are kept, in
the order heard, to be compared with the store's history afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from .waiting import pace, wait_until

# Far above redis.timeout: a request that takes this long hangs (and is recorded so).
TIMEOUT = aiohttp.ClientTimeout(total=30)


@dataclass
class Request:
    kind: str  # chat, job
    sid: str  # the session (a job: its response id, when accepted)
    started: float
    ended: float
    status: int  # 0: no HTTP answer
    code: str = ""  # the error's code

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def seconds(self) -> float:
        return self.ended - self.started


@dataclass
class Watcher:
    sid: str
    heard: list[tuple[int, str]] = field(default_factory=list)  # (seq, content), in order
    closed: str = ""  # why the connection ended, if it did before the end

    @property
    def seqs(self) -> list[int]:
        return [seq for seq, _ in self.heard]


class ClusterLoad:
    """Turns on every session in ``sids`` (one client each, back to back), a watcher per
    session, and a background job every ``job_every_s``, at ``url`` until :meth:`stop`.
    A client pauses ``pace_s`` between turns: bounded load, which the watchers (in this
    same process) can read as fast as it comes."""

    def __init__(
        self, url: str, sids: list[str], pace_s: float = 0.02, job_every_s: float = 0.5
    ) -> None:
        self.url = url
        self.sids = sids
        self.requests: list[Request] = []
        self.acked: dict[str, list[tuple[int, str]]] = {sid: [] for sid in sids}
        self.jobs: list[str] = []  # ids of accepted background jobs
        self.watchers = {sid: Watcher(sid) for sid in sids}
        self.readyz: list[tuple[float, int]] = []  # (when, status) of /readyz, polled
        self._job_every_s = job_every_s
        self._pace_s = pace_s
        self._stop = asyncio.Event()
        self._http = aiohttp.ClientSession(timeout=TIMEOUT)
        self._watching: list[asyncio.Task[None]] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Open the watchers (each subscribed before this returns), then the traffic."""
        ready = [asyncio.get_running_loop().create_future() for _ in self.sids]
        self._watching = [
            asyncio.create_task(self._watch(w, r))
            for w, r in zip(self.watchers.values(), ready, strict=True)
        ]
        await asyncio.gather(*ready)
        self._tasks = [asyncio.create_task(self._chat(sid)) for sid in self.sids]
        self._tasks.append(asyncio.create_task(self._submit_jobs()))
        self._tasks.append(asyncio.create_task(self._poll_readyz()))

    # -- queries --------------------------------------------------------------------

    def ok_since(self, sid: str, since: float) -> int:
        return sum(1 for r in self.requests if r.sid == sid and r.ok and r.started > since)

    def failures(self) -> list[Request]:
        return [r for r in self.requests if not r.ok]

    def figures(self) -> dict[str, Any]:
        failed = self.failures()
        window = max(r.ended for r in failed) - min(r.started for r in failed) if failed else 0.0
        return {
            "requests": len(self.requests),
            "failed": len(failed),
            "failed_codes": sorted({f"{r.status} {r.code}" for r in failed}),
            "window_s": round(window, 2),
            "slowest_s": round(max((r.seconds for r in self.requests), default=0.0), 2),
            "slowest_kind": max(self.requests, key=lambda r: r.seconds).kind,
            "slowest_failed_s": round(max((r.seconds for r in failed), default=0.0), 2),
            "jobs": len(self.jobs),
            "readyz_503": sum(1 for _, status in self.readyz if status != 200),
            "readyz_unready_s": round(self.unready_s(), 2),
        }

    # -- the clients ------------------------------------------------------------------

    async def _post(self, kind: str, sid: str, path: str, body: dict[str, Any],
                    headers: dict[str, str]) -> dict[str, Any] | None:  # fmt: skip
        started = time.monotonic()
        status, code, reply = 0, "", None
        try:
            async with self._http.post(self.url + path, json=body, headers=headers) as r:
                status = r.status
                data = orjson.loads(await r.read())
                if status == 200:
                    reply = data
                else:
                    code = str(data.get("error", {}).get("code", ""))
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError) as exc:
            code = type(exc).__name__
        self.requests.append(Request(kind, sid, started, time.monotonic(), status, code))
        return reply

    async def _chat(self, sid: str) -> None:
        turn = 0
        while not self._stop.is_set():
            turn += 1
            content = f"{sid} turn {turn}"
            body = {"model": "echo", "messages": [{"role": "user", "content": content}]}
            reply = await self._post("chat", sid, "/v1/chat/completions", body,
                                     {"X-Session-Id": sid})  # fmt: skip
            if reply is not None:
                self.acked[sid].append((int(reply["seq"]), content))
            await self._pause(self._pace_s)

    async def _submit_jobs(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            body = {"model": "slow", "input": f"job {n} of the load", "background": True}
            reply = await self._post("job", "", "/v1/responses", body, {})
            if reply is not None:
                self.jobs.append(str(reply["id"]))
                self.requests[-1].sid = str(reply["id"])
            await self._pause(self._job_every_s)

    async def _poll_readyz(self) -> None:
        """What a balancer's health check sees, every 100 ms."""
        while not self._stop.is_set():
            try:
                async with self._http.get(self.url + "/readyz") as r:
                    await r.read()
                    self.readyz.append((time.monotonic(), r.status))
            except (aiohttp.ClientError, TimeoutError):
                self.readyz.append((time.monotonic(), 0))
            await self._pause(0.1)

    def unready_s(self) -> float:
        """How long /readyz said not ready (from its first such answer to its last)."""
        bad = [t for t, status in self.readyz if status != 200]
        return max(bad) - min(bad) if bad else 0.0

    async def _pause(self, seconds: float) -> None:
        await pace(self._stop, seconds)

    async def _watch(self, me: Watcher, ready: asyncio.Future[None]) -> None:
        try:
            async with self._http.ws_connect(self.url + "/v1/ws") as ws:
                await ws.send_json({"type": "hello", "session_id": me.sid, "after": 0})
                while True:
                    msg = await ws.receive()
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        me.closed = f"{msg.type.name} {msg.data} {msg.extra}"
                        return
                    frame = orjson.loads(msg.data)
                    if frame["type"] == "ready" and not ready.done():
                        ready.set_result(None)
                    elif frame["type"] == "event" and "seq" in frame:
                        me.heard.append((int(frame["seq"]), frame["message"]["content"]))
                    elif frame["type"] == "error":
                        me.closed = f"error frame {frame}"
                        if not ready.done():
                            ready.set_exception(AssertionError(me.closed))
                        return
        except (aiohttp.ClientError, OSError) as exc:
            me.closed = repr(exc)
            if not ready.done():
                ready.set_exception(exc)

    # -- the end --------------------------------------------------------------------

    async def stop(self) -> None:
        """Stop the traffic (each client ends its request in flight)."""
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def watchers_caught_up(self, last: dict[str, int], limit: float = 30.0) -> None:
        """Wait until every watcher heard its session's last stored seq (or stopped)."""

        def done() -> bool:
            return all(
                w.closed or (w.heard and w.heard[-1][0] >= last[w.sid]) or last[w.sid] == 0
                for w in self.watchers.values()
            )

        try:
            await wait_until(done, limit, "every watcher to hear its session's last message")
        except AssertionError as exc:
            behind = {
                w.sid: (w.heard[-1][0] if w.heard else 0, last[w.sid], w.closed)
                for w in self.watchers.values()
            }
            raise AssertionError(f"{exc}: (heard, stored, closed) {behind}") from None

    async def history(self, sid: str) -> list[tuple[int, str]]:
        """The session's stored messages (seq, content), oldest first."""
        rows: list[tuple[int, str]] = []
        while True:
            after = rows[-1][0] if rows else 0
            url = f"{self.url}/v1/sessions/{sid}/messages?limit=1000&after={after}"
            async with self._http.get(url) as r:
                assert r.status == 200, await r.text()
                page = orjson.loads(await r.read())
            rows += [(int(m["seq"]), m["content"]) for m in page["data"]]
            if not page["has_more"]:
                return rows

    async def job_ends(self, limit: float = 60.0) -> dict[str, str]:
        """Each accepted job's status once all ended, or after ``limit`` seconds (then
        some may still be ``queued`` or ``in_progress``)."""
        statuses: dict[str, str] = {}

        async def all_ended() -> bool:
            for job in self.jobs:
                if statuses.get(job) in ("completed", "failed", "cancelled", "incomplete"):
                    continue
                async with self._http.get(f"{self.url}/v1/responses/{job}") as r:
                    statuses[job] = str(orjson.loads(await r.read()).get("status", r.status))
            return all(s not in ("queued", "in_progress") for s in statuses.values())

        with contextlib.suppress(AssertionError):
            await wait_until(all_ended, limit, "every accepted job to end", 0.2)
        return statuses

    async def close(self) -> None:
        self._stop.set()
        for task in (*self._tasks, *self._watching):
            task.cancel()
        await asyncio.gather(*self._tasks, *self._watching, return_exceptions=True)
        await self._http.close()
