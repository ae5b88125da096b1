"""The demo's web app in a real browser (Playwright driving Debian's Chromium) against a live daphne server.

Each user logs in through Django's login page; the app gets its token from the token view, syncs with
@powersync/web and uploads through the upload endpoint. Browser contexts are separate browsers (own
cookies, own IndexedDB), so two contexts of one user are two devices.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright
from web_app import ensure_web_build, launch_chromium

PASSWORD = "correct horse battery staple"
WAIT_MS = 30_000  # the longest any expectation waits (first sync includes loading the WASM database)
expect.set_options(timeout=WAIT_MS)  # also for local renders: CI machines can be slow


@pytest.fixture(scope="module")
def browser(server) -> Iterator[Browser]:
    ensure_web_build()
    with sync_playwright() as playwright:
        chromium = launch_chromium(playwright)
        yield chromium
        chromium.close()


@pytest.fixture
def new_user(server) -> Callable[[], tuple[str, str]]:
    """Creates a Django user; returns (username, token subject)."""

    def make() -> tuple[str, str]:
        name = f"web-{uuid.uuid4().hex[:8]}"
        pk = server.orm(f"from django.contrib.auth.models import User\n"
                        f"result = str(User.objects.create_user({name!r}, password={PASSWORD!r}).pk)")
        return name, pk

    return make


@pytest.fixture
def device(browser: Browser, server) -> Iterator[Callable[[str], Page]]:
    """Opens the app in a fresh browser context, logged in as the user; waits for the first sync."""
    contexts: list[BrowserContext] = []

    def open_app(username: str) -> Page:
        context = browser.new_context(viewport={"width": 1000, "height": 560})
        contexts.append(context)
        page = context.new_page()
        page.goto(f"{server.url}/")
        page.fill("input[name=username]", username)
        page.fill("input[name=password]", PASSWORD)
        page.click("form button[type=submit]")
        page.wait_for_url(f"{server.url}/")
        expect(page.get_by_test_id("sync-status")).to_have_attribute("data-state", "synced")
        return page

    yield open_app
    for context in contexts:
        context.close()


def add_list(page: Page, name: str) -> None:
    page.fill("#new-list input", name)
    page.click("#new-list button")
    expect(page.locator("#list-title")).to_have_text(name)


def select_list(page: Page, name: str) -> None:
    page.get_by_test_id("list").filter(has_text=name).locator(".list-name").click()
    expect(page.locator("#list-title")).to_have_text(name)


def add_todo(page: Page, description: str) -> None:
    page.fill("#new-todo input", description)
    page.click("#new-todo button")


def todo(page: Page, description: str):
    return page.get_by_test_id("todo").filter(has_text=description)


def local_rows(page: Page, sql: str) -> list[dict]:
    return page.evaluate("(sql) => window.powersync.getAll(sql)", sql)


def wait_for_server(server, code: str, expected: object, timeout: float = WAIT_MS / 1000) -> None:
    """Polls ``code`` (an ORM snippet setting ``result``) on the server's database until it equals ``expected``."""
    deadline = time.monotonic() + timeout
    while (value := server.orm(code)) != expected:
        if time.monotonic() > deadline:
            raise AssertionError(f"server database: {value!r}, expected {expected!r}")
        time.sleep(0.2)


def test_two_devices_of_one_user_see_each_others_edits_live(server, new_user, device):
    username, sub = new_user()
    laptop, phone = device(username), device(username)
    add_list(laptop, "Groceries")
    expect(phone.get_by_test_id("list").filter(has_text="Groceries")).to_be_visible()
    select_list(phone, "Groceries")
    add_todo(phone, "oat milk")
    add_todo(phone, "apples")
    expect(todo(laptop, "oat milk")).to_be_visible()
    expect(todo(laptop, "apples")).to_be_visible()

    todo(laptop, "oat milk").locator("input[type=checkbox]").check()
    expect(todo(phone, "oat milk").locator("input[type=checkbox]")).to_be_checked()
    todo(phone, "apples").locator(".delete").click()
    expect(todo(laptop, "apples")).to_have_count(0)
    expect(laptop.get_by_test_id("list").filter(has_text="Groceries").locator(".count")).to_have_text("1/1")

    # The server holds what both devices show, owned by the token's subject (the user's primary key).
    wait_for_server(server, f"result = sorted((t.description, t.completed, t.list.owner_id, t.created_by) "
                            f"for t in Todo.objects.filter(list__owner_id={sub!r}))",
                    [["oat milk", True, sub, sub]])
    for page in (laptop, phone):
        expect(page.get_by_test_id("sync-status")).to_have_attribute("data-state", "synced")
        expect(page.get_by_test_id("offline-badge")).to_be_hidden()

    phone.get_by_test_id("list").filter(has_text="Groceries").locator(".delete").click()
    expect(laptop.get_by_test_id("list")).to_have_count(0)
    expect(laptop.locator("#no-lists")).to_be_visible()
    wait_for_server(server, f"result = [TodoList.objects.filter(owner_id={sub!r}).count(), "
                            f"Todo.objects.filter(created_by={sub!r}).count()]", [0, 0])


