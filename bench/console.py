"""The console in a real browser, measured against baselines of the same run:
``python -m bench.console``.

* **Cold load**: a fresh browser context (empty cache) opens ``/console`` until the chat
  view is connected over its WebSocket, against the same fresh context loading a bare
  page of the same server (``/healthz``): the ratio says what the console costs beyond
  one round trip to the server.
* **10,000 sessions**: the Sessions view's first page shown, with the tenant holding
  20 sessions, then 10,000 (the listing is paged: the ratio should stay near 1); and the
  same for the first page of one agent's 20 sessions searched by agent, among 20 then
  10,000 (each agent has its own index: near 1 too).
* **A session receiving 100 events per second**: while another client appends 100
  messages a second to the session the chat view shows, how late the page's timers fire
  (its main thread's responsiveness) and how long a turn typed in the page takes to come
  back, each against the same page with the session quiet; and that every event arrived.

Debian's chromium (``make system-deps``) through Playwright, as the console's tests.
Results go to ``bench/results/<UTC>-console/results.json`` and are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
from playwright.sync_api import Browser, Page, expect

from tests.browser import launch
from tests.procs import AgentdProcess, RedisServer

RESULTS = Path(__file__).resolve().parent / "results"
WAIT_MS = 60_000
# In the page: how late a 20 ms timer fires, sampled for the measurement window.
LAG_PROBE = """(seconds) => new Promise((done) => {
  const lags = []; let last = performance.now();
  const timer = setInterval(() => { const now = performance.now();
    lags.push(Math.max(0, now - last - 20)); last = now; }, 20);
  setTimeout(() => { clearInterval(timer); done(lags); }, seconds * 1000);
})"""

# Bytes the page fetched over the network (headers included), its own document too.
TRANSFERRED = """() => performance.getEntriesByType("navigation")
  .concat(performance.getEntriesByType("resource"))
  .reduce((n, e) => n + e.transferSize, 0)"""

CONFIG = """
[server]
workers = 2
[redis]
urls = ["{redis}"]
[[backends]]
name = "echo"
type = "echo"
[[agents]]
name = "echo"
backend = "echo"
"""


def _median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 2)


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 2)


def cold_load(browser: Browser, url: str, runs: int) -> dict[str, Any]:
    def timed(path: str, ready: str | None) -> tuple[float, int]:
        context = browser.new_context()  # an empty cache each time
        page = context.new_page()
        start = time.perf_counter()
        page.goto(url + path)
        if ready:
            expect(page.locator(ready)).to_have_text("connected", timeout=WAIT_MS)
        elapsed = time.perf_counter() - start
        size = page.evaluate(TRANSFERRED)
        context.close()
        return elapsed, size

    console = [timed("/console#chat", '[aria-label="Connection"]') for _ in range(runs)]
    bare = [timed("/healthz", None) for _ in range(runs)]
    c, b = _median_ms([t for t, _ in console]), _median_ms([t for t, _ in bare])
    return {
        "console_ready_ms": c,
        "bare_page_ms": b,
        "ratio": round(c / b, 2),
        "console_bytes_transferred": console[0][1],
        "runs": runs,
    }


def sessions_view(page: Page, url: str, runs: int, agent: str | None = None) -> float:
    """The median time to show the first page, of ``agent``'s sessions when given (after
    one run that warms the cache)."""
    samples = []
    for _ in range(runs + 1):
        start = time.perf_counter()
        page.goto(url + "/console#sessions")
        page.reload()
        rows = page.get_by_role("table", name="Sessions").locator("tbody tr")
        expect(rows).to_have_count(20, timeout=WAIT_MS)
        if agent:
            page.get_by_label("Agent").fill(agent)
            page.get_by_role("button", name="Search").click()
            expect(page.locator(".pager [role=status]")).to_have_text(
                f"page 1, 20 session(s) of {agent}", timeout=WAIT_MS
            )
        samples.append(time.perf_counter() - start)
    return _median_ms(samples[1:])


def create_sessions(url: str, count: int, agent: str | None = None) -> None:
    """In a thread of its own: Playwright's sync API holds this thread's event loop."""
    worker = threading.Thread(target=lambda: asyncio.run(_create_sessions(url, count, agent)))
    worker.start()
    worker.join()


async def _create_sessions(url: str, count: int, agent: str | None) -> None:
    body = {"agent": agent} if agent else {}
    async with aiohttp.ClientSession() as http:
        gate = asyncio.Semaphore(64)

        async def one() -> None:
            async with gate, http.post(url + "/v1/sessions", json=body) as r:
                assert r.status == 201, await r.text()

        await asyncio.gather(*(one() for _ in range(count)))


def _post_events(port: int, sid: str, rate: float, seconds: float, sent: list[int]) -> None:
    """Append one message every 1/rate s on a kept-alive connection (a paced load)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    start = time.monotonic()
    for i in range(int(rate * seconds)):
        pause = start + i / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)  # pacing the load, not waiting for a condition
        body = json.dumps({"messages": [{"role": "user", "content": f"event {i}"}]})
        conn.request(
            "POST", f"/v1/sessions/{sid}/messages", body, {"Content-Type": "application/json"}
        )
        response = conn.getresponse()
        response.read()
        assert response.status == 201
        sent[0] += 1
    conn.close()


