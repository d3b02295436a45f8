"""The usage guide of the sqqueue 0.1.0 README, run verbatim against this implementation."""

from __future__ import annotations

import contextlib
import io
import os
import textwrap
from pathlib import Path

import pytest

BASIC = textwrap.dedent(
    """
    from sqqueue import SQLiteQueue

    # Initialize the queue
    queue = SQLiteQueue(
        db_path='path_to_db.sqlite',
        table_name='message_queue',
        vacuum_threshold=100,
        vacuum_on_start=True,
        default_max_attempts=5
    )

    # Enqueue a message
    result = queue.enqueue("Sample Task")
    if result.is_ok():
        message_id = result.value
        print(f"Enqueued message with ID: {message_id}")
    else:
        print(f"Enqueue failed: {result.error}")

    # Dequeue a message
    dequeue_result = queue.dequeue()
    if dequeue_result.is_ok():
        message = dequeue_result.value
        msg_id, payload = message
        print(f"Dequeued message ID: {msg_id}, Payload: {payload}")
    else:
        print(f"Dequeue failed: {dequeue_result.error}")

    # Complete a message
    complete_result = queue.complete(msg_id)
    if complete_result.is_ok():
        print(f"Message {msg_id} completed successfully.")
    else:
        print(f"Completion failed: {complete_result.error}")

    # Fail a message
    fail_result = queue.fail_message(msg_id, send_to_dlq=False)
    if fail_result.is_ok():
        print(f"Message {msg_id} failed and requeued.")
    else:
        print(f"Failing message failed: {fail_result.error}")

    # Retrieve dead letters
    dlq_result = queue.get_dead_letters()
    if dlq_result.is_ok():
        dead_letters = dlq_result.value
        print(f"Dead-letter messages: {dead_letters}")
    else:
        print(f"Failed to retrieve dead letters: {dlq_result.error}")
    """
)

BATCH = textwrap.dedent(
    """
    # Enqueue multiple messages
    payloads = ["Task 1", "Task 2", "Task 3"]
    enqueue_batch_result = queue.enqueue_batch(payloads)
    if enqueue_batch_result.is_ok():
        message_ids = enqueue_batch_result.value
        print(f"Enqueued batch with IDs: {message_ids}")
    else:
        print(f"Batch enqueue failed: {enqueue_batch_result.error}")

    # Dequeue multiple messages
    dequeue_batch_result = queue.dequeue_batch(batch_size=2)
    if dequeue_batch_result.is_ok():
        messages = dequeue_batch_result.value
        for msg_id, payload in messages:
            print(f"Dequeued message ID: {msg_id}, Payload: {payload}")
    else:
        print(f"Batch dequeue failed: {dequeue_batch_result.error}")
    """
)

MAINTENANCE = textwrap.dedent(
    """
    # Vacuum the database
    vacuum_result = queue.vacuum_database()
    if vacuum_result.is_ok():
        print("Database vacuumed successfully.")
    else:
        print(f"Vacuum failed: {vacuum_result.error}")

    # Perform a WAL checkpoint
    checkpoint_result = queue.perform_checkpoint()
    if checkpoint_result.is_ok():
        print("WAL checkpoint performed successfully.")
    else:
        print(f"Checkpoint failed: {checkpoint_result.error}")
    """
)


@pytest.fixture
def in_tmp(tmp_path: Path):
    old = Path.cwd()
    os.chdir(tmp_path)
    try:
        yield tmp_path
    finally:
        os.chdir(old)


def run(code: str, namespace: dict[str, object]) -> list[str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "<usage guide>", "exec"), namespace)
    return out.getvalue().splitlines()


def test_usage_guide_runs_as_written(in_tmp: Path) -> None:
    ns: dict[str, object] = {}
    lines = run(BASIC, ns)
    assert lines[0] == "Enqueued message with ID: 1"
    assert lines[1] == "Dequeued message ID: 1, Payload: Sample Task"
    assert lines[2] == "Message 1 completed successfully."
    # The example fails a message it has just completed: that is refused, and says why.
    assert lines[3].startswith("Failing message failed: ")
    assert "message 1 is not in queue 'message_queue'" in lines[3]
    assert lines[4] == "Dead-letter messages: []"

    lines = run(BATCH, ns)
    assert lines == [
        "Enqueued batch with IDs: [2, 3, 4]",
        "Dequeued message ID: 2, Payload: Task 1",
        "Dequeued message ID: 3, Payload: Task 2",
    ]

    lines = run(MAINTENANCE, ns)
    assert lines == ["Database vacuumed successfully.", "WAL checkpoint performed successfully."]
    ns["queue"].close()  # type: ignore[attr-defined]
    assert (in_tmp / "path_to_db.sqlite").exists()


def test_both_import_paths_name_the_same_class() -> None:
    from sqqueue import SQLiteQueue as A
    from sqqueue.queue import SQLiteQueue as B

    assert A is B


def test_spec_exception_hierarchy() -> None:
    from sqqueue.exceptions import (
        CompletionError,
        DequeueError,
        EnqueueError,
        QueueError,
        RequeueError,
    )

    for cls in (EnqueueError, DequeueError, CompletionError, RequeueError):
        assert issubclass(cls, QueueError)
    assert issubclass(QueueError, Exception)
