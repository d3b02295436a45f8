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
def in_tmp(tmp_path: Path, sqlite_file: str):
    """Run in a fresh directory, on a plain file and on an encrypted one (the key in the
    environment, where the 0.1.0 code shown cannot pass it)."""
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


# -- code written for 0.1.0 -----------------------------------------------------------------

FIRST_EXAMPLE = textwrap.dedent(
    """
    from sqqueue.queue import SQLiteQueue

    # Initialize the queue
    queue = SQLiteQueue(db_path='my_queue.db', table_name='custom_queue')

    # Enqueue a message
    message_id = queue.enqueue('Hello, World!')
    print(f"Enqueued message ID: {message_id}")

    # Dequeue a message
    dequeued = queue.dequeue()
    if dequeued:
        message_id, payload = dequeued
        print(f"Dequeued message ID {message_id}: {payload}")

        # Process the message
        # ...

        # Complete the message
        queue.complete(message_id)
    else:
        print("Queue is empty.")

    # Requeue a message (if processing failed)
    queue.requeue(message_id)

    # Check if the queue is empty
    if queue.is_empty():
        print("No pending messages.")
    else:
        print("There are pending messages.")
    """
)


def test_first_usage_example_runs_as_written(in_tmp: Path) -> None:
    """The 0.1.0 README's first example unpacks the dequeue Result itself; an Ok unpacks
    like the message it holds."""
    ns: dict[str, object] = {}
    lines = run(FIRST_EXAMPLE, ns)
    assert lines == [
        "Enqueued message ID: Ok(1)",
        "Dequeued message ID 1: Hello, World!",
        "No pending messages.",
    ]
    queue = ns["queue"]
    assert queue.is_drained().value is True  # type: ignore[attr-defined]
    queue.close()  # type: ignore[attr-defined]


def test_first_usage_example_tells_a_queue_with_messages_left(in_tmp: Path) -> None:
    """Run where messages wait already, the example's ``if queue.is_empty():`` says so (an
    Ok is as true as its value), and ``if dequeued:`` is false on an empty queue."""
    from sqqueue.queue import SQLiteQueue

    with SQLiteQueue(db_path="my_queue.db", table_name="custom_queue") as earlier:
        earlier.enqueue_batch(["first", "second"]).unwrap()
    lines = run(FIRST_EXAMPLE, {})
    assert lines == [
        "Enqueued message ID: Ok(3)",
        "Dequeued message ID 1: first",
        "There are pending messages.",
    ]
    with SQLiteQueue(db_path="my_queue.db", table_name="custom_queue") as queue:
        while queue.dequeue_batch(10).unwrap():
            pass
        dequeued = queue.dequeue()
        assert dequeued.is_ok() and not dequeued  # Ok(None): the example's "Queue is empty."
        assert queue.is_empty() and not queue.is_empty().is_err()


def test_result_is_the_generic_base_class_as_in_010() -> None:
    """0.1.0's own Result tests: Ok and Err are Results, annotated Result[T, E]."""
    from sqqueue.result import Err, Ok, Result

    ok_result: Result[int, str] = Ok(5)
    err_result: Result[int, str] = Err("Error message")
    assert isinstance(ok_result, Result) and isinstance(err_result, Result)
    assert isinstance(ok_result, Ok) and not isinstance(ok_result, Err)
    assert ok_result.is_ok() is True and ok_result.is_err() is False
    assert err_result.is_ok() is False and err_result.is_err() is True
    assert ok_result.value == 5
    assert err_result.error == "Error message"
    assert issubclass(Ok, Result) and issubclass(Err, Result)
    for value in ("Success", [1, 2, 3], {"k": "v"}, None):
        assert Ok(value).value == value
    # The 0.1.0 classes took both type arguments; so do these.
    assert Ok[int, str](1) == Ok(1)
    assert Err[int, str]("x") == Err("x")


def test_is_empty_as_010_code_uses_it(in_tmp: Path) -> None:
    """0.1.0's test_is_empty: empty, then not, then empty again once the message is
    dequeued (though not completed)."""
    from sqqueue import SQLiteQueue

    queue = SQLiteQueue(db_path="q.db", table_name="test_message_queue")
    assert queue.is_empty().value is True
    assert queue.enqueue("IsEmpty Task").is_ok()
    assert queue.is_empty().value is False
    message = queue.dequeue().value
    assert message is not None
    assert queue.is_empty().value is True, "nothing left to dequeue"
    assert queue.is_drained().value is False, "one message is still being processed"
    assert queue.complete(message).is_ok()
    assert queue.is_drained().value is True
    queue.close()


