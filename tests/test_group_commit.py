"""Group commit: concurrent enqueue() calls on one queue object share a transaction, and
each caller still gets its own answer, only after the commit that holds its message.

Most tests hold the first caller's insert at a gate, so that the others queue up behind
it (``commits.waiting`` says how many), then let it go: the groups that form are then
known, with no timing involved. Every wait is bounded by a generous deadline.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from conftest import FakeClock, QueueTarget
from helpers import err, ok, wait_until
from sqqueue import AsyncQueue, ErrorKind, Queue, QueueError, Result, SQLiteQueue
from sqqueue.backends.base import NewMessage
from sqqueue.core import group_commit

DEADLINE = 30.0  # seconds any wait of these tests may take on a busy machine
SHARING = {"group_commit_max": group_commit.DEFAULT_MAX}  # SQLite's default is off


@pytest.fixture
def queue(make_queue: Callable[..., Queue]) -> Queue:
    """A queue object that shares commits, on every backend."""
    return make_queue(table_name="jobs", **SHARING)


def test_commits_are_shared_by_default_where_a_commit_is_a_round_trip(
    make_queue: Callable[..., Queue], backend: str
) -> None:
    """PostgreSQL shares commits unless told not to; SQLite, where sharing measured
    slower, only when asked (group_commit_max)."""
    default = make_queue(table_name="jobs")
    assert default.settings.group_commit_max is None
    expected = group_commit.DEFAULT_MAX if backend == "postgres" else 1
    assert default.parts.commits.max_messages == expected
    assert make_queue(table_name="jobs", group_commit_max=7).parts.commits.max_messages == 7


class Gate:
    """Stands in for the backend's many-message insert: records the size of every call,
    holds the first call (before or after its real insert) until ``open()``, and can fail
    chosen calls instead of inserting."""

    def __init__(self, queue: Queue, monkeypatch: pytest.MonkeyPatch, after: bool = False):
        self.queue = queue
        self.real = queue.parts.backend.enqueue
        self.after = after  # hold the first call after its insert (committed) instead
        self.entered = threading.Event()
        self.opened = threading.Event()
        self.calls: list[list[Any]] = []  # the payloads of each call
        self.fail: Callable[[Sequence[NewMessage]], BaseException | None] = lambda m: None
        monkeypatch.setattr(queue.parts.backend, "enqueue", self.enqueue)

    def enqueue(self, messages: Sequence[NewMessage], started: float | None = None) -> list[int]:
        self.calls.append([self.decode(m) for m in messages])
        first = len(self.calls) == 1
        if first and not self.after:
            self.hold()
        failure = self.fail(messages)
        if failure is not None:
            raise failure
        ids = self.real(messages, started)
        if first and self.after:
            self.hold()
        return ids

    def decode(self, message: NewMessage) -> Any:
        return self.queue.parts.codec.decode(message.data, message.encoding, message.checksum)

    def hold(self) -> None:
        self.entered.set()
        assert self.opened.wait(DEADLINE), "the gate was never opened"

    def sizes(self) -> list[int]:
        return [len(call) for call in self.calls]

    def open(self) -> None:
        self.opened.set()


class Callers:
    """Threads that each make one call and keep its result (or what it raised)."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []
        self.results: dict[str, Any] = {}

    def start(self, name: str, call: Callable[[], Any]) -> None:
        def run() -> None:
            try:
                self.results[name] = call()
            except BaseException as exc:  # what a caller's thread would see
                self.results[name] = exc

        thread = threading.Thread(target=run, name=name, daemon=True)
        self.threads.append(thread)
        thread.start()

    def join(self) -> dict[str, Any]:
        for thread in self.threads:
            thread.join(DEADLINE)
            assert not thread.is_alive(), f"caller {thread.name} still waits"
        return self.results


