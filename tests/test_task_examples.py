"""The integration examples under examples/ run as documented: a FastAPI endpoint and a
Flask app enqueue tasks that a worker runs, and a Django management command runs the
worker as a real process (stopped by SIGTERM)."""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from helpers import serving

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SRC = Path(__file__).resolve().parents[1] / "src"


@contextlib.contextmanager
def imported(directory: Path, *names: str, **env: str) -> Iterator[list[ModuleType]]:
    """Import example modules from ``directory`` with ``env`` set; forgotten afterwards."""
    saved_path, saved_env = list(sys.path), dict(os.environ)
    sys.path.insert(0, str(directory))
    os.environ.update(env)
    modules: list[ModuleType] = []
    try:
        for name in names:
            sys.modules.pop(name, None)
            modules.append(importlib.import_module(name))
        yield modules
    finally:
        for module in modules:
            tasks = getattr(module, "tasks", None)
            if tasks is not None:
                tasks.close()
            sys.modules.pop(module.__name__, None)
        sys.path[:] = saved_path
        os.environ.clear()
        os.environ.update(saved_env)


def poll_status(get: Any, url: str, want: str, timeout: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body: dict[str, Any] = get(url)
        if body["status"] == want:
            return body
        if time.monotonic() > deadline:
            pytest.fail(f"{url} still {body} after {timeout} s")
        time.sleep(0.05)


def test_fastapi_endpoint_enqueues_a_task(tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    with imported(
        EXAMPLES / "tasks_app", "jobs", "fastapi_app", JOBS_DB=str(tmp_path / "jobs.db")
    ) as (jobs, web):
        client = TestClient(web.app)
        response = client.post("/emails", json={"to": "ada@example.com", "subject": "hi"})
        assert response.status_code == 202, response.text
        call_id = response.json()["id"]
        assert client.get(f"/emails/{call_id}").json() == {"id": call_id, "status": "pending"}
        with serving(jobs.tasks, periodic=False):
            body = poll_status(lambda url: client.get(url).json(), f"/emails/{call_id}", "done")
        assert body["result"] == {
            "to": "ada@example.com",
            "status": "sent",
            "idempotency_key": f"email-{call_id}",
        }
        assert jobs.SENT == ["ada@example.com: hi"]
        assert client.post("/emails", json={"to": "x"}).status_code == 422


def test_flask_app_enqueues_a_task(tmp_path: Path) -> None:
    pytest.importorskip("flask")
    with imported(
        EXAMPLES / "tasks_app", "jobs", "flask_app", JOBS_DB=str(tmp_path / "jobs.db")
    ) as (jobs, web):
        client = web.app.test_client()
        response = client.post("/emails", json={"to": "bob@example.com", "subject": "yo"})
        assert response.status_code == 202
        call_id = response.get_json()["id"]
        with serving(jobs.tasks, periodic=False):
            body = poll_status(lambda url: client.get(url).get_json(), f"/emails/{call_id}", "done")
        assert body["result"]["to"] == "bob@example.com"
        refresh = jobs.refresh_profile
        first = refresh.delay(7).unwrap()
        assert refresh.delay(7).unwrap().id == first.id  # dedup=True: one pending refresh
        with serving(jobs.tasks, periodic=False):
            assert first.result(timeout=20) == {"user_id": 7}
        assert jobs.nightly_cleanup.periodic is not None


def test_django_management_command_runs_the_worker(tmp_path: Path) -> None:
    pytest.importorskip("django")
    site = EXAMPLES / "django_site"
    db = str(tmp_path / "jobs.db")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SQQUEUE_")}
    env.update(
        SQQUEUE_CONFIG="none",
        JOBS_DB=db,
        DJANGO_SETTINGS_MODULE="settings",
        PYTHONPATH=f"{SRC}{os.pathsep}{site}",
    )
    out = (tmp_path / "worker.out").open("w")
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "runtasks", "--concurrency", "2", "--grace-period", "5"],
        cwd=site,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    out.close()
    try:
        with imported(site, **{"JOBS_DB": db, "DJANGO_SETTINGS_MODULE": "settings"}):
            import django

            django.setup()
            with imported(site, "shop.jobs") as (jobs,):
                handles = [jobs.confirm_order.delay(n).unwrap() for n in (1, 2, 3)]
                results = [h.result(timeout=60) for h in handles]
        assert results == ["order 1 confirmed", "order 2 confirmed", "order 3 confirmed"]
        log = tmp_path / "worker.out"
        deadline = time.monotonic() + 30
        while "started with" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
        assert "worker stopped: 3 completed, 0 failed" in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
