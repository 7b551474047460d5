"""The console's operator views against the real APIs: Background work (dead letters
retried and discarded, a response followed and cancelled) and Cluster (a second
instance appearing, charts updating live), in a real headless Chromium, against real
``agentd serve`` processes on a real Redis. The agent's upstream is a stub that fails
until a test says otherwise, and a job gets one attempt, so a failure is a dead letter
at once. Each test fails on any error in the browser's console."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from .browser import ConsoleWatch, launch, shoot
from .console_harness import ADMIN_KEY, Api, console_tab, words
from .openai_stub import Fail, Normal
from .procs import AgentdProcess, RedisServer
from .stub_thread import ThreadedStub
from .waiting import wait_until_sync

pytestmark = pytest.mark.slow

LIMIT_S = 60.0


def config(redis: RedisServer, stub: ThreadedStub, instance: str, workers: int) -> str:
    return f"""
[server]
workers = {workers}
instance_id = "{instance}"
shutdown_timeout = 5.0
[redis]
urls = ["{redis.url}"]
[auth]
mode = "keys"
[jobs]
max_attempts = 1
[[backends]]
name = "up"
type = "openai"
urls = ["{stub.url}"]
breaker_failures = 1000
[[backends]]
name = "slow"
type = "echo"
tokens_per_s = 10.0
[[agents]]
name = "helper"
backend = "up"
cache = {{mode = "off"}}
[[agents]]
name = "slow"
backend = "slow"
"""


class Cluster:
    """One Redis, the stub upstream, and the first instance (two workers)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.redis = RedisServer(base)
        self.stub = ThreadedStub(Fail(503))
        self.first = self.start("edge-1", workers=2)

    def start(self, instance: str, workers: int) -> AgentdProcess:
        workdir = self.base / instance
        workdir.mkdir()
        proc = AgentdProcess(
            workdir,
            config(self.redis, self.stub, instance, workers),
            [],
            {"AGENTD_ADMIN_KEY": ADMIN_KEY},
        )
        proc.wait_ready()
        return proc

    def close(self) -> None:
        self.first.stop()
        self.stub.close()
        self.redis.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    made = Cluster(tmp_path_factory.mktemp("console-ops"))
    try:
        yield made
    finally:
        made.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with launch() as chromium:
        yield chromium


@pytest.fixture
def admin(cluster: Cluster) -> Api:
    return Api(cluster.first.url, ADMIN_KEY)


@pytest.fixture
def page(browser: Browser) -> Iterator[tuple[Page, ConsoleWatch]]:
    with console_tab(browser) as made:
        yield made


def sign_in(tab: Page, url: str, view: str) -> None:
    tab.goto(f"{url}/console#{view}")
    tab.get_by_label("API key or token").fill(ADMIN_KEY)
    tab.get_by_role("button", name="Sign in").click()
    expect(tab.get_by_role("navigation", name="Views")).to_be_visible()


def submit(admin: Api, agent: str, text: str) -> str:
    status, made = admin.call(
        "POST", "/v1/responses", {"model": agent, "input": text, "background": True}
    )
    assert status == 200, made
    return made["id"]  # type: ignore[no-any-return]


def dead_letter_of(admin: Api, rid: str) -> dict[str, Any] | None:
    status, page = admin.call("GET", "/v1/admin/jobs/dead?partition=default")
    assert status == 200, page
    return next((d for d in page["data"] if d["response_id"] == rid), None)


def response(admin: Api, rid: str) -> dict[str, Any]:
    status, body = admin.call("GET", f"/v1/responses/{rid}")
    assert status == 200, body
    return body  # type: ignore[no-any-return]


def stored_error(admin: Api, rid: str) -> str:
    error = response(admin, rid)["error"]
    return f"{error.get('agentd_code') or error['code']}: {error['message']}"


def failed_to_a_dead_letter(cluster: Cluster, admin: Api) -> tuple[str, dict[str, Any]]:
    """A background response whose one attempt fails (the stub answers 503)."""
    cluster.stub.node.mode = Fail(503)
    rid = submit(admin, "helper", "hello again")
    letter = wait_until_sync(lambda: dead_letter_of(admin, rid), LIMIT_S, "a dead letter")
    return rid, letter


def dead_count(tab: Page) -> Any:
    row = tab.get_by_role("table", name="Partitions").locator('tr[data-partition="default"]')
    return row.locator("td").nth(5)