def queue_up(queue: Queue, callers: Callers, calls: dict[str, Callable[[], Any]]) -> None:
    """Start each call in turn, once the one before is waiting for the next commit."""
    for name, call in calls.items():
        expected = queue.parts.commits.waiting + 1
        callers.start(name, call)
        wait_until(
            lambda n=expected: queue.parts.commits.waiting == n,
            timeout=DEADLINE,
            what=f"{name} to wait",
            interval=0.001,
        )


def led(queue: Queue, gate: Gate, callers: Callers, payload: Any = "leader") -> None:
    """Start a first caller, whose insert the gate holds."""
    callers.start("leader", lambda: queue.enqueue(payload))
    assert gate.entered.wait(DEADLINE)


def stored_payloads(queue: Queue) -> dict[int, Any]:
    """The payload of every message listed under "all" in ``queue``, by id."""
    return {row["id"]: row["payload"] for row in ok(queue.list_messages("all", limit=10_000))}


def test_callers_behind_a_commit_share_the_next_one(
    queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = Gate(queue, monkeypatch)
    callers = Callers()
    led(queue, gate, callers)
    queue_up(queue, callers, {f"c{i}": lambda i=i: queue.enqueue(f"m{i}") for i in range(5)})
    gate.open()
    results = callers.join()
    assert gate.sizes() == [1, 5]  # the five that came during the first commit: one more
    ids = {name: ok(result) for name, result in results.items()}
    assert len(set(ids.values())) == 6
    assert stored_payloads(queue) == {
        ids["leader"]: "leader",
        **{ids[f"c{i}"]: f"m{i}" for i in range(5)},
    }
    # In the order they came, within the group as between groups.
    assert [ids[f"c{i}"] for i in range(5)] == sorted(ids[f"c{i}"] for i in range(5))
    assert ids["leader"] < ids["c0"]
    assert queue.parts.commits.waiting == 0
    assert ok(queue.enqueue("after")) > ids["c4"]  # alone again, at once
    assert gate.sizes()[-1] == 1


def test_many_threads_lose_nothing_and_keep_each_producer_in_order(
    queue: Queue, make_queue: Callable[..., Queue]
) -> None:
    threads, each = 8, 40
    other = make_queue(table_name="jobs", **SHARING)  # another connection (another pool)
    start = threading.Barrier(threads)
    got: dict[int, list[int]] = {}
    unseen: list[int] = []

    def produce(k: int) -> None:
        start.wait(DEADLINE)
        mine = got.setdefault(k, [])
        for i in range(each):
            message_id = ok(queue.enqueue({"t": k, "i": i}))
            mine.append(message_id)
            # Ok means committed: another connection sees the message at once.
            if ok(other.get_message(message_id)) is None:
                unseen.append(message_id)

    workers = [threading.Thread(target=produce, args=(k,)) for k in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(DEADLINE * 4)
        assert not worker.is_alive()
    assert unseen == []
    everything = stored_payloads(queue)
    assert len(everything) == threads * each
    for k, ids in got.items():
        assert [everything[i] for i in ids] == [{"t": k, "i": i} for i in range(each)]
        assert ids == sorted(ids)  # FIFO per producer
    # Delivered in order per producer too (one priority).
    delivered: dict[int, list[int]] = {k: [] for k in range(threads)}
    for message in ok(queue.dequeue_batch(threads * each)):
        delivered[message.payload["t"]].append(message.payload["i"])
    assert delivered == {k: list(range(each)) for k in range(threads)}


def test_a_lone_caller_commits_at_once(queue: Queue, monkeypatch: pytest.MonkeyPatch) -> None:
    # A caller alone has nothing to wait for: it never makes the lock it would wait on
    # (no timer, no waiting for company), and its insert runs on its own thread.
    made: list[object] = []
    real_lock = threading.Lock

    def counted_lock() -> Any:
        lock = real_lock()
        made.append(lock)
        return lock

    monkeypatch.setattr(group_commit.threading, "Lock", counted_lock)
    inside: list[tuple[int, int]] = []
    real = queue.parts.backend.enqueue

    def insert(messages: Sequence[NewMessage], started: float | None = None) -> list[int]:
        inside.append((threading.get_ident(), queue.parts.commits.waiting))
        return real(messages, started)

    monkeypatch.setattr(queue.parts.backend, "enqueue", insert)
    for i in range(3):
        assert ok(queue.enqueue(i)) > 0
    assert made == []
    assert inside == [(threading.get_ident(), 0)] * 3


def test_a_batch_joins_a_group_as_one_unit(queue: Queue, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = Gate(queue, monkeypatch)
    callers = Callers()
    led(queue, gate, callers)
    queue_up(
        queue,
        callers,
        {
            "one": lambda: queue.enqueue("one"),
            "batch": lambda: queue.enqueue_batch(["b0", ("b1", 5), "b2"]),
            "two": lambda: queue.enqueue("two", priority=3, delay=60),
        },
    )
    gate.open()
    results = callers.join()
    assert gate.calls[1] == ["one", "b0", "b1", "b2", "two"]
    batch = ok(results["batch"])
    assert batch == list(range(batch[0], batch[0] + 3))
    rows = {row["id"]: row for row in ok(queue.list_messages("all"))}
    assert rows[batch[1]]["priority"] == 5
    assert rows[ok(results["two"])]["priority"] == 3
    assert rows[ok(results["two"])]["status"] == "delayed"


def test_group_commit_max_caps_a_group(
    make_queue: Callable[..., Queue], monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = make_queue(table_name="jobs", group_commit_max=3)
    gate = Gate(queue, monkeypatch)
    callers = Callers()
    led(queue, gate, callers)
    queue_up(
        queue,
        callers,
        {
            "a": lambda: queue.enqueue("a"),
            "b": lambda: queue.enqueue("b"),
            "big": lambda: queue.enqueue_batch(["x", "y", "z", "w"]),
            "c": lambda: queue.enqueue("c"),
        },
    )
    gate.open()
    results = callers.join()
    # At most 3 messages a group, in order; a batch larger than that goes whole, alone.
    assert gate.calls[1:] == [["a", "b"], ["x", "y", "z", "w"], ["c"]]
    assert all(r.is_ok() for r in results.values())


def test_group_commit_max_1_commits_every_call_alone(
    make_queue: Callable[..., Queue], monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = make_queue(table_name="jobs", group_commit_max=1)
    assert queue.settings.group_commit_max == 1
    gate = Gate(queue, monkeypatch)
    callers = Callers()
    led(queue, gate, callers)
    for i in range(3):
        callers.start(f"c{i}", lambda i=i: queue.enqueue(i))
    # Nobody waits for the held commit: each inserts on its own.
    wait_until(
        lambda: len(gate.calls) == 4,
        timeout=DEADLINE,
        what="every caller to insert",
        interval=0.001,
    )
    gate.open()
    assert all(r.is_ok() for r in callers.join().values())
    assert gate.sizes() == [1, 1, 1, 1]


def test_concurrent_duplicates_behave_as_one_after_the_other(
    queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = Gate(queue, monkeypatch)
    callers = Callers()
    led(queue, gate, callers)
    queue_up(
        queue,
        callers,
        {
            "first": lambda: queue.enqueue("first", dedup_key="k"),
            "plain": lambda: queue.enqueue("plain"),
            "second": lambda: queue.enqueue("second", dedup_key="k"),
        },
    )
    gate.open()
    results = callers.join()
    assert gate.sizes() == [1, 3]  # one group
    first, second = ok(results["first"]), ok(results["second"])
    assert second == first  # what a sequential duplicate gets: the original's id
    assert sorted(stored_payloads(queue).values()) == ["first", "leader", "plain"]
    # And later, alone, a duplicate still gets it.
    assert ok(queue.enqueue("third", dedup_key="k")) == first


def test_many_threads_racing_on_one_dedup_key_store_one_message(queue: Queue) -> None:
    threads = 8
    start = threading.Barrier(threads)
    callers = Callers()
    for k in range(threads):
        callers.start(
            f"t{k}",
            lambda k=k: (start.wait(DEADLINE), queue.enqueue({"k": k}, dedup_key="same"))[1],
        )
    results = callers.join()
    ids = {ok(result) for result in results.values()}
    assert len(ids) == 1
    assert list(stored_payloads(queue)) == list(ids)


def test_a_full_queue_fails_only_the_callers_without_room(
    make_queue: Callable[..., Queue], monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = make_queue(table_name="jobs", max_depth=3, **SHARING)
    gate = Gate(queue, monkeypatch)
    callers = Callers()
    led(queue, gate, callers)
    queue_up(queue, callers, {f"c{i}": lambda i=i: queue.enqueue(f"m{i}") for i in range(3)})
    gate.open()
    results = callers.join()
    # The group of three does not fit (one is queued already): each tries again alone,
    # and gets what it would have got alone, racing the others: two fit, one does not.
    assert gate.sizes() == [1, 3, 1, 1, 1]
    refused = [name for name, result in results.items() if result.is_err()]
    assert len(refused) == 1
    err(results[refused[0]], ErrorKind.QUEUE_FULL)
    fitted = {f"m{name[1]}" for name in results if name not in ("leader", *refused)}
    assert sorted(stored_payloads(queue).values()) == sorted({"leader", *fitted})


def test_one_bad_message_does_not_fail_the_others(
    queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = Gate(queue, monkeypatch)
    # The database refuses any insert holding this payload (as it might refuse a value).
    gate.fail = lambda messages: (
        QueueError("value refused", ErrorKind.STORAGE)
        if any(gate.decode(m) == "bad" for m in messages)
        else None
    )
    callers = Callers()
    led(queue, gate, callers)
    queue_up(
        queue,
        callers,
        {
            "a": lambda: queue.enqueue("a"),
            "bad": lambda: queue.enqueue("bad"),
            "b": lambda: queue.enqueue_batch(["b0", "b1"]),
        },
    )
    gate.open()
    results = callers.join()
    assert "value refused" in str(err(results["bad"], ErrorKind.STORAGE))
    assert ok(results["a"]) > 0 and len(ok(results["b"])) == 2
    assert sorted(stored_payloads(queue).values()) == ["a", "b0", "b1", "leader"]
    sizes = gate.sizes()
    assert sizes[:2] == [1, 4] and sorted(sizes[2:]) == [1, 1, 2]  # the group, then each alone


def test_a_storage_error_reaches_every_caller_of_the_group(
    queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = Gate(queue, monkeypatch)
    gate.fail = lambda messages: (
        None if len(gate.calls) == 1 else QueueError("disk is full", ErrorKind.DISK_FULL)
    )
    callers = Callers()
    led(queue, gate, callers)
    queue_up(queue, callers, {f"c{i}": lambda i=i: queue.enqueue(f"m{i}") for i in range(3)})
    gate.open()
    results = callers.join()
    errors = [err(results[f"c{i}"], ErrorKind.DISK_FULL) for i in range(3)]
    assert all("disk is full" in str(e) for e in errors)
    assert len({id(e) for e in errors}) == 3  # each caller its own error
    assert gate.sizes() == [1, 3]  # not tried again alone: it would fail the same way
    assert list(stored_payloads(queue).values()) == ["leader"]


@pytest.mark.plain_file("locks the file with stdlib sqlite3, which has no key")
def test_a_locked_database_reaches_every_caller_once(
    make_sqlite_queue: Callable[..., SQLiteQueue],
    db_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sqlite3

    queue = make_sqlite_queue(table_name="jobs", lock_timeout=0.2, **SHARING)
    gate = Gate(queue, monkeypatch)
    callers = Callers()
    led(queue, gate, callers)
    queue_up(queue, callers, {f"c{i}": lambda i=i: queue.enqueue(f"m{i}") for i in range(3)})
    locker = sqlite3.connect(db_path, isolation_level=None)
    try:
        locker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        gate.open()
        results = callers.join()
    finally:
        locker.close()
    for result in results.values():
        err(result, ErrorKind.LOCKED)
    assert gate.sizes() == [1, 3]
    assert ok(queue.enqueue("later")) > 0


def test_closing_while_callers_wait_answers_each_of_them(
    queue: Queue, queue_target: QueueTarget, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = Gate(queue, monkeypatch, after=True)  # the leader's message is committed
    callers = Callers()
    led(queue, gate, callers)
    queue_up(queue, callers, {f"c{i}": lambda i=i: queue.enqueue(f"m{i}") for i in range(3)})
    closer = threading.Thread(target=queue.close)
    closer.start()
    closer.join(DEADLINE)
    assert not closer.is_alive()
    gate.open()
    results = callers.join()
    leader = ok(results["leader"])
    for i in range(3):
        err(results[f"c{i}"], ErrorKind.CLOSED)
    with queue_target.open(clock=clock) as reopened:
        assert stored_payloads(reopened) == {leader: "leader"}


def test_an_interrupted_leader_leaves_nobody_waiting(
    queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = Gate(queue, monkeypatch)
    # Ctrl-C lands in the leader while it commits for the others.
    gate.fail = lambda messages: KeyboardInterrupt() if len(gate.calls) == 2 else None
    callers = Callers()
    led(queue, gate, callers)
    queue_up(
        queue,
        callers,
        {
            "interrupted": lambda: queue.enqueue("interrupted"),
            "a": lambda: queue.enqueue("a"),
            "b": lambda: queue.enqueue("b"),
        },
    )
    gate.open()
    results = callers.join()
    assert isinstance(results["interrupted"], KeyboardInterrupt)
    # Its followers inserted their own messages, each alone; nothing is stuck.
    assert gate.sizes() == [1, 3, 1, 1]
    ids = {name: ok(results[name]) for name in ("leader", "a", "b")}
    assert stored_payloads(queue) == {ids[name]: name for name in ids}
    assert queue.parts.commits.waiting == 0
    assert ok(queue.enqueue("after")) > 0


@pytest.mark.plain_file("the outbox joins a stdlib sqlite3 connection, which has no key")
def test_the_outbox_never_joins_a_group(
    make_sqlite_queue: Callable[..., SQLiteQueue],
    db_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sqlite3

    queue = make_sqlite_queue(table_name="jobs", **SHARING)
    gate = Gate(queue, monkeypatch)
    callers = Callers()
    led(queue, gate, callers)  # a commit is running (held)
    conn = sqlite3.connect(db_path)
    try:
        with conn:  # the caller's own transaction: not queued behind the held commit
            outbox = queue.enqueue_in(conn, "outbox")
        assert queue.parts.commits.waiting == 0
    finally:
        conn.close()
    gate.open()
    callers.join()
    assert sorted(stored_payloads(queue).values()) == ["leader", "outbox"]
    assert ok(outbox) in stored_payloads(queue)
    assert gate.sizes() == [1]


def test_asyncio_tasks_share_commits(queue: Queue, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = Gate(queue, monkeypatch)
    callers = Callers()
    led(queue, gate, callers)
    aqueue = AsyncQueue(queue)

    async def main() -> list[Result[int, Any]]:
        tasks = [asyncio.create_task(aqueue.enqueue(f"a{i}")) for i in range(4)]
        await asyncio.to_thread(
            wait_until,
            lambda: queue.parts.commits.waiting == 4,
            timeout=DEADLINE,
            what="the tasks to wait",
            interval=0.001,
        )
        gate.open()
        return await asyncio.gather(*tasks)

    results = asyncio.run(main())
    callers.join()
    assert gate.sizes() == [1, 4]
    ids = [ok(result) for result in results]
    assert [stored_payloads(queue)[i] for i in ids] == ["a0", "a1", "a2", "a3"]


# A child that enqueues from several threads, prints each id it got Ok for, and kills
# itself with SIGKILL right after the tenth Ok: every printed id must be stored.
KILLED_CHILD = r"""
import os, signal, sys, threading
from sqqueue import PostgresQueue, connect

url, schema = sys.argv[1], sys.argv[2]
queue = (connect(url, "jobs", group_commit_max=1000) if url.startswith("sqlite:")
         else PostgresQueue(url, "jobs", schema=schema))
oks = []
lock = threading.Lock()

def produce(k):
    for i in range(1000):
        message_id = queue.enqueue({"t": k, "i": i}).unwrap()
        with lock:
            os.write(1, f"{message_id}\n".encode())
            oks.append(message_id)
            if len(oks) == 10:
                os.kill(os.getpid(), signal.SIGKILL)

threads = [threading.Thread(target=produce, args=(k,)) for k in range(6)]
for t in threads:
    t.start()
for t in threads:
    t.join()
"""


def test_every_ok_survives_a_kill_right_after_it(queue_target: QueueTarget, queue: Queue) -> None:
    child = subprocess.run(
        [sys.executable, "-c", KILLED_CHILD, queue_target.url, queue_target.schema or ""],
        capture_output=True,
        timeout=DEADLINE * 2,
        check=False,
    )
    assert child.returncode == -9, child.stderr.decode()
    printed = [int(line) for line in child.stdout.decode().split()]
    assert len(printed) == 10
    everything = stored_payloads(queue)
    assert all(message_id in everything for message_id in printed)


def test_group_commit_max_is_checked() -> None:
    with pytest.raises(ValueError, match="group_commit_max"):
        SQLiteQueue(":memory:", "jobs", group_commit_max=0)


def test_item_options_survive_a_group(queue: Queue, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = Gate(queue, monkeypatch)
    callers = Callers()
    led(queue, gate, callers)
    queue_up(
        queue,
        callers,
        {
            "grouped": lambda: queue.enqueue("g1", group="customer"),
            "grouped2": lambda: queue.enqueue("g2", group="customer"),
            "ttl": lambda: queue.enqueue("t", ttl=5, max_attempts=2),
        },
    )
    gate.open()
    results = callers.join()
    assert gate.sizes() == [1, 3]
    rows = {row["payload"]: row for row in ok(queue.list_messages("all"))}
    assert rows["t"]["max_attempts"] == 2
    assert ok(results["grouped"]) < ok(results["grouped2"])
    # One group member at a time, in order.
    first = ok(queue.dequeue_batch(10))
    assert "g2" not in [m.payload for m in first] and "g1" in [m.payload for m in first]


def test_a_child_forked_during_a_commit_enqueues_on_its_own(
    queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    gate = Gate(queue, monkeypatch)
    callers = Callers()
    led(queue, gate, callers)  # a commit runs (held) in the parent when it forks
    queue_up(queue, callers, {"waiting": lambda: queue.enqueue("waiting")})
    pid = os.fork()
    if pid == 0:  # the child: the leader and the waiting caller are not here
        code = 1
        try:
            queue.parts.backend.enqueue = gate.real  # type: ignore[method-assign]
            code = 0 if queue.enqueue("child").is_ok() else 2
        finally:
            os._exit(code)
    deadline = time.monotonic() + DEADLINE
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hangs")
        time.sleep(0.01)
    assert os.waitstatus_to_exitcode(done[1]) == 0
    gate.open()
    assert all(r.is_ok() for r in callers.join().values())
    assert sorted(stored_payloads(queue).values()) == ["child", "leader", "waiting"]
