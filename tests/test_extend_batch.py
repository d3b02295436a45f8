"""extend_batch: many leases extended in one transaction, each fenced by its own token;
those that cannot be extended are reported while the others are extended."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest

from conftest import FakeClock
from helpers import at, err, leased, ok
from sqqueue import AsyncQueue, Err, ErrorKind, LeasesNotExtended, Message, Queue, RequeueError

MakeQueue = Callable[..., Queue]


def expiries(queue: Queue) -> dict[int, datetime]:
    """The stored lease expiry of every message being processed, by id."""
    return {e["id"]: e["lease_expires_at"] for e in ok(queue.list_messages("processing"))}


class Spy:
    """Records the calls a backend method gets, and makes them."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.calls: list[tuple[Any, ...]] = []

    def __call__(self, *args: Any) -> Any:
        self.calls.append(args)
        return self.fn(*args)


def test_extends_every_lease_given_in_one_call(
    make_queue: MakeQueue, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Leases taken one by one (a token each) and together (one token), passed as messages
    or ids, are all extended to now + visibility_timeout by one backend call."""
    queue = make_queue(table_name="jobs")
    ok(queue.enqueue_batch([f"m{i}" for i in range(5)]))
    alone = [leased(queue, visibility_timeout=10) for _ in range(2)]
    together = ok(queue.dequeue_batch(3, visibility_timeout=10))
    backend = queue.parts.backend
    many, one = Spy(backend.extend_many), Spy(backend.extend)
    monkeypatch.setattr(backend, "extend_many", many)
    monkeypatch.setattr(backend, "extend", one)
    clock.advance(5)
    refs: list[Message | int] = [*alone, together[0].id, *together[1:]]
    assert ok(queue.extend_batch(refs, 60)) == 5
    assert len(many.calls) == 1 and one.calls == []
    assert expiries(queue) == {m.id: at(clock() + 60) for m in [*alone, *together]}
    # The default is the queue's visibility timeout; a timedelta works too.
    assert ok(queue.extend_batch(together)) == 3
    assert ok(queue.extend_batch(alone, timedelta(seconds=90))) == 2
    expected = {m.id: at(clock() + queue.default_visibility_timeout) for m in together}
    expected.update({m.id: at(clock() + 90) for m in alone})
    assert expiries(queue) == expected


def test_lost_and_expired_leases_are_reported_and_the_others_extended(
    make_queue: MakeQueue, clock: FakeClock
) -> None:
    """Not all or nothing: a lease that ran out, one another consumer holds now and an id
    the queue does not have are refused, each with its reason; the live ones are extended,
    and the other consumer's lease is left as it was."""
    queue = make_queue(table_name="jobs")
    other = make_queue(table_name="jobs")
    ok(queue.enqueue_batch(["a", "b", "c", "d"]))
    short = ok(queue.dequeue_batch(2, visibility_timeout=5))
    live = ok(queue.dequeue_batch(2, visibility_timeout=60))
    clock.advance(10)  # the short leases ran out
    taken = ok(other.dequeue(visibility_timeout=30))  # one of them, folded back, retaken
    assert taken is not None and taken.id in {m.id for m in short}
    lost = next(m for m in short if m.id == taken.id)
    expired = next(m for m in short if m.id != taken.id)

    result = queue.extend_batch([lost, *live, expired, 999], 100)

    assert isinstance(result, Err)
    error = result.error
    assert isinstance(error, LeasesNotExtended) and isinstance(error, RequeueError)
    assert error.extended == 2
    assert {mid: why.kind for mid, why in error.refused.items()} == {
        lost.id: ErrorKind.LEASE_LOST,
        expired.id: ErrorKind.LEASE_EXPIRED,
        999: ErrorKind.NOT_FOUND,
    }
    assert (error.kind, error.message_id) == (ErrorKind.LEASE_LOST, lost.id)
    assert "3 of 5" in str(error)
    leases = expiries(queue)
    assert {m.id: leases[m.id] for m in live} == {m.id: at(clock() + 100) for m in live}
    assert leases[taken.id] == at(clock() + 30)  # the other consumer's lease, untouched
    assert expired.id not in leases  # still back in the queue, for anyone to take
    assert ok(other.dequeue()).id == expired.id


@pytest.mark.parametrize(
    ("messages", "timeout"),
    [
        ([], 30),
        ("abc", 30),
        (None, 30),
        ([object()], 30),
        ([True], 30),
        (["1"], 30),
        ([-1], 30),
        ("lease", 0),
        ("lease", -5),
        ("lease", float("nan")),
        ("lease", "30"),
        ("lease", 8 * 86400),
    ],
)
def test_bad_input_is_an_err_and_extends_nothing(
    make_queue: MakeQueue, clock: FakeClock, messages: Any, timeout: Any
) -> None:
    queue = make_queue(table_name="jobs")
    ok(queue.enqueue("x"))
    message = leased(queue, visibility_timeout=10)
    if messages == "lease":
        messages = [message]
    clock.advance(5)
    result = queue.extend_batch(messages, timeout)
    error = err(result, ErrorKind.INVALID_INPUT)
    assert isinstance(error, RequeueError)
    assert expiries(queue) == {message.id: at(clock() + 5)}


def test_one_message_under_a_lapsed_and_a_live_lease_is_extended_once(
    make_queue: MakeQueue, clock: FakeClock
) -> None:
    """A worker may hold a message again after its first lease ran out: its heartbeat
    then passes both leases. Only the lapsed one is refused; the others are extended."""
    queue = make_queue(table_name="jobs")
    ok(queue.enqueue("a"))
    stale = leased(queue, visibility_timeout=5)
    clock.advance(10)
    fresh = leased(queue, visibility_timeout=30)
    assert fresh.id == stale.id
    ok(queue.enqueue("b"))
    other = leased(queue, visibility_timeout=30)
    error = err(queue.extend_batch([stale, other, fresh], 60), ErrorKind.LEASE_LOST)
    assert isinstance(error, LeasesNotExtended) and "1 of 3" in str(error)
    assert expiries(queue) == {fresh.id: at(clock() + 60), other.id: at(clock() + 60)}


def test_the_asyncio_queue_extends_a_batch(make_queue: MakeQueue, clock: FakeClock) -> None:
    aq = AsyncQueue(make_queue(table_name="jobs"))

    async def scenario() -> None:
        ok(await aq.enqueue_batch(["a", "b"]))
        batch = ok(await aq.dequeue_batch(2, visibility_timeout=10))
        clock.advance(5)
        assert ok(await aq.extend_batch(batch, 60)) == 2
        err(await aq.extend_batch([]), ErrorKind.INVALID_INPUT)

    asyncio.run(scenario())
    assert set(expiries(aq.sync).values()) == {at(clock() + 60)}
