"""complete_batch: many acknowledgements in one transaction, all or none."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from helpers import message_statuses
from sqqueue import CompletionError, ErrorKind, Queue


def test_completes_a_whole_batch(make_queue: Callable[..., Queue]) -> None:
    queue = make_queue(table_name="jobs")
    queue.enqueue_batch([f"m{i}" for i in range(20)]).unwrap()
    batch = queue.dequeue_batch(20).unwrap()
    assert queue.complete_batch(batch).unwrap() == 20
    assert queue.is_drained().unwrap()
    stats = queue.stats().unwrap()
    assert stats.completed_total == 20
    assert queue.complete_batch([]).unwrap() == 0


def test_a_refused_message_rolls_back_the_batch(
    make_queue: Callable[..., Queue], clock: Any
) -> None:
    queue = make_queue(table_name="jobs")
    queue.enqueue_batch(["a", "b", "c"]).unwrap()
    short = queue.dequeue(visibility_timeout=5).unwrap()
    rest = queue.dequeue_batch(2, visibility_timeout=60).unwrap()
    assert short is not None
    clock.advance(10)  # the first lease ran out
    result = queue.complete_batch([*rest, short])
    assert result.is_err()
    assert isinstance(result.error, CompletionError)
    assert result.error.kind is ErrorKind.LEASE_EXPIRED
    assert str(short.id) in str(result.error)
    # Nothing was completed: the two live leases are still there, and can be completed.
    statuses = {s["id"]: s["status"] for s in message_statuses(queue)}
    assert [statuses[m.id] for m in rest] == ["processing", "processing"]
    assert queue.complete_batch(rest).unwrap() == 2


def test_bad_input_is_an_err(make_queue: Callable[..., Queue]) -> None:
    queue = make_queue(table_name="jobs")
    assert queue.complete_batch("abc").error.kind is ErrorKind.INVALID_INPUT  # type: ignore[arg-type,union-attr]
    assert queue.complete_batch([123456]).error.kind is ErrorKind.NOT_FOUND  # type: ignore[union-attr]


def test_the_same_message_twice_is_refused_and_changes_nothing(
    make_queue: Callable[..., Queue],
) -> None:
    queue = make_queue(table_name="jobs")
    queue.enqueue_batch(["a", "b"]).unwrap()
    a, b = queue.dequeue_batch(2, visibility_timeout=60).unwrap()
    for call in (queue.complete_batch, queue.release_batch, queue.extend_batch):
        args = (60,) if call == queue.extend_batch else ()
        result = call([a, b, a.id], *args)  # type: ignore[operator]
        assert result.is_err(), call
        assert result.error.kind is ErrorKind.INVALID_INPUT  # type: ignore[union-attr]
        assert f"message {a.id} more than once" in str(result.error)
    assert sorted(s["status"] for s in message_statuses(queue)) == [
        "processing",
        "processing",
    ]
    assert queue.stats().unwrap().completed_total == 0
    assert queue.complete_batch([a.id, b.id]).unwrap() == 2  # ids this object leased


def test_a_batch_completed_with_retention_is_kept_in_the_history(
    make_queue: Callable[..., Queue],
) -> None:
    queue = make_queue(table_name="jobs", retention=3600)
    queue.enqueue_batch(["a", "b", "c"]).unwrap()
    batch = queue.dequeue_batch(3).unwrap()
    assert queue.complete_batch(batch).unwrap() == 3
    done = queue.get_completed().unwrap()
    assert sorted(m["payload"] for m in done) == ["a", "b", "c"]
    assert queue.stats().unwrap().completed_total == 3


def test_a_batch_claimed_together_with_one_message_gone_changes_nothing(
    make_queue: Callable[..., Queue],
) -> None:
    # A batch from one dequeue_batch shares its lease token: acknowledged in one
    # statement, which must also undo what it deleted when one message is missing.
    queue = make_queue(table_name="jobs")
    queue.enqueue_batch(["a", "b", "c"]).unwrap()
    batch = queue.dequeue_batch(3, visibility_timeout=60).unwrap()
    queue.complete(batch[1]).unwrap()
    result = queue.complete_batch(batch)
    assert result.is_err()
    assert result.error.kind is ErrorKind.NOT_FOUND  # type: ignore[union-attr]
    assert str(batch[1].id) in str(result.error)
    statuses = {s["id"]: s["status"] for s in message_statuses(queue)}
    assert statuses == {batch[0].id: "processing", batch[2].id: "processing"}
    assert queue.stats().unwrap().completed_total == 1
    assert queue.complete_batch([batch[0], batch[2]]).unwrap() == 2
    assert queue.stats().unwrap().completed_total == 3


def test_a_large_batch_is_completed_too(make_queue: Callable[..., Queue]) -> None:
    # Past the size acknowledged in one statement (SQLite: 500), in several.
    queue = make_queue(table_name="jobs")
    queue.enqueue_batch([f"m{i}" for i in range(600)]).unwrap()
    batch = queue.dequeue_batch(600).unwrap()
    assert len(batch) == 600
    assert queue.complete_batch(batch).unwrap() == 600
    assert queue.is_drained().unwrap()
    assert queue.stats().unwrap().completed_total == 600


def test_a_batch_from_several_claims_is_completed_together(
    make_queue: Callable[..., Queue],
) -> None:
    # A worker acknowledges what its runners finished, whichever claims they came from:
    # each claim has its own lease token, and every message is fenced by its own.
    queue = make_queue(table_name="jobs")
    queue.enqueue_batch([f"m{i}" for i in range(9)]).unwrap()
    claims = [queue.dequeue_batch(3).unwrap() for _ in range(3)]
    assert len({m.lease_token for claim in claims for m in claim}) == 3
    mixed = [claims[2][0], claims[0][1], claims[1][2], claims[0][0], claims[2][1]]
    assert queue.complete_batch(mixed).unwrap() == 5
    left = sorted(s["id"] for s in message_statuses(queue))
    assert left == sorted(m.id for m in (claims[0][2], claims[1][0], claims[1][1], claims[2][2]))
    assert queue.stats().unwrap().completed_total == 5


def test_a_batch_from_several_claims_with_one_lease_taken_over_changes_nothing(
    make_queue: Callable[..., Queue], clock: Any
) -> None:
    queue = make_queue(table_name="jobs")
    queue.enqueue_batch(["a", "b", "c", "d"]).unwrap()
    first = queue.dequeue_batch(2, visibility_timeout=5).unwrap()
    second = queue.dequeue_batch(2, visibility_timeout=60).unwrap()
    clock.advance(10)  # the first claim's leases ran out ...
    again = queue.dequeue_batch(2, visibility_timeout=60).unwrap()  # ... and were taken again
    assert sorted(m.id for m in again) == sorted(m.id for m in first)
    result = queue.complete_batch([*second, *first])
    assert result.is_err()
    assert result.error.kind is ErrorKind.LEASE_LOST  # type: ignore[union-attr]
    statuses = {s["id"]: s["status"] for s in message_statuses(queue)}
    assert set(statuses.values()) == {"processing"} and len(statuses) == 4
    assert queue.stats().unwrap().completed_total == 0
    # The current holders' acknowledgements land, the stale ones never did.
    assert queue.complete_batch([*again, *second]).unwrap() == 4
    assert queue.is_drained().unwrap()
