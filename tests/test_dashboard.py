"""The web dashboard through its ASGI app and an HTTP client, on both backends: pages,
JSON API, dead-letter actions, authentication, CSRF, read-only mode, security headers,
mounting under a prefix; and the ``sqqueue dashboard`` command."""

from __future__ import annotations

import io
import logging
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette", reason="the dashboard tests need: pip install -e '.[dev]'")

from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.testclient import TestClient

from conftest import LOCAL_FIXTURES, QueueTarget
from helpers import file_state, run_cli, without_dac_override
from sqqueue import PostgresQueue, Queue, connect
from sqqueue.dashboard import create_app
from sqqueue.dashboard.auth import Auth, LoginThrottle
from sqqueue.dashboard.present import one_line
from sqqueue.dashboard.server import allowed_hosts, serve
from sqqueue.dashboard.source import BUCKET, BUCKETS, Sampler
from sqqueue.dashboard.web import shown_target
from sqqueue.stats import QueueStats

TOKEN = "correct-horse-battery-staple-42"
HOSTILE = ["<script>alert(1)</script>", '"><img src=x onerror=alert(1)>']

Client = Callable[..., Any]


@contextmanager
def dashboard(target: QueueTarget, prefix: str = "", **kwargs: Any) -> Iterator[TestClient]:
    """A test client of a dashboard on ``target`` (mounted under ``prefix`` if given)."""
    app = create_app(target.url, token=TOKEN, schema=target.schema, **kwargs)
    served: Any = app
    if prefix:
        served = Starlette(routes=[Mount(prefix, app=app)])
    with TestClient(served, follow_redirects=False) as client:
        yield client
    app.state.dashboard.source.close()


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF field in the page"
    return found.group(1)


def login(client: TestClient, prefix: str = "") -> None:
    page = client.get(f"{prefix}/login")
    assert page.status_code == 200
    answer = client.post(
        f"{prefix}/login", data={"token": TOKEN, "csrf": csrf_of(page.text), "next": "/"}
    )
    assert answer.status_code == 303, answer.text
    assert answer.headers["location"] == f"{prefix}/"


def confirm_and_post(client: TestClient, confirm_url: str) -> Any:
    """Open a confirmation page and submit its form, as a person would."""
    page = client.get(confirm_url)
    assert page.status_code == 200, page.text
    action = re.search(r'<form method="post" action="([^"]+/dead/\w+)"', page.text)
    assert action
    form = page.text[action.start() :]
    fields = re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', form)
    data: dict[str, list[str]] = {}
    for key, value in fields:
        data.setdefault(key, []).append(value)
    return client.post(action.group(1), data=data)


def flash_text(client: TestClient, response: Any) -> str:
    assert response.status_code == 303, response.text
    page = client.get(response.headers["location"])
    found = re.search(r'<p class="flash (ok|bad)"[^>]*>(.*?)</p>', page.text, re.S)
    assert found, "no result message after the action"
    return found.group(1) + ": " + found.group(2)


def dead_letters(queue: Queue, payloads: list[Any], error: str = "boom") -> list[int]:
    ids = [queue.enqueue(p).unwrap() for p in payloads]
    for message_id in ids:
        assert queue.fail_message(message_id, send_to_dlq=True, error=error).is_ok()
    return ids


def dead_ids(queue: Queue) -> list[int]:
    return [row["id"] for row in queue.list_messages("dead", limit=1000).unwrap()]


# -- looking ---------------------------------------------------------------------------


def test_overview_shows_counts_by_state_and_health(queue_target: QueueTarget) -> None:
    """Every queue with its counts under the dashboard's names (ready, delayed, waiting,
    processing, dead), oldest age, leases expiring, a chart, and the database's health;
    the JSON API says the same."""
    queue = queue_target.open("emails")
    other = queue_target.open("thumbnails")
    try:
        queue.enqueue_batch(["r1", "r2", "r3"]).unwrap()
        queue.enqueue("later", delay=3600).unwrap()
        queue.enqueue("head", group="g").unwrap()
        queue.enqueue("behind", group="g").unwrap()
        queue.dequeue(visibility_timeout=30).unwrap()  # r1: processing, expiring soon
        dead_letters(queue, ["gone"])
        other.enqueue("t").unwrap()
        with dashboard(queue_target) as client:
            login(client)
            page = client.get("/")
            assert page.status_code == 200
            cells = dict(re.findall(r'data-q="emails" data-k="(\w+)">([^<]*)<', page.text))
            assert cells["ready"] == "3"  # r2, r3 and the group's head
            assert cells["delayed"] == "1"
            assert cells["waiting"] == "1"
            assert cells["processing"] == "1"
            assert cells["dead"] == "1"
            assert cells["expiring"] == "1"
            assert 'data-chart="emails"' in page.text
            assert 'data-queue="thumbnails"' in page.text
            if queue_target.backend == "sqlite":
                assert "Last checkpoint seen" in page.text
            else:
                assert "Trivial query" in page.text
            data = client.get("/api/overview").json()
    finally:
        queue.close()
        other.close()
    rows = {row["name"]: row for row in data["queues"]}
    assert rows["emails"]["counts"] == {
        "ready": 3, "delayed": 1, "waiting": 1, "processing": 1, "dead": 1,
    }  # fmt: skip
    assert rows["thumbnails"]["counts"]["ready"] == 1
    assert rows["emails"]["expiring_soon"] == 1
    assert rows["emails"]["totals"]["enqueued"] == 7
    assert len(rows["emails"]["chart"]) == BUCKETS
    health = data["health"]
    assert health["ok"] is True
    if queue_target.backend == "sqlite":
        assert health["db_bytes"] > 0
    else:
        assert health["query_seconds"] is not None and health["query_seconds"] >= 0


def test_queue_page_pages_by_id_filters_by_state_and_finds(queue_target: QueueTarget) -> None:
    """Messages a page at a time by id (keyset: "next" continues after the last id shown),
    by state, found by id; unknown queues, states and ids are 404s, and nothing is
    created by looking."""
    queue = queue_target.open("jobs")
    try:
        ids = queue.enqueue_batch([{"n": i} for i in range(120)]).unwrap()
        delayed = queue.enqueue("later", delay=600).unwrap()
        with dashboard(queue_target) as client:
            login(client)
            first = client.get("/queues/jobs")
            shown = [int(i) for i in re.findall(r'<tr data-id="(\d+)"', first.text)]
            assert shown == ids[:50]
            nxt = re.search(r'href="([^"]+)" rel="next"', first.text)
            assert nxt and f"after={ids[49]}" in nxt.group(1)
            second = client.get(nxt.group(1).replace("&amp;", "&"))
            assert [int(i) for i in re.findall(r'<tr data-id="(\d+)"', second.text)] == ids[50:100]
            third = client.get(f"/queues/jobs?state=ready&after={ids[99]}")
            assert [int(i) for i in re.findall(r'<tr data-id="(\d+)"', third.text)] == ids[100:]
            assert 'rel="next"' not in third.text
            later = client.get("/queues/jobs?state=delayed")
            assert re.findall(r'<tr data-id="(\d+)"', later.text) == [str(delayed)]
            assert (
                "No processing (leased) messages"
                in client.get("/queues/jobs?state=processing").text
            )
            found = client.get(f"/queues/jobs?find={ids[7]}")
            assert found.status_code == 303
            assert found.headers["location"] == f"/queues/jobs/messages/{ids[7]}"
            assert client.get("/queues/jobs/messages/999999").status_code == 404
            assert client.get("/queues/nope").status_code == 404
            assert client.get("/queues/jobs?state=bogus").status_code == 404
            assert client.get("/queues/jobs?after=x").status_code == 400
            api = client.get(f"/api/queues/jobs/messages?state=ready&limit=100&after={ids[9]}")
            body = api.json()
            assert [m["id"] for m in body["messages"]] == ids[10:110]
            assert body["next_after"] == ids[109]
            assert {m["status"] for m in body["messages"]} == {"ready"}
            assert client.get("/api/queues/nope/messages").status_code == 404
    finally:
        queue.close()
    assert "nope" not in queue_target.tables()


