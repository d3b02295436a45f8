"""release_batch: messages claimed but not started, given back in one transaction, all or
none; and a worker that gives back what it holds unstarted in one call."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from helpers import message_statuses, ok
from sqqueue import AsyncQueue, ErrorKind, Queue, RequeueError, Worker


def test_gives_back_a_whole_batch_with_attempts_refunded(make_queue: Callable[..., Queue]) -> None:
    queue = make_queue(table_name="jobs")
    ids = ok(queue.enqueue_batch([f"m{i}" for i in range(5)]))
    batch = ok(queue.dequeue_batch(5, visibility_timeout=60))
    assert [m.attempts for m in batch] == [1] * 5
    assert ok(queue.release_batch(batch)) == 5
    rows = {r["id"]: (r["status"], r["attempts"]) for r in message_statuses(queue)}
    assert rows == dict.fromkeys(ids, ("ready", 0))
    again = ok(queue.dequeue_batch(5))
    assert sorted(m.id for m in again) == ids
    assert [m.attempts for m in again] == [1] * 5  # the first claim did not count
    assert ok(queue.release_batch([])) == 0


def test_a_refused_message_gives_back_none(make_queue: Callable[..., Queue], clock: Any) -> None:
    queue = make_queue(table_name="jobs")
    ok(queue.enqueue_batch(["a", "b", "c"]))
    short = ok(queue.dequeue(visibility_timeout=5))
    rest = ok(queue.dequeue_batch(2, visibility_timeout=60))
    assert short is not None
    clock.advance(10)  # the first lease ran out
    result = queue.release_batch([*rest, short])
    assert isinstance(result.error, RequeueError)  # type: ignore[union-attr]
    assert result.error.kind is ErrorKind.LEASE_EXPIRED  # type: ignore[union-attr]
    assert f"message {short.id}" in str(result.error)
    assert "could not be released" in str(result.error)
    # Nothing was given back: the two live leases are still held, and can be released.
    statuses = {s["id"]: s["status"] for s in message_statuses(queue)}
    assert [statuses[m.id] for m in rest] == ["processing", "processing"]
    assert ok(queue.release_batch(rest)) == 2


def test_bad_input_and_repeats_are_errs(make_queue: Callable[..., Queue]) -> None:
    queue = make_queue(table_name="jobs")
    result = queue.release_batch("abc")  # type: ignore[arg-type]
    assert result.error.kind is ErrorKind.INVALID_INPUT  # type: ignore[union-attr]
    assert queue.release_batch([123456]).error.kind is ErrorKind.NOT_FOUND  # type: ignore[union-attr]
    ok(queue.enqueue_batch(["a", "b"]))
    a, b = ok(queue.dequeue_batch(2, visibility_timeout=60))
    repeated = queue.release_batch([a, b, a])
    assert repeated.is_err()
    assert sorted(s["status"] for s in message_statuses(queue)) == ["processing", "processing"]
    assert ok(queue.release_batch([a.id, b.id])) == 2  # ids this object leased


def test_a_waiting_consumer_gets_what_was_given_back(make_queue: Callable[..., Queue]) -> None:
    queue = make_queue(table_name="jobs")
    ok(queue.enqueue("only"))
    held = ok(queue.dequeue_batch(1, visibility_timeout=60))
    got: list[Any] = []
    waiter = threading.Thread(target=lambda: got.append(ok(queue.dequeue(wait=30))))
    waiter.start()
    assert ok(queue.release_batch(held)) == 1
    waiter.join(60)
    assert not waiter.is_alive()
    assert got[0] is not None and got[0].payload == "only"


def test_async_release_batch(make_queue: Callable[..., Queue]) -> None:
    queue = make_queue(table_name="jobs")
    ok(queue.enqueue_batch(["a", "b"]))

    async def main() -> int:
        aq = AsyncQueue(queue)
        batch = ok(await aq.dequeue_batch(2, visibility_timeout=60))
        return ok(await aq.release_batch(batch))

    assert asyncio.run(main()) == 2
    assert [s["status"] for s in message_statuses(queue)] == ["ready", "ready"]


def test_a_worker_gives_back_the_others_when_one_lease_was_lost(
    make_queue: Callable[..., Queue], clock: Any
) -> None:
    """The batch is refused as a whole when one message's lease was lost (another consumer
    has it now); the worker then gives back the others one by one, and counts only them."""
    queue = make_queue(table_name="jobs")
    other = make_queue(table_name="jobs")
    ok(queue.enqueue_batch(["a", "b", "c"]))
    lost = ok(queue.dequeue(visibility_timeout=5))
    kept = ok(queue.dequeue_batch(2, visibility_timeout=60))
    assert lost is not None
    clock.advance(10)
    assert ok(other.dequeue()).id == lost.id  # expired, and taken by someone else
    worker = Worker(queue, lambda m: None, handle_signals=False)
    worker._give_back([lost, *kept])
    assert worker.stats.released == 2
    statuses = {s["id"]: s["status"] for s in message_statuses(queue)}
    assert statuses == {lost.id: "processing", kept[0].id: "ready", kept[1].id: "ready"}
