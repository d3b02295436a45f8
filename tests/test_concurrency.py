"""Concurrency and crash tests on every backend (an SQLite file, a PostgreSQL schema):
threads, processes, fork, SIGKILL, lock contention. Real time is used (bounded); every
child runs under a deadline. Child processes open the test's queue by URL."""

from __future__ import annotations

import json
import multiprocessing
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from conftest import QueueTarget
from helpers import message_statuses
from sqqueue import DequeueError, EnqueueError, Err, ErrorKind, Ok, Queue

pytestmark = pytest.mark.slow

TABLE = "jobs"
CHILD_TIMEOUT = 20.0  # seconds any group of child processes may take, all together

# One script for every child process; the first argument picks the role. Children print
# "ID <id> ..." for each success and "ERR <kind> <text>" for each Err they get.
CHILD = r"""
import os, sys, time
from sqqueue import PostgresQueue, connect

role, url, schema = sys.argv[1], sys.argv[2], sys.argv[3]
args = sys.argv[4:]  # the role's own arguments
out = sys.stdout


def open_queue(**settings):
    # The test's queue, on its backend: sqlite:/// URL, or PostgreSQL URL and schema.
    if url.startswith("sqlite:"):
        return connect(url, "jobs", **settings)
    return PostgresQueue(url, "jobs", schema=schema, **settings)


def err(what, result):
    print(f"ERR {result.error.kind.value} {what}: {result.error}", file=out, flush=True)

if role == "produce":
    count, tag = int(args[0]), args[1]
    with open_queue(lock_timeout=10) as q:
        for i in range(count):
            r = q.enqueue({"tag": tag, "i": i})
            if r.is_ok():
                print(f"ID {r.value}", file=out)
            else:
                err("enqueue", r)

elif role == "consume":
    flag = args[0]
    deadline = time.monotonic() + 15
    with open_queue(lock_timeout=10, default_visibility_timeout=120) as q:
        while True:
            if time.monotonic() > deadline:
                print("TIMEOUT", file=out)
                break
            r = q.dequeue()
            if r.is_err():
                err("dequeue", r)
                continue
            m = r.value
            if m is None:
                if os.path.exists(flag):
                    e = q.is_drained()
                    if e.is_err():
                        err("is_empty", e)
                    elif e.value:
                        break
                time.sleep(0.002)
                continue
            c = q.complete(m)
            if c.is_ok():
                print(f"ID {m.id} {m.attempts}", file=out)
            else:
                err("complete", c)

elif role == "enqueue_until_killed":
    with open_queue() as q:
        i = 0
        while True:
            r = q.enqueue(f"msg-{i}")
            if r.is_ok():
                print(f"ID {r.value} {i}", file=out, flush=True)
            else:
                err("enqueue", r)
            i += 1

elif role == "lease_and_hang":
    q = open_queue()
    r = q.dequeue_batch(int(args[0]), visibility_timeout=float(args[1]))
    if r.is_err():
        err("dequeue_batch", r)
    else:
        expiry = min(m.lease_expires_at.timestamp() for m in r.value)
        print("LEASED " + " ".join(str(m.id) for m in r.value) + f" UNTIL {expiry!r}",
              file=out, flush=True)
    time.sleep(60)

elif role == "hammer":
    rounds, tag = int(args[0]), args[1]
    enqueued = completed = 0
    with open_queue(lock_timeout=10, vacuum_threshold=25, default_visibility_timeout=120) as q:
        for i in range(rounds):
            for r in (q.enqueue(f"{tag}-{i}"), q.enqueue_batch([f"{tag}-{i}-a", f"{tag}-{i}-b"])):
                if r.is_ok():
                    enqueued += 1 if isinstance(r.value, int) else len(r.value)
                else:
                    err("enqueue", r)
            r = q.dequeue_batch(2)
            if r.is_err():
                err("dequeue_batch", r)
                continue
            for m in r.value:
                c = q.complete(m)
                if c.is_ok():
                    completed += 1
                else:
                    err("complete", c)
    print(f"COUNTS {enqueued} {completed}", file=out, flush=True)

else:
    raise SystemExit(f"unknown role {role!r}")
"""