def test_message_page_shows_details_and_escapes_payloads(queue_target: QueueTarget) -> None:
    """A message's page: payload pretty-printed (JSON indented, text as is, bytes as hex),
    attempts, error, group; hostile payloads and errors are escaped text, never markup."""
    queue = queue_target.open("jobs")
    try:
        data_id = queue.enqueue({"to": "ada", "tags": ["a", "b"]}, group="customer-7").unwrap()
        bytes_id = queue.enqueue(b"\x00\x01hello", dedup_key="order-<41>").unwrap()
        hostile = [queue.enqueue(p).unwrap() for p in HOSTILE]
        held = queue.dequeue().unwrap()
        assert held is not None and held.id == data_id
        queue.fail_message(held, error=HOSTILE[1], delay=0).unwrap()
        with dashboard(queue_target) as client:
            login(client)
            page = client.get(f"/queues/jobs/messages/{data_id}").text
            assert "&#34;to&#34;: &#34;ada&#34;," in page  # indented JSON, escaped
            assert "customer-7" in page
            assert "1 of 5" in page
            assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in page
            assert "<img src=x" not in page
            raw = client.get(f"/queues/jobs/messages/{bytes_id}").text
            assert "00 01 68 65 6c 6c 6f" in raw
            assert '<dd id="dedup-key">order-&lt;41&gt;</dd>' in raw  # the dedup key, escaped
            assert '<dd id="dedup-key">-</dd>' in page  # none for that one
            for message_id in hostile:
                text = client.get(f"/queues/jobs/messages/{message_id}").text
                assert "<script>alert(1)</script>" not in text
                assert "onerror=alert(1)>" not in text
            listing = client.get("/queues/jobs?state=all").text
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in listing
            assert "<script>alert" not in listing
            api = client.get(f"/api/queues/jobs/messages/{bytes_id}").json()
            assert api["payload"] == {"$bytes": "AAFoZWxsbw=="}
            assert api["dedup_key"] == "order-<41>"
            assert api["status"] == "ready"
    finally:
        queue.close()


# -- acting ----------------------------------------------------------------------------


def test_dead_letters_redrive_delete_and_purge_through_forms(queue_target: QueueTarget) -> None:
    """Each action goes through a confirmation page, changes what it says, and reports
    the result; redriving everything runs in the background and shows its progress."""
    queue = queue_target.open("jobs")
    try:
        ids = dead_letters(queue, [f"m{i}" for i in range(6)], error="ValueError: bad")
        with dashboard(queue_target) as client:
            login(client)
            page = client.get("/queues/jobs?state=dead").text
            assert page.count('type="checkbox" name="id"') == 6
            assert "ValueError: bad" in page
            answer = confirm_and_post(
                client, f"/queues/jobs/confirm?action=redrive&id={ids[0]}&id={ids[1]}"
            )
            assert flash_text(client, answer).startswith("ok: Redrove 2 dead letter(s)")
            assert dead_ids(queue) == ids[2:]
            answer = confirm_and_post(client, f"/queues/jobs/confirm?action=delete&id={ids[2]}")
            assert flash_text(client, answer) == "ok: Deleted 1 dead letter(s)."
            assert dead_ids(queue) == ids[3:]
            assert queue.get_message(ids[2]).unwrap() is None
            answer = confirm_and_post(
                client, "/queues/jobs/confirm?action=purge&older_than=1&unit=days"
            )
            assert "Purged 0 dead letter(s)" in flash_text(client, answer)
            assert dead_ids(queue) == ids[3:]
            answer = confirm_and_post(
                client, "/queues/jobs/confirm?action=purge&older_than=0&unit=days"
            )
            assert "Purged 3 dead letter(s)" in flash_text(client, answer)
            assert dead_ids(queue) == []
            more = dead_letters(queue, ["x", "y", "z"])
            answer = confirm_and_post(client, "/queues/jobs/confirm?action=redrive_all")
            assert "in the background" in flash_text(client, answer)
            deadline = time.monotonic() + 30
            while dead_ids(queue) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert dead_ids(queue) == []
            job = client.get("/api/queues/jobs").json()["redrive"]
            deadline = time.monotonic() + 30
            while job["running"] and time.monotonic() < deadline:
                time.sleep(0.05)
                job = client.get("/api/queues/jobs").json()["redrive"]
            assert (job["done"], job["error"]) == (3, None)
            assert (
                "The background redrive finished: 3" in client.get("/queues/jobs?state=dead").text
            )
            statuses = {row["id"]: row["status"] for row in queue.list_messages("all").unwrap()}
            assert all(statuses[i] == "ready" for i in [*ids[:2], *more])
            # A redrive of an id that is no longer dead says so.
            answer = confirm_and_post(client, f"/queues/jobs/confirm?action=redrive&id={ids[0]}")
            assert flash_text(client, answer).startswith(
                "bad: Redrive failed: no dead letter with id"
            )
    finally:
        queue.close()


def test_actions_without_login_or_csrf_are_refused(queue_target: QueueTarget) -> None:
    """Without a session, with a forged or missing CSRF token, or from another session,
    every action is refused and changes nothing; pages and the API ask for a login."""
    queue = queue_target.open("jobs")
    try:
        ids = dead_letters(queue, ["a", "b"])
        with dashboard(queue_target) as client:
            to_login = client.get("/queues/jobs?state=dead")
            assert to_login.status_code == 303
            assert to_login.headers["location"] == "/login?next=%2Fqueues%2Fjobs%3Fstate%3Ddead"
            assert client.get("/api/overview").status_code == 401
            assert client.get("/api/overview").headers["www-authenticate"].startswith("Bearer")
            for action in ("redrive", "delete", "purge"):
                fields = {"id": str(ids[0]), "older_than": "0", "csrf": "x"}
                answer = client.post(f"/queues/jobs/dead/{action}", data=fields)
                assert answer.status_code == 401, action
                api = client.post(
                    f"/api/queues/jobs/dead/{action}", json={"ids": ids, "older_than": 0}
                )
                assert api.status_code == 401, action
            login(client)
            page = client.get("/queues/jobs?state=dead")
            for fields in ({"id": str(ids[0])}, {"id": str(ids[0]), "csrf": "forged"}):
                assert client.post("/queues/jobs/dead/redrive", data=fields).status_code == 403
            # The cookie session's CSRF token is needed for JSON calls too.
            assert client.post("/api/queues/jobs/dead/delete", json={"ids": ids}).status_code == 403
            stolen = csrf_of(page.text)
            with TestClient(client.app, follow_redirects=False) as other:
                login(other)
                refused = other.post(
                    "/queues/jobs/dead/delete", data={"id": str(ids[0]), "csrf": stolen}
                )
                assert refused.status_code == 403
            assert dead_ids(queue) == ids
            ok = client.post(
                "/api/queues/jobs/dead/delete",
                json={"ids": [ids[0]]},
                headers={"X-CSRF-Token": stolen},
            )
            assert ok.json() == {"deleted": 1}
    finally:
        queue.close()


def test_json_api_with_bearer_token(queue_target: QueueTarget) -> None:
    """JSON clients authenticate with the bearer token (no cookie, no CSRF) and get the
    same data and actions; a wrong token is refused."""
    queue = queue_target.open("jobs")
    try:
        ids = dead_letters(queue, ["a", "b", "c"])
        with dashboard(queue_target) as client:
            good = {"Authorization": f"Bearer {TOKEN}"}
            bad = {"Authorization": "Bearer not-the-token-at-all-00"}
            assert client.get("/api/queues", headers=bad).status_code == 401
            listed = client.get("/api/queues", headers=good).json()
            assert [q["name"] for q in listed["queues"]] == ["jobs"]
            assert client.get("/api/queues/jobs", headers=good).json()["counts"]["dead"] == 3
            answer = client.post(
                "/api/queues/jobs/dead/redrive", json={"ids": [ids[0]]}, headers=good
            )
            assert answer.json() == {"redriven": 1}
            missing = client.post(
                "/api/queues/jobs/dead/redrive", json={"ids": [ids[0]]}, headers=good
            )
            assert missing.status_code == 404
            assert "no dead letter" in missing.json()["error"]
            assert (
                client.post(
                    "/api/queues/jobs/dead/delete", json={"ids": "1"}, headers=good
                ).status_code
                == 400
            )
            assert client.post(
                "/api/queues/jobs/dead/delete", json={"ids": [ids[1]]}, headers=good
            ).json() == {"deleted": 1}
            assert (
                client.post(
                    "/api/queues/jobs/dead/purge", json={"older_than": -1}, headers=good
                ).status_code
                == 400
            )
            assert client.post(
                "/api/queues/jobs/dead/purge", json={"older_than": None}, headers=good
            ).json() == {"purged": 1}
            assert (
                client.post("/api/queues/jobs/dead/purge", content=b"{}", headers=good).status_code
                == 400
            )
            assert (
                client.post("/api/queues/nope/dead/purge", json={}, headers=good).status_code == 404
            )
            # The page's HTML is not reachable with the bearer alone for actions.
            assert (
                client.post(
                    "/queues/jobs/dead/purge", data={"older_than": "0"}, headers=good
                ).status_code
                == 401
            )
    finally:
        queue.close()
    assert dead_ids(queue_target.open("jobs")) == []


