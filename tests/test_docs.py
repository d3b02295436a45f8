"""The documentation: the site builds with --strict, and every Python example runs as written.

Each page's ```python blocks run in order, in one namespace, in an empty temporary
directory (so ``SQLiteQueue("jobs.db")`` makes a fresh file). A line right before a block
can change how it runs:

- ``<!-- test: skip REASON -->``: the block does not run (keep these rare, and say why);
- ``<!-- test: sigterm-when-drained -->``: the block runs a worker until SIGTERM; the test
  sends it, as an operator would, once the worker is running and its queue is drained.

A page with ``<!-- test: postgres -->`` runs with ``DATABASE_URL`` set to the test
PostgreSQL server, and keeps its queues in the schema ``jobs`` (dropped before and after).
Every fenced block must name its language, so that a block meant to run cannot be left out
by mistake.
"""

from __future__ import annotations

import gc
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import sqqueue
from sqqueue.worker import WorkerCore

ROOT = Path(__file__).resolve().parent.parent
PAGES = [
    ROOT / "README.md",
    *sorted(p for p in (ROOT / "docs").rglob("*.md") if "hooks" not in p.parts),
]
MARKER = re.compile(r"^<!-- test: ([a-z-]+)(?: (.*))? -->$")


@dataclass
class Block:
    language: str
    line: int
    code: str
    marker: str | None
    reason: str | None


def blocks_of(page: Path) -> list[Block]:
    """Every fenced block of ``page``; fails on a block without a language."""
    lines = page.read_text().splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        opening = re.match(r"^(\s*)```(.*)$", lines[i])
        if not opening:
            i += 1
            continue
        indent, info = opening.groups()
        language = info.split()[0] if info.strip() else ""
        assert language, f"{page.name}:{i + 1}: a fenced block must name its language"
        end = i + 1
        while not re.match(rf"^{indent}```\s*$", lines[end]):
            end += 1
        previous = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marker = MARKER.match(previous.strip())
        body = "\n".join(line[len(indent) :] for line in lines[i + 1 : end])
        found.append(
            Block(
                language,
                i + 1,
                body + "\n",
                marker.group(1) if marker else None,
                marker.group(2) if marker else None,
            )
        )
        i = end + 1
    return found


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def test_site_builds_strict(tmp_path: Path) -> None:
    """``mkdocs build --strict``: a broken link, anchor or API reference fails it."""
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert (tmp_path / "reference" / "configuration" / "index.html").exists()


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_python_blocks_are_marked_and_indented_blocks_do_not_hide(page: Path) -> None:
    for block in blocks_of(page):
        if block.language == "python":
            assert not block.code.startswith((" ", "\t")), f"{page.name}:{block.line}"
        if block.marker == "skip":
            assert block.reason, f"{page.name}:{block.line}: say why the block does not run"
        elif block.marker is not None:
            assert block.marker == "sigterm-when-drained", f"{page.name}:{block.line}"


def _stop_when_drained(ours: Any, done: threading.Event, late: list[str], before: set[int]) -> None:
    """SIGTERM this process once a worker runs (it replaced our handler) and the queues of
    every worker are drained; after 90 s, SIGTERM it anyway and say so."""
    deadline = time.monotonic() + 90
    while not done.is_set():
        if signal.getsignal(signal.SIGTERM) is not ours and _workers_drained(before):
            break
        if time.monotonic() > deadline:
            late.append(f"not drained within 90 s: {_undrained(before)}")
            break
        done.wait(0.1)
    if not done.is_set():
        os.kill(os.getpid(), signal.SIGTERM)


def _workers() -> list[WorkerCore]:
    return [o for o in gc.get_objects() if isinstance(o, WorkerCore)]


def _worker_queues(before: set[int]) -> list[sqqueue.Queue]:
    """The queues of the workers made since ``before`` (the ids of the workers then)."""
    return [getattr(w.queue, "sync", w.queue) for w in _workers() if id(w) not in before]


def _workers_drained(before: set[int]) -> bool:
    queues = _worker_queues(before)
    return bool(queues) and all(q.is_drained().unwrap_or(False) for q in queues)


def _undrained(before: set[int]) -> list[str]:
    return [
        f"{q.name}: {q.stats().unwrap_or(None)}"
        for q in _worker_queues(before)
        if not q.is_drained().unwrap_or(False)
    ]


def _drop_schema(url: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_python_examples_run(
    page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    runnable = [b for b in blocks_of(page) if b.language == "python" and b.marker != "skip"]
    if not runnable:
        return
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SQQUEUE_CONFIG", raising=False)
    if "<!-- test: postgres -->" in page.read_text():
        url = request.getfixturevalue("pg_url")
        monkeypatch.setenv("DATABASE_URL", url)
        _drop_schema(url, "jobs")  # the pages keep their PostgreSQL queues in schema "jobs"
        request.addfinalizer(lambda: _drop_schema(url, "jobs"))
    monkeypatch.syspath_prepend(str(tmp_path))
    scope: dict[str, Any] = {"__name__": "docs_example"}
    # The logging page configures the "sqqueue" logger: put it back for the other tests.
    loggers = [logging.getLogger(), logging.getLogger("sqqueue")]
    saved = [(lg, lg.handlers[:], lg.level, lg.propagate) for lg in loggers]
    try:
        for block in runnable:
            code = compile(block.code, f"{page_id(page)}:{block.line}", "exec")
            if block.marker != "sigterm-when-drained":
                exec(code, scope)
                continue

            def ours(*_: object) -> None:
                """Ignores a SIGTERM that comes before the worker's handler is in place."""

            previous = signal.signal(signal.SIGTERM, ours)
            done = threading.Event()
            late: list[str] = []
            before = {id(w) for w in _workers()}
            stopper = threading.Thread(target=_stop_when_drained, args=(ours, done, late, before))
            stopper.start()
            try:
                exec(code, scope)
            finally:
                done.set()
                stopper.join()
                signal.signal(signal.SIGTERM, previous)
            assert not late, f"{page_id(page)}:{block.line}: {late[0]}"
    finally:
        for value in scope.values():
            if isinstance(value, sqqueue.Queue):
                value.close()
        for lg, handlers, level, propagate in saved:
            lg.handlers[:] = handlers
            lg.setLevel(level)
            lg.propagate = propagate


def test_alert_rules_use_exported_metrics(tmp_path: Path) -> None:
    """Every metric the suggested alert rules name is one the exporter serves."""
    from prometheus_client import CollectorRegistry, generate_latest

    from sqqueue.prometheus import QueueCollector

    page = (ROOT / "docs" / "operations" / "metrics.md").read_text()
    (rules,) = [
        b.code
        for b in blocks_of(ROOT / "docs" / "operations" / "metrics.md")
        if b.language == "yaml"
    ]
    named = set(re.findall(r"\b(sqqueue_[a-z_]+)", rules))
    assert named, "no metric in the alert rules"
    with sqqueue.SQLiteQueue(tmp_path / "jobs.db", table_name="emails") as queue:
        queue.enqueue("x")
    registry = CollectorRegistry()
    registry.register(QueueCollector(tmp_path / "jobs.db"))
    served = set(re.findall(r"^(sqqueue_[a-z_]+)", generate_latest(registry).decode(), re.M))
    assert named <= served, f"not exported: {sorted(named - served)}"
    assert "suggested alerts" in page.lower()
