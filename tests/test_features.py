"""Queue features: idempotent enqueue, message groups, time to live, retention of completed
messages, purge, redrive, backpressure (max_depth) and the transactional outbox.

Time-dependent behaviour runs on the FakeClock; the cross-process checks (dedup keys from
four producers, groups under three consumers) run real processes with bounded waits.
After each scenario the counts of ``stats()`` are compared with the messages listed.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from conftest import FakeClock
from helpers import err, isolate, leased, ok, statuses
from sqqueue import (
    EnqueueError,
    Err,
    ErrorKind,
    Item,
    Queue,
    QueueFull,
    RequeueError,
    SQLiteQueue,
)

MakeQueue = Callable[..., Queue]
SRC = Path(__file__).resolve().parents[1] / "src"
STATES = ("ready", "delayed", "waiting", "processing", "dead")


@pytest.fixture(autouse=True)
def _no_outside_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings come from the tests only: no SQQUEUE_* variables, no config file."""
    isolate(monkeypatch)


def check_counts(queue: Queue) -> Counter[str]:
    """stats() counts equal the messages listed; returns the status counts."""
    seen = Counter(statuses(queue).values())
    assert set(seen) <= set(STATES), seen
    stats = ok(queue.stats())
    assert {s: getattr(stats, s) for s in STATES} == {s: seen.get(s, 0) for s in STATES}
    assert stats.depth == sum(seen[s] for s in STATES if s != "dead")
    return seen


def nothing(queue: Queue) -> None:
    assert ok(queue.dequeue()) is None


def ids_in(queue: Queue, state: str) -> list[int]:
    return [row["id"] for row in ok(queue.list_messages(state, limit=10_000))]


# -- configuration -----------------------------------------------------------------------


def test_feature_settings_default_and_validate(make_queue: MakeQueue) -> None:
    """The new settings have the documented defaults; bad values fail construction."""
    queue = make_queue(table_name="jobs")
    expected = {
        "dedup_window": 300.0,
        "default_ttl": None,
        "on_expire": "dead",
        "retention": None,
        "retention_max": None,
        "max_depth": None,
    }
    assert {k: queue.settings[k] for k in expected} == expected
    for bad in (
        {"on_expire": "later"},
        {"dedup_window": -1},
        {"dedup_window": "forever"},
        {"default_ttl": 0},
        {"retention": -5},
        {"retention_max": 0},
        {"max_depth": 0},
        {"max_depth": 2.5},
    ):
        with pytest.raises(ValueError):
            make_queue(table_name="jobs", **bad)


def test_feature_settings_from_env_and_toml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: FakeClock
) -> None:
    """Settings come from SQQUEUE_* variables and sqqueue.toml, and take effect."""
    monkeypatch.delenv("SQQUEUE_CONFIG")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sqqueue.toml").write_text(
        'retention_max = 7\ndedup_window = 10\n\n[queues.jobs]\nmax_depth = 2\ndedup_window = "exists"\n'
    )
    monkeypatch.setenv("SQQUEUE_DEFAULT_TTL", "30")
    monkeypatch.setenv("SQQUEUE_ON_EXPIRE", "drop")
    with SQLiteQueue(tmp_path / "q.db", table_name="jobs", clock=clock) as queue:
        assert queue.settings["max_depth"] == 2
        assert queue.settings["dedup_window"] == "exists"
        assert queue.settings["retention_max"] == 7
        assert queue.settings["default_ttl"] == 30.0
        assert queue.settings["on_expire"] == "drop"
        assert queue.setting_sources["on_expire"] == "env SQQUEUE_ON_EXPIRE"
        first = ok(queue.enqueue("a", dedup_key="k"))
        clock.advance(3600)  # "exists": no time window
        assert ok(queue.enqueue("a again", dedup_key="k")) == first
        ok(queue.enqueue("b"))
        err(queue.enqueue("c"), ErrorKind.QUEUE_FULL)  # max_depth 2 from the file
        clock.advance(31)  # default_ttl 30, dropped
        nothing(queue)
        assert ok(queue.get_dead_letters()) == []
        assert ok(queue.stats()).ttl_expired_total == 2
    with SQLiteQueue(tmp_path / "q.db", table_name="other", clock=clock) as other:
        assert other.settings["dedup_window"] == 10.0  # the top level, not [queues.jobs]
        assert other.settings["max_depth"] is None


# -- idempotent enqueue ------------------------------------------------------------------


def test_dedup_key_returns_original_id_within_window(
    make_queue: MakeQueue, clock: FakeClock
) -> None:
    """A second enqueue with the same key inside the window adds nothing and returns the
    first id, even after the first was completed; after the window a new message is made."""
    queue = make_queue(table_name="jobs", dedup_window=60)
    first = ok(queue.enqueue({"n": 1}, dedup_key="order-1"))
    other = ok(queue.enqueue({"n": 2}, dedup_key="order-2"))
    assert other != first
    clock.advance(30)
    assert ok(queue.enqueue({"n": "dup"}, dedup_key="order-1")) == first
    assert sorted(statuses(queue)) == [first, other]
    message = leased(queue)
    assert message.id == first
    assert message.payload == {"n": 1}  # the duplicate's payload was not stored
    ok(queue.complete(message))
    clock.advance(29)  # 59 s after the first enqueue: still inside the window
    assert ok(queue.enqueue({"n": "late dup"}, dedup_key="order-1")) == first
    assert sorted(statuses(queue)) == [other]
    clock.advance(1)  # the window (60 s) has passed
    fresh = ok(queue.enqueue({"n": 3}, dedup_key="order-1"))
    assert fresh not in (first, other)
    assert sorted(statuses(queue)) == [other, fresh]
    stats = ok(queue.stats())
    assert stats.enqueued_total == 3
    check_counts(queue)


def test_dedup_window_exists_lasts_while_message_or_dead_letter_exists(
    make_queue: MakeQueue, clock: FakeClock
) -> None:
    """dedup_window="exists": a key holds while its message is queued or dead, however
    long; once the message is completed the key is free again."""
    queue = make_queue(table_name="jobs", dedup_window="exists")
    first = ok(queue.enqueue("a", dedup_key="k"))
    clock.advance(10 * 86400)
    assert ok(queue.enqueue("a2", dedup_key="k")) == first
    ok(queue.fail_message(first, send_to_dlq=True, error="bad"))
    clock.advance(10 * 86400)
    assert ok(queue.enqueue("a3", dedup_key="k")) == first  # still exists, as a dead letter
    assert statuses(queue) == {first: "dead"}
    ok(queue.reprocess_dead_letter(first))
    message = leased(queue)
    ok(queue.complete(message))
    second = ok(queue.enqueue("b", dedup_key="k"))
    assert second != first
    assert ok(queue.enqueue("b2", dedup_key="k")) == second
    assert statuses(queue) == {second: "ready"}
    check_counts(queue)


def test_dedup_in_batches(make_queue: MakeQueue) -> None:
    """enqueue_batch dedups against stored keys and within the batch itself; ids come
    back in item order."""
    queue = make_queue(table_name="jobs")
    stored = ok(queue.enqueue("stored", dedup_key="s"))
    ids = ok(
        queue.enqueue_batch(
            [
                Item("x1", dedup_key="x"),
                Item("s-dup", dedup_key="s"),
                "plain",
                Item("x2", dedup_key="x"),
                Item("y", dedup_key="y"),
                Item("x3", dedup_key="x"),
            ]
        )
    )
    assert len(ids) == 6
    assert ids[1] == stored
    assert ids[0] == ids[3] == ids[5]
    assert len({ids[0], ids[2], ids[4], stored}) == 4
    payloads = {m.id: m.payload for m in ok(queue.dequeue_batch(10))}
    assert payloads == {stored: "stored", ids[0]: "x1", ids[2]: "plain", ids[4]: "y"}
    assert ok(queue.stats()).enqueued_total == 4
    check_counts(queue)


