"""PostgreSQL-specific behaviour: concurrent claims (SKIP LOCKED), LISTEN/NOTIFY wake-ups
and their polling fallback, lost connections (retried) and lost commits (UNKNOWN_OUTCOME),
``sqqueue.connect()`` by URL, ``ddl()``, and ``tools.copy_queues`` between backends.

The behaviour shared with SQLite is in the contract suite (every test using ``queue`` or
``make_queue`` runs on both backends); this file is about what only PostgreSQL has. Like the
contract suite, it needs a server: SQQUEUE_TEST_POSTGRES_URL, or a throwaway one started by
conftest. It never skips.
"""

from __future__ import annotations

import json
import random
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from conftest import LOCAL_FIXTURES, QueueTarget, drop_schema
from helpers import message_statuses, ok
from sqqueue import (
    CompletionError,
    DequeueError,
    EnqueueError,
    Err,
    ErrorKind,
    Message,
    Ok,
    PostgresQueue,
    Queue,
    QueueError,
    RequeueError,
    SQLiteQueue,
    connect,
)
from sqqueue.backends import postgres as pg_backend
from sqqueue.tools import copy_queues

TABLE = "jobs"
SRC = Path(__file__).resolve().parents[1] / "src"

# Opens the test's queue in a child process (argv: url, schema, then the role's arguments).
CHILD = r"""
import os, sys, time
from sqqueue import PostgresQueue

url, schema, role = sys.argv[1], sys.argv[2], sys.argv[3]
args = sys.argv[4:]
queue = PostgresQueue(url, "jobs", schema=schema, default_visibility_timeout=120)

if role == "consume":
    go = args[0]
    while not os.path.exists(go):  # start every consumer at the same moment
        time.sleep(0.005)
    taken = 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        batch = queue.dequeue_batch(int(args[1])).unwrap()
        if not batch:
            break
        for message in batch:
            queue.complete(message).unwrap()
            print(f"ID {message.id}", flush=True)
    else:
        print("TIMEOUT", flush=True)

elif role == "wait":
    rounds = int(args[0])
    for _ in range(rounds):
        print("WAITING", flush=True)
        message = queue.dequeue(wait=5).unwrap()
        received = time.monotonic()
        if message is None:
            print("NONE", flush=True)
            break
        print(f"GOT {message.id} {received - message.payload['t']!r}", flush=True)
        queue.complete(message).unwrap()

queue.close()
"""


def with_params(url: str, **params: str) -> str:
    """``url`` with libpq parameters added to its query string."""
    parts = urllib.parse.urlsplit(url)
    query = [*urllib.parse.parse_qsl(parts.query), *params.items()]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def terminate(url: str, application_name: str | None = None, pid: int | None = None) -> int:
    """``pg_terminate_backend`` every connection with ``application_name`` (or the one with
    ``pid``) and wait until they are gone; return how many were terminated."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
            "WHERE (application_name = %s OR pid = %s) AND pid <> pg_backend_pid()",
            (application_name, pid),
        ).fetchall()
    return sum(1 for (done,) in rows if done)


@pytest.fixture
def target(pg_url: str, pg_schema: str) -> QueueTarget:
    return QueueTarget("postgres", pg_url, pg_schema)


@pytest.fixture
def opened(target: QueueTarget) -> Iterator[Callable[..., Queue]]:
    """Factory for queues on the test's schema (real clock), closed at teardown."""
    made: list[Queue] = []

    def make(table: str = TABLE, **settings: Any) -> Queue:
        queue = target.open(table, **settings)
        made.append(queue)
        return queue

    yield make
    for queue in made:
        queue.close()