def spawn(role: str, target: QueueTarget, *args: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, role, target.url, str(target.schema), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(procs: list[subprocess.Popen[str]], timeout: float = CHILD_TIMEOUT) -> list[str]:
    """Wait for every child (within ``timeout`` in total); return their stdouts.

    A child that hangs, crashes or writes to stderr fails the test.
    """
    deadline = time.monotonic() + timeout
    outputs = []
    try:
        for proc in procs:
            remaining = max(0.1, deadline - time.monotonic())
            out, errout = proc.communicate(timeout=remaining)
            assert proc.returncode == 0, f"child exited with {proc.returncode}: {errout}"
            assert errout == "", errout
            outputs.append(out)
    except subprocess.TimeoutExpired:
        pytest.fail(f"child processes did not finish within {timeout} s")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return outputs


def parse(output: str) -> tuple[list[list[str]], list[str]]:
    """(fields of each complete "ID" line, every "ERR"/"TIMEOUT" line)."""
    ids, problems = [], []
    for line in output.splitlines():
        if line.startswith("ID "):
            ids.append(line.split()[1:])
        elif line.startswith(("ERR", "TIMEOUT")):
            problems.append(line)
    return ids, problems


def integrity(target: QueueTarget) -> str:
    """SQLite's integrity_check of the test's file ("ok" when healthy); PostgreSQL keeps its
    own consistency, so there is nothing to check there."""
    if target.backend != "sqlite":
        return "ok"
    conn = target.sqlite_connection()
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


def all_ids(queue: Queue) -> list[int]:
    return [row["id"] for row in message_statuses(queue)]


# --------------------------------------------------------------------------------------
# a. threads sharing one queue object
# --------------------------------------------------------------------------------------


def test_threads_share_one_queue_exactly_once(queue_target: QueueTarget) -> None:
    """4 producer and 4 consumer threads on one queue object: every message is delivered
    exactly once, with its payload, and no call returns Err."""
    producers, per_producer = 4, 500
    total = producers * per_producer
    queue = queue_target.open(TABLE)
    lock = threading.Lock()
    produced: dict[int, Any] = {}
    consumed: list[tuple[int, Any]] = []
    errors: list[Any] = []
    deadline = time.monotonic() + 30

    def produce(p: int) -> None:
        for i in range(per_producer):
            payload = {"producer": p, "i": i}
            result = queue.enqueue(payload)
            with lock:
                if isinstance(result, Ok):
                    produced[result.value] = payload
                else:
                    errors.append(result)

    def consume() -> None:
        while time.monotonic() < deadline:
            with lock:
                if len(consumed) >= total or errors:
                    return
            result = queue.dequeue()
            if isinstance(result, Err):
                with lock:
                    errors.append(result)
                continue
            message = result.value
            if message is None:
                time.sleep(0.001)
                continue
            done = queue.complete(message)
            with lock:
                if isinstance(done, Ok):
                    consumed.append((message.id, message.payload))
                else:
                    errors.append(done)

    threads = [threading.Thread(target=produce, args=(p,)) for p in range(producers)]
    threads += [threading.Thread(target=consume) for _ in range(4)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=max(0.1, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in threads), "threads did not finish in time"
        assert errors == []
        assert len(produced) == total
        ids = [message_id for message_id, _ in consumed]
        duplicates = [i for i, n in Counter(ids).items() if n > 1]
        assert duplicates == [], f"delivered more than once: {duplicates[:10]}"
        assert set(ids) == set(produced)
        assert all(produced[i] == payload for i, payload in consumed)
        assert queue.is_drained() == Ok(True)
    finally:
        queue.close()


# --------------------------------------------------------------------------------------
# b. separate processes, each with its own queue object
# --------------------------------------------------------------------------------------


def test_processes_deliver_each_message_exactly_once(
    queue_target: QueueTarget, tmp_path: Path
) -> None:
    """2 producer and 3 consumer processes on one database: nothing lost, nothing
    completed twice, no Err anywhere; long leases mean no redelivery (attempts stay 1)."""
    flag = tmp_path / "producers-done"
    queue_target.open(TABLE).close()  # create the schema once, up front
    per_producer = 400
    consumers = [spawn("consume", queue_target, flag) for _ in range(3)]
    producers = [spawn("produce", queue_target, per_producer, tag) for tag in ("p0", "p1")]
    producer_out = finish(producers)
    flag.touch()
    consumer_out = finish(consumers)

    enqueued, problems = [], []
    for out in producer_out:
        lines, bad = parse(out)
        enqueued += [int(fields[0]) for fields in lines]
        problems += bad
    completed = []
    for out in consumer_out:
        lines, bad = parse(out)
        completed += [(int(fields[0]), int(fields[1])) for fields in lines]
        problems += bad

    assert problems == []
    assert len(enqueued) == 2 * per_producer == len(set(enqueued))
    ids = [message_id for message_id, _ in completed]
    duplicates = [i for i, n in Counter(ids).items() if n > 1]
    assert duplicates == [], f"completed more than once: {duplicates[:10]}"
    assert set(ids) == set(enqueued)
    assert {attempts for _, attempts in completed} == {1}
    with queue_target.open(TABLE) as queue:
        assert queue.is_drained() == Ok(True)
        assert queue.get_dead_letters() == Ok([])
    assert integrity(queue_target) == "ok"


# --------------------------------------------------------------------------------------
# c. a queue object inherited through fork
# --------------------------------------------------------------------------------------


def _forked_consumer(queue: Queue, producing_done: Any, worked: Any, out_path: str) -> None:
    """Runs in a forked child, on the queue object the parent created before the fork;
    sets ``worked`` once it has completed a message."""
    ids: list[int] = []
    errors: list[str] = []
    timed_out = True
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        result = queue.dequeue()
        if isinstance(result, Err):
            errors.append(repr(result.error))
            continue
        message = result.value
        if message is None:
            if producing_done.is_set():
                empty = queue.is_drained()
                if isinstance(empty, Err):
                    errors.append(repr(empty.error))
                elif empty.value:
                    timed_out = False
                    break
            time.sleep(0.002)
            continue
        done = queue.complete(message)
        if isinstance(done, Ok):
            ids.append(message.id)
            worked.set()
        else:
            errors.append(repr(done.error))
    Path(out_path).write_text(json.dumps({"ids": ids, "errors": errors, "timeout": timed_out}))


def test_fork_inherited_queue_works_in_parent_and_children(
    queue_target: QueueTarget, tmp_path: Path
) -> None:
    """A queue object opened before fork is used by 2 forked children and the parent at
    once: every message is completed exactly once and nobody sees an Err (each process
    needs its own connections: SQLite's and PostgreSQL's cannot cross a fork)."""
    queue = queue_target.open(TABLE, lock_timeout=10, default_visibility_timeout=120)
    enqueued: list[int] = []
    completed: list[int] = []
    errors: list[Any] = []

    def consume_one() -> None:
        result = queue.dequeue()
        if isinstance(result, Err):
            errors.append(result)
        elif result.value is not None:
            done = queue.complete(result.value)
            if isinstance(done, Ok):
                completed.append(result.value.id)
            else:
                errors.append(done)

    # The parent's connection is open and has been used before the fork.
    for i in range(50):
        enqueued.append(queue.enqueue(f"before-{i}").unwrap())
    consume_one()

    ctx = multiprocessing.get_context("fork")
    producing_done = ctx.Event()
    outs = [tmp_path / f"child-{n}.json" for n in range(2)]
    worked = [ctx.Event() for _ in outs]
    children = [
        ctx.Process(target=_forked_consumer, args=(queue, producing_done, flag, str(out)))
        for flag, out in zip(worked, outs, strict=True)
    ]
    try:
        for child in children:
            child.start()
        # Keep producing (faster than the parent consumes) until both children have
        # completed something, so a slow-to-schedule child still finds work.
        i = 0
        while i < 400 or (i < 20_000 and not all(flag.is_set() for flag in worked)):
            result = queue.enqueue(f"during-{i}")
            if isinstance(result, Ok):
                enqueued.append(result.value)
            else:
                errors.append(result)
            if i % 4 == 0:
                consume_one()
            i += 1
        producing_done.set()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            empty = queue.is_drained()
            if isinstance(empty, Err):
                errors.append(empty)
            elif empty.value:
                break
            consume_one()
        for child in children:
            child.join(timeout=max(0.1, deadline - time.monotonic()))
        assert all(child.exitcode == 0 for child in children), [c.exitcode for c in children]
    finally:
        for child in children:
            if child.is_alive():
                child.kill()
                child.join()

    assert errors == []
    reports = [json.loads(out.read_text()) for out in outs]
    assert [r["errors"] for r in reports] == [[], []]
    assert [r["timeout"] for r in reports] == [False, False]
    ids = completed + [i for r in reports for i in r["ids"]]
    duplicates = [i for i, n in Counter(ids).items() if n > 1]
    assert duplicates == [], f"completed more than once: {duplicates[:10]}"
    assert set(ids) == set(enqueued)
    assert all(r["ids"] for r in reports), "a forked child did no work"
    # The parent's object is still healthy after its children exited.
    message_id = queue.enqueue("after").unwrap()
    message = queue.dequeue().unwrap()
    assert message is not None
    assert message.id == message_id
    assert queue.complete(message) == Ok(None)
    assert queue.is_drained() == Ok(True)
    queue.close()
    assert integrity(queue_target) == "ok"


# --------------------------------------------------------------------------------------
# d. SIGKILL
# --------------------------------------------------------------------------------------


def spawn_logged(
    role: str, log: Path, target: QueueTarget, *args: object
) -> subprocess.Popen[bytes]:
    """Start a child whose output goes to ``log`` (a file survives the child's kill)."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-c", CHILD, role, target.url, str(target.schema), *map(str, args)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def wait_for_line(log: Path, prefix: str, proc: subprocess.Popen[bytes], timeout: float) -> str:
    """The first complete line of ``log`` starting with ``prefix``, within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines(keepends=True):
            if line.startswith(prefix) and line.endswith("\n"):
                return line
        if proc.poll() is not None:
            break
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    pytest.fail(f"child did not print {prefix!r} in time: {log.read_text()[-2000:]}")


def kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL


def test_sigkill_keeps_every_acknowledged_enqueue(
    queue_target: QueueTarget, tmp_path: Path
) -> None:
    """A producer killed with SIGKILL mid-stream: every id it printed (enqueue returned
    Ok) is in the queue with its payload (and an SQLite file passes integrity_check)."""
    queue_target.open(TABLE).close()
    log = tmp_path / "producer.log"
    proc = spawn_logged("enqueue_until_killed", log, queue_target)
    try:
        wait_for_line(log, "ID ", proc, 10)
        time.sleep(1.0)
    finally:
        kill(proc)
    output = log.read_text()
    assert "Traceback" not in output, output[-2000:]
    # Only whole lines count: the last one may have been cut by the kill.
    lines, problems = parse(output[: output.rfind("\n") + 1])
    assert problems == []
    printed = {int(f[0]): f"msg-{f[1]}" for f in lines}
    assert len(printed) > 10, "the child enqueued almost nothing before the kill"

    assert integrity(queue_target) == "ok"
    with queue_target.open(TABLE) as queue:
        stored = all_ids(queue)
        missing = sorted(set(printed) - set(stored))
        assert missing == [], f"acknowledged enqueues lost: {missing[:10]}"
        # At most the one enqueue in flight when the kill landed is extra.
        assert len(stored) - len(printed) in (0, 1)
        payloads: dict[int, Any] = {}
        while True:
            batch = queue.dequeue_batch(1000).unwrap()
            if not batch:
                break
            payloads.update((m.id, m.payload) for m in batch)
        assert {i: payloads[i] for i in printed} == printed
    assert integrity(queue_target) == "ok"


def test_sigkilled_consumer_leases_are_delivered_again(
    queue_target: QueueTarget, tmp_path: Path
) -> None:
    """A consumer killed with SIGKILL while holding leases: its messages are not handed
    out while the leases live, and are delivered again (attempt 2) once they expire."""
    with queue_target.open(TABLE) as queue:
        ids = queue.enqueue_batch([f"job-{i}" for i in range(10)]).unwrap()
    lease = 1.5
    log = tmp_path / "consumer.log"
    proc = spawn_logged("lease_and_hang", log, queue_target, 5, lease)
    try:
        line = wait_for_line(log, "LEASED ", proc, 10)
    finally:
        kill(proc)
    words = line.split()
    leased = {int(w) for w in words[1 : words.index("UNTIL")]}
    expiry = float(words[-1])
    assert leased == set(ids[:5])

    with queue_target.open(TABLE) as queue:
        redelivered: dict[int, Any] = {}
        first_pass = queue.dequeue_batch(10, visibility_timeout=60).unwrap()
        if time.time() < expiry - 0.1:  # still inside the dead consumer's leases
            assert {m.id for m in first_pass} == set(ids[5:])
        for m in first_pass:
            assert queue.complete(m) == Ok(None)
            if m.id in leased:
                redelivered[m.id] = m
        deadline = expiry + 5.0
        while set(redelivered) != leased and time.time() < deadline:
            message = queue.dequeue(visibility_timeout=60).unwrap()
            if message is None:
                time.sleep(0.05)
                continue
            assert message.id in leased, message
            assert message.id not in redelivered, f"{message.id} delivered twice"
            assert time.time() >= expiry, "delivered again before the lease expired"
            redelivered[message.id] = message
            assert queue.complete(message) == Ok(None)
        assert set(redelivered) == leased, "leases of the killed consumer never came back"
        for message in redelivered.values():
            assert message.attempts == 2
            assert message.last_error is not None
            assert "lease expired" in message.last_error.lower()
        assert queue.is_drained() == Ok(True)
    assert integrity(queue_target) == "ok"


# --------------------------------------------------------------------------------------
# e. lock contention
# --------------------------------------------------------------------------------------


def test_two_processes_hammering_writes_never_see_locked(queue_target: QueueTarget) -> None:
    """Two processes interleave enqueue, enqueue_batch, dequeue_batch and complete (with
    frequent maintenance) under lock_timeout=10: no Err reaches them, nothing is lost."""
    queue_target.open(TABLE).close()
    rounds = 250
    outputs = finish([spawn("hammer", queue_target, rounds, tag) for tag in ("a", "b")])
    enqueued = completed = 0
    problems: list[str] = []
    for out in outputs:
        _, bad = parse(out)
        problems += bad
        counts = [line.split() for line in out.splitlines() if line.startswith("COUNTS")]
        assert len(counts) == 1, out[-500:]
        enqueued += int(counts[0][1])
        completed += int(counts[0][2])
    assert [p for p in problems if "locked" in p] == [], "LOCKED reached the user"
    assert problems == []
    assert enqueued == 2 * rounds * 3
    with queue_target.open(TABLE) as queue:
        statuses = message_statuses(queue)
        assert {row["status"] for row in statuses} <= {"ready"}
        assert completed + len(statuses) == enqueued
    assert integrity(queue_target) == "ok"


class LockHolder:
    """Another connection that holds a write lock on the queue's storage: an SQLite write
    transaction (``BEGIN IMMEDIATE``), or PostgreSQL's ``LOCK TABLE ... IN EXCLUSIVE MODE``
    (what a migration or a long maintenance job holds), until ``release()``."""

    def __init__(self, target: QueueTarget) -> None:
        self.target = target
        if target.backend == "sqlite":
            self.conn: Any = target.sqlite_connection(isolation_level=None)
        else:
            import psycopg

            self.conn = psycopg.connect(target.url)

    def hold(self) -> None:
        if self.target.backend == "sqlite":
            self.conn.execute("BEGIN IMMEDIATE")
        else:
            self.conn.execute(f'LOCK TABLE "{self.target.schema}"."{TABLE}" IN EXCLUSIVE MODE')

    def release(self) -> None:
        if self.target.backend == "sqlite":
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
        else:
            self.conn.rollback()

    def close(self) -> None:
        self.release()
        self.conn.close()


def timed(call: Any, holder: LockHolder, limit: float = 5.0) -> tuple[Any, float]:
    """(result, seconds) of ``call()`` on a thread; a call still blocked after ``limit``
    seconds fails the test (after the lock is released, so the thread can finish)."""
    box: dict[str, Any] = {}

    def run() -> None:
        start = time.monotonic()
        box["result"] = call()
        box["elapsed"] = time.monotonic() - start

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit)
    if thread.is_alive():
        holder.release()
        thread.join(10)
        pytest.fail(f"the call was still blocked after {limit} s on a lock (lock_timeout=0.3)")
    return box["result"], box["elapsed"]


@pytest.mark.parametrize("call", ["enqueue", "dequeue", "complete", "enqueue_batch"])
def test_a_call_waits_for_a_held_lock_lock_timeout_in_all(
    queue_target: QueueTarget, call: str
) -> None:
    """lock_timeout bounds the whole call: the wait inside SQLite's busy handler and any
    retries after it together (it once waited twice as long: the retries counted from
    the end of the first wait)."""
    queue = queue_target.open(TABLE, lock_timeout=1.0)
    holder = LockHolder(queue_target)
    try:
        queue.enqueue("held").unwrap()
        message = queue.dequeue().unwrap()
        assert message is not None
        calls = {
            "enqueue": lambda: queue.enqueue("x"),
            "dequeue": queue.dequeue,
            "complete": lambda: queue.complete(message),
            "enqueue_batch": lambda: queue.enqueue_batch(["a", "b"]),
        }
        holder.hold()
        result, elapsed = timed(calls[call], holder)
        assert isinstance(result, Err), result
        assert result.error.kind is ErrorKind.LOCKED
        assert 0.9 <= elapsed < 1.6, elapsed
    finally:
        holder.close()
        queue.close()


@pytest.mark.parametrize("call", ["enqueue", "dequeue"])
def test_a_call_waiting_for_a_lock_goes_on_once_it_is_released(
    queue_target: QueueTarget, call: str
) -> None:
    """A call that finds the write lock taken waits for it (lock_timeout=30) and goes on,
    soon after the other connection lets go, with its work done."""
    queue = queue_target.open(TABLE, lock_timeout=30.0)
    holder = LockHolder(queue_target)
    try:
        queue.enqueue("first").unwrap()
        calls = {"enqueue": lambda: queue.enqueue("second"), "dequeue": queue.dequeue}
        holder.hold()
        box: dict[str, Any] = {}

        def run() -> None:
            box["result"] = calls[call]()
            box["returned_at"] = time.monotonic()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        thread.join(0.3)
        assert thread.is_alive(), box  # waiting for the lock
        released_at = time.monotonic()
        holder.release()
        thread.join(20)
        assert not thread.is_alive(), "still waiting 20 s after the lock was released"
        result = box["result"]
        assert isinstance(result, Ok), result
        assert box["returned_at"] >= released_at  # it had waited for the lock
        if call == "enqueue":
            assert queue.stats().unwrap().ready == 2
        else:
            assert result.value is not None
            assert result.value.payload == "first"
    finally:
        holder.close()
        queue.close()


def test_a_queue_opens_and_reads_while_another_connection_writes(
    queue_target: QueueTarget,
) -> None:
    """Opening an existing queue of this version changes nothing, so it needs no write
    lock: a web request opening the queue while a worker's long write transaction holds
    the lock opens it at once and reads it (it used to wait for lock_timeout and fail)."""
    queue_target.open(TABLE).enqueue("there").unwrap()
    holder = LockHolder(queue_target)
    try:
        holder.hold()
        opened, elapsed = timed(lambda: queue_target.open(TABLE, lock_timeout=5), holder)
        assert elapsed < 2.5, f"opening waited {elapsed:.2f} s for the write lock"
        assert opened.stats().unwrap().depth == 1
        holder.release()
        assert opened.dequeue().unwrap().payload == "there"
        opened.close()
    finally:
        holder.close()


def test_held_write_lock_gives_locked_within_lock_timeout(queue_target: QueueTarget) -> None:
    """While another connection holds a write lock longer than lock_timeout=0.3, enqueue
    and dequeue return Err(LOCKED) after about that long; once the holder lets go, both
    work again and the refused enqueue left nothing behind."""
    queue = queue_target.open(TABLE, lock_timeout=0.3)
    holder = LockHolder(queue_target)
    try:
        queue.enqueue("before").unwrap()
        holder.hold()
        result, elapsed = timed(lambda: queue.enqueue("while locked"), holder)
        assert isinstance(result, Err), result
        assert isinstance(result.error, EnqueueError)
        assert result.error.kind is ErrorKind.LOCKED
        assert 0.2 <= elapsed < 3.0, elapsed

        taken, elapsed = timed(queue.dequeue, holder)
        assert isinstance(taken, Err), taken
        assert isinstance(taken.error, DequeueError)
        assert taken.error.kind is ErrorKind.LOCKED
        assert elapsed < 3.0, elapsed

        holder.release()
        after = queue.enqueue("after")
        assert isinstance(after, Ok), after
        payloads = []
        while (message := queue.dequeue().unwrap()) is not None:
            payloads.append(message.payload)
            assert queue.complete(message) == Ok(None)
        assert payloads == ["before", "after"]
    finally:
        holder.close()
        queue.close()