def test_get_all_statuses_as_010_code_uses_it(in_tmp: Path) -> None:
    """0.1.0 returned ``Ok({status: count})``; code reads it as a dict of counts."""
    from sqqueue import SQLiteQueue

    queue = SQLiteQueue(db_path="q.db", table_name="jobs")
    assert queue.enqueue_batch(["a", "b", "c"]).is_ok()
    assert queue.dequeue().value is not None
    result = queue.get_all_statuses()
    assert result.is_ok()
    statuses = result.value
    assert statuses.get("pending", 0) == 2
    assert statuses.get("processing", 0) == 1
    assert statuses == {"pending": 2, "processing": 1, "waiting": 0, "dead": 0}
    queue.close()


def test_010_fixture_settings_and_operation_count(in_tmp: Path) -> None:
    """0.1.0's test fixture (statsd_port=None) and its maintenance test: the operation
    count goes back to 0 after vacuum_threshold operations."""
    from sqqueue import SQLiteQueue

    queue = SQLiteQueue(
        db_path="q.db",
        table_name="test_message_queue",
        vacuum_threshold=10,
        vacuum_on_start=True,
        statsd_host=None,
        statsd_port=None,
        default_max_attempts=3,
    )
    assert queue.get_operation_count() == 0
    for i in range(10):
        assert queue.enqueue(f"Maintenance Task {i}").is_ok()
    assert queue.get_operation_count() == 0
    # 0.1.0's DLQ test: three failed attempts, then one more dequeue.
    msg_id = queue.enqueue("Test Task 4").value
    queue.purge()
    msg_id = queue.enqueue("Test Task 4").value
    for _ in range(queue.default_max_attempts):
        message = queue.dequeue().value
        assert message is not None
        dequeued_id, _payload = message
        assert dequeued_id == msg_id
        assert queue.fail_message(msg_id, send_to_dlq=False).is_ok()
    queue.dequeue()
    assert any(d["id"] == msg_id for d in queue.get_dead_letters().value)
    queue.close()


def test_the_class_diagram_keywords_as_010_code_passes_them(in_tmp: Path) -> None:
    """The class diagram names the message argument ``message_id``: complete(message_id=),
    fail_message(message_id=, send_to_dlq=), and requeue(message_id=) of the usage guide."""
    from sqqueue import SQLiteQueue

    queue = SQLiteQueue(db_path="q.db", table_name="jobs")
    ids = queue.enqueue_batch(["a", "b", "c"]).value
    assert queue.dequeue().value == (ids[0], "a")
    assert queue.complete(message_id=ids[0]).is_ok()
    assert queue.dequeue().value == (ids[1], "b")
    assert queue.fail_message(message_id=ids[1], send_to_dlq=True).is_ok()
    assert [d["id"] for d in queue.get_dead_letters().value] == [ids[1]]
    assert queue.reprocess_dead_letter(message_id=ids[1]).is_ok()
    message = queue.dequeue().value
    assert queue.requeue(message_id=message.id).is_ok()
    with pytest.raises(TypeError, match="twice"):
        queue.complete(message, message_id=message.id)
    queue.close()


def test_async_calls_take_message_id_too(in_tmp: Path) -> None:
    import asyncio
    import inspect

    from sqqueue.aio import AsyncSQLiteQueue

    assert inspect.iscoroutinefunction(AsyncSQLiteQueue.complete)

    async def main() -> None:
        queue = AsyncSQLiteQueue("q.db", "jobs")
        first, second, third = (await queue.enqueue_batch(["a", "b", "c"])).value
        await queue.dequeue_batch(3)
        assert (await queue.complete(message_id=first)).is_ok()
        assert (await queue.fail_message(message_id=second, send_to_dlq=True)).is_ok()
        assert (await queue.requeue(message_id=third)).is_ok()
        assert (await queue.dequeue()).value == (third, "c")
        await queue.close()

    asyncio.run(main())


def test_the_010_constructor_positionally_and_by_default(in_tmp: Path) -> None:
    """0.1.0's __init__(db_path="queue.db", table_name="message_queue", vacuum_threshold,
    vacuum_on_start, statsd_host, statsd_port, statsd_prefix, default_priority,
    default_visibility_timeout, default_max_attempts), and its attributes."""
    import logging

    from sqqueue import SQLiteQueue

    queue = SQLiteQueue()
    assert (queue.db_path, queue.name) == ("queue.db", "message_queue")
    assert (in_tmp / "queue.db").is_file()
    assert queue.enqueue("x").is_ok()
    queue.close()
    named = SQLiteQueue(table_name="emails")
    assert named.db_path == "queue.db"
    named.close()
    ordered = SQLiteQueue("p.db", "t", 500, False, None, None, "app", 2, 60, 3)
    assert ordered.default_priority == 2
    assert ordered.default_visibility_timeout == 60
    assert ordered.default_max_attempts == 3
    assert ordered.settings["statsd_prefix"] == "app"
    assert ordered.settings["vacuum_threshold"] == 500
    assert isinstance(ordered.logger, logging.Logger)
    assert ordered.statsd_client is None
    ordered.close()