class Child:
    """A child process running ``CHILD``; its output lines are read on threads."""

    def __init__(self, target: QueueTarget, role: str, *args: object) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, target.url, str(target.schema), role, *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self.errors: list[str] = []
        self._ready = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.lines), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.errors), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: Any, into: list[str]) -> None:
        for line in stream:
            with self._ready:
                into.append(line.rstrip("\n"))
                self._ready.notify_all()

    def expect(self, prefix: str, index: int, timeout: float = 10.0) -> str:
        """The ``index``-th output line (0-based), which must start with ``prefix``."""
        with self._ready:
            done = self._ready.wait_for(lambda: len(self.lines) > index, timeout)
        if not done:
            self.kill()
            pytest.fail(f"child printed nothing new in {timeout} s: {self.lines[-5:]}")
        line = self.lines[index]
        assert line.startswith(prefix), (line, self.lines[-5:], self.errors[-5:])
        return line

    def finish(self, timeout: float = 30.0) -> list[str]:
        """Wait for the child to exit 0 without writing to stderr; its output lines."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"child did not finish within {timeout} s")
        for reader in self._readers:
            reader.join(5)
        assert self.proc.returncode == 0, self.errors
        assert self.errors == []
        return self.lines

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


# -- claims under contention --------------------------------------------------------------


def test_many_thread_consumers_never_double_deliver(opened: Callable[..., Queue]) -> None:
    """8 threads, each with its own queue object, claim 1,000 messages at once in batches
    of 1 to 5 (SKIP LOCKED): each message is delivered and completed exactly once."""
    ids = ok(opened().enqueue_batch([{"n": n} for n in range(1000)]))
    consumers = [opened(default_visibility_timeout=120) for _ in range(8)]
    start = threading.Barrier(len(consumers))
    lock = threading.Lock()
    delivered: list[int] = []
    problems: list[Any] = []

    def consume(queue: Queue) -> None:
        start.wait()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            result = queue.dequeue_batch(random.randint(1, 5))
            if isinstance(result, Err):
                with lock:
                    problems.append(result)
                return
            if not result.value:
                return  # everything else is claimed: leases are long, nothing comes back
            for message in result.value:
                done = queue.complete(message)
                with lock:
                    delivered.append(message.id)
                    if isinstance(done, Err):
                        problems.append(done)

    threads = [threading.Thread(target=consume, args=(q,)) for q in consumers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(40)
    assert not any(t.is_alive() for t in threads), "consumers did not finish"
    assert problems == []
    twice = [i for i, n in Counter(delivered).items() if n > 1]
    assert twice == [], f"delivered more than once: {twice[:10]}"
    assert sorted(delivered) == ids
    stats = ok(consumers[0].stats())
    assert (stats.depth, stats.completed_total) == (0, 1000)


def test_many_process_consumers_never_double_deliver(
    target: QueueTarget, opened: Callable[..., Queue], tmp_path: Path
) -> None:
    """4 consumer processes start at the same moment on 1,200 messages: every message is
    completed exactly once, by one of them."""
    ids = ok(opened().enqueue_batch([f"job-{n}" for n in range(1200)]))
    go = tmp_path / "go"
    children = [Child(target, "consume", go, size) for size in (1, 2, 3, 5)]
    go.touch()
    completed: list[int] = []
    try:
        for child in children:
            lines = child.finish()
            assert "TIMEOUT" not in lines
            completed += [int(line.split()[1]) for line in lines if line.startswith("ID ")]
    finally:
        for child in children:
            child.kill()
    twice = [i for i, n in Counter(completed).items() if n > 1]
    assert twice == [], f"completed more than once: {twice[:10]}"
    assert sorted(completed) == ids
    assert ok(opened().is_drained()) is True


# -- LISTEN/NOTIFY ------------------------------------------------------------------------


def test_notify_wakes_a_consumer_in_another_process(
    target: QueueTarget, opened: Callable[..., Queue]
) -> None:
    """A consumer blocked in dequeue(wait=5) in another process is woken by the NOTIFY of
    each enqueue, not by its polling fallback (every 1 s, for a lost NOTIFY): without
    NOTIFY the wake-ups would spread over that second, a median near 0.5 s. (How fast
    the wake-up is, is measured by the benchmark, not asserted here: on a loaded machine
    one wake-up in forty may take a scheduling slice.)"""
    producer = opened()
    rounds = 41  # the first one (listener still connecting) is a warm-up
    child = Child(target, "wait", rounds)
    latencies: list[float] = []
    try:
        for index in range(rounds):
            child.expect("WAITING", 2 * index)
            time.sleep(random.uniform(0.03, 0.06))  # let it block in the wait
            message_id = ok(producer.enqueue({"t": time.monotonic()}))
            line = child.expect("GOT ", 2 * index + 1)
            got, latency = line.split()[1:]
            assert int(got) == message_id
            if index:
                latencies.append(float(latency))
        child.finish()
    finally:
        child.kill()
    ordered = sorted(latencies)
    p50 = statistics.median(ordered)
    p99 = ordered[round(0.99 * (len(ordered) - 1))]
    print(
        f"NOTIFY wake-up of another process over {len(ordered)}: median {p50 * 1000:.1f} ms, "
        f"p99 {p99 * 1000:.1f} ms, max {ordered[-1] * 1000:.1f} ms"
    )
    assert p50 < 0.1, ordered


class Waiter:
    """One blocking call on a thread; records when it returned."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self.result: Any = None
        self.returned_at: float | None = None
        self._call = call
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.result = self._call()
        self.returned_at = time.monotonic()

    def join(self, timeout: float) -> Any:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the waiter is still blocked"
        return self.result


