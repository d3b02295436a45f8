"""Writes the layouts of the sqqueue that named its internal objects ``<queue>_done``,
``<queue>_ready``, ... (SQLite schema version 2, PostgreSQL schema version 1), for the
tests of the upgrade to the current layout:

* sqqueue-schema-2.db: an SQLite file with a message in every state;
* postgres-schema-1.json: the PostgreSQL DDL of a few queues, by queue name.

It was run once, with the sources of that sqqueue first on the path::

    PYTHONPATH=<that sqqueue>/src python tests/data/make_older_schemas.py tests/data
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from sqqueue import SQLiteQueue
from sqqueue.backends import postgres_sql
from sqqueue.backends import sqlite as backend
from sqqueue.tools import schema_sql


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def main(directory: str) -> None:
    assert backend.SCHEMA_VERSION == 2, "run this with sqqueue at SQLite schema version 2"
    assert not hasattr(postgres_sql, "SCHEMA_VERSION"), "and at PostgreSQL schema version 1"
    ddl = {name: schema_sql("postgresql", name) for name in ("jobs", "a", "a" * 63)}
    (Path(directory) / "postgres-schema-1.json").write_text(json.dumps(ddl, indent=1) + "\n")
    path = Path(directory) / "sqqueue-schema-2.db"
    path.unlink(missing_ok=True)
    clock = Clock()
    jobs = SQLiteQueue(path, "jobs", clock=clock, retention=10**9, dedup_window="exists")
    jobs.enqueue("done", dedup_key="first").unwrap()
    jobs.complete(jobs.dequeue().unwrap()).unwrap()  # kept as history
    jobs.enqueue({"to": "ada"}, priority=5, dedup_key="ada").unwrap()
    jobs.enqueue(b"\x00bytes", ttl=3600).unwrap()
    jobs.enqueue("later", delay=600).unwrap()
    jobs.enqueue("group head", group="g").unwrap()
    jobs.enqueue("group next", group="g").unwrap()  # waiting behind its head
    dead = jobs.enqueue("dies", max_attempts=1).unwrap()
    clock.now += 1
    leased = jobs.dequeue_batch(3, visibility_timeout=60).unwrap()  # ada, bytes, group head
    assert dead not in {m.id for m in leased}
    jobs.fail_message(leased[1], error="failed once", delay=5).unwrap()
    jobs.fail_message(dead, send_to_dlq=True, error="poison").unwrap()
    jobs.reprocess_dead_letter(dead).unwrap()
    jobs.fail_message(dead, send_to_dlq=True, error="poison again").unwrap()
    jobs.close()
    other = SQLiteQueue(path, "a", clock=clock)
    other.enqueue("in queue a").unwrap()
    other.close()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).parent))
