"""The console's Sessions view searches a tenant's sessions by agent
(``GET /v1/sessions?agent=NAME``), a page at a time, in a real headless Chromium against
a real ``agentd serve`` on a real Redis. Each test fails on any error in the browser's
console."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Locator, Page, expect

from .browser import ConsoleWatch, launch, shoot
from .console_harness import (
    ADMIN_KEY,
    Api,
    console_server,
    console_tab,
    new_key,
)
from .procs import AgentdProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentdProcess]:
    with console_server(tmp_path_factory.mktemp("console-search")) as proc:
        yield proc


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with launch() as chromium:
        yield chromium


@pytest.fixture
def admin(server: AgentdProcess) -> Api:
    return Api(server.url, ADMIN_KEY)


@pytest.fixture
def page(browser: Browser) -> Iterator[tuple[Page, ConsoleWatch]]:
    with console_tab(browser) as made:
        yield made


def sign_in(tab: Page, url: str, credential: str, view: str) -> None:
    tab.goto(f"{url}/console#{view}")
    tab.get_by_label("API key or token").fill(credential)
    tab.get_by_role("button", name="Sign in").click()
    expect(tab.get_by_role("navigation", name="Views")).to_be_visible()


def sessions_of(tenant: Api, agent: str | None, count: int) -> list[str]:
    made = []
    for _ in range(count):
        status, body = tenant.call("POST", "/v1/sessions", {"agent": agent} if agent else {})
        assert status == 201, body
        made.append(body["id"])
    return made


def shown(rows: Locator) -> list[str | None]:
    return [rows.nth(i).get_attribute("data-session") for i in range(rows.count())]


def search(tab: Page, agent: str) -> None:
    form = tab.get_by_role("search", name="Search sessions")
    form.get_by_label("Agent").fill(agent)
    form.get_by_role("button", name="Search").click()


def test_sessions_are_searched_by_agent_a_page_at_a_time(
    page: tuple[Page, ConsoleWatch], server: AgentdProcess, admin: Api
) -> None:
    tab, watch = page
    watch.expect("GET", "/v1/sessions", 400)  # the malformed name below
    key, _ = new_key(admin, "searching", ["chat", "sessions"])
    tenant = Api(server.url, key)
    echo = sessions_of(tenant, "echo", 23)
    slow = sessions_of(tenant, "slow", 3)
    sessions_of(tenant, None, 2)
    sessions_of(Api(server.url, new_key(admin, "elsewhere", ["sessions"])[0]), "slow", 2)
    sign_in(tab, server.url, key, "sessions")
    rows = tab.get_by_role("table", name="Sessions").locator("tbody tr")
    info = tab.locator(".pager [role=status]")
    expect(rows).to_have_count(20)
    # The agents to pick from: the models this key may use.
    expect(tab.locator("#session-agents option")).to_have_count(2)
    assert sorted(
        tab.locator("#session-agents option").evaluate_all("(os) => os.map((o) => o.value)")
    ) == ["echo", "slow"]

    search(tab, "slow")  # the tenant's three, not the other tenant's two
    expect(info).to_have_text("page 1, 3 session(s) of slow")
    assert sorted(shown(rows)) == sorted(slow)  # type: ignore[type-var]
    for i in range(3):
        expect(rows.nth(i).locator("td").nth(1)).to_have_text("slow")
    shoot(tab, "sessions-search")

    search(tab, "echo")  # 23: two pages, each session once
    expect(info).to_have_text("page 1, 20 session(s) of echo")
    first = shown(rows)
    tab.get_by_role("button", name="Next page").click()
    expect(info).to_have_text("page 2, 3 session(s) of echo")
    expect(tab.get_by_role("button", name="Next page")).to_be_hidden()
    second = shown(rows)
    assert len(set(first) | set(second)) == 23 and set(first) | set(second) == set(echo)

    search(tab, "nobody")
    expect(rows).to_have_text(["No sessions of nobody."])
    search(tab, "not a name")
    expect(tab.locator("#view").get_by_role("alert")).to_have_text(
        re.compile(r"^400 invalid_agent: ")
    )
    expect(rows).to_have_count(0)  # not the rows of the search before
    tab.get_by_role("button", name="Show all").click()
    expect(info).to_have_text("page 1, 20 session(s)")
    expect(tab.locator("#view").get_by_role("alert")).to_have_text("")
    expect(tab.get_by_role("button", name="Show all")).to_be_hidden()


def test_a_key_without_the_chat_scope_searches_by_a_typed_agent(
    page: tuple[Page, ConsoleWatch], server: AgentdProcess, admin: Api
) -> None:
    tab, _ = page
    # No chat scope: GET /v1/models would be refused, so the page does not ask it (the
    # watch fails the test on a 403) and the agent's name is typed.
    key, _ = new_key(admin, "typing", ["sessions"])
    mine = sessions_of(Api(server.url, key), "echo", 2)
    sign_in(tab, server.url, key, "sessions")
    rows = tab.get_by_role("table", name="Sessions").locator("tbody tr")
    expect(rows).to_have_count(2)
    expect(tab.locator("#session-agents option")).to_have_count(0)
    search(tab, "echo")
    expect(tab.locator(".pager [role=status]")).to_have_text("page 1, 2 session(s) of echo")
    assert sorted(shown(rows)) == sorted(mine)  # type: ignore[type-var]
