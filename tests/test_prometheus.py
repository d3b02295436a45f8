"""The Prometheus collector reads the queues of either backend."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from prometheus_client import generate_latest
from prometheus_client.core import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from conftest import QueueTarget
from sqqueue import Queue
from sqqueue.aio import AsyncQueue
from sqqueue.prometheus import QueueCollector, SignatureCollector


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


def test_signature_counts_of_the_consumers_queue_objects(
    make_queue: Callable[..., Queue], queue_target: QueueTarget
) -> None:
    """SignatureCollector exports the refusals and unsigned deliveries its queue objects
    counted, summed by queue, and keeps a closed object's last counts."""
    key = "a signing key"
    strict = make_queue(table_name="jobs", signing_key=key)
    altered = strict.enqueue("real").unwrap()
    column = "body_text" if queue_target.backend == "postgres" else "payload"
    queue_target.run_sql([f"UPDATE jobs SET {column} = 'altered' WHERE id = {altered}"])
    assert strict.dequeue().unwrap() is None  # refused: dead-lettered as signature invalid
    make_queue(table_name="jobs").enqueue("unsigned").unwrap()
    lenient = make_queue(table_name="jobs", signing_key=key, accept_unsigned=True)
    assert lenient.dequeue().unwrap() is not None
    idle = make_queue(table_name="emails", signing_key=key)
    registry = CollectorRegistry()
    registry.register(SignatureCollector([strict, AsyncQueue(lenient), idle]))

    def exposed() -> dict[tuple[str, str], float]:
        text = generate_latest(registry).decode()
        return {
            (s.name, s.labels["queue"]): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if family.type == "counter" and s.name.endswith("_total")
        }

    expected = {
        ("sqqueue_signature_invalid_total", "jobs"): 1,
        ("sqqueue_signature_invalid_total", "emails"): 0,
        ("sqqueue_unsigned_accepted_total", "jobs"): 1,
        ("sqqueue_unsigned_accepted_total", "emails"): 0,
    }
    assert exposed() == expected
    strict.close()
    assert exposed() == expected