def test_a_dead_letter_retried_from_the_page_runs_to_completion(
    page: tuple[Page, ConsoleWatch], cluster: Cluster, admin: Api
) -> None:
    tab, _ = page
    rid, letter = failed_to_a_dead_letter(cluster, admin)
    sign_in(tab, cluster.first.url, "jobs")
    expect(dead_count(tab)).to_have_text("1")
    tab.get_by_role("button", name="Dead letters of default").click()
    letters = tab.get_by_role("table", name="Dead letters of default")
    row = letters.locator(f'tr[data-dead="{letter["id"]}"]')
    expect(row).to_contain_text(letter["error"]["code"])
    expect(row).to_contain_text("(operator)")

    # Opened and followed: the stored events, up to the failure.
    row.get_by_role("button", name=f"Open {rid}").click()
    status = tab.get_by_role("status", name="Response status")
    expect(status).to_have_text("failed")
    expect(tab.get_by_role("button", name="Cancel response")).to_be_disabled()
    tab.get_by_role("button", name="Follow events").click()
    events = tab.get_by_role("list", name="Response events").locator("li")
    expect(events.last).to_have_text("response.failed")
    failure = tab.get_by_role("region", name="Response").locator("p").first
    expect(failure).to_contain_text(f"failed · {stored_error(admin, rid)}")
    before = events.all_inner_texts()
    shoot(tab, "background-work")

    # Retried once the upstream works: the view goes on after response.failed.
    cluster.stub.node.mode = Normal()
    row.get_by_role("button", name=f"Retry {letter['id']}").click()
    expect(tab.get_by_role("status", name="Last action")).to_have_text(
        f"Dead letter {letter['id']} retried: {rid} is queued again."
    )
    expect(row).to_have_count(0)
    expect(status).to_have_text("completed")
    expect(failure).not_to_contain_text("failed")
    expect(events.last).to_have_text("response.completed")
    stored = response(admin, rid)
    assert stored["status"] == "completed", stored
    expect(tab.get_by_label("Output")).to_have_text(stored["output"][0]["content"][0]["text"])
    after = events.all_inner_texts()
    # Each event once: the old ones as they were, then the new attempt's.
    assert after[: len(before)] == before
    assert after[len(before)] == "response.in_progress", after
    assert "response.output_text.delta" in after[len(before) :], after
    expect(dead_count(tab)).to_have_text("0")
    expect(letters).to_contain_text("No dead letters.")
    assert dead_letter_of(admin, rid) is None
    events.last.scroll_into_view_if_needed()  # the picture shows the new attempt's end
    shoot(tab, "background-work-retried")


def test_retrying_the_open_response_unfollowed_follows_it_through_both_attempts(
    page: tuple[Page, ConsoleWatch], cluster: Cluster, admin: Api
) -> None:
    tab, _ = page
    rid, letter = failed_to_a_dead_letter(cluster, admin)
    sign_in(tab, cluster.first.url, f"jobs/{rid}")  # opened by its address, not followed
    expect(tab.get_by_role("status", name="Response status")).to_have_text("failed")
    tab.get_by_role("button", name="Dead letters of default").click()
    cluster.stub.node.mode = Normal()
    tab.get_by_role("button", name=f"Retry {letter['id']}").click()
    events = tab.get_by_role("list", name="Response events").locator("li")
    expect(events.last).to_have_text("response.completed")
    expect(tab.get_by_role("status", name="Response status")).to_have_text("completed")
    seen = events.all_inner_texts()
    # The stream from the start stopped at the old failure; the page went on after it.
    assert seen[0] == "response.created", seen
    assert seen.count("response.failed") == 1 and seen.count("response.created") == 1, seen
    assert seen[seen.index("response.failed") + 1] == "response.in_progress", seen
    assert response(admin, rid)["status"] == "completed"


def test_a_dead_letter_discarded_from_the_page_is_gone_and_a_refusal_is_shown(
    page: tuple[Page, ConsoleWatch], cluster: Cluster, admin: Api
) -> None:
    tab, watch = page
    watch.expect("POST", r"/v1/admin/jobs/dead/[^/]+/retry", 404)  # the refusal below
    rid, letter = failed_to_a_dead_letter(cluster, admin)
    other_rid, other = failed_to_a_dead_letter(cluster, admin)
    sign_in(tab, cluster.first.url, "jobs")
    expect(dead_count(tab)).to_have_text("2")
    tab.get_by_role("button", name="Dead letters of default").click()
    rows = tab.get_by_role("table", name="Dead letters of default").locator("tbody tr")
    # Newest first, as the API lists them.
    expect(rows).to_have_count(2)
    assert [rows.nth(i).get_attribute("data-dead") for i in range(2)] == [other["id"], letter["id"]]

    row = tab.locator(f'tr[data-dead="{letter["id"]}"]')
    row.get_by_role("button", name=f"Discard {letter['id']}").click()  # confirmed
    expect(tab.get_by_role("status", name="Last action")).to_have_text(
        f"Dead letter {letter['id']} discarded: {rid} stays failed."
    )
    expect(row).to_have_count(0)
    expect(dead_count(tab)).to_have_text("1")
    assert dead_letter_of(admin, rid) is None
    assert response(admin, rid)["status"] == "failed"

    # Discarded elsewhere meanwhile: the page's retry is refused, and says why.
    path = f"/v1/admin/jobs/dead/{other['id']}?partition=default"
    assert admin.call("DELETE", path)[0] == 200
    tab.get_by_role("button", name=f"Retry {other['id']}").click()
    expect(tab.locator("#view").get_by_role("alert")).to_have_text(
        re.compile(r"^404 dead_letter_not_found: .* \(already retried or discarded\)$")
    )
    expect(tab.locator(f'tr[data-dead="{other["id"]}"]')).to_have_count(1)  # as it was shown
    assert response(admin, other_rid)["status"] == "failed"