def test_a_statsd_host_with_010s_default_port(in_tmp: Path) -> None:
    """0.1.0's statsd_port defaulted to None: with a host, the standard port is used."""
    pytest.importorskip("statsd")
    from sqqueue import SQLiteQueue

    queue = SQLiteQueue("q.db", "jobs", statsd_host="127.0.0.1", statsd_port=None)
    assert queue.settings["statsd_port"] == 8125
    assert queue.statsd_client is not None
    assert queue.enqueue("x").is_ok()  # (counted to a port nobody listens on: harmless)
    queue.close()


def test_a_message_equals_its_010_pair() -> None:
    import dataclasses
    from datetime import datetime, timezone

    from sqqueue import Message

    message = Message(7, {"a": 1}, 0, 1, 5, datetime.now(timezone.utc), None, lease_token=3)
    assert message == (7, {"a": 1})
    assert (7, {"a": 1}) == message  # noqa: SIM300 (the reflected comparison is the point)
    assert message != (7, {"a": 2})
    assert message == dataclasses.replace(message, lease_token=4)  # a fencing detail
    # Every other field counts, as a dataclass compares them.
    for field in dataclasses.fields(Message):
        if not field.compare:
            continue
        value = getattr(message, field.name)
        other = f"{value}!" if isinstance(value, str | type(None)) else None
        assert message != dataclasses.replace(message, **{field.name: other}), field.name
    simple = dataclasses.replace(message, payload="x")
    assert hash(simple) == hash((7, "x"))
    assert {simple: "found"}[(7, "x")] == "found"


def test_a_message_takes_each_field_in_its_place() -> None:
    """Message's own __init__ sets each field through its slot: every field, by position
    or by name, with its default when left out, and still frozen."""
    import dataclasses
    import inspect

    from sqqueue import Message

    fields = dataclasses.fields(Message)
    parameters = list(inspect.signature(Message).parameters.values())
    assert [p.name for p in parameters] == [f.name for f in fields]
    for p, f in zip(parameters, fields, strict=True):
        assert p.default == (
            inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default
        )
    values = [object() for _ in fields]  # one distinct value per field
    for message in (
        Message(*values),
        Message(**{f.name: v for f, v in zip(fields, values, strict=True)}),
    ):
        assert [getattr(message, f.name) for f in fields] == values
    required = [v for f, v in zip(fields, values, strict=True) if f.default is dataclasses.MISSING]
    assert [getattr(Message(*required), f.name) for f in fields] == required + [
        f.default for f in fields if f.default is not dataclasses.MISSING
    ]
    with pytest.raises(dataclasses.FrozenInstanceError):
        Message(*values).priority = 3  # type: ignore[misc]


def test_messages_sort_count_and_search_as_their_010_pairs() -> None:
    """0.1.0 code may sort a batch of (id, payload) tuples, or count and search one."""
    from datetime import datetime, timezone

    from sqqueue import Message

    def message(message_id: int, payload: str) -> Message:
        return Message(message_id, payload, 0, 1, 5, datetime.now(timezone.utc), None)

    batch = [message(3, "c"), message(1, "z"), message(2, "a")]
    assert [m.id for m in sorted(batch)] == [1, 2, 3]
    assert [m.id for m in sorted(batch, reverse=True)] == [3, 2, 1]
    assert message(1, "a") < (1, "b")
    assert (1, "b") > message(1, "a")  # noqa: SIM300 (the reflected comparison)
    assert message(1, "a") <= (1, "a") and message(1, "a") >= (1, "a")
    assert (message(2, "a").index("a"), message(2, "a").count(2)) == (1, 1)
    with pytest.raises(TypeError):
        message(1, "a") < 1  # noqa: B015 (only a pair compares)


RESULT_TYPING = textwrap.dedent(
    """
    from sqqueue import Err, Ok, QueueError, Result, SQLiteQueue

    def first(queue: SQLiteQueue) -> int:
        result = queue.enqueue("x")
        if result.is_ok():
            return result.value
        if isinstance(result, Err):
            reveal_type(result)
        return -1

    def matched(result: Result[int, QueueError]) -> str:
        match result:
            case Ok(value):
                return str(value + 1)
            case Err(error):
                return f"failed: {error}"
        return ""

    annotated: Result[int, str] = Ok(5)
    failed: Result[int, str] = Err("no")
    total: int = annotated.unwrap() + failed.unwrap_or(0)
    """
)


@pytest.mark.slow
def test_result_type_checks_as_documented(tmp_path: Path) -> None:
    """mypy accepts the ways code uses a Result: is_ok() then value, isinstance, match,
    0.1.0's Result[T, E] annotations."""
    from mypy import api

    source = tmp_path / "uses_result.py"
    source.write_text(RESULT_TYPING)
    out, err, status = api.run(
        ["--strict", "--no-error-summary", "--cache-dir", str(tmp_path / "cache"), str(source)]
    )
    lines = [line for line in out.splitlines() if "error" in line]
    assert lines == [], out + err
    assert 'Revealed type is "sqqueue.result.Err[' in out, out
    assert status == 1 or status == 0
