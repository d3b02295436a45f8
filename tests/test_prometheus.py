"""The Prometheus collector reads the queues of either backend."""

from __future__ import annotations

import pytest
from prometheus_client.core import CollectorRegistry

from conftest import QueueTarget
from sqqueue.prometheus import QueueCollector


def test_collector_reads_every_queue(queue_target: QueueTarget) -> None:
    """QueueCollector takes a PostgreSQL URL (and schema) as it takes a file; the file
    sizes are for SQLite only."""
    with queue_target.open("jobs") as q:
        q.enqueue_batch(["a", "b"]).unwrap()
    queue_target.open("emails").close()
    registry = CollectorRegistry()
    schema = {"schema": queue_target.schema} if queue_target.backend == "postgres" else {}
    collector = QueueCollector(queue_target.url, **schema)
    registry.register(collector)
    try:
        samples = {
            (s.name, s.labels.get("queue"), s.labels.get("state")): s.value
            for family in registry.collect()
            for s in family.samples
        }
    finally:
        collector.close()
    assert samples[("sqqueue_messages", "jobs", "ready")] == 2
    assert samples[("sqqueue_messages", "emails", "ready")] == 0
    assert samples[("sqqueue_enqueued_total", "jobs", None)] == 2
    assert samples[("sqqueue_up", None, None)] == 1
    has_sizes = any(name == "sqqueue_file_bytes" for name, _, _ in samples)
    assert has_sizes is (queue_target.backend == "sqlite")


def test_collector_refuses_a_schema_for_a_file() -> None:
    with pytest.raises(ValueError, match="schema applies to a postgresql:// URL only"):
        QueueCollector("jobs.db", schema="jobs")


def test_a_database_that_cannot_be_read_says_so(tmp_path: object) -> None:
    """A file gone (or a server down) is sqqueue_up 0, not a database with no queues."""
    registry = CollectorRegistry()
    collector = QueueCollector(f"{tmp_path}/missing.db")
    registry.register(collector)
    try:
        samples = {s.name: s.value for family in registry.collect() for s in family.samples}
    finally:
        collector.close()
    assert samples == {"sqqueue_up": 0}
