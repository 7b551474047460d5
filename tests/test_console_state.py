"""The console's Shared state view browsing namespaces and documents (GET /v1/state and
GET /v1/state/{namespace}), in a real headless Chromium against a real ``agentd serve``
(two workers, keys mode) on a real Redis: documents made through the API are found page
by page, opened with the keyboard, edited, met by a concurrent change, and deleted; a
tenant sees only its own. Fails on any error in the browser's console."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect

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
    with console_server(tmp_path_factory.mktemp("console-state")) as proc:
        yield proc


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with launch() as chromium:
        yield chromium


@pytest.fixture
def page(browser: Browser) -> Iterator[tuple[Page, ConsoleWatch]]:
    with console_tab(browser) as made:
        yield made


def put(api: Api, path: str, value: object, headers: dict[str, str] | None = None) -> int:
    status, body = api.call("PUT", path, value, headers)
    assert status in (200, 201), body
    return int(body["version"])


def test_browse_to_a_document_edit_it_and_meet_a_concurrent_change(
    page: tuple[Page, ConsoleWatch], server: AgentdProcess
) -> None:
    tab, watch = page
    watch.expect("PUT", "/v1/state/orders/order-021", 412)  # the conflict
    admin = Api(server.url, ADMIN_KEY)
    key, _ = new_key(admin, "shop", ["state"])
    shop = Api(server.url, key)
    for i in range(25):
        put(shop, f"/v1/state/orders/order-{i:03d}", {"order": i, "status": "new"})
    put(shop, "/v1/state/catalog/shirt", {"price": 12})
    put(shop, "/v1/state/catalog/socks", {"price": 3})
    other, _ = new_key(admin, "elsewhere", ["state"])
    put(Api(server.url, other), "/v1/state/secret/plan", {"x": 1})

    tab.goto(f"{server.url}/console#state")
    tab.get_by_label("API key or token").fill(key)
    tab.get_by_role("button", name="Sign in").click()
    spaces = tab.get_by_role("table", name="Namespaces")
    expect(spaces.locator("tbody tr")).to_have_count(2)
    expect(spaces.locator('tr[data-namespace="orders"] td').nth(1)).to_have_text("25")
    expect(spaces.locator('tr[data-namespace="catalog"] td').nth(1)).to_have_text("2")
    expect(spaces).not_to_contain_text("secret")  # another tenant's

    # The keyboard alone: a namespace's button, then a document's.
    tab.get_by_role("button", name="Browse orders").focus()
    tab.keyboard.press("Enter")
    docs = tab.get_by_role("table", name="Documents")
    expect(tab.get_by_role("heading", name="Documents in orders")).to_be_visible()
    expect(docs.locator("tbody tr")).to_have_count(20)
    expect(docs.locator("tbody tr").first).to_have_attribute("data-key", "order-000")
    expect(tab.get_by_role("button", name="Open orders/order-000")).to_be_focused()
    tab.get_by_role("button", name="Next page of documents").click()
    expect(docs.locator("tbody tr")).to_have_count(5)
    expect(docs.locator("tbody tr").first).to_have_attribute("data-key", "order-020")
    expect(tab.get_by_role("button", name="Next page of documents")).to_be_hidden()
    tab.get_by_label("Key prefix").fill("order-02")
    tab.keyboard.press("Enter")
    # The filtered listing is page 1 again; its 5 rows are the keys page 2 showed, so
    # the count alone would pass before the new listing replaced the rows.
    expect(tab.get_by_role("status", name="Documents page")).to_have_text("page 1, 5 shown")
    expect(docs.locator("tbody tr")).to_have_count(5)
    tab.get_by_role("button", name="Open orders/order-021").focus()
    tab.keyboard.press("Enter")

    version = tab.get_by_role("status", name="Version")
    expect(version).to_have_text("1")
    editor = tab.get_by_label("Document (JSON)")
    expect(editor).to_be_focused()
    assert json.loads(editor.input_value()) == {"order": 21, "status": "new"}
    expect(tab.get_by_label("Namespace", exact=True)).to_have_value("orders")
    expect(tab.get_by_label("Key", exact=True)).to_have_value("order-021")
    assert tab.url.endswith("#state/orders/order-021")
    editor.fill('{"order": 21, "status": "paid"}')
    tab.get_by_role("button", name="Save", exact=True).click()
    expect(version).to_have_text("2")
    row = docs.locator('tr[data-key="order-021"]')
    expect(row.locator("td").nth(1)).to_have_text("2")  # the listing shows the new version
    expect(row).to_have_attribute("aria-current", "true")
    shoot(tab, "state-browse")

    # Another client writes meanwhile: the save is a 412 with the current value.
    put(shop, "/v1/state/orders/order-021", {"order": 21, "status": "shipped"}, {"If-Match": '"2"'})
    editor.fill('{"order": 21, "status": "refunded"}')
    tab.get_by_role("button", name="Save", exact=True).click()
    conflict = tab.get_by_role("region", name="Conflict")
    expect(conflict).to_contain_text("version 3")
    assert json.loads(conflict.get_by_label("Current value").inner_text()) == {
        "order": 21,
        "status": "shipped",
    }
    tab.get_by_role("button", name="Save mine over it").click()
    expect(version).to_have_text("4")
    status, body = shop.call("GET", "/v1/state/orders/order-021")
    assert body == {"value": {"order": 21, "status": "refunded"}, "version": 4}, status

    # Deleted from the page: gone from the documents, and one fewer in the namespace.
    tab.get_by_role("button", name="Delete document").click()
    expect(version).to_have_text("new document")
    expect(docs.locator("tbody tr")).to_have_count(4)
    expect(docs).not_to_contain_text("order-021")
    expect(spaces.locator('tr[data-namespace="orders"] td').nth(1)).to_have_text("24")


def test_an_address_opens_a_namespace_and_an_empty_tenant_sees_none(
    page: tuple[Page, ConsoleWatch], server: AgentdProcess
) -> None:
    tab, _ = page
    admin = Api(server.url, ADMIN_KEY)
    key, _ = new_key(admin, "fresh", ["state"])
    tab.goto(f"{server.url}/console#state")
    tab.get_by_label("API key or token").fill(key)
    tab.get_by_role("button", name="Sign in").click()
    spaces = tab.get_by_role("table", name="Namespaces")
    expect(spaces).to_contain_text("No documents in any namespace yet.")
    put(Api(server.url, key), "/v1/state/notes/today", ["a"])
    tab.get_by_role("button", name="First page of namespaces").click()
    expect(spaces.locator('tr[data-namespace="notes"]')).to_be_visible()
    tab.goto(f"{server.url}/console#state/notes")
    docs = tab.get_by_role("table", name="Documents")
    expect(docs.locator('tr[data-key="today"] td').nth(2)).to_have_text("5 B")