def test_offline_edits_reach_the_other_device_and_the_database_when_back_online(server, new_user, device):
    username, sub = new_user()
    laptop, phone = device(username), device(username)
    add_list(laptop, "Trip")
    add_todo(laptop, "passport")
    expect(todo(phone, "passport")).to_be_visible()
    wait_for_server(server, f"result = list(Todo.objects.filter(list__owner_id={sub!r})"
                            f".values_list('description', flat=True))", ["passport"])

    laptop.context.set_offline(True)
    expect(laptop.get_by_test_id("offline-badge")).to_be_visible()
    add_todo(laptop, "written offline")
    todo(laptop, "passport").locator("input[type=checkbox]").check()
    # Shown at once from the local database, queued for upload.
    expect(todo(laptop, "written offline")).to_be_visible()
    expect(laptop.get_by_test_id("pending")).to_have_text("2 changes waiting to upload")
    assert laptop.evaluate("async () => (await window.powersync.getUploadQueueStats()).count") == 2
    assert server.orm(f"result = list(Todo.objects.filter(list__owner_id={sub!r})"
                      f".values_list('description', 'completed'))") == [["passport", False]]
    expect(todo(phone, "written offline")).to_have_count(0)
    # Nor does anything arrive while offline: the phone's edit waits on the server.
    add_todo(phone, "from the phone")
    wait_for_server(server, "result = Todo.objects.filter(description='from the phone').count()", 1)
    assert laptop.evaluate("window.powersync.currentStatus.connected") is False
    expect(todo(laptop, "from the phone")).to_have_count(0)

    laptop.context.set_offline(False)
    wait_for_server(server, f"result = sorted(Todo.objects.filter(list__owner_id={sub!r})"
                            f".values_list('description', 'completed'))",
                    [["from the phone", False], ["passport", True], ["written offline", False]])
    expect(todo(laptop, "from the phone")).to_be_visible()
    expect(todo(phone, "written offline")).to_be_visible()
    expect(todo(phone, "passport").locator("input[type=checkbox]")).to_be_checked()
    expect(laptop.get_by_test_id("offline-badge")).to_be_hidden()
    expect(laptop.get_by_test_id("pending")).to_be_hidden()
    expect(laptop.get_by_test_id("sync-status")).to_have_attribute("data-state", "synced")


def test_a_second_user_sees_nothing_of_the_first_users_lists(server, new_user, device):
    first = f"seeded-{uuid.uuid4().hex[:8]}"
    server.manage("demo_seed", "--user", first, "--password", PASSWORD, "--lists", "2", "--todos-per-list", "3")
    second, second_sub = new_user()
    first_page = device(first)
    expect(first_page.get_by_test_id("list")).to_have_count(2)
    assert len(local_rows(first_page, "SELECT id FROM todos")) == 6

    other = device(second)  # waits until the first sync is complete
    expect(other.locator("#no-lists")).to_be_visible()
    assert local_rows(other, "SELECT id FROM lists") == []
    assert local_rows(other, "SELECT id FROM todos") == []
    # Nor the other way round: the second user's new list stays theirs.
    add_list(other, "Private")
    wait_for_server(server, "result = list(TodoList.objects.filter(name='Private').values_list('owner_id', flat=True))",
                    [second_sub])
    add_list(first_page, "Marker")  # a round trip on the first device after the second user's write
    wait_for_server(server, "result = TodoList.objects.filter(name='Marker').count()", 1)
    expect(first_page.get_by_test_id("sync-status")).to_have_attribute("data-state", "synced")
    assert [r["name"] for r in local_rows(first_page, "SELECT name FROM lists ORDER BY created_at")] == [
        "List 1", "List 2", "Marker"]


def test_log_out_ends_the_session(server, new_user, device):
    username, _ = new_user()
    page = device(username)
    page.click("#logout button")  # the app clears its local database, then posts the form
    page.wait_for_url(f"{server.url}/accounts/login/")
    assert page.request.get(f"{server.url}/api/token").status == 401
    page.goto(f"{server.url}/")
    page.wait_for_url(f"{server.url}/accounts/login/?next=/")
