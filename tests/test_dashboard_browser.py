"""The dashboard in a real browser (Playwright driving Debian's Chromium), on both
backends: live counts, a dead letter redriven through the UI, hostile payloads shown as
text, actions refused without login, and no console errors. Saves the screenshots the
README uses (from the SQLite run; ``make screenshots`` writes them to docs/images/).

Without a browser these tests are skipped with a message saying how to get one; with
``SQQUEUE_TEST_REQUIRE_BROWSER=1`` (CI sets it) a missing browser fails them instead.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from conftest import QueueTarget
from sqqueue import Queue

pytestmark = pytest.mark.slow

TOKEN = "browser-test-token-0123456789"
HOSTILE = ["<script>alert(1)</script>", '"><img src=x onerror=alert(1)>']
# Screenshots go to a temporary directory, so a test run leaves the checkout as it was;
# `make screenshots` sets SQQUEUE_TEST_SCREENSHOTS=docs/images to refresh the README's pictures.
IMAGES = Path(
    os.environ.get("SQQUEUE_TEST_SCREENSHOTS")
    or Path(tempfile.gettempdir()) / "sqqueue-screenshots"
)
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
HOW_TO_GET_ONE = (
    "browser tests need Chromium and Playwright for Python: apt-get install chromium "
    "(Debian/Ubuntu; or set SQQUEUE_TEST_CHROMIUM to a Chromium executable) and "
    "pip install -e '.[dev]'"
)
WAIT_MS = 20_000


def _unavailable(why: str) -> None:
    if os.environ.get("SQQUEUE_TEST_REQUIRE_BROWSER") == "1":
        pytest.fail(f"SQQUEUE_TEST_REQUIRE_BROWSER=1 but {why}; {HOW_TO_GET_ONE}", pytrace=False)
    pytest.skip(f"{why}; {HOW_TO_GET_ONE}")


def _chromium_path() -> str | None:
    for candidate in (
        os.environ.get("SQQUEUE_TEST_CHROMIUM"),
        shutil.which("chromium"),
        "/usr/bin/chromium",
        shutil.which("chromium-browser"),
    ):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture(scope="module")
def browser_context() -> Iterator[Any]:
    """One Chromium for the module, with a fresh profile."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("Playwright for Python is not installed")
    executable = _chromium_path()
    if executable is None:
        _unavailable("no Chromium executable was found")
    profile = tempfile.mkdtemp(prefix="sqqueue-chromium-")
    try:
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                profile,
                executable_path=executable,
                args=CHROMIUM_ARGS,
                headless=True,
                viewport={"width": 1280, "height": 800},
            )
            try:
                yield context
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@dataclass
class Watched:
    """A page and what it reported: console errors, script errors, dialogs."""

    page: Any
    problems: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)


@pytest.fixture
def watched(browser_context: Any, served: Served) -> Iterator[Watched]:
    """A fresh page (no cookies) on the served dashboard, closed before the server stops."""
    browser_context.clear_cookies()
    page = browser_context.new_page()
    seen = Watched(page)

    def on_dialog(dialog: Any) -> None:
        seen.dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("console", lambda m: m.type == "error" and seen.problems.append(f"console: {m.text}"))
    page.on("pageerror", lambda e: seen.problems.append(f"page error: {e}"))
    page.on("dialog", on_dialog)
    yield seen
    page.close()
    assert seen.dialogs == [], "a dialog opened: a script ran that should not have"
    assert seen.problems == [], "the browser reported errors"


@dataclass
class Served:
    url: str
    target: QueueTarget


@pytest.fixture
def served(queue_target: QueueTarget) -> Iterator[Served]:
    """The dashboard of ``queue_target`` served by uvicorn on a free loopback port."""
    import uvicorn

    from sqqueue.dashboard import create_app

    # The queue the tests use exists (and is empty) before the dashboard starts.
    queue_target.open("emails").close()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    # As `sqqueue dashboard` serves it: only its own Host header is answered.
    app = create_app(
        queue_target.url,
        token=TOKEN,
        schema=queue_target.schema,
        refresh=0.5,
        allowed_hosts=[f"127.0.0.1:{sock.getsockname()[1]}"],
    )
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield Served(f"http://127.0.0.1:{sock.getsockname()[1]}", queue_target)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
        app.state.dashboard.source.close()


def log_in(watched: Watched, served: Served) -> None:
    page = watched.page
    page.goto(served.url + "/")
    assert "/login" in page.url
    page.fill("#token", TOKEN)
    page.click("button[type=submit]:has-text('Log in')")
    page.wait_for_url(served.url + "/")


def shoot(served: Served, page: Any, name: str) -> None:
    if served.target.backend == "sqlite":
        IMAGES.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(IMAGES / name), full_page=True)


def enqueue_elsewhere(target: QueueTarget, payloads: list[str]) -> None:
    """Enqueue from another process, as a producer would."""
    code = (
        "import sys, json, sqqueue\n"
        "kw = {'schema': sys.argv[2]} if sys.argv[2] else {}\n"
        "q = sqqueue.connect(sys.argv[1], 'emails', **kw)\n"
        "q.enqueue_batch(json.loads(sys.argv[3])).unwrap()\n"
        "q.close()\n"
    )
    import json

    subprocess.run(
        [sys.executable, "-c", code, target.url, target.schema or "", json.dumps(payloads)],
        check=True,
        timeout=60,
    )


def open_queue(target: QueueTarget) -> Queue:
    return target.open("emails", default_max_attempts=2)


