"""Examples of the README run as written (the blocks are read from README.md itself)."""

from __future__ import annotations

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
        assert (row["status"], row["attempts"]) == ("pending", 0)  # dead, then reprocessed