def test_dedup_key_validation(make_queue: MakeQueue) -> None:
    """A dedup key or group must be a non-empty str: else INVALID_INPUT, nothing stored."""
    queue = make_queue(table_name="jobs")
    err(queue.enqueue("a", dedup_key=""), ErrorKind.INVALID_INPUT)
    err(queue.enqueue("a", dedup_key=5), ErrorKind.INVALID_INPUT)  # type: ignore[arg-type]
    err(queue.enqueue("a", group=""), ErrorKind.INVALID_INPUT)
    result = queue.enqueue_batch([Item("ok", dedup_key="fine"), Item("bad", dedup_key="")])
    assert isinstance(err(result, ErrorKind.INVALID_INPUT), EnqueueError)
    assert statuses(queue) == {}


PRODUCER = r"""
import json, random, sys, time
from pathlib import Path
from sqqueue import Item, SQLiteQueue

db, index, out, go = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
keys = [f"key-{k}" for k in range(200)]
random.Random(index).shuffle(keys)
queue = SQLiteQueue(db, table_name="dedup")
Path(str(out) + ".ready").touch()
deadline = time.monotonic() + 20
while not go.exists():
    if time.monotonic() > deadline:
        sys.exit(3)
    time.sleep(0.001)
got = {}
if index % 2 == 0:
    for key in keys:
        got[key] = queue.enqueue({"key": key, "by": index}, dedup_key=key).unwrap()
else:
    for start in range(0, len(keys), 20):
        chunk = keys[start:start + 20]
        items = [Item({"key": k, "by": index}, dedup_key=k) for k in chunk]
        got.update(zip(chunk, queue.enqueue_batch(items).unwrap()))
queue.close()
out.write_text(json.dumps(got))
"""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(SRC), "SQQUEUE_CONFIG": "none"}


def _start_together(
    tmp_path: Path, script_text: str, argv: Callable[[int, Path, Path], list[str]], count: int
) -> list[Path]:
    """Start ``count`` processes of a script; release them at once; wait for them (bounded).
    Returns their output paths."""
    script = tmp_path / "child.py"
    script.write_text(script_text)
    go = tmp_path / "go"
    outs = [tmp_path / f"out-{i}.json" for i in range(count)]
    procs = [
        subprocess.Popen([sys.executable, str(script), *argv(i, outs[i], go)], env=_env())
        for i in range(count)
    ]
    try:
        deadline = time.monotonic() + 20
        while not all(Path(f"{o}.ready").exists() for o in outs):
            assert time.monotonic() < deadline, "children did not start in time"
            assert all(p.poll() is None for p in procs), "a child died while starting"
            time.sleep(0.005)
        go.touch()
        for proc in procs:
            assert proc.wait(timeout=30) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
    return outs


def test_dedup_across_processes(tmp_path: Path, db_path: Path) -> None:
    """Four processes enqueue the same 200 keys at once (two one by one, two in batches):
    exactly 200 messages exist and every producer got the same id for each key."""
    with SQLiteQueue(db_path, table_name="dedup") as queue:
        outs = _start_together(
            tmp_path,
            PRODUCER,
            lambda i, out, go: [str(db_path), str(i), str(out), str(go)],
            4,
        )
        results = [json.loads(out.read_text()) for out in outs]
        assert all(len(r) == 200 for r in results)
        assert results[1] == results[0]
        assert results[2] == results[0]
        assert results[3] == results[0]
        ids = results[0]
        assert len(set(ids.values())) == 200
        assert sorted(statuses(queue)) == sorted(ids.values())
        stats = ok(queue.stats())
        assert stats.pending == 200
        assert stats.enqueued_total == 200
        delivered = ok(queue.dequeue_batch(1000))
        assert len(delivered) == 200
        assert {m.payload["key"]: m.id for m in delivered} == ids
        check_counts(queue)


# -- message groups ----------------------------------------------------------------------


def test_groups_deliver_one_at_a_time_in_order(make_queue: MakeQueue) -> None:
    """Messages of one group go one at a time, in enqueue order; different groups (and
    ungrouped messages) in parallel; blocked members are 'waiting' everywhere."""
    queue = make_queue(table_name="jobs")
    a = [ok(queue.enqueue(f"a{i}", group="A")) for i in range(3)]
    b = [ok(queue.enqueue(f"b{i}", group="B")) for i in range(2)]
    plain = ok(queue.enqueue("plain"))
    assert statuses(queue) == {
        a[0]: "ready",
        a[1]: "waiting",
        a[2]: "waiting",
        b[0]: "ready",
        b[1]: "waiting",
        plain: "ready",
    }
    stats = ok(queue.stats())
    assert (stats.pending, stats.waiting, stats.depth) == (3, 3, 6)
    assert ids_in(queue, "waiting") == [a[1], a[2], b[1]]
    assert ids_in(queue, "ready") == [a[0], b[0], plain]
    waiting_row = ok(queue.list_messages("waiting"))[0]
    assert waiting_row["status"] == "waiting"
    assert waiting_row["group"] == "A"
    check_counts(queue)

    batch = ok(queue.dequeue_batch(10))
    assert [m.id for m in batch] == [a[0], b[0], plain]
    assert [m.group for m in batch] == ["A", "B", None]
    nothing(queue)
    check_counts(queue)

    ok(queue.complete(batch[0]))
    assert statuses(queue)[a[1]] == "ready"
    assert statuses(queue)[a[2]] == "waiting"
    assert leased(queue).id == a[1]
    nothing(queue)  # a2 waits for a1, b1 for b0
    ok(queue.complete(batch[1]))
    assert leased(queue).id == b[1]
    check_counts(queue)


def test_a_batch_keeps_its_order_when_some_items_have_dedup_keys(make_queue: MakeQueue) -> None:
    """Ids follow the batch's order whichever items carry a dedup key, so a group's
    messages enqueued together are delivered in that order (on PostgreSQL, taking a key
    took an id before the items without one)."""
    queue = make_queue(table_name="jobs")
    ids = ok(
        queue.enqueue_batch(
            [
                Item("step1", group="order-7"),
                Item("step2", group="order-7"),
                Item("step3", group="order-7", dedup_key="order-7-step3"),
                Item("plain"),
            ]
        )
    )
    assert ids == sorted(ids)
    delivered = []
    while (message := ok(queue.dequeue())) is not None:
        delivered.append(message.payload)
        ok(queue.complete(message))
    assert [p for p in delivered if p != "plain"] == ["step1", "step2", "step3"]
    assert sorted(delivered) == ["plain", "step1", "step2", "step3"]


def test_list_messages_all_reports_waiting(make_queue: MakeQueue) -> None:
    """list_messages("all") gives every message its status, the one stats() counts it under
    (a message blocked behind its group is 'waiting', not 'pending')."""
    queue = make_queue(table_name="jobs")
    head = ok(queue.enqueue("h", group="G"))
    blocked = ok(queue.enqueue("w", group="G"))
    later = ok(queue.enqueue("d", delay=100))
    listed = {row["id"]: row["status"] for row in ok(queue.list_messages("all"))}
    assert listed == statuses(queue) == {head: "ready", blocked: "waiting", later: "delayed"}