def _listening(queue: Queue, timeout: float = 5.0) -> int:
    """Wait until the queue's listener connection has run LISTEN; its backend pid."""
    deadline = time.monotonic() + timeout
    backend: Any = queue._backend
    while not (backend._listening and backend._listener_pid is not None):
        assert time.monotonic() < deadline, "the listener never connected"
        time.sleep(0.01)
    return int(backend._listener_pid)


def test_waiter_gets_message_after_its_listener_connection_is_killed(
    target: QueueTarget, pg_schema: str
) -> None:
    """pg_terminate_backend of a waiting consumer's LISTEN connection: a message enqueued
    right then (by a producer elsewhere) still reaches the waiter within 2 s."""
    waiting = target.open(TABLE)
    # Another URL, so no in-process signal links the two objects: only the database does.
    producer = PostgresQueue(
        with_params(target.url, application_name="producer"), TABLE, schema=pg_schema
    )
    try:
        assert waiting._backend.wakeup_key != producer._backend.wakeup_key
        waiter = Waiter(lambda: waiting.dequeue(wait=8))
        time.sleep(0.1)
        listener = _listening(waiting)
        assert terminate(target.url, pid=listener) == 1
        sent = time.monotonic()
        message_id = ok(producer.enqueue("after the kill"))
        message = ok(waiter.join(10))
        assert message is not None, "the waiter never got the message"
        assert message.id == message_id
        assert waiter.returned_at is not None
        print(f"wake-up after the listener was killed: {waiter.returned_at - sent:.3f} s")
        assert waiter.returned_at - sent < 2.0
    finally:
        waiting.close()
        producer.close()


def test_lost_notification_is_caught_by_polling_fallback(
    target: QueueTarget, pg_schema: str
) -> None:
    """A notification that never arrives (the producer's NOTIFY is lost): the waiting
    consumer still finds the message by its once-a-second fallback check, within ~2 s."""
    waiting = target.open(TABLE)
    producer = PostgresQueue(
        with_params(target.url, application_name="silent"), TABLE, schema=pg_schema
    )
    try:
        assert waiting._backend.wakeup_key != producer._backend.wakeup_key
        silenced: list[Any] = []
        producer._backend._notify = silenced.append  # type: ignore[attr-defined]
        waiter = Waiter(lambda: waiting.dequeue(wait=4))
        time.sleep(0.1)
        _listening(waiting)
        sent = time.monotonic()
        # A dedup key takes the transactional insert, whose NOTIFY is a statement of its
        # own (a plain enqueue notifies from inside its INSERT).
        message_id = ok(producer.enqueue("never announced", dedup_key="silent"))
        assert silenced, "the enqueue did not go through _notify: this test lost nothing"
        message = ok(waiter.join(10))
        assert message is not None, "the waiter never noticed the message (no fallback poll)"
        assert message.id == message_id
        assert waiter.returned_at is not None
        assert waiter.returned_at - sent < 2.5
    finally:
        waiting.close()
        producer.close()


def test_notifications_are_per_queue_not_per_queue_name(target: QueueTarget) -> None:
    """Writes to a queue with the same name in another schema (another queue) do not make
    an idle waiter claim again and again."""
    queue = target.open(TABLE)
    other_schema = f"{target.schema}_other"
    neighbour = PostgresQueue(target.url, TABLE, schema=other_schema)
    claims = Counter[str]()
    real_claim = queue._backend.claim

    def counting_claim(*args: Any, **kwargs: Any) -> Any:
        claims["claim"] += 1
        return real_claim(*args, **kwargs)

    queue._backend.claim = counting_claim  # type: ignore[method-assign]
    stop = threading.Event()

    def write() -> None:
        while not stop.wait(0.02):
            ok(neighbour.enqueue("noise"))
            claims["noise"] += 1

    writer = threading.Thread(target=write, daemon=True)
    try:
        writer.start()
        assert ok(queue.dequeue(wait=0.8)) is None
    finally:
        stop.set()
        writer.join(5)
        queue.close()
        neighbour.close()
        drop_schema(target.url, other_schema)
    assert claims["noise"] >= 10, claims
    assert claims["claim"] <= 3, claims


