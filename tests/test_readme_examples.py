"""Examples of the README run as written (the blocks are read from README.md itself)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from helpers import message_statuses
from sqqueue import SQLiteQueue

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks(heading: str) -> list[str]:
    """The ```python blocks of the README section under ``heading`` (up to the next one)."""
    text = README.read_text()
    start = text.index(f"\n{heading}\n")
    rest = text[start + len(heading) + 2 :]
    following = [i for i in (rest.find("\n## "), rest.find("\n### ")) if i >= 0]
    section = rest[: min(following)] if following else rest
    blocks = []
    for part in section.split("```python\n")[1:]:
        blocks.append(part.split("```", 1)[0])
    assert blocks, f"no python block under {heading!r}"
    return blocks


def run_block(code: str, **names: Any) -> dict[str, Any]:
    scope: dict[str, Any] = {"print": lambda *args: None, **names}
    exec(compile(code, str(README), "exec"), scope)
    return scope


@pytest.mark.parametrize("worth_retrying", [True, False])
def test_slow_work_retries_and_dead_letters(tmp_path: Path, worth_retrying: bool) -> None:
    (block,) = python_blocks("### Slow work, retries and dead letters")
    with SQLiteQueue(tmp_path / "jobs.db", table_name="emails") as queue:
        message_id = queue.enqueue({"to": "ada@example.com"}).unwrap()
        run_block(block, queue=queue, worth_retrying=worth_retrying)
        (row,) = message_statuses(queue)
    assert row["id"] == message_id
    if worth_retrying:
        assert (row["status"], row["attempts"]) == ("delayed", 1)  # retried in 30 s
    else:
        assert (row["status"], row["attempts"]) == ("ready", 0)  # dead, then reprocessed


def test_outbox_recipes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sqlite3 and SQLAlchemy outbox recipes: each order row and its message commit
    together."""
    monkeypatch.chdir(tmp_path)
    plain, alchemy = python_blocks("### Enqueue in your own transaction (outbox)")
    with sqlite3.connect("app.db") as setup:
        setup.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, total REAL)")
    setup.close()
    with SQLiteQueue("app.db", table_name="orders_out") as queue:
        run_block(plain, queue=queue)
        scope = run_block(alchemy, queue=queue)
        scope["engine"].dispose()
        payloads = [m["payload"] for m in queue.list_messages("pending").unwrap()]
    assert payloads == [{"order": 42}, {"order": 43}, {"order": 44}]
    check = sqlite3.connect("app.db")
    try:
        assert [r[0] for r in check.execute("SELECT id FROM orders ORDER BY id")] == [42, 43, 44]
    finally:
        check.close()