def test_group_priorities_apply_across_groups_not_within(make_queue: MakeQueue) -> None:
    """The best group head by priority goes first; a high-priority message never jumps
    ahead of an earlier message of its own group."""
    queue = make_queue(table_name="jobs")
    x = ok(queue.enqueue("x", group="A", priority=0))
    y = ok(queue.enqueue("y", group="B", priority=5))
    z = ok(queue.enqueue("z", group="A", priority=9))
    low = ok(queue.enqueue("low", priority=-1))
    assert ok(queue.peek()).id == y
    first = leased(queue)
    second = leased(queue)
    assert (first.id, second.id) == (y, x)
    assert leased(queue).id == low  # z (priority 9) is still waiting behind x
    nothing(queue)
    ok(queue.complete(second))
    assert leased(queue).id == z
    check_counts(queue)


def test_group_failed_head_stays_head(make_queue: MakeQueue, clock: FakeClock) -> None:
    """A failed (retried) head, a head whose retry is delayed and a head whose lease ran
    out all stay ahead of the rest of their group."""
    queue = make_queue(table_name="jobs", default_max_attempts=5)
    head = ok(queue.enqueue("head", group="G"))
    nxt = ok(queue.enqueue("next", group="G"))
    message = leased(queue)
    ok(queue.fail_message(message, error="try again", delay=0))
    assert statuses(queue) == {head: "ready", nxt: "waiting"}
    message = leased(queue)
    assert (message.id, message.attempts) == (head, 2)
    ok(queue.fail_message(message, error="later", delay=10))
    assert statuses(queue) == {head: "delayed", nxt: "waiting"}
    check_counts(queue)
    nothing(queue)
    clock.advance(10)
    message = leased(queue, visibility_timeout=5)
    assert message.id == head
    clock.advance(6)  # lease runs out
    message = leased(queue)
    assert (message.id, message.attempts) == (head, 4)
    assert statuses(queue) == {head: "processing", nxt: "waiting"}
    ok(queue.complete(message))
    assert leased(queue).id == nxt
    check_counts(queue)


def test_group_dead_letter_does_not_block(make_queue: MakeQueue, clock: FakeClock) -> None:
    """A head dead-lettered (by fail, by its last lease running out, or buried while
    pending) lets the next member of its group be delivered."""
    queue = make_queue(table_name="jobs", default_max_attempts=1)
    g = [ok(queue.enqueue(f"g{i}", group="G")) for i in range(4)]
    first = leased(queue)
    ok(queue.fail_message(first, error="boom"))  # last attempt -> dead
    assert statuses(queue) == {g[0]: "dead", g[1]: "ready", g[2]: "waiting", g[3]: "waiting"}
    second = leased(queue, visibility_timeout=5)
    assert second.id == g[1]
    clock.advance(6)  # its only lease runs out: dead letter
    third = leased(queue)
    assert third.id == g[2]
    assert "lease expired" in ok(queue.get_dead_letters())[-1]["last_error"]
    ok(queue.complete(third))
    ok(queue.fail_message(g[3], send_to_dlq=True, error="skip"))  # buried while pending
    assert statuses(queue) == dict.fromkeys(g[:2] + g[3:], "dead")
    check_counts(queue)
    after = ok(queue.enqueue("after", group="G"))  # the group is empty again: no wait
    assert statuses(queue)[after] == "ready"
    assert leased(queue).id == after


def test_group_redriven_member_waits_its_turn(make_queue: MakeQueue) -> None:
    """A dead letter redriven into a group that has messages queued does not run in
    parallel with the group's current head."""
    queue = make_queue(table_name="jobs", default_max_attempts=1)
    first = ok(queue.enqueue("first", group="G"))
    ok(queue.fail_message(leased(queue), error="boom"))
    second = ok(queue.enqueue("second", group="G"))
    head = leased(queue)
    assert head.id == second
    assert ok(queue.redrive(ids=[first])) == 1
    assert statuses(queue) == {first: "waiting", second: "processing"}
    nothing(queue)
    ok(queue.complete(head))
    assert leased(queue).id == first
    check_counts(queue)


CONSUMER = r"""
import json, random, sys, time
from pathlib import Path
from sqqueue import SQLiteQueue

db, index, out, go = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
queue = SQLiteQueue(db, table_name="groups", default_visibility_timeout=60)
rng = random.Random(index)
Path(str(out) + ".ready").touch()
deadline = time.monotonic() + 20
while not go.exists():
    if time.monotonic() > deadline:
        sys.exit(3)
    time.sleep(0.001)
log = []
stop_at = time.monotonic() + 25
while time.monotonic() < stop_at:
    message = queue.dequeue(wait=0.1).unwrap()
    if message is None:
        if queue.is_drained().unwrap():
            break
        continue
    start = time.monotonic()
    # Messages of this group enqueued before this one must all be completed by now.
    earlier = [r["id"] for r in queue.list_messages("all", limit=1000).unwrap()
               if r["group"] == message.group and r["id"] < message.id]
    time.sleep(rng.uniform(0, 0.003))
    end = time.monotonic()
    queue.complete(message).unwrap()
    log.append({"id": message.id, "payload": message.payload, "group": message.group,
                "start": start, "end": end, "worker": index,
                "earlier_still_queued": earlier})
queue.close()
out.write_text(json.dumps(log))
"""


@pytest.mark.slow
def test_groups_under_concurrent_consumers(tmp_path: Path, db_path: Path) -> None:
    """Three consumer processes on 10 groups x 30 messages: within a group processing
    never overlaps and follows enqueue order, each message is delivered only after the
    previous one of its group was completed, and every message is processed exactly once."""
    with SQLiteQueue(db_path, table_name="groups") as queue:
        items = [
            Item({"g": g, "seq": seq}, group=f"g{g}", priority=g % 3)
            for seq in range(30)
            for g in range(10)
        ]
        ids = ok(queue.enqueue_batch(items))
        assert ok(queue.stats()).waiting == 290
        check_counts(queue)
        outs = _start_together(
            tmp_path,
            CONSUMER,
            lambda i, out, go: [str(db_path), str(i), str(out), str(go)],
            3,
        )
        log = [entry for out in outs for entry in json.loads(out.read_text())]
        assert sorted(e["id"] for e in log) == sorted(ids)  # none lost, none twice
        assert len({e["worker"] for e in log}) > 1  # the work was shared
        by_group: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for entry in log:
            assert entry["group"] == f"g{entry['payload']['g']}"
            by_group[entry["group"]].append(entry)
        assert len(by_group) == 10
        for group, entries in by_group.items():
            entries.sort(key=lambda e: e["start"])
            assert [e["payload"]["seq"] for e in entries] == list(range(30)), group
            for before, after in itertools.pairwise(entries):
                assert after["start"] >= before["end"], f"{group}: overlapping processing"
                assert after["id"] > before["id"]
            # Each was delivered only once every earlier message of its group was
            # completed: so they were also completed in enqueue order.
            assert all(e["earlier_still_queued"] == [] for e in entries), group
        stats = ok(queue.stats())
        assert stats.completed_total == 300
        assert (stats.depth, stats.dead) == (0, 0)
        check_counts(queue)


# -- time to live ------------------------------------------------------------------------


