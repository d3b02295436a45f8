"""The Prometheus collector reads the queues of either backend."""

from __future__ import annotations

import signal
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.core import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from conftest import QueueTarget
from helpers import CLI_ENV, cli_process
from sqqueue import Queue, SQLiteQueue
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


def test_a_file_of_0_1_0_queues_is_not_healthy_and_empty(
    legacy_db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Queues still in 0.1.0's layout are not listed: the scrape says sqqueue_up 0 and the
    log says to migrate, instead of a healthy file with no queues."""
    registry = CollectorRegistry()
    registry.register(QueueCollector(legacy_db))
    samples = {s.name: s.value for family in registry.collect() for s in family.samples}
    assert samples == {"sqqueue_up": 0}
    assert any("sqqueue migrate" in r.getMessage() for r in caplog.records)


def test_the_collector_keeps_no_queue_it_will_not_read_again(tmp_path: Path) -> None:
    """A queue gone from the file (a restore without it, a drop) has its queue object
    closed at the next scrape; one whose file was replaced is opened afresh."""
    db = tmp_path / "jobs.db"
    for name in ("jobs", "emails"):
        SQLiteQueue(db, table_name=name).close()
    collector = QueueCollector(db)
    registry = CollectorRegistry()
    registry.register(collector)

    def queues() -> set[str]:
        return {
            s.labels["queue"]
            for family in registry.collect()
            for s in family.samples
            if s.name == "sqqueue_messages"
        }

    assert queues() == {"jobs", "emails"}
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    with SQLiteQueue(db, table_name="jobs") as restored:
        restored.enqueue("after the restore").unwrap()
    queues()  # (the replaced file noticed: at most one scrape later)
    assert queues() == {"jobs"}
    ready = [
        s.value
        for family in registry.collect()
        for s in family.samples
        if s.name == "sqqueue_messages" and s.labels["state"] == "ready"
    ]
    assert ready == [1]
    collector.close()


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


def test_the_worker_command_exports_its_queues_signature_counts(tmp_path: Path) -> None:
    """`sqqueue worker FUNC DB QUEUE --metrics-port` serves the refusals its own queue
    object counted (the metrics page lists them for it), beside the queue's metrics."""
    db = tmp_path / "jobs.db"
    with SQLiteQueue(db, table_name="jobs") as unsigned:
        unsigned.enqueue_batch(["a", "b"]).unwrap()
    (tmp_path / "noop_handler.py").write_text("def handle(message):\n    pass\n")
    env = {**CLI_ENV, "SQQUEUE_SIGNING_KEY": "a signing key"}
    proc = cli_process(
        "worker", "noop_handler:handle", db, "jobs", "--metrics-port", "0", cwd=tmp_path, env=env
    )
    try:
        assert proc.stderr is not None
        url = ""
        while not url:
            line = proc.stderr.readline()
            assert line, "the worker ended before it served metrics"
            url = line.split("metrics on ", 1)[1].strip() if "metrics on " in line else ""
        refused = 0.0
        deadline = time.monotonic() + 30
        while refused < 2 and time.monotonic() < deadline:
            with urllib.request.urlopen(url, timeout=10) as response:
                text = response.read().decode()
            refused = sum(
                s.value
                for family in text_string_to_metric_families(text)
                for s in family.samples
                if s.name == "sqqueue_signature_invalid_total" and s.labels["queue"] == "jobs"
            )
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert refused == 2
