"""Helpers shared by the test modules (import with ``from helpers import ...``)."""

from __future__ import annotations

from typing import Any

from sqqueue import Queue

STATUS_KEYS = ("id", "status", "priority", "attempts", "max_attempts")


def message_statuses(queue: Queue) -> list[dict[str, Any]]:
    """Every message of ``queue``, dead letters included, by id: its ``id``, ``status``
    (pending, delayed, waiting, processing or dead), ``priority``, ``attempts`` and
    ``max_attempts``, read page by page with ``list_messages``."""
    rows: list[dict[str, Any]] = []
    for state in ("all", "dead"):
        after = 0
        while True:
            page = queue.list_messages(state, limit=1000, after_id=after).unwrap()
            if not page:
                break
            rows.extend(page)
            after = page[-1]["id"]
    return sorted(({key: row[key] for key in STATUS_KEYS} for row in rows), key=lambda r: r["id"])