def test_ttl_expired_message_is_dead_lettered(make_queue: MakeQueue, clock: FakeClock) -> None:
    """A message past its ttl is never delivered: it goes to the dead-letter queue with
    an error about its time to live, and is counted in ttl_expired_total."""
    queue = make_queue(table_name="jobs")
    short = ok(queue.enqueue("short", ttl=10))
    long = ok(queue.enqueue("long", ttl=timedelta(minutes=1)))
    plain = ok(queue.enqueue("plain"))
    assert ok(queue.peek()).expires_at == datetime.fromtimestamp(clock() + 10, tz=timezone.utc)
    clock.advance(10)
    message = leased(queue)
    assert message.id == long
    assert message.expires_at == datetime.fromtimestamp(clock() + 50, tz=timezone.utc)
    assert leased(queue).id == plain
    nothing(queue)
    (dead,) = ok(queue.get_dead_letters())
    assert dead["id"] == short
    assert dead["payload"] == "short"
    assert "time to live" in dead["last_error"]
    stats = ok(queue.stats())
    assert (stats.ttl_expired_total, stats.dead_lettered_total, stats.dead) == (1, 1, 1)
    check_counts(queue)


def test_default_ttl_and_drop(make_queue: MakeQueue, clock: FakeClock) -> None:
    """default_ttl applies to every message without a ttl; on_expire="drop" deletes
    expired messages instead of dead-lettering them (still counted)."""
    queue = make_queue(table_name="jobs", default_ttl=10, on_expire="drop")
    ok(queue.enqueue("default"))
    keep = ok(queue.enqueue("own ttl", ttl=100))
    ok(queue.enqueue_batch(["b1", Item("b2", ttl=5)]))
    clock.advance(10)
    assert leased(queue).id == keep
    nothing(queue)
    assert ok(queue.get_dead_letters()) == []
    stats = ok(queue.stats())
    assert (stats.ttl_expired_total, stats.dead_lettered_total) == (3, 0)
    assert statuses(queue) == {keep: "processing"}
    check_counts(queue)


def test_ttl_never_delivered_even_after_delay(make_queue: MakeQueue, clock: FakeClock) -> None:
    """A delay longer than the ttl means the message is never delivered."""
    queue = make_queue(table_name="jobs")
    ok(queue.enqueue("x", delay=20, ttl=10))
    clock.advance(25)
    nothing(queue)
    assert len(ok(queue.get_dead_letters())) == 1
    assert ok(queue.stats()).ttl_expired_total == 1


def test_ttl_does_not_yank_a_live_lease(make_queue: MakeQueue, clock: FakeClock) -> None:
    """A message being processed when its ttl passes can still be completed; one whose
    lease then runs out is expired rather than delivered again."""
    queue = make_queue(table_name="jobs")
    a = ok(queue.enqueue("a", ttl=10))
    b = ok(queue.enqueue("b", ttl=10))
    msg_a = leased(queue, visibility_timeout=100)
    msg_b = leased(queue, visibility_timeout=30)
    clock.advance(20)
    nothing(queue)  # folds expired messages: the leased ones stay
    assert ok(queue.recover_processing_messages()) == 0
    assert statuses(queue) == {a: "processing", b: "processing"}
    ok(queue.extend(msg_b, 5))  # a live lease can still be extended
    ok(queue.complete(msg_a))
    clock.advance(6)  # b's lease runs out after its ttl
    nothing(queue)
    assert statuses(queue) == {b: "dead"}
    assert "time to live" in ok(queue.get_dead_letters())[0]["last_error"]
    err(queue.complete(msg_b), ErrorKind.WRONG_STATE)
    stats = ok(queue.stats())
    assert (stats.completed_total, stats.ttl_expired_total) == (1, 1)
    check_counts(queue)


def test_ttl_expires_waiting_group_member(make_queue: MakeQueue, clock: FakeClock) -> None:
    """A group member that expired while waiting is skipped: the member after it is
    delivered next."""
    queue = make_queue(table_name="jobs")
    g = [ok(queue.enqueue("g0", group="G")), ok(queue.enqueue("g1", group="G", ttl=5))]
    g.append(ok(queue.enqueue("g2", group="G")))
    head = leased(queue, visibility_timeout=100)
    clock.advance(10)
    ok(queue.complete(head))
    assert leased(queue).id == g[2]
    assert statuses(queue) == {g[1]: "dead", g[2]: "processing"}
    assert ok(queue.stats()).ttl_expired_total == 1
    check_counts(queue)


def test_peek_never_shows_an_expired_message(make_queue: MakeQueue, clock: FakeClock) -> None:
    """peek() shows what dequeue would deliver: never a message past its ttl."""
    queue = make_queue(table_name="jobs")
    ok(queue.enqueue("old", ttl=5))
    clock.advance(6)
    assert ok(queue.peek()) is None
    fresh = ok(queue.enqueue("fresh"))
    peeked = ok(queue.peek())
    assert peeked is not None
    assert peeked.id == fresh
    assert leased(queue).id == fresh


# -- retention of completed messages ------------------------------------------------------


def test_completed_messages_are_not_kept_by_default(make_queue: MakeQueue) -> None:
    """Without retention, completed messages are deleted at once."""
    queue = make_queue(table_name="jobs")
    ok(queue.enqueue("a"))
    ok(queue.complete(leased(queue)))
    assert ok(queue.get_completed()) == []
    assert ok(queue.list_messages("done")) == []
    assert ok(queue.stats()).completed_total == 1


def test_retention_keeps_completed_messages(make_queue: MakeQueue, clock: FakeClock) -> None:
    """With retention, completed messages are listed (get_completed / list_messages
    "done") with completed_at and attempts, page by page."""
    queue = make_queue(table_name="jobs", retention=3600)
    ids = ok(queue.enqueue_batch([{"n": 1}, {"n": 2}, {"n": 3}]))
    first = leased(queue)
    ok(queue.fail_message(first, error="retry"))
    enqueued_at = clock()
    clock.advance(5)
    for message in ok(queue.dequeue_batch(3)):
        ok(queue.complete(message))
    done = ok(queue.get_completed())
    assert [d["id"] for d in done] == ids
    assert [d["payload"] for d in done] == [{"n": 1}, {"n": 2}, {"n": 3}]
    assert [d["attempts"] for d in done] == [2, 1, 1]
    stamp = datetime.fromtimestamp(clock(), tz=timezone.utc)
    assert all(d["completed_at"] == stamp for d in done)
    assert all(
        d["enqueued_at"] == datetime.fromtimestamp(enqueued_at, tz=timezone.utc) for d in done
    )
    assert all(d["status"] == "done" for d in done)
    page = ok(queue.get_completed(limit=2))
    assert [d["id"] for d in page] == ids[:2]
    rest = ok(queue.get_completed(limit=2, after_id=page[-1]["id"]))
    assert [d["id"] for d in rest] == ids[2:]
    assert ok(queue.list_messages("done")) == done
    assert statuses(queue) == {}  # completed messages are not in the queue
    check_counts(queue)