# -- lost connections and lost commits ----------------------------------------------------


@pytest.fixture
def victim(target: QueueTarget) -> Iterator[tuple[Queue, Callable[[], int]]]:
    """A queue whose connections can be killed: (queue, kill), where ``kill()`` runs
    pg_terminate_backend on all of them and returns how many it hit."""
    name = f"victim_{target.schema}"
    queue = PostgresQueue(
        with_params(target.url, application_name=name),
        TABLE,
        schema=target.schema,
        default_visibility_timeout=1.0,
        lock_timeout=10,
    )
    yield queue, lambda: terminate(target.url, name)
    queue.close()


def test_connections_killed_between_operations_are_replaced(
    victim: tuple[Queue, Callable[[], int]],
) -> None:
    """After pg_terminate_backend of every connection of the queue, each next operation
    is retried on a fresh connection and succeeds; nothing stored is lost."""
    queue, kill = victim
    ids = [ok(queue.enqueue(f"before-{n}")) for n in range(5)]
    assert kill() >= 1
    ids.append(ok(queue.enqueue("after the first kill")))
    assert kill() >= 1
    message = ok(queue.dequeue(visibility_timeout=60))
    assert message is not None
    assert message.id == ids[0]
    assert kill() >= 1
    assert ok(queue.complete(message)) is None
    assert kill() >= 1
    assert [row["id"] for row in message_statuses(queue)] == ids[1:]
    assert kill() >= 1
    stats = ok(queue.stats())
    assert (stats.pending, stats.completed_total) == (5, 1)
    assert kill() >= 1
    batch = ok(queue.dequeue_batch(10, visibility_timeout=60))
    assert [m.id for m in batch] == ids[1:]
    assert kill() >= 1
    for m in batch:
        ok(queue.complete(m))
    assert ok(queue.is_drained()) is True


def test_connections_killed_during_operations_lose_nothing_acknowledged(
    victim: tuple[Queue, Callable[[], int]],
) -> None:
    """While another thread kills the queue's connections every 0.1 to 0.4 s, messages
    are enqueued (at least 200, through at least 6 rounds of kills), then consumed and
    completed (through 6 more rounds). Every call returns Ok, or Err with
    kind UNKNOWN_OUTCOME (the kill hit a COMMIT); every acknowledged enqueue is delivered
    and completed; nothing is completed twice."""
    queue, kill = victim
    stop = threading.Event()
    kills: list[int] = []

    def killer() -> None:
        while not stop.wait(random.uniform(0.1, 0.4)):
            kills.append(kill())

    errors: list[Any] = []
    acked: dict[str, int] = {}
    unknown_enqueue: set[str] = set()
    completed: Counter[str] = Counter()
    unknown_complete: set[str] = set()

    def settle(message: Message) -> None:
        done = queue.complete(message)
        if isinstance(done, Ok):
            completed[message.payload] += 1
        elif done.error.kind is ErrorKind.UNKNOWN_OUTCOME:
            unknown_complete.add(message.payload)
        elif done.error.kind is not ErrorKind.LEASE_EXPIRED:  # a 1 s lease may run out
            errors.append(done)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        n = 0
        while (n < 200 or len(kills) < 6) and time.monotonic() < deadline:
            n += 1
            payload = f"m{n}"
            result = queue.enqueue(payload)
            if isinstance(result, Ok):
                acked[payload] = result.value
            elif result.error.kind is ErrorKind.UNKNOWN_OUTCOME:
                unknown_enqueue.add(payload)
            else:
                errors.append(result)
        rounds = len(kills)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (
            len(completed) < len(acked) // 2 or len(kills) < rounds + 6
        ):
            taken = queue.dequeue()
            if isinstance(taken, Err):
                if taken.error.kind is not ErrorKind.UNKNOWN_OUTCOME:
                    errors.append(taken)
            elif taken.value is not None:
                settle(taken.value)
    finally:
        stop.set()
        thread.join(5)
    # Calm again: drain what is left (leases lost with an unknown outcome run out in 1 s).
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        message = ok(queue.dequeue(wait=1.5))
        if message is None:
            if ok(queue.is_drained()):
                break
            continue
        settle(message)
    print(
        f"{sum(kills)} connections killed; unknown outcomes: {len(unknown_enqueue)} "
        f"enqueues, {len(unknown_complete)} completes"
    )
    assert errors == []
    assert len(kills) >= 12 and sum(kills) >= 12, kills
    assert ok(queue.is_drained()) is True
    lost = [p for p in acked if completed[p] == 0 and p not in unknown_complete]
    assert lost == [], f"acknowledged enqueues never delivered: {lost[:10]}"
    assert [p for p, n in completed.items() if n > 1] == []
    assert set(completed) <= set(acked) | unknown_enqueue


