"""A producer and two consumers sharing one SQLite file: ``python -m sqqueue.demo``.

The producer enqueues jobs (some urgent, some delayed); the consumers are separate
processes that lease, process and complete them. One job in ten fails on its first try
and is retried; one job always fails and ends in the dead-letter queue. The demo prints
progress as it goes and a summary of what happened.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import queue as stdlib_queue
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import SQLiteQueue, list_queues

QUEUE = "demo_jobs"


def fresh_queue_name(db: str) -> str:
    """``demo_jobs``, or ``demo_jobs_2``, ``_3``...: a queue this file does not hold yet, so
    a second run on the same file counts only its own jobs."""
    taken = set(list_queues(db).unwrap()) if os.path.exists(db) else set()
    name, n = QUEUE, 1
    while name in taken:
        n += 1
        name = f"{QUEUE}_{n}"
    return name


def produce(db: str, name: str, count: int, finished: Any) -> None:
    with SQLiteQueue(db, table_name=name, default_max_attempts=3) as queue:
        for n in range(count):
            job = {"job": n, "kind": "poison" if n == 7 else "resize"}
            priority = 10 if n % 25 == 0 else 0
            delay = 0.5 if n % 40 == 1 else 0
            queue.enqueue(job, priority=priority, delay=delay).unwrap()
            time.sleep(0.002)  # a trickle, so consumers and producer overlap
    finished.set()


def consume(
    db: str,
    table: str,
    name: str,
    done: mp.Queue[tuple[str, str, int]],
    finished: Any,
    stop_at: float,
) -> None:
    with SQLiteQueue(db, table_name=table, default_visibility_timeout=5) as queue:
        while time.monotonic() < stop_at:
            message = queue.dequeue().unwrap()
            if message is None:
                if finished.is_set() and queue.is_drained().unwrap():
                    return
                time.sleep(0.02)
                continue
            job = message.payload
            flaky = job["job"] % 10 == 3 and message.attempts == 1
            if job["kind"] == "poison" or flaky:
                queue.fail_message(message, error=f"could not process job {job['job']}").unwrap()
                done.put((name, "failed", job["job"]))
                continue
            time.sleep(0.003)  # the "work"
            queue.complete(message).unwrap()
            done.put((name, "done", job["job"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=200, help="how many jobs to produce")
    parser.add_argument("--db", help="database file (default: a new temporary file)")
    args = parser.parse_args(argv)

    db = args.db or os.path.join(tempfile.mkdtemp(prefix="sqqueue-demo-"), "demo.db")
    table = fresh_queue_name(db)
    print(
        f"sqqueue demo: {args.jobs} jobs, 1 producer and 2 consumer processes on {db} "
        f"(queue {table})"
    )
    SQLiteQueue(db, table_name=table).close()  # create the file before the processes start

    ctx = mp.get_context("spawn")
    done: mp.Queue[tuple[str, str, int]] = ctx.Queue()
    finished = ctx.Event()
    stop_at = time.monotonic() + 60
    producer = ctx.Process(target=produce, args=(db, table, args.jobs, finished))
    consumers = [
        ctx.Process(target=consume, args=(db, table, f"consumer-{i}", done, finished, stop_at))
        for i in (1, 2)
    ]
    started = time.monotonic()
    producer.start()
    for c in consumers:
        c.start()

    completed: dict[str, int] = {"consumer-1": 0, "consumer-2": 0}
    failures = 0
    last_report = 0.0
    while any(p.is_alive() for p in (producer, *consumers)) or not done.empty():
        try:
            name, outcome, _job = done.get(timeout=0.1)
        except stdlib_queue.Empty:
            continue
        if outcome == "done":
            completed[name] += 1
        else:
            failures += 1
        total = sum(completed.values())
        if time.monotonic() - last_report > 0.25 or total == args.jobs - 1:
            last_report = time.monotonic()
            bar = "#" * (30 * total // max(args.jobs, 1))
            print(f"  [{bar:<30}] {total:4d}/{args.jobs} completed, {failures} failed attempts")
    producer.join()
    for c in consumers:
        c.join()

    elapsed = time.monotonic() - started
    with SQLiteQueue(db, table_name=table) as queue:
        dead = queue.get_dead_letters().unwrap()
        left = queue.is_drained().unwrap()
    total = sum(completed.values())
    print(f"\nfinished in {elapsed:.1f} s")
    for name, n in completed.items():
        print(f"  {name} completed {n} jobs")
    print(f"  failed attempts (retried or dead-lettered): {failures}")
    for entry in dead:
        print(
            f"  dead letter id={entry['id']} payload={entry['payload']} "
            f"after {entry['attempts']} attempts: {entry['last_error']}"
        )
    print(f"  queue empty: {left}; completed {total} + dead {len(dead)} = {total + len(dead)}")
    ok = total + len(dead) == args.jobs and left
    print("every job accounted for" if ok else "MISMATCH: some jobs are unaccounted for")
    print(f"inspect it: sqlite3 {Path(db)} 'SELECT * FROM {table}_dlq'")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
