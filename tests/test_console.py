"""The web console at /console in a real headless browser (Chromium via Playwright),
against a real ``agentd serve`` (two workers, keys mode) on a real Redis, reached through
a proxy whose connections the tests cut. One browser and one server per module; each
test gets its own page, and fails on any error in the browser's console."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from .browser import ConsoleWatch, launch, shoot
from .console_harness import (
    ADMIN_KEY,
    STREAMING_PART,
    Api,
    console_server,
    console_tab,
    last_reply,
    new_key,
    sign_in,
    token,
    words,
)
from .cut_proxy import CutProxy
from .procs import AgentdProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentdProcess]:
    with console_server(tmp_path_factory.mktemp("console")) as proc:
        yield proc


@pytest.fixture(scope="module")
def proxy(server: AgentdProcess) -> Iterator[CutProxy]:
    cut = CutProxy(server.port)
    yield cut
    cut.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with launch() as chromium:
        yield chromium


@pytest.fixture
def admin(server: AgentdProcess) -> Api:
    return Api(server.url, ADMIN_KEY)


@pytest.fixture
def page(browser: Browser, request: pytest.FixtureRequest) -> Iterator[tuple[Page, ConsoleWatch]]:
    with console_tab(browser, "dark" if "dark" in request.node.name else "light") as made:
        yield made


def test_sign_in_shows_the_views_the_scopes_allow(
    page: tuple[Page, ConsoleWatch], proxy: CutProxy, admin: Api
) -> None:
    tab, _ = page
    tab.goto(proxy.url + "/console")
    expect(tab.get_by_role("heading", name="Sign in")).to_be_visible()
    shoot(tab, "sign-in")
    key, key_id = new_key(admin, "acme", ["chat", "sessions"])
    sign_in(tab, proxy, key)
    nav = tab.get_by_role("navigation", name="Views")
    for name in ("Chat", "Sessions", "Usage"):
        expect(nav.get_by_role("link", name=name)).to_be_visible()
    for name in ("Shared state", "Keys", "Cluster", "Background work"):
        expect(nav.get_by_role("link", name=name)).to_be_hidden()
    expect(tab.locator("#who")).to_contain_text(f"key {key_id} · tenant acme")
    # A view the key may not see is not shown, even when asked for by its address.
    tab.goto(proxy.url + "/console#keys")
    expect(tab.get_by_role("heading", name="Chat")).to_be_visible()

    tab.get_by_role("button", name="Sign out").click()
    sign_in(tab, proxy, ADMIN_KEY)
    expect(
        tab.get_by_role("navigation", name="Views").get_by_role("link", name="Keys")
    ).to_be_visible()
    expect(tab.locator("#who")).to_contain_text("admin key · operator")


def test_a_wrong_key_is_refused_with_a_message(
    page: tuple[Page, ConsoleWatch], proxy: CutProxy
) -> None:
    tab, watch = page
    watch.expect("GET", "/v1/me", 401)
    tab.goto(proxy.url + "/console")
    tab.get_by_label("API key or token").fill("sk-agentd-0123456789abcdef-" + "x" * 43)
    tab.get_by_role("button", name="Sign in").click()
    expect(tab.get_by_role("alert")).to_contain_text("invalid_api_key")
    expect(tab.get_by_role("navigation", name="Views")).to_be_hidden()


def test_chat_streams_a_reply_token_by_token_and_shows_tool_calls(
    page: tuple[Page, ConsoleWatch], proxy: CutProxy
) -> None:
    tab, _ = page
    sign_in(tab, proxy, ADMIN_KEY, "chat")
    session = tab.locator("#session-id")
    expect(tab.get_by_role("status", name="Connection")).to_have_text("connected")
    sid = session.inner_text()
    assert re.fullmatch(r"[A-Za-z0-9._:-]+", sid), sid

    tab.get_by_label("Agent").select_option("slow")
    text = words("stream", 40)
    tab.get_by_label("Message").fill(text)
    tab.get_by_role("button", name="Send").click()
    reply = last_reply(tab)
    # Seen while it streams: some words already there, not all of them yet.
    expect(reply).to_have_attribute("data-state", "streaming")
    tab.wait_for_function(STREAMING_PART)
    expect(reply).to_have_attribute("data-state", "done")
    expect(reply.locator(".text")).to_have_text(text)

    tab.get_by_label("Agent").select_option("echo")
    tab.get_by_label("Message").fill('call state_get {"namespace": "console", "key": "missing"}')
    tab.get_by_label("Message").press("Enter")  # Enter sends, as the placeholder says
    tools = tab.locator(".msg.tool")
    expect(tools.first).to_contain_text("tool call · agentd/state_get")
    expect(tools.nth(1)).to_contain_text("tool result · state_get · ok")
    expect(last_reply(tab).locator(".text")).to_have_text('state_get: {"value":null,"version":0}')
    expect(session).to_have_text(sid)  # one session throughout
    shoot(tab, "chat")


def test_a_connection_token_signs_in_and_chats_over_the_websocket(
    page: tuple[Page, ConsoleWatch], proxy: CutProxy, server: AgentdProcess
) -> None:
    tab, _ = page
    credential = token("webusers", "user-7", "chat sessions")
    sign_in(tab, proxy, credential, "chat")
    expect(tab.locator("#who")).to_contain_text("user user-7 · tenant webusers")
    nav = tab.get_by_role("navigation", name="Views")
    expect(nav.get_by_role("link", name="Sessions")).to_be_visible()
    expect(nav.get_by_role("link", name="Shared state")).to_be_hidden()
    # The browser sends the token as the WebSocket's "bearer." subprotocol.
    expect(tab.get_by_role("status", name="Connection")).to_have_text("connected")
    sid = tab.locator("#session-id").inner_text()
    tab.get_by_label("Message").fill("hello with a token")
    tab.get_by_role("button", name="Send").click()
    expect(last_reply(tab).locator(".text")).to_have_text("hello with a token")
    # The session is the token's tenant's.
    status, body = Api(server.url, credential).call("GET", f"/v1/sessions/{sid}")
    assert status == 200 and body["tenant"] == "webusers", body


def test_stop_cancels_the_running_turn(page: tuple[Page, ConsoleWatch], proxy: CutProxy) -> None:
    tab, _ = page
    sign_in(tab, proxy, ADMIN_KEY, "chat")
    expect(tab.get_by_role("status", name="Connection")).to_have_text("connected")
    tab.get_by_label("Agent").select_option("slow")
    tab.get_by_label("Message").fill(words("stop", 60))
    tab.get_by_role("button", name="Send").click()
    expect(last_reply(tab).locator(".text")).to_contain_text("stop1")
    tab.get_by_role("button", name="Stop").click()
    expect(last_reply(tab)).to_have_attribute("data-state", "cancelled")
    expect(last_reply(tab).locator(".text")).not_to_contain_text("stop59")
    expect(tab.get_by_role("button", name="Stop")).to_be_disabled()


def test_chat_resumes_after_the_connection_drops_mid_reply(
    page: tuple[Page, ConsoleWatch], proxy: CutProxy, admin: Api
) -> None:
    tab, _ = page
    sign_in(tab, proxy, ADMIN_KEY, "chat")
    expect(tab.get_by_role("status", name="Connection")).to_have_text("connected")
    sid = tab.locator("#session-id").inner_text()
    tab.get_by_label("Agent").select_option("slow")
    text = words("resume", 80)  # about 4 s: the cut comes while it streams
    tab.get_by_label("Message").fill(text)
    tab.get_by_role("button", name="Send").click()
    reply = last_reply(tab)
    expect(reply.locator(".text")).to_contain_text("resume2")
    assert proxy.cut() >= 1
    # The drop is shown, the page reconnects on its own and resumes after the last seq.
    lost = tab.locator(".notice").filter(has_text="Connection lost")
    expect(lost).to_contain_text("The reply keeps running on the server")  # cut mid-reply
    expect(tab.locator(".notice").filter(has_text="Connection resumed")).to_be_visible()
    expect(tab.get_by_role("status", name="Connection")).to_contain_text("connected")
    expect(reply).to_have_attribute("data-state", "done")
    expect(reply.locator(".text")).to_have_text(text)
    # Nothing lost, nothing doubled: one question, one answer, as stored.
    expect(tab.locator('.msg[data-role="user"]')).to_have_count(1)
    expect(tab.locator('.msg[data-role="assistant"]')).to_have_count(1)
    status, history = admin.call("GET", f"/v1/sessions/{sid}/messages")
    assert status == 200, history
    assert [(m["role"], m["content"]) for m in history["data"]] == [
        ("user", text),
        ("assistant", text),
    ]
    # And the connection works again: the next turn streams as usual.
    tab.get_by_label("Agent").select_option("echo")
    tab.get_by_label("Message").fill("after the drop")
    tab.get_by_role("button", name="Send").click()
    expect(last_reply(tab).locator(".text")).to_have_text("after the drop")
    expect(tab.locator('.msg[data-role="assistant"]')).to_have_count(2)


def test_chat_shows_what_another_connection_adds_live(
    page: tuple[Page, ConsoleWatch], proxy: CutProxy, admin: Api
) -> None:
    tab, _ = page
    sign_in(tab, proxy, ADMIN_KEY, "chat")
    expect(tab.get_by_role("status", name="Connection")).to_have_text("connected")
    sid = tab.locator("#session-id").inner_text()
    status, body = admin.call(
        "POST",
        "/v1/chat/completions",
        {
            "model": "echo",
            "session_id": sid,
            "messages": [{"role": "user", "content": "from afar"}],
        },
    )
    assert status == 200, body
    others = tab.locator('.msg[data-role="user"]').filter(has_text="from afar")
    expect(others).to_have_count(1)
    expect(others.locator(".who")).to_have_text("user (another connection)")
    expect(tab.locator('.msg[data-role="assistant"]').filter(has_text="from afar")).to_have_count(1)
    # Reopened later (a new page load at #chat/SESSION), the session replays its history.
    tab.reload()
    expect(tab.locator("#session-id")).to_have_text(sid)
    expect(tab.locator(".msg")).to_have_count(2)


def test_state_edit_shows_a_concurrent_change_as_a_conflict(
    page: tuple[Page, ConsoleWatch], proxy: CutProxy, admin: Api
) -> None:
    tab, watch = page
    watch.expect("GET", "/v1/state/app/settings", 404)  # a new document
    watch.expect("PUT", "/v1/state/app/settings", 412)  # the conflict
    sign_in(tab, proxy, ADMIN_KEY, "state")
    tab.get_by_label("Namespace", exact=True).fill("app")
    tab.get_by_label("Key", exact=True).fill("settings")
    tab.get_by_role("button", name="Open", exact=True).click()
    version = tab.get_by_role("status", name="Version")
    expect(version).to_have_text("new document")
    editor = tab.get_by_label("Document (JSON)")
    editor.fill('{"theme": "dark"}')
    tab.get_by_role("button", name="Save", exact=True).click()
    expect(version).to_have_text("1")

    # Another client changes it meanwhile.
    status, body = admin.call(
        "PUT", "/v1/state/app/settings", {"theme": "light", "lang": "fr"}, {"If-Match": '"1"'}
    )
    assert status == 200 and body["version"] == 2, body
    editor.fill('{"theme": "dark", "font": 14}')
    tab.get_by_role("button", name="Save", exact=True).click()
    conflict = tab.get_by_role("region", name="Conflict")
    expect(conflict).to_contain_text("version 2")
    current = json.loads(conflict.get_by_label("Current value").inner_text())
    assert current == {"theme": "light", "lang": "fr"}
    expect(tab.get_by_role("alert")).to_contain_text("412 version_conflict")
    expect(version).to_have_text("1")  # the editor still holds the edit, made on version 1
    shoot(tab, "state-conflict")

    # Merged by hand against the current value, and saved over version 2.
    tab.get_by_role("button", name="Take the current value").click()
    expect(version).to_have_text("2")
    editor.fill('{"theme": "dark", "lang": "fr", "font": 14}')
    tab.get_by_role("button", name="Save", exact=True).click()
    expect(version).to_have_text("3")
    expect(conflict).to_be_hidden()
    status, body = admin.call("GET", "/v1/state/app/settings")
    assert body == {"value": {"theme": "dark", "lang": "fr", "font": 14}, "version": 3}


def test_sessions_are_listed_a_page_at_a_time_read_and_deleted(
    page: tuple[Page, ConsoleWatch], proxy: CutProxy, admin: Api, server: AgentdProcess
) -> None:
    tab, _ = page
    key, _ = new_key(admin, "pages", ["chat", "sessions"])
    tenant = Api(server.url, key)
    ids = []
    for _i in range(23):
        status, body = tenant.call("POST", "/v1/sessions", {"agent": "echo"})
        assert status == 201, body
        ids.append(body["id"])
    status, _ = tenant.call(
        "POST", f"/v1/sessions/{ids[0]}/messages", {"messages": [{"role": "user", "content": "hi"}]}
    )
    assert status == 201
    sign_in(tab, proxy, key, "sessions")
    rows = tab.get_by_role("table", name="Sessions").locator("tbody tr")

    def shown() -> list[str | None]:
        return [rows.nth(i).get_attribute("data-session") for i in range(rows.count())]

    expect(rows).to_have_count(20)
    first = shown()
    # The session written to last is among the newest (ties in a millisecond go by id).
    assert ids[0] in first
    tab.get_by_role("button", name="Next page").click()
    expect(rows).to_have_count(3)
    expect(tab.get_by_role("button", name="Next page")).to_be_hidden()
    second = shown()
    assert not set(first) & set(second)
    assert set(first) | set(second) == set(ids)  # every session once, across the pages
    tab.get_by_role("button", name="Refresh").click()
    expect(rows).to_have_count(20)

    tab.get_by_role("button", name=f"Read {ids[0]}").click()
    history = tab.get_by_role("region", name="History")
    expect(history.locator(".msg")).to_have_count(1)
    expect(history.locator(".msg")).to_contain_text("hi")
    shoot(tab, "sessions")

    # Any session is found by its id, wherever it is in the list.
    tab.get_by_label("Find a session by id").fill(ids[5])
    tab.get_by_role("button", name="Find").click()
    expect(history.get_by_role("heading")).to_contain_text(ids[5])
    expect(history.locator(".msg")).to_have_count(0)

    # A session opens in the chat view from its row, with its history.
    tab.get_by_role("link", name=f"Open {ids[0]} in chat").click()
    expect(tab.locator("#session-id")).to_have_text(ids[0])
    expect(tab.get_by_role("status", name="Connection")).to_have_text("connected")
    expect(tab.locator(".msg")).to_have_text([re.compile(r"hi$")])
    tab.go_back()
    expect(rows).to_have_count(20)

    tab.get_by_role("button", name=f"Delete {ids[0]}").click()
    expect(tab.locator(f'tr[data-session="{ids[0]}"]')).to_have_count(0)
    status, _ = tenant.call("GET", f"/v1/sessions/{ids[0]}")
    assert status == 404


def test_keys_are_created_edited_and_revoked_and_usage_is_shown(
    page: tuple[Page, ConsoleWatch], proxy: CutProxy, admin: Api
) -> None:
    tab, _ = page
    sign_in(tab, proxy, ADMIN_KEY, "keys")
    tab.get_by_label("Tenant", exact=True).fill("beta")
    tab.get_by_label("Name", exact=True).fill("console-made")
    tab.get_by_role("checkbox", name="state").uncheck()
    tab.get_by_role("button", name="Create key").click()
    secret = tab.get_by_label("New key").inner_text()
    key_id = secret.split("-")[2]
    status, record = admin.call("GET", f"/v1/admin/keys/{key_id}")
    assert status == 200 and record["tenant"] == "beta", record
    assert record["scopes"] == ["chat", "responses", "sessions"]
    row = tab.locator(f'tr[data-key="{key_id}"]')
    expect(row).to_contain_text("console-made")

    tab.get_by_role("button", name=f"Edit {key_id}").click()
    editing = tab.get_by_role("form", name=f"Edit key {key_id}")
    editing.get_by_label("Name").fill("renamed")
    editing.get_by_role("button", name="Save key").click()
    expect(row).to_contain_text("renamed")
    tab.get_by_role("button", name=f"Disable {key_id}").click()
    expect(row).to_contain_text("disabled")
    assert admin.call("GET", f"/v1/admin/keys/{key_id}")[1]["disabled"] is True
    shoot(tab, "keys")
    tab.get_by_role("button", name=f"Revoke {key_id}").click()
    expect(row).to_have_count(0)
    assert admin.call("GET", f"/v1/admin/keys/{key_id}")[0] == 404

    # Usage: the operator's own tenant, then every tenant with usage (the earlier chats).
    tab.get_by_role("navigation", name="Views").get_by_role("link", name="Usage").click()
    expect(tab.get_by_role("heading", name="Your tenant (operator)")).to_be_visible()
    expect(tab.get_by_role("table", name="Your tenant (operator)")).to_be_visible()
    shoot(tab, "usage")


def test_background_work_and_cluster_show_the_servers_figures_dark(
    page: tuple[Page, ConsoleWatch], proxy: CutProxy
) -> None:
    tab, _ = page
    # (tests/test_console_ops.py drives these two views through dead letters, a
    # cancelled response and a second instance.)
    sign_in(tab, proxy, ADMIN_KEY, "jobs")
    partitions = tab.get_by_role("table", name="Partitions")
    expect(partitions.locator('tr[data-partition="default"]')).to_be_visible()
    tab.get_by_role("navigation", name="Views").get_by_role("link", name="Cluster").click()
    expect(tab.get_by_role("heading", name="Cluster")).to_be_visible()
    expect(tab.get_by_role("status").filter(has_text="instance(s)")).to_have_text(
        "1 instance(s), 2 worker(s)"
    )
    # Dark, as the system asks (prefers-color-scheme): the page's background is dark.
    background = tab.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(15, 17, 21)", background
    tab.get_by_role("navigation", name="Views").get_by_role("link", name="Chat").click()
    expect(tab.get_by_role("status", name="Connection")).to_have_text("connected")
    shoot(tab, "chat-dark")


def test_a_revoked_key_closes_the_chat_visibly(
    page: tuple[Page, ConsoleWatch], proxy: CutProxy, admin: Api
) -> None:
    tab, _ = page
    key, key_id = new_key(admin, "revoked", ["chat"])
    sign_in(tab, proxy, key, "chat")
    status = tab.get_by_role("status", name="Connection")
    expect(status).to_have_text("connected")
    assert admin.call("DELETE", f"/v1/admin/keys/{key_id}")[0] == 200
    # Close 4003: shown, and not retried (another credential is needed).
    expect(status).to_have_text("disconnected (credential revoked)")
    expect(tab.get_by_role("button", name="Send")).to_be_disabled()


def test_an_open_server_needs_no_sign_in(page: tuple[Page, ConsoleWatch], tmp_path: Path) -> None:
    tab, _ = page
    workdir = tmp_path / "open"
    workdir.mkdir()
    # auth.mode = "none" (the default), the in-memory store: `make run` as it ships.
    proc = AgentdProcess(workdir, "", [], {})
    try:
        proc.wait_ready()
        tab.goto(proc.url + "/console")
        expect(tab.locator("#who")).to_have_text("open server (no sign-in)")
        expect(tab.get_by_role("heading", name="Sign in")).to_be_hidden()
        expect(tab.get_by_role("button", name="Sign out")).to_be_hidden()
        expect(tab.get_by_role("status", name="Connection")).to_have_text("connected")
        tab.get_by_label("Message").fill("open door")
        tab.get_by_role("button", name="Send").click()
        expect(last_reply(tab).locator(".text")).to_have_text("open door")
        tab.goto("about:blank")  # the page leaves before its server does
    finally:
        proc.stop()


def test_the_keyboard_alone_signs_in_moves_between_views_and_uses_them(
    page: tuple[Page, ConsoleWatch], proxy: CutProxy
) -> None:
    tab, watch = page
    watch.expect("GET", "/v1/state/kb/doc", 404)
    tab.goto(proxy.url + "/console")
    field = tab.get_by_label("API key or token")
    expect(field).to_be_visible()  # shown once the console has read its settings
    field.focus()
    tab.keyboard.type(ADMIN_KEY)
    tab.keyboard.press("Enter")
    expect(tab.get_by_role("navigation", name="Views")).to_be_visible()
    tab.get_by_role("link", name="Shared state").focus()
    tab.keyboard.press("Enter")
    # The new view's heading takes the focus; Tab goes on inside the view.
    heading = tab.get_by_role("heading", name="Shared state")
    expect(heading).to_be_focused()
    tab.keyboard.press("Tab")
    expect(tab.get_by_label("Namespace", exact=True)).to_be_focused()
    tab.keyboard.press("Control+A")
    tab.keyboard.type("kb")
    tab.keyboard.press("Tab")
    tab.keyboard.type("doc")
    tab.keyboard.press("Enter")
    expect(tab.get_by_role("status", name="Version")).to_have_text("new document")