def test_read_only_hides_and_refuses_every_action(queue_target: QueueTarget) -> None:
    queue = queue_target.open("jobs")
    try:
        ids = dead_letters(queue, ["a"])
        with dashboard(queue_target, read_only=True) as client:
            login(client)
            page = client.get("/queues/jobs?state=dead").text
            assert "read-only" in page
            assert "Redrive" not in page and "Purge" not in page and 'type="checkbox"' not in page
            assert "Redrive" not in client.get(f"/queues/jobs/messages/{ids[0]}").text
            assert client.get(f"/queues/jobs/confirm?action=delete&id={ids[0]}").status_code == 403
            csrf = csrf_of(page)
            for action in ("redrive", "delete", "purge"):
                fields = {"id": str(ids[0]), "older_than": "0", "csrf": csrf}
                assert client.post(f"/queues/jobs/dead/{action}", data=fields).status_code == 403
                api = client.post(
                    f"/api/queues/jobs/dead/{action}",
                    json={"ids": ids, "older_than": 0},
                    headers={"Authorization": f"Bearer {TOKEN}"},
                )
                assert api.status_code == 403
            assert client.get("/api/overview").json()["read_only"] is True
    finally:
        queue.close()
    assert dead_ids(queue_target.open("jobs")) == ids


# -- security ----------------------------------------------------------------------------


def test_security_headers_cookies_and_no_inline_script(queue_target: QueueTarget) -> None:
    queue = queue_target.open("jobs")
    try:
        dead_letters(queue, HOSTILE)
        with dashboard(queue_target) as client:
            first = client.get("/login")
            cookie = first.headers["set-cookie"]
            assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
            login(client)
            pages = ["/", "/queues/jobs?state=dead", "/queues/jobs/messages/1", "/login",
                     "/queues/jobs/confirm?action=redrive_all", "/api/overview", "/queues/nope"]  # fmt: skip
            for path in pages:
                answer = client.get(path)
                headers = answer.headers
                csp = headers["content-security-policy"]
                assert "script-src 'self'" in csp and "unsafe-inline" not in csp, path
                assert "frame-ancestors 'none'" in csp
                assert headers["x-frame-options"] == "DENY"
                assert headers["x-content-type-options"] == "nosniff"
                assert headers["referrer-policy"] == "no-referrer"
                assert headers["cache-control"] == "no-store", path
                if "text/html" in headers.get("content-type", ""):
                    assert not re.search(r"<script(?![^>]*\ssrc=)", answer.text), path
                    assert not re.search(r"<[a-zA-Z][^>]*\son\w+=", answer.text), (
                        path
                    )  # no handlers
                    assert " style=" not in answer.text, path
                    assert "http://" not in answer.text.replace("http://www.w3.org", ""), path
            static = client.get("/static/dashboard.js")
            assert static.status_code == 200
            assert static.headers["cache-control"] == "no-cache"
            assert "innerHTML" not in static.text and "insertAdjacentHTML" not in static.text
            assert "http" not in client.get("/static/dashboard.css").text
    finally:
        queue.close()


def test_login_wrong_token_throttle_and_logout(queue_target: QueueTarget) -> None:
    with dashboard(queue_target) as client:
        page = client.get("/login")
        csrf = csrf_of(page.text)
        assert client.post("/login", data={"token": TOKEN, "next": "/"}).status_code == 403
        for attempt in range(10):
            answer = client.post("/login", data={"token": f"wrong-{attempt}", "csrf": csrf})
            assert answer.status_code == 401
            assert "wrong-" not in answer.text  # what was typed is not echoed
        throttled = client.post("/login", data={"token": TOKEN, "csrf": csrf})
        assert throttled.status_code == 429
    with dashboard(queue_target) as client:
        login(client)
        assert client.get("/").status_code == 200
        answer = client.post("/logout", data={"csrf": csrf_of(client.get("/").text)})
        assert answer.status_code == 303
        assert client.get("/").status_code == 303
        # After a login, the next page leads back where the user was going, never elsewhere.
        page = client.get("/login?next=//evil.example/x")
        answer = client.post("/login", data={"token": TOKEN, "csrf": csrf_of(page.text),
                                             "next": "//evil.example/x"})  # fmt: skip
        assert answer.headers["location"] == "/"


class Clock:
    """A clock a test moves by hand (seconds)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_wrong_bearer_tokens_are_throttled_as_logins_are(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Ten wrong tokens in the Authorization header from one address lock it out, as ten
    in the login form do, and the two count together: 429 with Retry-After until the
    oldest failure is 5 minutes old, the right token included (a guess must not be told
    apart). A right token counts nothing, other addresses are not locked, and no token
    is ever logged."""
    target = QueueTarget("sqlite", f"sqlite:///{tmp_path / 'jobs.db'}")
    target.open("jobs").close()
    clock = Clock()
    good = {"Authorization": f"Bearer {TOKEN}"}

    def bad(i: int) -> dict[str, str]:
        return {"Authorization": f"Bearer wrong-token-number-{i:04d}"}

    caplog.set_level(logging.DEBUG)
    with dashboard(target) as client:
        client.app.state.dashboard.throttle = LoginThrottle(clock=clock)  # type: ignore[attr-defined]
        for _ in range(30):  # right tokens are never counted
            assert client.get("/api/queues", headers=good).status_code == 200
        for i in range(5):
            assert client.get("/api/queues", headers=bad(i)).status_code == 401
        clock.now += 60
        for i in range(5, 9):
            answer = client.post("/api/queues/jobs/dead/purge", json={}, headers=bad(i))
            assert answer.status_code == 401
        assert client.get("/api/queues", headers=good).status_code == 200  # not yet locked
        assert client.get("/api/queues", headers=bad(9)).status_code == 401  # the tenth
        for headers in (bad(10), good):
            locked = client.get("/api/queues", headers=headers)
            assert locked.status_code == 429
            assert locked.headers["retry-after"] == "240"  # the first failure, 300 s on
            assert "too many wrong tokens" in locked.json()["error"]
        assert client.get("/", headers=good).status_code == 429  # the pages read it too
        assert client.get("/", headers=good).headers["retry-after"] == "240"
        # The login form of that address is locked as well, and says for how long.
        page = client.get("/login")
        assert page.status_code == 200  # without a token, looking is not refused
        form = client.post("/login", data={"token": TOKEN, "csrf": csrf_of(page.text)})
        assert form.status_code == 429 and form.headers["retry-after"] == "240"
        with TestClient(client.app, client=("192.0.2.7", 50000)) as elsewhere:
            assert elsewhere.get("/api/queues", headers=good).status_code == 200
        clock.now += 239
        assert client.get("/api/queues", headers=good).headers["retry-after"] == "1"
        clock.now += 1  # the first five failures are 5 minutes old: five more may come
        assert client.get("/api/queues", headers=good).status_code == 200
        for i in range(11, 16):
            assert client.get("/api/queues", headers=bad(i)).status_code == 401
        locked = client.get("/api/queues", headers=bad(16))
        assert locked.status_code == 429 and locked.headers["retry-after"] == "60"
    warnings = [r for r in caplog.records if "wrong bearer token" in r.getMessage()]
    assert len(warnings) == 15 and all("testclient" in r.getMessage() for r in warnings)
    assert all(r.levelno == logging.WARNING for r in warnings)
    logged = caplog.text + "".join(str(r.args) + str(r.msg) for r in caplog.records)
    assert "wrong-token-number" not in logged and TOKEN not in logged


def test_login_form_failures_lock_out_the_bearer_token_too(tmp_path: Path) -> None:
    target = QueueTarget("sqlite", f"sqlite:///{tmp_path / 'jobs.db'}")
    target.open("jobs").close()
    with dashboard(target) as client:
        client.app.state.dashboard.throttle = LoginThrottle(clock=Clock())  # type: ignore[attr-defined]
        csrf = csrf_of(client.get("/login").text)
        for i in range(10):
            assert client.post("/login", data={"token": f"w{i}", "csrf": csrf}).status_code == 401
        locked = client.get("/api/overview", headers={"Authorization": f"Bearer {TOKEN}"})
        assert locked.status_code == 429 and locked.headers["retry-after"] == "300"


def _set_cookies(response: Any) -> dict[str, str]:
    """The cookies a response sets: name -> its whole Set-Cookie header, lower-cased."""
    found = {}
    for header in response.headers.get_list("set-cookie"):
        found[header.split("=", 1)[0]] = header.lower()
    return found


def _secure(header: str) -> bool:
    return "secure" in [part.strip() for part in header.split(";")]