def test_a_running_response_is_followed_and_cancelled(
    page: tuple[Page, ConsoleWatch], cluster: Cluster, admin: Api
) -> None:
    tab, _ = page
    text = words("w", 300)  # 30 s at 10 words a second: cancelled long before its end
    rid = submit(admin, "slow", text)
    sign_in(tab, cluster.first.url, f"jobs/{rid}")  # a response opened by its address
    tab.get_by_role("button", name="Follow events").click()
    output = tab.get_by_label("Output")
    expect(output).to_contain_text("w3 ")
    status = tab.get_by_role("status", name="Response status")
    expect(status).to_have_text("in_progress")
    tab.get_by_role("button", name="Cancel response").click()
    expect(status).to_have_text("cancelled")
    expect(tab.get_by_role("button", name="Cancel response")).to_be_disabled()
    # The stream ends with the terminal event OpenAI's stream has for it.
    expect(tab.get_by_role("list", name="Response events").locator("li").last).to_have_text(
        "response.incomplete"
    )
    assert response(admin, rid)["status"] == "cancelled"
    assert "w299" not in output.inner_text()


SAMPLES = "(title) => Number(document.querySelector(`[data-chart='${title}']`).dataset.samples)"


def test_a_second_instance_appears_in_the_cluster_view_and_the_charts_go_on(
    page: tuple[Page, ConsoleWatch], cluster: Cluster
) -> None:
    tab, _ = page
    sign_in(tab, cluster.first.url, "cluster")
    summary = tab.get_by_role("status").filter(has_text="instance(s)")
    expect(summary).to_have_text("1 instance(s), 2 worker(s)")
    workers = tab.get_by_role("table", name="Workers")
    expect(workers.locator('tr[data-worker^="edge-1/"]')).to_have_count(2)
    nodes = tab.get_by_role("table", name="Backend nodes")
    expect(nodes.locator("tr").filter(has_text=cluster.stub.url)).to_contain_text("closed")
    tab.evaluate("window.sameLoad = true")  # gone if the page reloaded

    second = cluster.start("edge-2", workers=1)
    try:
        expect(summary).to_have_text("2 instance(s), 3 worker(s)")
        expect(workers.locator('tr[data-worker="edge-2/0"]')).to_contain_text(
            f"127.0.0.1:{second.port}"
        )
        # A WebSocket opened elsewhere (the chat of another tab) shows in the chart.
        sockets = tab.locator("[data-chart='WebSocket connections'] .legend")
        expect(sockets).to_have_text("open 0")
        other = tab.context.new_page()
        other_watch = ConsoleWatch(other)
        sign_in(other, cluster.first.url, "chat")
        expect(other.get_by_role("status", name="Connection")).to_have_text("connected")
        expect(sockets).to_have_text("open 1")
        other.close()
        other_watch.check()
        expect(sockets).to_have_text("open 0")
        # The rate charts: a value from each two polls, more samples as polls go on.
        requests = tab.locator("[data-chart='Requests'] .legend")
        expect(requests).to_have_text(re.compile(r"^per second \d+(\.\d+)? /s$"))
        seen = tab.evaluate(SAMPLES, "Requests")
        # A few more (for the picture's lines too).
        tab.wait_for_function(f"() => ({SAMPLES})('Requests') >= {seen + 3}")
        shoot(tab, "cluster")
    finally:
        second.stop()
    # A stopped instance removes its entries as it drains: gone at once.
    expect(summary).to_have_text("1 instance(s), 2 worker(s)")
    expect(workers.locator('tr[data-worker^="edge-2/"]')).to_have_count(0)
    assert tab.evaluate("window.sameLoad") is True