class _LoseCommits:
    """Patch psycopg so that the next statement that commits (a COMMIT, or a statement
    run on its own in autocommit) really commits, then the connection drops (as when the
    network fails while the server's answer is on its way)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.armed = False
        self.fired = 0
        real_execute = psycopg.Connection.execute

        def execute(conn: psycopg.Connection[Any], query: Any, *args: Any, **kwargs: Any) -> Any:
            text = str(query).strip().upper()
            idle = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            commits = text == "COMMIT" or (idle and not text.startswith(("BEGIN", "SET")))
            cursor = real_execute(conn, query, *args, **kwargs)
            if self.armed and commits:
                self.armed = False
                self.fired += 1
                conn.pgconn.finish()
                raise psycopg.OperationalError("server closed the connection unexpectedly")
            return cursor

        monkeypatch.setattr(psycopg.Connection, "execute", execute)


OPERATIONS: dict[str, tuple[type[QueueError], Callable[[Queue, Message | None], Any]]] = {
    "enqueue": (EnqueueError, lambda q, m: q.enqueue("lost in commit")),
    "enqueue_batch": (EnqueueError, lambda q, m: q.enqueue_batch(["b1", "b2"])),
    "dequeue": (DequeueError, lambda q, m: q.dequeue(visibility_timeout=60)),
    "complete": (CompletionError, lambda q, m: q.complete(m)),  # type: ignore[arg-type]
    "fail_message": (RequeueError, lambda q, m: q.fail_message(m, error="x")),  # type: ignore[arg-type]
}


@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_connection_lost_during_commit_is_unknown_outcome(
    opened: Callable[..., Queue], monkeypatch: pytest.MonkeyPatch, operation: str
) -> None:
    """A connection lost while COMMIT is in flight: Err(kind=UNKNOWN_OUTCOME) with the
    method's error class, never Ok, and the call is not silently run again (the commit
    did happen: exactly one effect, no duplicate)."""
    queue = opened()
    # A queue object's first claim reads first (rows edited by hand): done here, so that
    # the statement lost below is the call's own.
    assert ok(queue.dequeue()) is None
    first = ok(queue.enqueue("first"))
    message = (
        ok(queue.dequeue(visibility_timeout=60))
        if operation in ("complete", "fail_message")
        else None
    )
    before = message_statuses(queue)
    lose = _LoseCommits(monkeypatch)
    error_cls, call = OPERATIONS[operation]
    lose.armed = True
    result = call(queue, message)
    lose.armed = False
    assert lose.fired == 1
    assert isinstance(result, Err), f"a lost COMMIT was reported as {result!r}"
    assert isinstance(result.error, error_cls)
    assert result.error.kind is ErrorKind.UNKNOWN_OUTCOME, result
    after = message_statuses(queue)
    if operation == "enqueue":
        assert [r["id"] for r in after] == [first, first + 1]
    elif operation == "enqueue_batch":
        assert [r["id"] for r in after] == [first, first + 1, first + 2]
    elif operation == "dequeue":
        assert [(r["status"], r["attempts"]) for r in after] == [("processing", 1)]
    elif operation == "complete":
        assert after == []
    else:
        assert [(r["status"], r["attempts"]) for r in after] == [("ready", 1)]
    assert after != before
    # The queue goes on working on the same connections.
    assert isinstance(queue.enqueue("afterwards"), Ok)


# -- connect() and URLs ---------------------------------------------------------------------


def test_connect_sqlite_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """sqlite:///relative.db is relative to the working directory, sqlite:////abs.db is an
    absolute path; settings pass through; the queue is an SQLiteQueue."""
    monkeypatch.chdir(tmp_path)
    with connect("sqlite:///relative.db", "emails", default_priority=3) as queue:
        assert isinstance(queue, SQLiteQueue)
        ok(queue.enqueue("x"))
        assert ok(queue.peek()).priority == 3
    assert (tmp_path / "relative.db").is_file()
    absolute = tmp_path / "sub" / "absolute.db"
    absolute.parent.mkdir()
    url = f"sqlite:///{absolute}"
    assert url.startswith("sqlite:////")
    with connect(url, "emails") as queue:
        assert isinstance(queue, SQLiteQueue)
        ok(queue.enqueue("y"))
    assert SQLiteQueue.list_queues(absolute) == Ok(["emails"])


def test_connect_postgresql_urls(target: QueueTarget) -> None:
    """postgresql:// and postgres:// URLs give PostgresQueues on the same database."""
    assert target.url.startswith("postgresql://")
    alias = "postgres://" + target.url[len("postgresql://") :]
    with connect(target.url, "emails", schema=target.schema, default_max_attempts=2) as queue:
        assert isinstance(queue, PostgresQueue)
        message_id = ok(queue.enqueue("hello"))
        with connect(alias, "emails", schema=target.schema) as other:
            assert isinstance(other, PostgresQueue)
            message = ok(other.dequeue())
            assert (message.id, message.payload, message.max_attempts) == (message_id, "hello", 2)


