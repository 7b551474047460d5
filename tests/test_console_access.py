"""What the console shows when an API a view needs is not the caller's to use or not
there: a key without the admin scope (no admin view, not even by its address, and no
admin call), a key without a scope a view's part needs, a standalone server (no Redis:
its own registry and queue), and a server whose admin API is partly not published
(tests/edge_proxy.py: the views say "not available"). In a real headless Chromium
against a real standalone ``agentd serve`` in keys mode; each test fails on any error
in the browser's console and on any error answer it did not declare."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, Request, expect

from .browser import ConsoleWatch, launch, shoot
from .console_harness import ADMIN_KEY, Api, console_tab, new_key
from .edge_proxy import Edge
from .procs import AgentdProcess, free_port
from .waiting import wait_until_sync

pytestmark = pytest.mark.slow

LIMIT_S = 60.0
ADMIN_VIEWS = ("Background work", "Cluster", "Keys")


def config(closed_port: int) -> str:
    # No [redis]: the in-memory store of standalone mode. The "helper" agent's upstream
    # is a port nothing listens on and a job gets one attempt: a dead letter at once.
    return f"""
[server]
shutdown_timeout = 5.0
[auth]
mode = "keys"
[jobs]
max_attempts = 1
[[backends]]
name = "echo"
type = "echo"
[[backends]]
name = "down"
type = "openai"
urls = ["http://127.0.0.1:{closed_port}"]
[[agents]]
name = "echo"
backend = "echo"
[[agents]]
name = "helper"
backend = "down"
cache = {{mode = "off"}}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentdProcess]:
    workdir = tmp_path_factory.mktemp("console-access")
    proc = AgentdProcess(workdir, config(free_port()), [], {"AGENTD_ADMIN_KEY": ADMIN_KEY})
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


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


@pytest.fixture
def edge(server: AgentdProcess, request: pytest.FixtureRequest) -> Iterator[Edge]:
    """The server behind an edge that does not publish the paths the test names. A test
    asks for it before ``page``, so that the tab is closed (and its console checked)
    before the edge goes: a view polling through a closed edge is no error of agentd's."""
    made = Edge(server.url, request.param)
    try:
        yield made
    finally:
        made.close()


def sign_in(tab: Page, url: str, credential: str, view: str) -> None:
    tab.goto(f"{url}/console#{view}")
    tab.get_by_label("API key or token").fill(credential)
    tab.get_by_role("button", name="Sign in").click()
    expect(tab.get_by_role("navigation", name="Views")).to_be_visible()


def not_available(tab: Page, what: str) -> None:
    message = tab.locator("#view .notfound")
    expect(message).to_have_text(f"{what} is not available on this server.")
    expect(message).to_have_attribute("role", "status")


def test_a_key_without_admin_gets_no_admin_view_even_by_its_address(
    page: tuple[Page, ConsoleWatch], server: AgentdProcess, admin: Api
) -> None:
    tab, watch = page
    asked: list[str] = []
    tab.on("request", lambda r: asked.append(r.url))
    key, _ = new_key(admin, "readers", ["sessions"])
    sign_in(tab, server.url, key, "sessions")
    nav = tab.get_by_role("navigation", name="Views")
    for name in ("Sessions", "Usage"):
        expect(nav.get_by_role("link", name=name)).to_be_visible()
    for name in ("Chat", "Shared state", *ADMIN_VIEWS):
        expect(nav.get_by_role("link", name=name)).to_be_hidden()
    # Asked for by their addresses, the views it may not use show its first view instead.
    for view in ("jobs", "jobs/resp_0123", "cluster", "keys", "chat", "state"):
        tab.goto(f"{server.url}/console#{view}")
        expect(tab).to_have_url(re.compile(r"#sessions$"))
        expect(tab.get_by_role("heading", name="Sessions", exact=True)).to_be_visible()
    # Usage: its own tenant only (the every-tenant figures need admin: not asked for).
    nav.get_by_role("link", name="Usage").click()
    expect(tab.get_by_role("table", name="Your tenant (readers)")).to_be_visible()
    expect(tab.locator("#view table")).to_have_count(1)
    admin_calls = [u for u in asked if "/v1/admin/" in u or "/v1/models" in u]
    assert not admin_calls, admin_calls
    assert not watch.failures, watch.failures