def test_retention_prunes_by_age_during_maintenance(
    make_queue: MakeQueue, clock: FakeClock
) -> None:
    """Completed messages older than retention are deleted by the maintenance that runs
    every vacuum_threshold operations, not before."""
    queue = make_queue(table_name="jobs", retention=60, vacuum_threshold=4)
    ok(queue.enqueue_batch(["a", "b", "c"]))  # op 1
    old = ok(queue.dequeue_batch(3))  # op 2
    for message in old:
        ok(queue.complete(message))  # ops 3-5 (maintenance at 4: nothing old yet)
    clock.advance(61)
    recent = ok(queue.enqueue("d"))  # op 6
    message = leased(queue)  # op 7
    assert len(ok(queue.get_completed())) == 3  # old, but no maintenance since
    ok(queue.complete(message))  # op 8: maintenance
    assert [d["id"] for d in ok(queue.get_completed())] == [recent]


def test_retention_max_prunes_in_bounded_steps(
    make_queue: MakeQueue, clock: FakeClock, db_path: Path
) -> None:
    """retention_max keeps the most recently completed messages; maintenance deletes at
    most 500 rows a round."""
    worker = make_queue(table_name="jobs", retention_max=100, vacuum_threshold=0)
    ids = ok(worker.enqueue_batch(list(range(1100))))
    completed = []
    for message in ok(worker.dequeue_batch(1100, visibility_timeout=3600)):
        ok(worker.complete(message))
        completed.append(message.id)
        clock.advance(1)
    assert sorted(completed) == ids
    assert len(ok(worker.get_completed(limit=10_000))) == 1100  # vacuum_threshold=0: never
    keeper = make_queue(table_name="jobs", retention_max=100, vacuum_threshold=1)
    sizes = []
    for _ in range(3):
        ok(keeper.purge("dead"))  # one operation: one round of maintenance
        sizes.append(len(ok(keeper.get_completed(limit=10_000))))
    assert sizes == [600, 100, 100]
    kept = [d["id"] for d in ok(keeper.get_completed(limit=10_000))]
    assert sorted(kept) == sorted(completed[-100:])


def test_complete_keeps_a_json_result_with_the_history(
    make_queue: MakeQueue, clock: FakeClock
) -> None:
    """complete(message, result=...) keeps a JSON result with the completed message, read
    back with get_message and get_completed; None is a result too (JSON null)."""
    queue = make_queue(table_name="jobs", retention=3600)
    assert queue.keeps_history
    first, second, third = ok(queue.enqueue_batch(["a", "b", "c"]))
    ok(queue.complete(leased(queue), result={"sent": 3, "to": ["ada", "éè\u2603"]}))
    ok(queue.complete(leased(queue), result=None))
    ok(queue.complete(leased(queue)))
    found = ok(queue.get_message(first))
    assert (found["status"], found["result"]) == ("done", {"sent": 3, "to": ["ada", "éè\u2603"]})
    assert ok(queue.get_message(second))["result"] is None
    assert ok(queue.get_message(third))["result"] is None
    assert [d["result"] for d in ok(queue.get_completed())] == [
        {"sent": 3, "to": ["ada", "éè\u2603"]},
        None,
        None,
    ]
    check_counts(queue)


def test_complete_with_a_result_is_refused_without_history_or_json(
    make_queue: MakeQueue,
) -> None:
    """A result needs a queue that keeps history, and must be JSON: otherwise Err and
    nothing changes (the message stays leased, to be completed properly)."""
    plain = make_queue(table_name="plain")
    assert not plain.keeps_history
    ok(plain.enqueue("a"))
    message = leased(plain)
    refused = plain.complete(message, result=1)
    err(refused, ErrorKind.INVALID_INPUT)
    assert "retention" in str(refused.error)
    assert ok(plain.get_message(message.id))["status"] == "processing"
    ok(plain.complete(message))

    kept = make_queue(table_name="kept", retention_max=10)
    ok(kept.enqueue("b"))
    message = leased(kept)
    for bad in ((1, 2), {1: "x"}, float("nan"), object()):
        err(kept.complete(message, result=bad), ErrorKind.SERIALIZATION)
    assert ok(kept.get_message(message.id))["status"] == "processing"
    ok(kept.complete(message, result=[1, 2]))
    assert ok(kept.get_message(message.id))["result"] == [1, 2]


@pytest.mark.asyncio
async def test_async_complete_keeps_a_result(make_queue: MakeQueue) -> None:
    from sqqueue import AsyncQueue

    queue = AsyncQueue(make_queue(table_name="jobs", retention=60))
    message_id = ok(await queue.enqueue("a"))
    message = ok(await queue.dequeue())
    ok(await queue.complete(message, result={"ok": True}))
    assert ok(await queue.get_message(message_id))["result"] == {"ok": True}


# -- purge -------------------------------------------------------------------------------


def test_purge_by_state(make_queue: MakeQueue, clock: FakeClock) -> None:
    """purge(state) deletes just that state and returns the count; purge() empties the
    queue but keeps dead letters and completed messages."""
    queue = make_queue(table_name="jobs", retention=3600)
    pending = ok(queue.enqueue("p"))
    delayed = ok(queue.enqueue("d", delay=100))
    head = ok(queue.enqueue("h", group="G"))
    waiting = [ok(queue.enqueue(f"w{i}", group="G")) for i in range(2)]
    dead = ok(queue.enqueue("x"))
    ok(queue.fail_message(dead, send_to_dlq=True))
    done = ok(queue.enqueue("c", priority=9))
    ok(queue.complete(leased(queue)))
    processing = leased(queue)
    assert processing.id == pending  # same priority and time as h: the lower id first
    assert ok(queue.purge("waiting")) == 2
    assert not set(waiting) & set(statuses(queue))
    assert ok(queue.purge("delayed")) == 1
    assert delayed not in statuses(queue)
    check_counts(queue)
    assert ok(queue.purge()) == 2  # the processing one and the pending one
    assert statuses(queue) == {dead: "dead"}
    err(queue.complete(processing), ErrorKind.NOT_FOUND)
    assert ok(queue.purge("dead")) == 1
    assert ok(queue.purge("done")) == 1
    assert ok(queue.get_completed()) == []
    assert statuses(queue) == {}
    assert done != head
    check_counts(queue)


def test_purge_lists_older_than_and_validation(make_queue: MakeQueue, clock: FakeClock) -> None:
    """purge takes a list of states and an age; a bad state deletes nothing."""
    queue = make_queue(table_name="jobs")
    old = ok(queue.enqueue_batch(["o1", "o2"]))
    old_dead = ok(queue.enqueue("od"))
    ok(queue.fail_message(old_dead, send_to_dlq=True))
    clock.advance(100)
    new = ok(queue.enqueue("n"))
    new_dead = ok(queue.enqueue("nd"))
    ok(queue.fail_message(new_dead, send_to_dlq=True))
    before = statuses(queue)
    err(queue.purge(["pending", "bogus"]), ErrorKind.INVALID_INPUT)
    err(queue.purge("pending", older_than=-1), ErrorKind.INVALID_INPUT)
    assert statuses(queue) == before
    assert ok(queue.purge(["pending", "dead"], older_than=50)) == 3
    assert statuses(queue) == {new: "ready", new_dead: "dead"}
    assert not set(old) & set(statuses(queue))
    assert ok(queue.purge(["pending", "dead"], older_than=timedelta(hours=1))) == 0
    check_counts(queue)