@pytest.mark.parametrize(
    "url",
    ["mysql://db/app", "", "sqlite://relative.db", "sqlite:", "postgresql", "file:///x.db", 42],
    ids=repr,
)
def test_connect_refuses_bad_urls(url: Any) -> None:
    """A URL of another scheme, a malformed one or a non-str: ValueError saying what works."""
    with pytest.raises(ValueError, match=r"(?i)\burl\b") as info:
        connect(url, "jobs")
    assert not isinstance(info.value, QueueError)


def test_postgres_queue_refuses_other_urls(tmp_path: Path) -> None:
    """PostgresQueue takes only postgresql:// URLs."""
    with pytest.raises(ValueError, match="postgresql://"):
        PostgresQueue(f"sqlite:///{tmp_path / 'x.db'}", TABLE)


def test_unreachable_server_is_a_storage_error_without_the_password() -> None:
    """A server that does not answer: QueueError (STORAGE) within about lock_timeout,
    naming the server but never the password."""
    start = time.monotonic()
    with pytest.raises(QueueError) as info:
        PostgresQueue("postgresql://app:s3cret-pw@127.0.0.1:1/app", TABLE, lock_timeout=0.5)
    assert time.monotonic() - start < 5
    assert info.value.kind is ErrorKind.STORAGE
    assert "127.0.0.1" in str(info.value)
    assert "s3cret-pw" not in str(info.value)


# -- maintenance ---------------------------------------------------------------------------


def test_maintenance_takes_no_connection_on_postgres(
    target: QueueTarget, opened: Callable[..., Queue]
) -> None:
    """vacuum_database() and perform_checkpoint() are Ok; a connection argument (an SQLite
    notion) is refused with INVALID_INPUT, and the queue keeps its messages."""
    queue = opened()
    message_id = ok(queue.enqueue("kept"))
    assert queue.vacuum_database() == Ok(None)
    assert queue.perform_checkpoint() == Ok(None)
    with psycopg.connect(target.url) as conn:
        refused = queue.vacuum_database(conn)
    assert isinstance(refused, Err)
    assert refused.error.kind is ErrorKind.INVALID_INPUT
    assert ok(queue.dequeue()).id == message_id


# -- ddl() ---------------------------------------------------------------------------------


def _tables(url: str, schema: str) -> set[str]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT c.relname || ':' || c.relkind::text FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s",
            (schema,),
        ).fetchall()
    return {r[0] for r in rows}