def test_a_key_without_the_responses_scope_is_told_so_when_it_opens_a_response(
    page: tuple[Page, ConsoleWatch], server: AgentdProcess, admin: Api
) -> None:
    tab, watch = page
    watch.expect("GET", r"/v1/responses/[^/]+", 403)
    status, made = admin.call(
        "POST", "/v1/responses", {"model": "echo", "input": "hi", "background": True}
    )
    assert status == 200, made
    key, _ = new_key(admin, "", ["admin"])  # the operator's tenant, admin alone
    sign_in(tab, server.url, key, f"jobs/{made['id']}")
    expect(tab.get_by_role("heading", name="Background work")).to_be_visible()
    expect(tab.get_by_role("table", name="Partitions")).to_be_visible()  # admin: allowed
    expect(tab.get_by_role("region", name="Response").get_by_role("alert")).to_have_text(
        re.compile(r"^403 permission_denied: .*responses")
    )


def test_a_standalone_server_shows_its_own_instance_and_queue(
    page: tuple[Page, ConsoleWatch], server: AgentdProcess
) -> None:
    tab, _ = page
    # No Redis: the registry and the queue are the in-memory store's, not absent.
    sign_in(tab, server.url, ADMIN_KEY, "cluster")
    expect(tab.get_by_role("status").filter(has_text="instance(s)")).to_have_text(
        "1 instance(s), 1 worker(s)"
    )
    nav = tab.get_by_role("navigation", name="Views")
    nav.get_by_role("link", name="Background work").click()
    partitions = tab.get_by_role("table", name="Partitions")
    expect(partitions.locator('tr[data-partition="default"]')).to_be_visible()
    expect(tab.locator("#view .notfound")).to_have_count(0)


@pytest.mark.parametrize("edge", [[r"/v1/admin/instances", r"/v1/admin/jobs"]], indirect=True)
def test_the_admin_views_say_when_the_server_lacks_their_api(
    edge: Edge, page: tuple[Page, ConsoleWatch]
) -> None:
    tab, watch = page
    watch.expect("GET", "/v1/admin/instances", 404)
    watch.expect("GET", "/v1/admin/jobs", 404)
    polls: list[Request] = []
    tab.on("request", lambda r: polls.append(r) if "/v1/admin/" in r.url else None)
    sign_in(tab, edge.url, ADMIN_KEY, "cluster")
    expect(tab.get_by_role("heading", name="Cluster")).to_be_visible()
    not_available(tab, "The cluster view")
    shoot(tab, "cluster-not-available")
    nav = tab.get_by_role("navigation", name="Views")
    nav.get_by_role("link", name="Background work").click()
    not_available(tab, "The job queue view")
    # The rest of the view still works: the keys view (published) too.
    expect(tab.get_by_label("Response id")).to_be_editable()
    nav.get_by_role("link", name="Keys").click()
    expect(tab.get_by_role("heading", name="Keys")).to_be_visible()
    expect(tab.locator("#view .notfound")).to_have_count(0)
    # A view told once stops asking (no poll every few seconds of a missing API).
    assert [r.url.split("/v1/admin/")[1] for r in polls if "keys" not in r.url] == [
        "instances",
        "jobs",
    ]


@pytest.mark.parametrize("edge", [[r"/v1/admin/jobs/dead"]], indirect=True)
def test_the_dead_letter_list_says_when_the_server_lacks_it(
    edge: Edge, page: tuple[Page, ConsoleWatch], admin: Api
) -> None:
    tab, watch = page
    watch.expect("GET", "/v1/admin/jobs/dead", 404)
    status, made = admin.call(
        "POST", "/v1/responses", {"model": "helper", "input": "hi", "background": True}
    )
    assert status == 200, made

    def dead() -> bool:
        figures = admin.call("GET", "/v1/admin/jobs")[1]["data"]
        return any(p["partition"] == "default" and p["dead"] > 0 for p in figures)

    wait_until_sync(dead, LIMIT_S, "a dead letter")
    sign_in(tab, edge.url, ADMIN_KEY, "jobs")
    tab.get_by_role("button", name="Dead letters of default").click()
    not_available(tab, "The dead letter list")
    expect(tab.get_by_role("table", name="Partitions")).to_be_visible()  # still shown
