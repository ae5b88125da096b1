"""Takes docs/demo.png, the README's screenshot of the demo web app (headless Debian Chromium via Playwright).

Run from the repository root after `make demo-web` (or any build of the app)::

    PYTHONPATH=.:tests:tests/e2e python docs/screenshot.py

It starts the demo under daphne on a temporary SQLite database, logs in as a new user, creates a few lists
and todos through the app (so they sync like a user's), and saves the page once it shows "Synced".
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from live_server import REPO_ROOT, LiveServer
from playwright.sync_api import expect, sync_playwright
from web_app import ensure_web_build, launch_chromium

LISTS = {
    "Groceries": [("oat milk", True), ("sourdough bread", False), ("apples", False), ("coffee beans", True)],
    "Trip to Lisbon": [("book flights", True), ("renew passport", False), ("pack sunscreen", False)],
    "House": [("fix the bike", False), ("water the plants", True)],
}


def main(out: Path) -> None:
    ensure_web_build()
    with tempfile.TemporaryDirectory() as tmp, LiveServer(f"sqlite:///{tmp}/demo.sqlite3") as server, \
            sync_playwright() as playwright:
        server.manage("shell", "-c", "from django.contrib.auth.models import User; "
                                     "User.objects.create_user('demo', password='demo')")
        browser = launch_chromium(playwright)
        page = browser.new_context(viewport={"width": 960, "height": 350}, device_scale_factor=1).new_page()
        page.goto(f"{server.url}/")
        page.fill("input[name=username]", "demo")
        page.fill("input[name=password]", "demo")
        page.click("form button[type=submit]")
        status = page.get_by_test_id("sync-status")
        expect(status).to_have_attribute("data-state", "synced", timeout=30_000)
        for name, todos in LISTS.items():
            page.fill("#new-list input", name)
            page.click("#new-list button")
            expect(page.locator("#list-title")).to_have_text(name)
            for description, done in todos:
                page.fill("#new-todo input", description)
                page.click("#new-todo button")
                item = page.get_by_test_id("todo").filter(has_text=description)
                if done:
                    item.locator("input[type=checkbox]").check()
        page.get_by_test_id("list").filter(has_text="Groceries").locator(".list-name").click()
        expect(page.get_by_test_id("pending")).to_be_hidden(timeout=30_000)
        expect(status).to_have_attribute("data-state", "synced", timeout=30_000)
        page.evaluate("document.activeElement?.blur()")  # no focus ring in the picture
        page.screenshot(path=str(out))
        browser.close()
    print(f"Wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO_ROOT / "docs" / "demo.png")