def test_secure_cookies_behind_a_proxy_that_ends_tls(tmp_path: Path) -> None:
    """Behind a proxy that ends TLS, requests come by http: ``secure_cookies=True`` marks
    every cookie Secure all the same (session, login, flash, the flash's removal). The
    default marks them Secure when the request came by https; False never does."""
    target = QueueTarget("sqlite", f"sqlite:///{tmp_path / 'jobs.db'}")
    target.open("jobs").close()
    with dashboard(target, secure_cookies=True) as client:
        first = client.get("/login")
        cookie = _set_cookies(first)["sqqueue_dashboard"]
        assert _secure(cookie) and "httponly" in cookie and "samesite=strict" in cookie
        # The browser would send a Secure cookie back through the proxy (by https); this
        # client speaks http to the app, so it is handed the cookie as the proxy would.
        client.cookies.set("sqqueue_dashboard", first.cookies["sqqueue_dashboard"])
        answer = client.post("/login", data={"token": TOKEN, "csrf": csrf_of(first.text)})
        assert answer.status_code == 303
        assert _secure(_set_cookies(answer)["sqqueue_dashboard"])
        client.cookies.set("sqqueue_dashboard", answer.cookies["sqqueue_dashboard"])
        out = client.post("/logout", data={"csrf": csrf_of(client.get("/").text)})
        assert out.status_code == 303
        assert all(_secure(c) for c in _set_cookies(out).values()), out.headers
        assert set(_set_cookies(out)) == {"sqqueue_dashboard", "sqqueue_dashboard_flash"}
        client.cookies.set("sqqueue_dashboard_flash", out.cookies["sqqueue_dashboard_flash"])
        shown = client.get("/login")
        removed = _set_cookies(shown)["sqqueue_dashboard_flash"]
        assert "max-age=0" in removed and _secure(removed)
    for secure, scheme, expected in [
        (None, "http", False),
        (None, "https", True),
        (False, "https", False),
        (True, "https", True),
    ]:
        app = create_app(target.url, token=TOKEN, secure_cookies=secure)
        with TestClient(app, base_url=f"{scheme}://testserver") as client:
            cookie = _set_cookies(client.get("/login"))["sqqueue_dashboard"]
            assert _secure(cookie) is expected, (secure, scheme, cookie)
        app.state.dashboard.source.close()