def test_purge_of_group_head_releases_next(make_queue: MakeQueue) -> None:
    """Purging a group's head (pending or processing) lets the next member run, like a
    completion would; purging waiting and head together leaves nothing."""
    queue = make_queue(table_name="jobs")
    g = [ok(queue.enqueue(f"g{i}", group="G")) for i in range(3)]
    assert ok(queue.purge("pending")) == 1
    assert statuses(queue) == {g[1]: "ready", g[2]: "waiting"}
    leased(queue)
    assert ok(queue.purge("processing")) == 1
    assert statuses(queue) == {g[2]: "ready"}
    h = [ok(queue.enqueue(f"h{i}", group="H")) for i in range(3)]
    assert statuses(queue)[h[1]] == "waiting"
    assert ok(queue.purge(["pending", "waiting"])) == 4
    assert statuses(queue) == {}
    check_counts(queue)


# -- redrive -----------------------------------------------------------------------------


def _dead_letters(queue: Queue, payloads: list[str], attempts: int) -> list[int]:
    """Dead letters with ``attempts`` used each (queue's max_attempts must be attempts)."""
    ids = ok(queue.enqueue_batch(payloads))
    for _ in range(attempts):
        for message in ok(queue.dequeue_batch(len(payloads))):
            ok(queue.fail_message(message, error=f"boom {message.payload}"))
    assert statuses(queue) == dict.fromkeys(ids, "dead")
    return ids


def test_redrive_back_to_same_queue(make_queue: MakeQueue) -> None:
    """Redrive keeps ids and last_error, resets attempts and adds them to prior_attempts."""
    queue = make_queue(table_name="jobs", default_max_attempts=2)
    ids = _dead_letters(queue, ["a", "b", "c"], attempts=2)
    assert ok(queue.redrive(ids=[ids[1]])) == 1
    assert statuses(queue) == {ids[0]: "dead", ids[1]: "ready", ids[2]: "dead"}
    assert ok(queue.redrive()) == 2
    rows = ok(queue.list_messages("pending"))
    assert [r["id"] for r in rows] == ids
    assert [r["attempts"] for r in rows] == [0, 0, 0]
    assert [r["prior_attempts"] for r in rows] == [2, 2, 2]
    assert [r["last_error"] for r in rows] == ["boom a", "boom b", "boom c"]
    message = leased(queue)
    assert (message.attempts, message.prior_attempts, message.last_error) == (1, 2, "boom a")
    ok(queue.fail_message(message, error="again"))
    ok(queue.fail_message(leased(queue), error="again"))
    (dead,) = ok(queue.get_dead_letters())
    assert (dead["attempts"], dead["prior_attempts"]) == (2, 2)
    assert ok(queue.redrive()) == 1
    row = next(r for r in ok(queue.list_messages("all")) if r["id"] == dead["id"])
    assert row["prior_attempts"] == 4
    check_counts(queue)


def test_redrive_to_another_queue(make_queue: MakeQueue) -> None:
    """Redrive to another queue of the file gives new ids there; the history goes along."""
    queue = make_queue(table_name="jobs", default_max_attempts=1)
    other = make_queue(table_name="retry")
    existing = ok(other.enqueue_batch(["o1", "o2", "o3", "o4", "o5"]))
    ids = _dead_letters(queue, ["a", "b"], attempts=1)
    assert ok(queue.redrive(to_queue="retry")) == 2
    assert statuses(queue) == {}
    assert ok(queue.stats()).dead == 0
    moved = [r for r in ok(other.list_messages("pending", limit=100)) if r["id"] not in existing]
    assert [r["payload"] for r in moved] == ["a", "b"]
    assert all(r["id"] > max(existing) for r in moved)
    assert [r["last_error"] for r in moved] == ["boom a", "boom b"]
    assert [r["prior_attempts"] for r in moved] == [1, 1]
    assert ok(other.stats()).enqueued_total == 7
    assert ok(queue.stats()).enqueued_total == len(ids)
    check_counts(queue)
    check_counts(other)


def test_redrive_errors(make_queue: MakeQueue) -> None:
    """Unknown ids (or ids not dead) give NOT_FOUND; an unknown target queue is refused
    and moves nothing."""
    queue = make_queue(table_name="jobs", default_max_attempts=1)
    ids = _dead_letters(queue, ["a"], attempts=1)
    alive = ok(queue.enqueue("alive"))
    error = err(queue.redrive(ids=[999_999]), ErrorKind.NOT_FOUND)
    assert isinstance(error, RequeueError)
    err(queue.redrive(ids=[alive]), ErrorKind.NOT_FOUND)
    result = queue.redrive(to_queue="nope")
    assert isinstance(result, Err)
    assert statuses(queue) == {ids[0]: "dead", alive: "ready"}
    err(queue.redrive(rate=0), ErrorKind.INVALID_INPUT)
    check_counts(queue)


def test_redrive_rate_and_progress(make_queue: MakeQueue) -> None:
    """rate caps messages per second (30 at 100/s go in chunks of 10 a tenth of a second
    apart, so take at least ~0.2 s); progress sees (done, total) rising to (30, 30)."""
    queue = make_queue(table_name="jobs")
    ids = ok(queue.enqueue_batch([f"m{i}" for i in range(30)]))
    for message_id in ids:
        ok(queue.fail_message(message_id, send_to_dlq=True))
    calls: list[tuple[int, int]] = []
    started = time.monotonic()
    assert ok(queue.redrive(rate=100, progress=lambda d, t: calls.append((d, t)))) == 30
    elapsed = time.monotonic() - started
    assert elapsed >= 0.15, elapsed
    assert calls[-1] == (30, 30)
    assert len(calls) > 1
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert all(t == 30 for _, t in calls)
    assert statuses(queue) == dict.fromkeys(ids, "ready")
    check_counts(queue)


def _finishes(call: Callable[[], Any], within: float = 5.0) -> Any:
    """What ``call()`` returns, run in a thread that must end within ``within`` seconds
    (generous: the defects these guard against took from 20 s to for ever)."""
    results: list[Any] = []
    thread = threading.Thread(target=lambda: results.append(call()), daemon=True)
    thread.start()
    thread.join(within)
    assert not thread.is_alive(), f"still running after {within} s"
    (result,) = results
    return result


def test_redrive_paced_ends_once_the_last_is_moved(make_queue: MakeQueue) -> None:
    """A paced redrive waits only between the chunks it moves: with nothing left after
    one, it returns at once, whatever the rate (it used to wait 20 s after the last dead
    letter at 0.05 a second, eleven days at 1e-6)."""
    queue = make_queue(table_name="jobs", default_max_attempts=1)
    ids = _dead_letters(queue, ["a", "b", "c"], attempts=1)
    assert ok(_finishes(lambda: queue.redrive(ids=[ids[0]], rate=0.05))) == 1
    assert ok(_finishes(lambda: queue.redrive(ids=[ids[1]], rate=1e-6))) == 1
    assert ok(_finishes(lambda: queue.redrive(rate=1e-6))) == 1
    assert statuses(queue) == dict.fromkeys(ids, "ready")
    check_counts(queue)