def test_overview_counts_change_live_after_an_enqueue_elsewhere(
    watched: Watched, served: Served
) -> None:
    from playwright.sync_api import expect

    log_in(watched, served)
    page = watched.page
    ready = page.locator('td[data-q="emails"][data-k="ready"]')
    expect(ready).to_have_text("0")
    expect(page.locator("#live")).to_have_text("live", timeout=WAIT_MS)
    enqueue_elsewhere(served.target, [f"job {i}" for i in range(3)])
    expect(ready).to_have_text("3", timeout=WAIT_MS)  # no reload: the page updated itself
    queue = open_queue(served.target)
    try:
        for i in range(3):
            queue.enqueue({"to": f"user{i}@example.com"}, delay=600 if i == 2 else 0).unwrap()
        message = queue.dequeue(visibility_timeout=30).unwrap()
        assert message is not None
        queue.fail_message(message, send_to_dlq=True, error="SMTP 550: mailbox unavailable")
    finally:
        queue.close()
    expect(page.locator('td[data-q="emails"][data-k="dead"]')).to_have_text("1", timeout=WAIT_MS)
    expect(ready).to_have_text("4", timeout=WAIT_MS)
    expect(page.locator('td[data-q="emails"][data-k="delayed"]')).to_have_text("1")
    shoot(served, page, "dashboard-overview.png")


def test_a_dead_letter_is_redriven_through_the_ui(watched: Watched, served: Served) -> None:
    from playwright.sync_api import expect

    queue = open_queue(served.target)
    try:
        ids = [queue.enqueue({"order": n}).unwrap() for n in (41, 42)]
        for message_id in ids:
            queue.fail_message(message_id, send_to_dlq=True, error="ValueError: no such order")
    finally:
        queue.close()
    log_in(watched, served)
    page = watched.page
    page.click("a:has-text('emails')")
    page.click("nav.tabs a:has-text('Dead')")
    rows = page.locator("table#messages tbody tr")
    expect(rows).to_have_count(2)
    expect(page.locator("table#messages")).to_contain_text("ValueError: no such order")
    shoot(served, page, "dashboard-dead-letters.png")
    page.click(f"table#messages a:text-is('{ids[0]}')")
    expect(page.locator("#payload")).to_contain_text('"order": 41')
    expect(page.locator("#last-error")).to_have_text("ValueError: no such order")
    shoot(served, page, "dashboard-message.png")
    page.click("a.button:has-text('Redrive')")
    expect(page.locator("h1")).to_have_text("Confirm")
    page.click("#confirm")
    expect(page.locator("#flash")).to_contain_text(f"Redrove 1 dead letter(s): {ids[0]}")
    expect(rows).to_have_count(1)
    expect(page.locator(f'tr[data-id="{ids[0]}"]')).to_have_count(0)
    expect(page.locator(f'tr[data-id="{ids[1]}"]')).to_have_count(1)
    queue = open_queue(served.target)
    try:
        assert queue.get_message(ids[0]).unwrap()["status"] == "ready"
    finally:
        queue.close()


def test_hostile_payloads_render_as_text(watched: Watched, served: Served) -> None:
    from playwright.sync_api import expect

    queue = open_queue(served.target)
    try:
        ids = [queue.enqueue(payload).unwrap() for payload in HOSTILE]
        for message_id, payload in zip(ids, reversed(HOSTILE), strict=True):
            queue.fail_message(message_id, send_to_dlq=True, error=payload)
    finally:
        queue.close()
    log_in(watched, served)
    page = watched.page
    page.goto(served.url + "/queues/emails?state=dead")
    table = page.locator("table#messages")
    for payload in HOSTILE:
        expect(table).to_contain_text(payload)
    assert page.locator("table#messages img, table#messages script").count() == 0
    for message_id, payload, error in zip(ids, HOSTILE, reversed(HOSTILE), strict=True):
        page.goto(f"{served.url}/queues/emails/messages/{message_id}")
        expect(page.locator("#payload")).to_have_text(payload)
        expect(page.locator("#last-error")).to_have_text(error)
        assert page.locator("main img, main script").count() == 0
    page.wait_for_timeout(300)  # time for anything that would run to run


def test_actions_without_login_are_refused(watched: Watched, served: Served) -> None:
    from playwright.sync_api import expect

    queue = open_queue(served.target)
    try:
        dead = queue.enqueue("x").unwrap()
        queue.fail_message(dead, send_to_dlq=True, error="e")
    finally:
        queue.close()
    page = watched.page
    page.goto(f"{served.url}/queues/emails/confirm?action=delete&id={dead}")
    assert re.search(r"/login\?next=", page.url), page.url
    expect(page.locator("h1")).to_have_text("Log in")
    answer = page.request.post(
        f"{served.url}/queues/emails/dead/delete",
        form={"id": str(dead), "csrf": "guess"},
        max_redirects=0,
    )
    assert answer.status == 401
    api = page.request.post(f"{served.url}/api/queues/emails/dead/delete", data={"ids": [dead]})
    assert api.status == 401
    page.fill("#token", "not-the-token-not-the-token")
    page.click("button[type=submit]:has-text('Log in')")
    expect(page.locator("p.flash.bad")).to_have_text("That is not the dashboard's token.")
    # The browser logs the 401 of the wrong token as a failed resource load: expected here.
    watched.problems = [p for p in watched.problems if "401" not in p]
    shoot(served, page, "dashboard-login.png")
    queue = open_queue(served.target)
    try:
        assert queue.get_message(dead).unwrap()["status"] == "dead"
    finally:
        queue.close()