def test_token_rules_and_never_shown(
    queue_target: QueueTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SQQUEUE_DASHBOARD_TOKEN", raising=False)
    with pytest.raises(ValueError, match="needs a token"):
        create_app(queue_target.url, schema=queue_target.schema)
    with pytest.raises(ValueError, match="at least 16"):
        create_app(queue_target.url, token="short", schema=queue_target.schema)
    monkeypatch.setenv("SQQUEUE_DASHBOARD_TOKEN", TOKEN)
    app = create_app(queue_target.url, schema=queue_target.schema)
    dash = app.state.dashboard
    assert TOKEN not in repr(dash) + repr(dash.auth) + repr(dash.source)
    with TestClient(app, follow_redirects=False) as client:
        login(client)
        assert TOKEN not in client.get("/").text
        assert TOKEN not in client.cookies.get("sqqueue_dashboard", "")
    dash.source.close()
    # Sessions are signed with a key derived from the token: another token, another key.
    auth, other = Auth(TOKEN), Auth(TOKEN + "x")
    cookie = auth.session_cookie(auth.new_session(True))
    assert auth.read_session(cookie).authed
    assert not other.read_session(cookie).authed
    assert not auth.read_session(cookie.replace(".", "x.", 1)).authed
    assert not auth.read_session(cookie, now=time.time() + 13 * 3600).authed


def test_shown_target_hides_postgres_password() -> None:
    shown = shown_target("postgresql://app:s3cret@db.internal:5433/app?password=s3cret")
    assert shown == "postgresql://app:***@db.internal:5433/app"
    assert shown_target("jobs.db") == "jobs.db"
    # Read as sqqueue connects: any case of the scheme; '#', '?' and '@' in a password
    # (a URL parser would cut it there, showing the rest or failing to start).
    for url in (
        "POSTGRESQL://app:2024%23Hunter2@127.0.0.1:5432/app",
        "postgresql://app:2024#Hunter2@127.0.0.1:5432/app",
        "postgresql://app:Hunter2?x@127.0.0.1:5432/app",
        "postgres://app:Hunt@er2@127.0.0.1:5432/app?sslmode=require",
    ):
        shown = shown_target(url)
        assert shown.partition("://")[2] == "app:***@127.0.0.1:5432/app", (url, shown)
        assert "Hunter2" not in shown and "Hunt" not in shown


# -- mounting, sampling -------------------------------------------------------------------


def test_a_postgres_url_is_taken_as_the_queues_take_it(pg_url: str, pg_schema: str) -> None:
    """An uppercase scheme and spaces around the URL (read from a file, say) open the
    same PostgreSQL queues as the URL itself, and the page names it without its password;
    a mistyped scheme is refused without it."""
    PostgresQueue(pg_url, "emails", schema=pg_schema).enqueue("x").unwrap()
    scheme, rest = pg_url.split("://", 1)
    shouting = f"  {scheme.upper()}://{rest}\n"
    target = QueueTarget("postgresql", shouting, pg_schema)
    with dashboard(target) as client:
        listed = client.get("/api/queues", headers={"Authorization": f"Bearer {TOKEN}"})
        assert [q["name"] for q in listed.json()["queues"]] == ["emails"]
        page = client.get("/login").text
        assert f"{scheme}://" in page and scheme.upper() not in page
    with pytest.raises(ValueError, match="unsupported URL") as refused:
        create_app(f"postgresql+psycopg://app:Hunter2Secret@{rest}", token=TOKEN)
    assert "Hunter2Secret" not in str(refused.value)


def test_mounted_under_a_prefix(queue_target: QueueTarget) -> None:
    """Inside a host app under /ops/queues: links, forms, redirects, cookies and static
    files all stay under the prefix, and actions work there."""
    queue = queue_target.open("jobs")
    try:
        ids = dead_letters(queue, ["a"])
        with dashboard(queue_target, prefix="/ops/queues") as client:
            first = client.get("/ops/queues/")
            assert first.headers["location"] == "/ops/queues/login?next=%2F"
            assert "Path=/ops/queues/" in first.headers["set-cookie"]
            login(client, prefix="/ops/queues")
            page = client.get("/ops/queues/").text
            links = re.findall(r'(?:href|src|action)="([^"]+)"', page)
            assert links and all(link.startswith("/ops/queues/") for link in links), links
            assert 'data-api="/ops/queues/api/overview"' in page
            assert client.get("/ops/queues/static/dashboard.js").status_code == 200
            assert client.get("/ops/queues/api/overview").json()["queues"][0]["name"] == "jobs"
            answer = confirm_and_post(
                client, f"/ops/queues/queues/jobs/confirm?action=redrive&id={ids[0]}"
            )
            assert answer.headers["location"] == "/ops/queues/queues/jobs?state=dead"
            assert "Redrove 1" in flash_text(client, answer)
    finally:
        queue.close()
    assert dead_ids(queue_target.open("jobs")) == []


def test_hostile_requests_are_refused_with_400_or_404_never_500(
    queue_target: QueueTarget,
) -> None:
    """Forms with too many fields, JSON nested too deeply, ids beyond any message, ages
    and rates out of range: each is refused as the client's mistake (400, or 404 for an
    id no message can have), with the security headers, never an unhandled 500."""
    queue = queue_target.open("jobs")
    try:
        ids = dead_letters(queue, ["a"])
        good = {"Authorization": f"Bearer {TOKEN}"}
        with dashboard(queue_target) as client:
            fields = "&".join(f"f{i}=1" for i in range(20_001))
            form = {"content-type": "application/x-www-form-urlencoded"}
            for path in ("/login", "/logout"):
                answer = client.post(path, content=fields, headers=form)
                assert answer.status_code == 400, path
                assert "more than 20,000 fields" in answer.text
                assert "script-src 'self'" in answer.headers["content-security-policy"]
                assert answer.headers["cache-control"] == "no-store"
            deep = b'{"older_than": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
            answer = client.post(
                "/api/queues/jobs/dead/purge",
                content=deep,
                headers={**good, "content-type": "application/json"},
            )
            assert answer.status_code == 400
            assert "nested too deeply" in answer.json()["error"]
            login(client)
            for too_big in (2**63, 2**64):
                assert client.get(f"/queues/jobs/messages/{too_big}").status_code == 404
                api = client.get(f"/api/queues/jobs/messages/{too_big}", headers=good)
                assert api.status_code == 404
                assert f"has no message {too_big}" in api.json()["error"]
            purge = client.post(
                "/api/queues/jobs/dead/purge", json={"older_than": 1e300}, headers=good
            )
            assert purge.status_code == 400
            assert "100 years" in purge.json()["error"]
            for rate in (1e10, True, 0, "fast"):
                redrive = client.post(
                    "/api/queues/jobs/dead/redrive", json={"ids": ids, "rate": rate}, headers=good
                )
                assert redrive.status_code == 400, rate
                assert "at most 1000000000" in redrive.json()["error"]
            page = client.get("/queues/jobs/confirm?action=purge&older_than=1e308&unit=days")
            assert page.status_code == 400
            assert "100 years" in page.text
            csrf = csrf_of(client.get("/queues/jobs?state=dead").text)
            answer = client.post(
                "/queues/jobs/dead/purge", data={"older_than": "inf", "csrf": csrf}
            )
            assert flash_text(client, answer).startswith("bad: Nothing purged")
    finally:
        queue.close()
    assert dead_ids(queue_target.open("jobs")) == ids


def test_an_unhandled_error_still_carries_the_security_headers(
    queue_target: QueueTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug's 500 is answered outside every middleware: it carries the CSP and no-store
    headers all the same, and shows no traceback."""
    app = create_app(queue_target.url, token=TOKEN, schema=queue_target.schema)

    def broken() -> None:
        raise RuntimeError("a bug with a secret in it")

    monkeypatch.setattr(app.state.dashboard.source, "overview", broken)
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            answer = client.get("/api/overview", headers={"Authorization": f"Bearer {TOKEN}"})
    finally:
        app.state.dashboard.source.close()
    assert answer.status_code == 500
    assert "script-src 'self'" in answer.headers["content-security-policy"]
    assert answer.headers["cache-control"] == "no-store"
    assert answer.headers["x-frame-options"] == "DENY"
    assert "secret" not in answer.text and "Traceback" not in answer.text


def test_a_stored_time_out_of_range_shows_as_invalid(tmp_path: Path) -> None:
    """A row whose time cannot be read (edited by hand, damaged) shows the library's
    ``<invalid: ...>`` marker for that field; its page and the queue's still render."""
    target = QueueTarget("sqlite", f"sqlite:///{tmp_path / 'jobs.db'}")
    queue = target.open("jobs")
    try:
        message_id = queue.enqueue("fine").unwrap()
    finally:
        queue.close()
    target.run_sql(["UPDATE jobs SET created_at = 1e300"])
    with dashboard(target) as client:
        login(client)
        for path in (
            "/queues/jobs",
            "/queues/jobs?state=all",
            f"/queues/jobs/messages/{message_id}",
        ):
            page = client.get(path)
            assert page.status_code == 200, path
            assert "&lt;invalid: 1e+300&gt;" in page.text, path
            assert "fine" in page.text, path


def test_a_slowly_paced_redrive_of_selected_ids_runs_in_the_background(
    queue_target: QueueTarget,
) -> None:
    """A redrive of selected dead letters paced to take more than a few seconds answers
    at once and goes on in the background (one job per queue: more are refused while it
    runs), in the pages and the API alike; stopping the dashboard ends it."""
    queue = queue_target.open("jobs")
    try:
        ids = dead_letters(queue, [f"m{i}" for i in range(6)])
        with dashboard(queue_target) as client:
            login(client)
            page = client.get(f"/queues/jobs/confirm?action=redrive&id={ids[0]}&id={ids[1]}")
            data = {"csrf": csrf_of(page.text), "id": [str(ids[0]), str(ids[1])], "rate": "0.001"}
            answers: list[Any] = []
            # In a thread, so that a redrive held inside the request fails this test (the
            # join times out) rather than hanging it: close() below ends the wait anyway.
            post = threading.Thread(
                target=lambda: answers.append(client.post("/queues/jobs/dead/redrive", data=data))
            )
            post.start()
            post.join(timeout=30)
            held = post.is_alive()
            source = client.app.state.dashboard.source  # type: ignore[attr-defined]
            try:
                assert not held, "the paced redrive held the request open"
                assert "ok: Redriving 2 dead letter(s) in the background" in flash_text(
                    client, answers[0]
                )
                job = client.get("/api/queues/jobs").json()["redrive"]
                assert (job["selected"], job["rate"], job["running"]) == (2, 0.001, True)
                assert (
                    "Redriving 2 selected dead letter(s)"
                    in client.get("/queues/jobs?state=dead").text
                )
                good = {"Authorization": f"Bearer {TOKEN}"}
                busy = client.post(
                    "/api/queues/jobs/dead/redrive",
                    json={"ids": ids[2:4], "rate": 0.001},
                    headers=good,
                )
                assert busy.status_code == 409
                assert "wait for it to finish" in busy.json()["error"]
                # A quick one still runs in the request, beside the background job.
                quick = client.post(
                    "/api/queues/jobs/dead/redrive", json={"ids": [ids[5]]}, headers=good
                )
                assert quick.json() == {"redriven": 1}
                deadline = time.monotonic() + 30
                while ids[0] in dead_ids(queue) and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert ids[0] not in dead_ids(queue)  # the first chunk went at once
            finally:
                source.close()  # ends the paced wait of the job (and of a held request)
                post.join(timeout=30)
            job_state = source.redrive_job("jobs")
            assert job_state is not None and job_state.thread is not None
            job_state.thread.join(timeout=30)
            assert not job_state.running
            assert job_state.error is not None and "closed" in job_state.error
            assert dead_ids(queue) == [ids[1], *ids[2:5]]
    finally:
        queue.close()


def test_api_redrive_paced_for_long_answers_202_with_the_job(queue_target: QueueTarget) -> None:
    queue = queue_target.open("jobs")
    try:
        ids = dead_letters(queue, ["a", "b", "c"])
        with dashboard(queue_target) as client:
            good = {"Authorization": f"Bearer {TOKEN}"}
            answer = client.post(
                "/api/queues/jobs/dead/redrive", json={"ids": ids, "rate": 0.5}, headers=good
            )
            assert answer.status_code == 202
            job = answer.json()["redrive"]
            assert (job["selected"], job["total"], job["running"]) == (3, 3, True)
            client.app.state.dashboard.source.close()  # type: ignore[attr-defined]
    finally:
        queue.close()


def test_logout_ends_the_session_on_the_server(queue_target: QueueTarget) -> None:
    """After logging out, a copy of the old cookie and its CSRF token (another local
    service on 127.0.0.1 receives the cookie: cookies are not per port) opens nothing."""
    queue = queue_target.open("jobs")
    try:
        ids = dead_letters(queue, ["a"])
        with dashboard(queue_target) as client:
            login(client)
            csrf = csrf_of(client.get("/queues/jobs?state=dead").text)
            old = client.cookies.get("sqqueue_dashboard")
            assert old
            assert client.post("/logout", data={"csrf": csrf}).status_code == 303
            with TestClient(client.app, follow_redirects=False) as copy:
                copy.cookies.set("sqqueue_dashboard", old)
                assert copy.get("/api/overview").status_code == 401
                page = copy.get("/queues/jobs?state=dead")
                assert page.status_code == 303
                assert page.headers["location"].startswith("/login")
                copy.cookies.set("sqqueue_dashboard", old)
                refused = copy.post(
                    "/queues/jobs/dead/delete", data={"id": str(ids[0]), "csrf": csrf}
                )
                assert refused.status_code == 401
                copy.cookies.set("sqqueue_dashboard", old)
                api = copy.post(
                    "/api/queues/jobs/dead/delete",
                    json={"ids": ids},
                    headers={"X-CSRF-Token": csrf},
                )
                assert api.status_code == 401
            # A new login works as before.
            login(client)
            assert client.get("/api/overview").status_code == 200
    finally:
        queue.close()
    assert dead_ids(queue_target.open("jobs")) == ids


def test_only_the_served_host_header_is_answered(queue_target: QueueTarget) -> None:
    """Served with allowed hosts (as ``sqqueue dashboard`` serves it), a request naming
    another host (DNS rebinding) gets 400, with the security headers."""
    with dashboard(queue_target, allowed_hosts=["testserver"]) as client:
        assert client.get("/login").status_code == 200
        for host in ("attacker.example", "attacker.example:80", "testserver.attacker.example"):
            answer = client.get("/login", headers={"host": host})
            assert answer.status_code == 400, host
            assert "unexpected Host header" in answer.text
            assert "script-src 'self'" in answer.headers["content-security-policy"]
            api = client.get(
                "/api/overview", headers={"host": host, "Authorization": f"Bearer {TOKEN}"}
            )
            assert api.status_code == 400
    assert allowed_hosts("127.0.0.1", 8844) == [
        "127.0.0.1:8844", "[::1]:8844", "localhost:8844",
    ]  # fmt: skip
    assert allowed_hosts("::1", 80) == [
        "127.0.0.1", "127.0.0.1:80", "[::1]", "[::1]:80", "localhost", "localhost:80",
    ]  # fmt: skip
    assert allowed_hosts("192.0.2.7", 8844, ["Queues.example.com"]) == [
        "192.0.2.7:8844", "queues.example.com",
    ]  # fmt: skip


def test_a_replaced_database_file_is_opened_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the SQLite file is deleted and made anew (a restore), the dashboard drops
    the queue it had open and shows the new file's contents (after at most one failed
    request), without a restart."""
    import sqqueue.backends.sqlite

    monkeypatch.setattr(sqqueue.backends.sqlite, "_FILE_CHECK_INTERVAL", 0.0)
    path = tmp_path / "jobs.db"
    target = QueueTarget("sqlite", f"sqlite:///{path}")
    queue = target.open("jobs")
    queue.enqueue("from-the-old-file").unwrap()
    queue.close()
    with dashboard(target) as client:
        login(client)
        assert "from-the-old-file" in client.get("/queues/jobs").text
        for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            name.unlink(missing_ok=True)
        queue = target.open("jobs")
        queue.enqueue("from-the-new-file").unwrap()
        queue.close()
        pages = [client.get("/queues/jobs") for _ in range(2)]
        assert pages[-1].status_code == 200
        assert "from-the-new-file" in pages[-1].text
        assert "from-the-old-file" not in pages[-1].text
        listed = client.get("/api/queues/jobs/messages").json()["messages"]
        assert [m["payload"] for m in listed] == ["from-the-new-file"]


def test_api_bodies_missing_a_key_or_with_an_unknown_one_are_refused(tmp_path: Path) -> None:
    """A purge says which dead letters it deletes: a body without "older_than" (empty,
    or with the key misspelt) is refused with 400, never read as "every dead letter";
    redrive and delete refuse a key they do not take as well. Nothing is touched."""
    target = QueueTarget("sqlite", f"sqlite:///{tmp_path / 'jobs.db'}")
    queue = target.open("jobs")
    try:
        ids = dead_letters(queue, ["a", "b"])
    finally:
        queue.close()
    good = {"Authorization": f"Bearer {TOKEN}"}
    as_json = {**good, "content-type": "application/json"}
    with dashboard(target) as client:
        for body in (b"", b"{}", b'{"olderThan": 86400}', b'{"older_than_seconds": 86400}',
                     b'{"older_than ": 86400}', b'{"ids": "1"}'):  # fmt: skip
            answer = client.post("/api/queues/jobs/dead/purge", content=body, headers=as_json)
            assert answer.status_code == 400, body
            message = answer.json()["error"]
            if body in (b"", b"{}"):
                assert message.startswith('"older_than" is required'), message
                assert "or null to purge every dead letter" in message
            else:
                assert message.startswith("unknown key"), message
                assert 'this endpoint takes "older_than"' in message
        both = client.post(
            "/api/queues/jobs/dead/purge", json={"older_than": 0, "ids": ids}, headers=good
        )
        assert both.status_code == 400
        assert both.json()["error"].startswith('unknown key "ids"')
        refused = [
            ("redrive", {"ids": ids, "rat": 5}, 'unknown key "rat"'),
            ("redrive", {"all": True, "ids": ids}, "not both"),
            ("redrive", {"all": "yes"}, '"all" must be true or false'),
            ("redrive", {}, 'give "ids"'),
            ("delete", {"ids": ids, "all": True}, 'unknown key "all"'),
            ("delete", {"id": ids}, 'unknown key "id"'),
        ]
        for action, body, expected in refused:
            answer = client.post(f"/api/queues/jobs/dead/{action}", json=body, headers=good)
            assert answer.status_code == 400, (action, body)
            assert expected in answer.json()["error"], (action, body, answer.text)
        listed = client.get("/api/queues/jobs/messages?state=dead", headers=good).json()
        assert [m["id"] for m in listed["messages"]] == ids
        purged = client.post("/api/queues/jobs/dead/purge", json={"older_than": None}, headers=good)
        assert purged.json() == {"purged": 2}


def test_api_message_pages_end_with_next_after_null(tmp_path: Path) -> None:
    """``next_after`` is null on the last page, a page exactly full included: a client
    walking the pages never asks for an empty one."""
    target = QueueTarget("sqlite", f"sqlite:///{tmp_path / 'jobs.db'}")
    queue = target.open("jobs")
    try:
        ids = queue.enqueue_batch(["a", "b", "c", "d"]).unwrap()
    finally:
        queue.close()
    good = {"Authorization": f"Bearer {TOKEN}"}
    with dashboard(target) as client:
        for limit in (1, 2, 3, 4, 5):
            pages: list[list[int]] = []
            after: int | None = 0
            while after is not None:
                page = client.get(
                    f"/api/queues/jobs/messages?after={after}&limit={limit}", headers=good
                ).json()
                pages.append([m["id"] for m in page["messages"]])
                after = page["next_after"]
                if after is not None:
                    assert after == pages[-1][-1]
            assert [i for p in pages for i in p] == ids, limit
            assert all(pages), (limit, pages)  # no empty page, the last one included
            assert len(pages) == -(-len(ids) // limit), limit


def _journal_mode(path: Path) -> str:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return str(conn.execute("PRAGMA journal_mode").fetchone()[0])
    finally:
        conn.close()


def _look_everywhere(client: TestClient, queue: str, dead: int) -> None:
    """Every page and GET endpoint of ``queue`` (its dead letter ``dead`` too): each
    answered, none a server error."""
    good = {"Authorization": f"Bearer {TOKEN}"}
    paths = ["/", f"/queues/{queue}", f"/queues/{queue}?state=dead",
             f"/queues/{queue}?state=all", f"/queues/{queue}/messages/{dead}"]  # fmt: skip
    for path in paths:
        assert client.get(path).status_code == 200, path
    api = ["/api/overview", "/api/queues", f"/api/queues/{queue}",
           f"/api/queues/{queue}/messages?state=dead",
           f"/api/queues/{queue}/messages/{dead}"]  # fmt: skip
    for path in api:
        assert client.get(path, headers=good).status_code == 200, path


def test_read_only_dashboard_changes_nothing_in_the_file(tmp_path: Path) -> None:
    """With read_only, queues are opened read-only: looking at every page and endpoint
    leaves the file, its journal mode (DELETE here: not switched to WAL) and its
    directory as they were, and works for a user who may only read the file and its
    directory (to whom a dashboard that opens queues for use suggests read-only).

    As root, permissions only apply without CAP_DAC_OVERRIDE: the dashboard (its
    threads are started from that one) runs in a thread without it."""
    directory = tmp_path / "locked"
    directory.mkdir()
    db = directory / "jobs.db"
    target = QueueTarget("sqlite", f"sqlite:///{db}")
    queue = target.open("jobs")
    try:
        queue.enqueue_batch(["a", "b"]).unwrap()
        dead = dead_letters(queue, ["dies"])[0]
    finally:
        queue.close()
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode = DELETE")
    conn.close()
    before = file_state(db)
    with dashboard(target, read_only=True) as client:
        login(client)
        _look_everywhere(client, "jobs", dead)
        overview = client.get("/api/overview").json()
    assert overview["health"]["ok"] is True, overview["health"]
    assert overview["queues"][0]["counts"]["ready"] == 2
    assert file_state(db) == before
    assert _journal_mode(db) == "delete"

    def as_a_reader() -> tuple[dict[str, Any], dict[str, Any]]:
        with dashboard(target, read_only=True) as client:
            login(client)
            _look_everywhere(client, "jobs", dead)
            data: dict[str, Any] = client.get("/api/overview").json()
        with dashboard(target) as client:  # opening for use needs to write: it says so
            login(client)
            writing: dict[str, Any] = client.get("/api/overview").json()
        return data, writing

    db.chmod(0o444)
    directory.chmod(0o555)
    try:
        outcome = without_dac_override(as_a_reader)
    finally:
        directory.chmod(0o755)
        db.chmod(0o600)
    assert not isinstance(outcome, BaseException), outcome
    data, writing = outcome
    assert data["health"]["ok"] is True, data["health"]
    assert data["queues"][0]["error"] is None
    assert data["queues"][0]["counts"]["dead"] == 1
    assert writing["health"]["ok"] is False
    assert "serve the dashboard read-only" in writing["queues"][0]["error"]
    assert file_state(db) == {**before, "jobs.db": (*before["jobs.db"][:2], 0o100600)}


def test_a_queue_in_an_older_layout(tmp_path: Path) -> None:
    """Read-only, a queue of an older sqqueue's layout is not upgraded (the file keeps
    its bytes): the overview, its page and the API say to run sqqueue migrate, and the
    health is failing. Without read_only, the dashboard opens it for use, as an
    application does, which brings its layout up to date."""
    db = tmp_path / "old.db"
    db.write_bytes((LOCAL_FIXTURES / "sqqueue-schema-2.db").read_bytes())
    db.chmod(0o600)
    target = QueueTarget("sqlite", f"sqlite:///{db}")
    before = file_state(db)
    good = {"Authorization": f"Bearer {TOKEN}"}
    migrate = f"sqqueue migrate {db}"
    with dashboard(target, read_only=True) as client:
        login(client)
        overview = client.get("/api/overview").json()
        rows = {row["name"]: row for row in overview["queues"]}
        assert migrate in rows["jobs"]["error"]
        assert overview["health"]["ok"] is False
        assert migrate in client.get("/").text
        page = client.get("/queues/jobs?state=dead")
        assert page.status_code == 200
        assert migrate in page.text
        row = client.get("/api/queues/jobs", headers=good)
        assert row.status_code == 200
        assert migrate in row.json()["error"]
        for path in ("/api/queues/jobs/messages", "/api/queues/jobs/messages/7"):
            answer = client.get(path, headers=good)
            assert answer.status_code == 503, path
            assert migrate in answer.json()["error"]
        message = client.get("/queues/jobs/messages/7")
        assert message.status_code == 503
        assert migrate in message.text
    assert file_state(db) == before
    with dashboard(target) as client:
        login(client)
        listed = client.get("/api/queues/jobs/messages?state=dead", headers=good)
        assert listed.status_code == 200
        assert [m["id"] for m in listed.json()["messages"]] == [7]
        assert client.get("/api/overview").json()["health"]["ok"] is True


def test_a_file_of_sqqueue_0_1_0_queues_says_to_migrate_them(legacy_db: Path) -> None:
    """A file holding only sqqueue 0.1.0 queues (which listing does not show until they
    are migrated) is not shown as empty and healthy: the overview names them and says
    to run sqqueue migrate, in the page and the API; the dashboard leaves them as they
    are."""
    target = QueueTarget("sqlite", f"sqlite:///{legacy_db}")
    before = file_state(legacy_db)
    migrate = f"sqqueue migrate {legacy_db}"
    for read_only in (False, True):
        with dashboard(target, read_only=read_only) as client:
            login(client)
            page = client.get("/").text
            assert "No queues in this database yet" not in page
            assert "0.1.0" in page and "(emails, orders)" in page and migrate in page
            data = client.get("/api/overview").json()
            listed = client.get("/api/queues").json()
        assert data["queues"] == []
        assert data["legacy_queues"] == listed["legacy_queues"] == ["emails", "orders"]
        assert migrate in data["legacy_error"]
        assert data["health"]["ok"] is False
        assert migrate in data["health"]["error"]
        assert file_state(legacy_db) == before


def test_a_deleted_database_is_reported_not_a_server_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """When the SQLite file is deleted while the dashboard runs, every page and endpoint
    says so: the API as {"error": ...} with 503, pages as an error page with 503; the
    health reads as failing; and the dashboard logs no unexpected error."""
    import sqqueue.backends.sqlite

    monkeypatch.setattr(sqqueue.backends.sqlite, "_FILE_CHECK_INTERVAL", 0.0)
    path = tmp_path / "jobs.db"
    target = QueueTarget("sqlite", f"sqlite:///{path}")
    queue = target.open("jobs")
    try:
        dead = dead_letters(queue, ["a"])[0]
    finally:
        queue.close()
    good = {"Authorization": f"Bearer {TOKEN}"}
    with dashboard(target) as client:
        login(client)
        csrf = csrf_of(client.get("/queues/jobs?state=dead").text)
        assert client.get("/api/queues/jobs", headers=good).status_code == 200
        for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            name.unlink(missing_ok=True)
        caplog.clear()
        with caplog.at_level("INFO"):
            # (The queue object still open learns that its file is gone and is dropped.)
            health = client.get("/api/overview").json()["health"]
            assert health["ok"] is False
            assert health["error"]
            health = client.get("/api/overview").json()["health"]
            assert health["ok"] is False
            assert "no database file" in health["error"]
            gets = ["/api/queues/jobs", "/api/queues/jobs/messages",
                    f"/api/queues/jobs/messages/{dead}"]  # fmt: skip
            answers = [client.get(p, headers=good) for p in gets]
            posts = {"purge": {"older_than": None}, "delete": {"ids": [dead]},
                     "redrive": {"ids": [dead]}}  # fmt: skip
            answers += [
                client.post(f"/api/queues/jobs/dead/{action}", json=body, headers=good)
                for action, body in posts.items()
            ]
            for answer in answers:
                assert answer.status_code == 503, (answer.url, answer.text)
                assert "no database file" in answer.json()["error"], answer.url
            pages = [client.get(p) for p in ("/queues/jobs", f"/queues/jobs/messages/{dead}",
                                             "/queues/jobs/confirm?action=purge")]  # fmt: skip
            fields = {"older_than": "0", "id": str(dead), "csrf": csrf}
            pages += [client.post(f"/queues/jobs/dead/{a}", data=fields) for a in posts]
            for answer in pages:
                assert answer.status_code == 503, (answer.url, answer.text)
                assert "text/html" in answer.headers["content-type"]
                assert "no database file" in answer.text, answer.url
            page = client.get("/")
            assert page.status_code == 200
            assert 'class="health bad"' in page.text
    # (The library's own record of a call that failed, returned as an Err, is its own.)
    unexpected = [r for r in caplog.records if not getattr(r, "returned_as_err", False)]
    assert not [r for r in unexpected if r.levelno >= logging.ERROR or r.exc_info]
    assert not path.exists()


def test_long_payloads_are_clipped_before_their_whitespace_is_normalised() -> None:
    """A list shows a payload's first hundred characters; it never splits the whole
    payload (megabytes, fifty to a page) to find them."""

    class Huge(str):
        def split(self, *args: Any, **kwargs: Any) -> list[str]:  # type: ignore[override]
            raise AssertionError("the whole payload was split")

    text = Huge("word  \n " * 1_000_000)
    shown = one_line(text)
    assert shown == ("word " * 20)[:99] + "…"
    assert one_line(" " * 10_000 + "x") == "…"  # a clip is always marked
    assert one_line("short  text\n") == "short text"
    assert one_line({"k": "v" * 500}, width=10) == '{"k": "vv…'
    assert one_line(memoryview(b"abc")) == "<3 bytes>"


def _stats(enqueued: int, completed: int, failed: int) -> QueueStats:
    return QueueStats("q", 0, 0, 0, 0, 0, None, 0, enqueued, completed, failed, 0, 0, 0, 0, 0)


def test_sampler_counts_events_per_minute_since_it_started() -> None:
    """Rates are differences of the totals between samples, per minute bucket; before
    the first sample there is no data (None), not zero; an hour is kept."""
    sampler = Sampler()
    start = 1_800_000_000.0 - (1_800_000_000.0 % BUCKET)
    sampler.record("q", _stats(100, 50, 1), start + 10)
    sampler.record("q", _stats(110, 55, 1), start + 40)
    sampler.record("q", _stats(130, 60, 3), start + 70)
    rows = sampler.buckets("q", start + 75)
    assert len(rows) == BUCKETS
    assert rows[-1]["start"] == start + 60
    assert (rows[-2]["enqueued"], rows[-2]["completed"], rows[-2]["failed"]) == (10, 5, 0)
    assert (rows[-1]["enqueued"], rows[-1]["completed"], rows[-1]["failed"]) == (20, 5, 2)
    assert rows[-3]["enqueued"] is None
    assert sampler.buckets("other", start)[-1]["enqueued"] is None
    # A queue made anew (totals back down) counts from zero, never negative.
    sampler.record("q", _stats(4, 0, 0), start + 80)
    assert sampler.buckets("q", start + 85)[-1]["enqueued"] == 24
    # An hour later the old samples are gone.
    for minute in range(2, 70):
        sampler.record("q", _stats(4 + minute, 0, 0), start + minute * BUCKET + 5)
    later = sampler.buckets("q", start + 69 * BUCKET + 10)
    assert all(row["enqueued"] == 1 for row in later[1:])


# -- the command ----------------------------------------------------------------------------


def _sqqueue(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sqqueue.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


@pytest.mark.slow
def test_command_refuses_unsafe_or_broken_starts(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    connect(str(db), "jobs").close()
    env = {"SQQUEUE_DASHBOARD_TOKEN": ""}
    exposed = _sqqueue("dashboard", str(db), "--host", "0.0.0.0", "--port", "0", env=env)
    assert exposed.returncode == 2
    assert (
        "not a loopback address" in exposed.stderr and "SQQUEUE_DASHBOARD_TOKEN" in exposed.stderr
    )
    missing = _sqqueue("dashboard", str(tmp_path / "missing.db"), "--port", "0", env=env)
    assert missing.returncode == 1
    assert missing.stderr.startswith("error: ") and "missing.db" in missing.stderr
    short = tmp_path / "token"
    short.write_text("short\n")
    short.chmod(0o644)
    shared = _sqqueue("dashboard", str(db), "--port", "0", "--token-file", str(short), env=env)
    assert shared.returncode == 2 and "may be read by others" in shared.stderr
    short.chmod(0o600)
    weak = _sqqueue("dashboard", str(db), "--port", "0", "--token-file", str(short), env=env)
    assert weak.returncode == 2 and "at least 16" in weak.stderr
    assert "Traceback" not in exposed.stderr + missing.stderr + weak.stderr + shared.stderr


@pytest.mark.slow
def test_command_serves_and_prints_a_made_up_token_once(tmp_path: Path) -> None:
    import httpx

    proc = _serve_new_queue(tmp_path, token="")
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(3)]
        url = re.search(r"at (http://127\.0\.0\.1:\d+/)", lines[0])
        token = re.search(r"token \(shown only now\): (\S+)", lines[1])
        assert url and token, lines
        with httpx.Client(base_url=url.group(1), follow_redirects=False, timeout=20) as http:
            page = _login_page_when_up(http)
            assert page.status_code == 200
            answer = http.post("/login", data={"token": token.group(1), "csrf": csrf_of(page.text)})
            assert answer.status_code == 303
            assert http.get("/api/overview").json()["queues"][0]["name"] == "jobs"
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert token.group(1) not in out + err  # printed once, in the lines read above
    assert proc.returncode == 0, err


@pytest.fixture
def served_apps(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Starlette]]:
    """The apps ``serve`` would run, each caught instead of being served: its socket is
    bound and closed, nothing is answered."""
    from sqqueue.dashboard import server

    apps: list[Starlette] = []

    class Caught:
        def __init__(self, config: Any) -> None:
            apps.append(config.app)

        def run(self, sockets: list[Any]) -> None:
            pass

    monkeypatch.setattr(server, "_server_class", lambda: Caught)
    yield apps
    for app in apps:
        app.state.dashboard.source.close()


def test_command_secure_cookies_and_the_warning_off_the_loopback(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    served_apps: list[Starlette],
) -> None:
    """``--secure-cookies`` reaches the app (without it: Secure by the request's scheme);
    a non-loopback address says at start, in the output and as a WARNING in the log, that
    the token and the session cookie cross the network in clear, naming no secret."""
    db = tmp_path / "jobs.db"
    connect(str(db), "jobs").close()
    monkeypatch.setenv("SQQUEUE_DASHBOARD_TOKEN", TOKEN)
    assert run_cli("dashboard", db, "--port", "0", "--secure-cookies").exit_code == 0
    assert run_cli("dashboard", db, "--port", "0").exit_code == 0
    assert "--secure-cookies" in run_cli("dashboard", "--help").output
    assert [app.state.dashboard.secure_cookies for app in served_apps] == [True, None]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # loopback
    out = io.StringIO()
    with caplog.at_level(logging.DEBUG):
        serve(str(db), host="0.0.0.0", port=0, secure_cookies=True, out=out)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].name == "sqqueue.dashboard.server"
    said = warnings[0].getMessage()
    assert "0.0.0.0" in said and "in clear" in said and "TLS" in said
    assert "in clear" in out.getvalue() and "--secure-cookies" in out.getvalue()
    assert TOKEN not in caplog.text + out.getvalue()
    assert served_apps[-1].state.dashboard.secure_cookies is True


def _serve_new_queue(tmp_path: Path, token: str) -> subprocess.Popen[str]:
    """``sqqueue dashboard`` of a new file with queue "jobs", on a port of its choice,
    with ``token`` in $SQQUEUE_DASHBOARD_TOKEN ("": it makes one up and prints it)."""
    db = tmp_path / "jobs.db"
    connect(str(db), "jobs").close()
    return subprocess.Popen(
        [sys.executable, "-m", "sqqueue.cli", "dashboard", str(db), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "SQQUEUE_DASHBOARD_TOKEN": token},
    )


def _login_page_when_up(http: Any) -> Any:
    """The login page, once the server just started answers (within 30 s)."""
    import httpx

    deadline = time.monotonic() + 30
    while True:
        try:
            return http.get("/login")
        except httpx.TransportError:
            assert time.monotonic() < deadline, "the dashboard did not answer"
            time.sleep(0.1)


@pytest.mark.slow
def test_command_counts_real_peers_and_answers_only_its_own_host(tmp_path: Path) -> None:
    """Served by ``sqqueue dashboard``: X-Forwarded-For is not believed (rotating it does
    not slip past the login throttle, nor can it lock out another address), and a request
    whose Host header names another site (DNS rebinding) gets 400."""
    import httpx

    proc = _serve_new_queue(tmp_path, token=TOKEN)
    try:
        assert proc.stdout is not None
        url = re.search(r"at (http://127\.0\.0\.1:(\d+)/)", proc.stdout.readline())
        assert url
        port = url.group(2)
        with httpx.Client(base_url=url.group(1), follow_redirects=False, timeout=20) as http:
            page = _login_page_when_up(http)
            assert page.status_code == 200
            for host in (f"localhost:{port}", f"[::1]:{port}"):
                assert http.get("/login", headers={"host": host}).status_code == 200, host
            for host in (f"attacker.example:{port}", "127.0.0.1", f"127.0.0.1:{int(port) + 1}"):
                foreign = http.get("/login", headers={"host": host})
                assert foreign.status_code == 400, host
                assert "unexpected Host header" in foreign.text
            csrf = csrf_of(page.text)
            codes = [
                http.post(
                    "/login",
                    data={"token": f"wrong-{i}", "csrf": csrf},
                    headers={"X-Forwarded-For": f"10.0.0.{i}"},
                ).status_code
                for i in range(10)
            ]
            assert codes == [401] * 10
            # All ten came from this one peer: it is throttled, whatever it claims to be.
            throttled = http.post(
                "/login",
                data={"token": TOKEN, "csrf": csrf},
                headers={"X-Forwarded-For": "10.0.0.99"},
            )
            assert throttled.status_code == 429
    finally:
        proc.terminate()
        _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err


# -- the statements behind the pages -------------------------------------------------------------


def test_state_listings_and_stats_read_indexes_not_the_table(queue_target: QueueTarget) -> None:
    """The queue page's tabs (list_messages by state) and stats() seek through indexes: a
    few leased, waiting or delayed messages among many ready ones are found without
    walking every ready row, whatever the depth."""
    queue = queue_target.open("jobs")
    try:
        queue.enqueue_batch(["x"] * 20_000).unwrap()
        queue.enqueue("later", delay=3600, priority=3).unwrap()
        queue.enqueue("head", group="g").unwrap()
        queue.enqueue("behind", group="g").unwrap()
        queue.dequeue(visibility_timeout=3600).unwrap()
    finally:
        queue.close()
    params = {"now": time.time(), "limit": 51, "after": 0, "horizon": time.time() + 60}
    keys = ("list_processing", "list_waiting", "list_delayed", "delayed_and_oldest")
    if queue_target.backend == "sqlite":
        from sqqueue.backends.sqlite_sql import render

        sql = render("jobs").sql
        conn = queue_target.sqlite_connection()
        try:
            for key in keys:
                plan = " / ".join(
                    r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql[key], params)
                )
                # A scan of a partial index (the leased rows' own) is fine; the table is not.
                assert "INTEGER PRIMARY KEY" not in plan, (key, plan)
                assert not re.search(r"SCAN jobs(?! USING)", plan), (key, plan)
        finally:
            conn.close()
        return
    import psycopg

    from sqqueue.backends.postgres_sql import render as render_pg

    sql = render_pg("jobs").sql
    with psycopg.connect(queue_target.url, autocommit=True) as pg:
        pg.execute(f'SET search_path TO "{queue_target.schema}"')
        pg.execute("ANALYZE")
        for key in ("list_waiting", "delayed_and_oldest"):
            plan = "\n".join(r[0] for r in pg.execute("EXPLAIN " + sql[key], params))
            assert "Seq Scan on jobs" not in plan, (key, plan)