@pytest.mark.parametrize("rate", [0.01, 5e-324], ids=["100s-apart", "tiniest"])
def test_redrive_paced_ends_when_the_queue_is_closed(make_queue: MakeQueue, rate: float) -> None:
    """close() from another thread ends a paced redrive's wait at once: Err(CLOSED), the
    dead letters moved so far staying moved. Wake-ups meant for consumers (an enqueue,
    wake_waiters) do not end the wait; the tiniest rate (an endless wait) is no error."""
    queue = make_queue(table_name="jobs", default_max_attempts=1)
    ids = _dead_letters(queue, ["a", "b", "c"], attempts=1)
    first = threading.Event()
    results: list[Any] = []

    def redrive() -> None:
        results.append(queue.redrive(rate=rate, progress=lambda done, total: first.set()))

    thread = threading.Thread(target=redrive, daemon=True)
    thread.start()
    assert first.wait(10), "the first chunk was not moved"
    ok(make_queue(table_name="jobs").enqueue("live"))
    queue.wake_waiters()
    thread.join(0.3)
    assert thread.is_alive(), f"the wait ended before close(): {results}"
    queue.close()
    thread.join(5)
    assert not thread.is_alive(), "close() did not end the redrive's wait"
    err(results[0], ErrorKind.CLOSED, "closed", "1 of 3", cls=RequeueError)
    other = make_queue(table_name="jobs")
    assert [statuses(other)[i] for i in ids] == ["ready", "dead", "dead"]
    check_counts(other)