def _turn_ms(page: Page, text: str) -> float:
    start = time.perf_counter()
    page.get_by_label("Message").fill(text)
    page.get_by_role("button", name="Send").click()
    reply = page.locator('.msg[data-role="assistant"]').filter(has_text=text)
    expect(reply).to_have_attribute("data-state", "done", timeout=WAIT_MS)
    return time.perf_counter() - start


def busy_session(page: Page, url: str, port: int, rate: float, seconds: float) -> dict[str, Any]:
    page.goto(url + "/console#chat")
    status = page.get_by_role("status", name="Connection")
    expect(status).to_have_text("connected", timeout=WAIT_MS)
    sid = page.locator("#session-id").inner_text()
    quiet_turns = [_turn_ms(page, f"quiet {i}") for i in range(5)]
    quiet = page.evaluate(LAG_PROBE, seconds)
    sent = [0]
    poster = threading.Thread(target=_post_events, args=(port, sid, rate, seconds + 2, sent))
    poster.start()
    busy = page.evaluate(LAG_PROBE, seconds)
    busy_turns = [_turn_ms(page, f"busy {i}") for i in range(5)]
    poster.join()
    last = f"event {sent[0] - 1}"
    expect(page.locator(".msg").filter(has_text=last)).to_have_count(1, timeout=WAIT_MS)
    quiet_turn, busy_turn = _median_ms(quiet_turns), _median_ms(busy_turns)
    return {
        "rate_per_s": rate,
        "events_sent": sent[0],
        "last_event_shown": True,
        "timer_lag_p99_ms": {"quiet": _p99(quiet), "busy": _p99(busy)},
        "timer_lag_max_ms": {"quiet": round(max(quiet), 2), "busy": round(max(busy), 2)},
        "turn_ms": {
            "quiet": quiet_turn,
            "busy": busy_turn,
            "ratio": round(busy_turn / quiet_turn, 2),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.console", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--runs", type=int, default=5, help="cold loads of each page (default 5)")
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=100.0, help="events per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="the busy window")
    parser.add_argument("--out", type=Path, help="results directory (default bench/results/…)")
    args = parser.parse_args(argv)
    if args.sessions <= 20:
        parser.error("--sessions must be more than 20 (the first page, measured first)")
    if args.runs < 1 or args.rate <= 0 or args.seconds <= 0:
        parser.error("--runs, --rate and --seconds must be positive")
    workdir = Path(tempfile.mkdtemp(prefix="agentd-bench-console-"))
    redis = RedisServer(workdir)
    proc = AgentdProcess(workdir, CONFIG.format(redis=redis.url), [], {})
    results: dict[str, Any] = {}
    try:
        proc.wait_ready()
        with launch() as browser:
            results["cold_load"] = cold_load(browser, proc.url, args.runs)
            page = browser.new_page()
            create_sessions(proc.url, 20, agent="echo")
            few = sessions_view(page, proc.url, args.runs)
            few_of = sessions_view(page, proc.url, args.runs, agent="echo")
            create_sessions(proc.url, args.sessions - 20)  # of no agent
            many = sessions_view(page, proc.url, args.runs)
            many_of = sessions_view(page, proc.url, args.runs, agent="echo")
            results["sessions_view"] = {
                "first_page_ms": {"20": few, str(args.sessions): many},
                "ratio": round(many / few, 2),
                "agent_search_ms": {"20": few_of, str(args.sessions): many_of},
                "agent_search_ratio": round(many_of / few_of, 2),
            }
            results["busy_session"] = busy_session(
                page, proc.url, proc.port, args.rate, args.seconds
            )
    finally:
        proc.stop()
        redis.close()
    out = args.out or RESULTS / (time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-console")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    json.dump(results, sys.stdout, indent=2)
    print(f"\nwritten to {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