def test_ddl_is_the_schema_the_queue_creates(target: QueueTarget) -> None:
    """ddl() is a pure call (also on a closed queue) giving SQL statements that, run by
    hand in an empty schema, create the same tables and indexes the queue creates."""
    queue = target.open(TABLE)
    statements = queue.ddl()
    queue.close()
    assert queue.ddl() == statements
    assert statements and all(isinstance(s, str) and s.strip() for s in statements)
    assert any(f'CREATE TABLE "{TABLE}"' in s for s in statements)
    manual = f"{target.schema}_manual"
    try:
        with psycopg.connect(target.url, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{manual}"')
            conn.execute(f'SET search_path TO "{manual}"')
            for statement in statements:
                conn.execute(statement)
        assert _tables(target.url, manual) == _tables(target.url, str(target.schema))
    finally:
        drop_schema(target.url, manual)


def test_a_schema_1_queue_gets_the_result_column(target: QueueTarget) -> None:
    """Schema 1 kept completed messages without a result; opening such a queue adds the
    column (old history reads as result None) and records the new version."""
    ddl = json.loads((LOCAL_FIXTURES / "postgres-schema-1.json").read_text(encoding="utf-8"))
    target.run_sql(
        [
            *ddl["jobs"],  # as sqqueue with schema 1 created the queue
            """INSERT INTO "jobs_done" (id, body_text, encoding, priority, attempts,
                                        created_at, completed_at)
               VALUES (1, 'old', 'text', 0, 1, 0, 0)""",
            "SELECT setval(pg_get_serial_sequence('\"jobs\"', 'id'), 1)",
        ]
    )
    queue = target.open(TABLE, retention=3600)
    try:
        assert ok(queue.get_message(1))["result"] is None
        new = ok(queue.enqueue("new"))
        ok(queue.complete(ok(queue.dequeue()), result={"n": 2}))
        assert ok(queue.get_message(new))["result"] == {"n": 2}
    finally:
        queue.close()
    with psycopg.connect(target.url, autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{target.schema}"')
        version = conn.execute(
            "SELECT schema_version FROM sqqueue_queues WHERE name = %s", (TABLE,)
        ).fetchone()
    assert version == (pg_backend.SCHEMA_VERSION,)


# -- copy_queues ---------------------------------------------------------------------------


def _fill(queue: Queue) -> None:
    """One message in every state: pending, delayed, waiting (behind its group's head),
    in flight (leased), and dead, with priorities, attempts and errors."""
    ok(queue.enqueue("plain"))
    ok(queue.enqueue({"later": True}, delay=3600, priority=2))
    ok(queue.enqueue("head", group="G"))
    ok(queue.enqueue(b"\x00member", group="G"))
    retried = ok(queue.enqueue("retried", max_attempts=3))
    ok(queue.enqueue("in flight", priority=9))
    assert ok(queue.dequeue(visibility_timeout=600)).payload == "in flight"
    dead = ok(queue.enqueue("dead", max_attempts=1))
    for expected in (retried, dead):
        while (message := ok(queue.dequeue(visibility_timeout=600))).id != expected:
            ok(queue.release(message))
        ok(queue.fail_message(message, error=f"boom {expected}"))


def _picture(queue: Queue) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """What a copy must keep: every message (in-flight ones as pending) and dead letter."""
    messages = [
        (
            r["id"],
            r["payload"],
            "ready" if r["status"] == "processing" else r["status"],
            r["priority"],
            r["attempts"],
            r["max_attempts"],
            r["last_error"],
            r["group"],
        )
        for r in ok(queue.list_messages("all"))
    ]
    dead = [
        (d["id"], d["payload"], d["priority"], d["attempts"], d["max_attempts"], d["last_error"])
        for d in ok(queue.get_dead_letters())
    ]
    return messages, dead


def test_copy_sqlite_to_postgres_and_back_keeps_everything(
    target: QueueTarget, tmp_path: Path
) -> None:
    """copy_queues SQLite -> PostgreSQL -> SQLite: ids, payloads, states (pending,
    delayed, waiting, in-flight as pending, dead), attempts, errors and counts are kept;
    new ids continue above the copied ones; copying again finds the copy there and does
    nothing; a target with messages of its own is refused."""
    source = tmp_path / "source.db"
    with SQLiteQueue(source, TABLE) as queue:
        _fill(queue)
        original = _picture(queue)
        before = ok(queue.stats())
    assert before.processing == 1 and before.waiting == 1 and before.delayed == 1
    with psycopg.connect(target.url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{target.schema}"')
    # The queues of copy_queues come from the URL alone: put the schema on the path.
    pg = with_params(target.url, options=f"-csearch_path={target.schema}")

    report = copy_queues(f"sqlite:///{source}", pg, [TABLE])
    assert report == {TABLE: {"messages": 6, "dead": 1, "done": 0, "dedup": 0, "already": 0}}
    with target.open(TABLE) as queue:
        assert _picture(queue) == original
        copied = ok(queue.stats())
    assert (copied.pending, copied.delayed, copied.waiting, copied.processing, copied.dead) == (
        before.pending + 1,
        before.delayed,
        before.waiting,
        0,
        before.dead,
    )

    back = tmp_path / "back.db"
    assert copy_queues(pg, f"sqlite:///{back}", [TABLE]) == report
    with SQLiteQueue(back, TABLE) as queue:
        assert _picture(queue) == original
        counts = ok(queue.stats())
        assert (counts.pending, counts.delayed, counts.waiting, counts.processing) == (
            copied.pending,
            copied.delayed,
            copied.waiting,
            0,
        )
        assert (counts.dead, counts.enqueued_total) == (copied.dead, copied.enqueued_total)
        highest = max(row[0] for part in original for row in part)
        assert ok(queue.enqueue("new")) > highest

    # Copying again finds the copy there: nothing to do. A message of the target's own
    # makes it a queue that is not empty: refused, with nothing written.
    again = copy_queues(f"sqlite:///{source}", pg, [TABLE])
    assert again == {TABLE: {"messages": 6, "dead": 1, "done": 0, "dedup": 0, "already": 7}}
    with target.open(TABLE) as queue:
        assert _picture(queue) == original
        assert ok(queue.enqueue("new")) > highest
    with pytest.raises(QueueError, match="not empty") as info:
        copy_queues(f"sqlite:///{source}", pg, [TABLE])
    assert info.value.kind is ErrorKind.INVALID_INPUT
    with target.open(TABLE) as queue:
        assert len(_picture(queue)[0]) == len(original[0]) + 1


def test_errors_mask_a_password_given_as_a_parameter() -> None:
    """``?password=`` in the URL is masked like a password in the user part."""
    from sqqueue.targets import redact

    url = "postgresql://app@127.0.0.1:1/app?password=s3cret&connect_timeout=5"
    assert redact(url) == "postgresql://app@127.0.0.1:1/app?password=***&connect_timeout=5"
    assert redact("postgresql://app:s3cret@db/app") == "postgresql://app:***@db/app"
    with pytest.raises(QueueError) as info:
        PostgresQueue(url, "jobs")
    assert "s3cret" not in str(info.value) and "password=***" in str(info.value)


def _backends_connected(url: str, schema: str) -> int:
    """Connections of this test's queue objects to the server (their search_path or
    LISTEN aside, they come from this process)."""
    import os

    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE client_port IS NOT NULL "
            "AND pid <> pg_backend_pid() AND application_name = %s",
            (f"leak-{os.getpid()}-{schema}",),
        ).fetchone()
    return int(row[0]) if row else 0


def test_queue_objects_nobody_closed_let_go_of_their_listener_and_connections(
    pg_url: str, pg_schema: str
) -> None:
    """A queue object per request, never closed, that waited for messages: once nothing
    refers to it, its listener thread ends and its connections close (the listener held
    it, so they stayed until the server ran out of connections)."""
    import gc
    import os

    url = with_params(pg_url, application_name=f"leak-{os.getpid()}-{pg_schema}")

    def listeners() -> int:
        return sum(t.name == "sqqueue-listen-jobs" and t.is_alive() for t in threading.enumerate())

    before = listeners()
    for _ in range(5):
        queue = PostgresQueue(url, "jobs", schema=pg_schema)
        assert ok(queue.dequeue(wait=0.05)) is None  # (starts its listener)
        del queue
    gc.collect()
    deadline = time.monotonic() + 15
    while (listeners() > before or _backends_connected(pg_url, pg_schema)) and (
        time.monotonic() < deadline
    ):
        gc.collect()
        time.sleep(0.1)
    assert listeners() == before
    assert _backends_connected(pg_url, pg_schema) == 0