def test_redrive_progress_that_raises(
    make_queue: MakeQueue, caplog: pytest.LogCaptureFixture
) -> None:
    """A progress callback that raises does not stop the redrive nor turn the dead letters
    it moved into an error: logged (once, as a warning, with no payload), then Ok. A
    KeyboardInterrupt is let through, as anywhere else in the call: what moved stays."""
    caplog.set_level(logging.DEBUG, logger="sqqueue")
    queue = make_queue(table_name="jobs", default_max_attempts=1)
    ids = _dead_letters(queue, [f"secret-{i}" for i in range(4)], attempts=1)
    calls: list[tuple[int, int]] = []

    def broken(done: int, total: int) -> None:
        calls.append((done, total))
        raise RuntimeError("progress bar gone")

    assert ok(queue.redrive(ids=ids[:2], rate=10, progress=broken)) == 2  # 2 chunks
    assert ok(queue.redrive(ids=ids[2:3], progress=broken)) == 1
    assert calls == [(1, 2), (2, 2), (1, 1)]
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 2, [r.getMessage() for r in warnings]
    assert all("progress" in r.getMessage() and r.exc_info for r in warnings)
    assert "secret" not in caplog.text

    def interrupt(done: int, total: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        queue.redrive(ids=ids[3:], progress=interrupt)
    assert statuses(queue)[ids[3]] == "ready"
    check_counts(queue)


def test_delete_dead_letters(make_queue: MakeQueue) -> None:
    """delete_dead_letters removes the dead letters named, in one call, and counts only
    those it removed: live messages, unknown and repeated ids are skipped; a large
    payload's body goes with its dead letter."""
    queue = make_queue(table_name="jobs", default_max_attempts=1)
    big = "x" * (200 * 1024)
    ids = _dead_letters(queue, ["a", "b", big], attempts=1)
    alive = ok(queue.enqueue("alive"))
    assert ok(queue.delete_dead_letters([ids[0], ids[2], ids[2], alive, 999_999])) == 2
    assert statuses(queue) == {ids[1]: "dead", alive: "ready"}
    assert ok(queue.get_message(ids[2])) is None
    assert ok(queue.delete_dead_letters([ids[0]])) == 0
    assert ok(queue.delete_dead_letters([])) == 0
    err(queue.delete_dead_letters("12"), ErrorKind.INVALID_INPUT)  # type: ignore[arg-type]
    err(queue.delete_dead_letters([-1]), ErrorKind.INVALID_INPUT)
    err(queue.delete_dead_letters([True]), ErrorKind.INVALID_INPUT)
    err(queue.delete_dead_letters(list(range(10_001))), ErrorKind.INVALID_INPUT)
    assert statuses(queue) == {ids[1]: "dead", alive: "ready"}
    assert ok(queue.stats()).dead == 1
    check_counts(queue)


# -- backpressure ------------------------------------------------------------------------


def test_max_depth_refuses_with_queue_full(make_queue: MakeQueue, clock: FakeClock) -> None:
    """Past max_depth enqueue returns Err(QueueFull, kind QUEUE_FULL) and adds nothing;
    pending, delayed, waiting and processing count; dead letters and duplicates do not."""
    queue = make_queue(table_name="jobs", max_depth=4)
    p = ok(queue.enqueue("p", dedup_key="p"))
    ok(queue.enqueue("d", delay=60))
    h = ok(queue.enqueue("h", group="G"))
    ok(queue.enqueue("w", group="G"))
    assert leased(queue).id == p
    before = statuses(queue)
    error = err(queue.enqueue("too many"), ErrorKind.QUEUE_FULL)
    assert isinstance(error, QueueFull)
    assert isinstance(error, EnqueueError)
    err(queue.enqueue_batch(["x", "y"]), ErrorKind.QUEUE_FULL)
    assert statuses(queue) == before
    assert ok(queue.enqueue("dup", dedup_key="p")) == p  # a duplicate adds nothing
    assert statuses(queue) == before
    ok(queue.fail_message(h, send_to_dlq=True))
    ok(queue.enqueue("room"))  # the dead letter freed a place
    assert ok(queue.stats()).depth == 4
    check_counts(queue)


def test_max_depth_batch_is_all_or_nothing(make_queue: MakeQueue) -> None:
    """A batch that does not fit is refused whole; one that fits once its duplicates are
    dropped is accepted."""
    queue = make_queue(table_name="jobs", max_depth=3)
    first = ok(queue.enqueue("a", dedup_key="a"))
    err(queue.enqueue_batch(["b", "c", "d"]), ErrorKind.QUEUE_FULL)
    assert list(statuses(queue)) == [first]
    ids = ok(
        queue.enqueue_batch(
            [Item("a", dedup_key="a"), "b", Item("c", dedup_key="c"), Item("c", dedup_key="c")]
        )
    )
    assert ids[0] == first
    assert ids[2] == ids[3]
    assert len(statuses(queue)) == 3


def test_max_depth_wait_until_room(make_queue: MakeQueue) -> None:
    """enqueue(wait=...) blocks until a completion on another thread makes room."""
    queue = make_queue(table_name="jobs", max_depth=1)
    ok(queue.enqueue("first"))
    message = leased(queue)

    def finish() -> None:
        time.sleep(0.2)
        ok(queue.complete(message))

    thread = threading.Thread(target=finish, daemon=True)
    started = time.monotonic()
    thread.start()
    second = ok(queue.enqueue("second", wait=5))
    elapsed = time.monotonic() - started
    thread.join(5)
    assert 0.15 <= elapsed < 4, elapsed
    assert statuses(queue) == {second: "ready"}


def test_max_depth_wait_gives_up(make_queue: MakeQueue) -> None:
    """With no room before the wait ends, enqueue returns Err(QueueFull) after the wait."""
    queue = make_queue(table_name="jobs", max_depth=1)
    ok(queue.enqueue("first"))
    started = time.monotonic()
    error = err(queue.enqueue("second", wait=0.3), ErrorKind.QUEUE_FULL)
    elapsed = time.monotonic() - started
    assert 0.29 <= elapsed < 3, elapsed
    assert isinstance(error, QueueFull)
    assert len(statuses(queue)) == 1


# -- outbox ------------------------------------------------------------------------------


@pytest.fixture
def app_conn(db_path: Path, sqlite_queue: SQLiteQueue) -> Iterator[sqlite3.Connection]:
    """The application's own connection to the queue's file, with an orders table."""
    conn = sqlite3.connect(db_path, timeout=10)
    conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
    conn.commit()
    yield conn
    conn.close()


@pytest.mark.plain_file("the application's connection is stdlib sqlite3, which has no key")
def test_outbox_commits_with_callers_rows(
    sqlite_queue: SQLiteQueue, app_conn: sqlite3.Connection
) -> None:
    """enqueue_in joins the caller's transaction: invisible until commit, then there."""
    app_conn.execute("INSERT INTO orders (id) VALUES (42)")
    message_id = ok(sqlite_queue.enqueue_in(app_conn, {"order": 42}, dedup_key="order-42"))
    assert ok(sqlite_queue.enqueue_in(app_conn, {"order": 42}, dedup_key="order-42")) == message_id
    assert statuses(sqlite_queue) == {}  # not committed yet
    app_conn.commit()
    assert statuses(sqlite_queue) == {message_id: "ready"}
    message = leased(sqlite_queue)
    assert message.payload == {"order": 42}
    assert ok(sqlite_queue.stats()).enqueued_total == 1
    check_counts(sqlite_queue)


@pytest.mark.plain_file("the application's connection is stdlib sqlite3, which has no key")
def test_outbox_rolls_back_with_callers_rows(
    sqlite_queue: SQLiteQueue, app_conn: sqlite3.Connection
) -> None:
    """A rolled-back transaction leaves neither the caller's rows nor the message."""
    app_conn.execute("INSERT INTO orders (id) VALUES (7)")
    ok(sqlite_queue.enqueue_in(app_conn, "order 7", group="G"))
    app_conn.rollback()
    assert app_conn.execute("SELECT count(*) FROM orders").fetchone()[0] == 0
    assert statuses(sqlite_queue) == {}
    stats = ok(sqlite_queue.stats())
    assert (stats.enqueued_total, stats.depth) == (0, 0)
    nothing(sqlite_queue)
    check_counts(sqlite_queue)


@pytest.mark.plain_file("the application's connection is stdlib sqlite3, which has no key")
def test_outbox_never_runs_upkeep_inside_the_callers_transaction(
    make_sqlite_queue: Callable[..., SQLiteQueue], db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Upkeep writes, so it needs the write lock that the caller's open transaction holds:
    enqueue_in never runs it (it used to wait 2 x lock_timeout for that lock every
    vacuum_threshold messages). The rounds it owes run at the queue's next own call."""
    queue = make_sqlite_queue(table_name="jobs", vacuum_threshold=10, lock_timeout=0.5)
    conn = sqlite3.connect(db_path, timeout=10)
    conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
    conn.commit()
    upkeep: list[tuple[int, bool]] = []
    real_maintain = queue._backend.maintain

    def spy(rounds: int = 1) -> None:
        upkeep.append((rounds, conn.in_transaction))
        real_maintain(rounds)

    monkeypatch.setattr(queue._backend, "maintain", spy)
    slowest = 0.0
    try:
        for order in range(50):
            conn.execute("INSERT INTO orders (id) VALUES (?)", (order,))
            start = time.perf_counter()
            ok(queue.enqueue_in(conn, {"order": order}))
            slowest = max(slowest, time.perf_counter() - start)
            conn.commit()
        print(f"slowest of 50 enqueue_in: {slowest * 1000:.1f} ms")
        assert upkeep == []  # none inside the caller's transactions
        ok(queue.enqueue("not in a transaction of yours"))
        assert upkeep == [(5, False)]  # the 5 rounds owed, run outside them
    finally:
        conn.close()
    assert ok(queue.stats()).depth == 51


@pytest.mark.plain_file("the application's connection is stdlib sqlite3, which has no key")
def test_outbox_errors(sqlite_queue: SQLiteQueue, db_path: Path, tmp_path: Path) -> None:
    """No open transaction, a connection to another file, or no connection at all:
    Err(INVALID_INPUT), and nothing is enqueued."""
    idle = sqlite3.connect(db_path, isolation_level=None)
    elsewhere = sqlite3.connect(tmp_path / "other.db")
    try:
        error = err(sqlite_queue.enqueue_in(idle, "x"), ErrorKind.INVALID_INPUT)
        assert isinstance(error, EnqueueError)
        elsewhere.execute("CREATE TABLE t (x)")
        elsewhere.execute("INSERT INTO t VALUES (1)")
        assert elsewhere.in_transaction
        err(sqlite_queue.enqueue_in(elsewhere, "x"), ErrorKind.INVALID_INPUT)
        err(sqlite_queue.enqueue_in("not a connection", "x"), ErrorKind.INVALID_INPUT)
        err(sqlite_queue.enqueue_in(None, "x"), ErrorKind.INVALID_INPUT)
        elsewhere.commit()
    finally:
        idle.close()
        elsewhere.close()
    assert statuses(sqlite_queue) == {}


def test_glossary_words_mean_the_same_in_stats_listings_purge_and_dicts(
    make_queue: MakeQueue, clock: FakeClock
) -> None:
    """ready = can be dequeued now; delayed = not before a time; pending = both (0.1.0's
    word); depth = every live message. Stats, list_messages, purge, get_message and
    get_all_statuses all use the words that way."""
    queue = make_queue(table_name="words")
    leased = ok(queue.enqueue("leased"))
    later = ok(queue.enqueue("later", delay=600))
    doomed = ok(queue.enqueue("doomed"))
    first, second = ok(queue.dequeue_batch(3))  # later is not due yet
    assert (first.id, second.id) == (leased, doomed)
    ok(queue.fail_message(second, send_to_dlq=True, error="x"))
    ready = ok(queue.enqueue("ready"))

    stats = ok(queue.stats())
    assert (stats.ready, stats.delayed, stats.processing, stats.dead) == (1, 1, 1, 1)
    assert stats.pending == stats.ready + stats.delayed == 2
    assert stats.depth == 3
    assert stats.to_dict()["pending"] == 2 and stats.to_dict()["ready"] == 1
    assert ok(queue.get_all_statuses())["pending"] == 2

    def listed(state: str) -> dict[int, str]:
        return {row["id"]: row["status"] for row in ok(queue.list_messages(state))}

    assert listed("ready") == {ready: "ready"}
    assert listed("delayed") == {later: "delayed"}
    assert listed("pending") == {ready: "ready", later: "delayed"}
    assert ok(queue.get_message(ready))["status"] == "ready"
    assert ok(queue.get_message(later))["status"] == "delayed"
    assert ok(queue.get_message(leased))["status"] == "processing"

    (dead,) = ok(queue.list_messages("dead"))
    assert dead["enqueued_at"] == dead["created_at"]  # the glossary's key, and 0.1.0's

    assert ok(queue.purge("pending")) == 2  # ready and delayed, not the leased one
    assert {row["id"] for row in ok(queue.list_messages("all"))} == {leased}


def test_get_message_says_which_dedup_key_a_message_holds(make_queue: MakeQueue) -> None:
    """get_message() shows the deduplication key a message holds (None without one), while
    it is live and once dead-lettered."""
    queue = make_queue(table_name="keys", dedup_window=3600)
    keyed = ok(queue.enqueue("a", dedup_key="invoice-17"))
    plain = ok(queue.enqueue("b"))
    assert ok(queue.get_message(keyed))["dedup_key"] == "invoice-17"
    assert ok(queue.get_message(plain))["dedup_key"] is None
    message = ok(queue.dequeue())
    assert message.id == keyed
    ok(queue.fail_message(message, send_to_dlq=True, error="no"))
    found = ok(queue.get_message(keyed))
    assert (found["status"], found["dedup_key"]) == ("dead", "invoice-17")
