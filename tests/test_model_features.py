"""Model-based test of groups, dedup keys, time to live and completion.

A hypothesis state machine drives one SQLiteQueue (fake clock) and a plain Python model
of the documented semantics, and compares every answer: ids returned by enqueue (dedup
within the window, or while the message exists), which messages each dequeue delivers
(priority, then visibility time, then id; one message at a time per group; never one
past its time to live), statuses, stats counts (a message past its time to live where the
next dequeue puts it) and totals.

Leases are long (1000 s) and the clock moves at most 20 s a step (to the next ttl, retry
or dedup window end at most), so leases never run out here: expiry is by ttl only, and a leased message past its ttl stays leased. Expired
messages leave the queue when a dequeue (or recover_processing_messages) folds them, as
documented for expired leases.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import hypothesis.strategies as st
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from conftest import FakeClock
from helpers import message_statuses, ok
from sqqueue import Item, Message, SQLiteQueue

MAX_ATTEMPTS = 2
LEASE = 1000.0
STATES = ("ready", "delayed", "waiting", "processing", "dead")

groups = st.sampled_from([None, None, "a", "b"])
keys = st.sampled_from([None, None, "k1", "k2", "k3"])
ttls = st.sampled_from([None, None, 3.0, 8.0])
priorities = st.sampled_from([0, 0, 1])
items = st.tuples(priorities, groups, keys, ttls)
outcomes = st.sampled_from(["complete", "complete", "retry", "retry_later", "bury"])


@dataclass
class Model:
    id: int
    priority: int
    group: str | None
    visible_at: float
    expires_at: float | None
    attempts: int = 0
    message: Message | None = None  # set while leased


class FeatureMachine(RuleBasedStateMachine):
    """One queue (dedup window 5 s, 20 s or "exists"; expired messages dead or dropped)
    against the model: ``live`` messages by id, ``dead`` ids, remembered dedup keys."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="sqqueue-model-"))
        self.clock = FakeClock()
        self.queue: SQLiteQueue | None = None
        self.window: float | str = "exists"
        self.on_expire = "dead"
        self.live: dict[int, Model] = {}
        self.dead: dict[int, str] = {}  # id -> why
        self.dedup: dict[str, tuple[int, float]] = {}  # key -> (id, window end)
        self.next_id = 1
        self.totals = dict.fromkeys(
            ("enqueued", "completed", "failed", "dead_lettered", "ttl_expired"), 0
        )

    @initialize(
        window=st.sampled_from([5.0, 20.0, "exists"]), on_expire=st.sampled_from(["dead", "drop"])
    )
    def open_queue(self, window: float | str, on_expire: str) -> None:
        self.window = window
        self.on_expire = on_expire
        self.queue = SQLiteQueue(
            self.dir / "model.db",
            table_name="model",
            clock=self.clock,
            dedup_window=window,
            on_expire=on_expire,
            default_max_attempts=MAX_ATTEMPTS,
            default_visibility_timeout=LEASE,
            vacuum_threshold=7,  # maintenance (dedup key pruning) runs now and then
            default_ttl=None,
            retention=None,
            retention_max=None,
            max_depth=None,
        )

    def teardown(self) -> None:
        if self.queue is not None:
            self.queue.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def q(self) -> SQLiteQueue:
        assert self.queue is not None
        return self.queue

    # -- the model ---------------------------------------------------------------------

    def is_head(self, m: Model) -> bool:
        return m.group is None or m.id == min(
            x.id for x in self.live.values() if x.group == m.group
        )

    def status(self, m: Model) -> str:
        if m.message is not None:
            return "processing"
        if not self.is_head(m):
            return "waiting"
        return "delayed" if m.visible_at > self.clock() else "ready"

    def model_enqueue(
        self, priority: int, group: str | None, key: str | None, ttl: float | None
    ) -> int:
        now = self.clock()
        if key is not None and key in self.dedup:
            known, until = self.dedup[key]
            alive = known in self.live or known in self.dead
            if alive if self.window == "exists" else until > now:
                return known
        new = self.next_id
        self.next_id += 1
        expires = None if ttl is None else now + ttl
        self.live[new] = Model(new, priority, group, now, expires)
        if key is not None:
            window = 0.0 if self.window == "exists" else float(self.window)
            self.dedup[key] = (new, now + window)
        self.totals["enqueued"] += 1
        return new

    def fold(self) -> int:
        """Messages past their ttl leave the queue, unless leased (live leases only here)."""
        now = self.clock()
        gone = [
            m
            for m in self.live.values()
            if m.expires_at is not None and m.expires_at <= now and m.message is None
        ]
        for m in gone:
            del self.live[m.id]
            if self.on_expire == "dead":
                self.dead[m.id] = "ttl"
                self.totals["dead_lettered"] += 1
            self.totals["ttl_expired"] += 1
        return len(gone)

    def deliverable(self) -> list[Model]:
        now = self.clock()
        ready = [
            m
            for m in self.live.values()
            if m.message is None and self.is_head(m) and m.visible_at <= now
        ]
        return sorted(ready, key=lambda m: (-m.priority, m.visible_at, m.id))

    def leased(self) -> list[Model]:
        return sorted((m for m in self.live.values() if m.message is not None), key=lambda m: m.id)

    # -- rules -------------------------------------------------------------------------

    @rule(item=items)
    def enqueue(self, item: tuple[int, str | None, str | None, float | None]) -> None:
        priority, group, key, ttl = item
        expected = self.model_enqueue(priority, group, key, ttl)
        got = ok(self.q.enqueue({"n": expected}, priority, dedup_key=key, group=group, ttl=ttl))
        assert got == expected

    @rule(batch=st.lists(items, min_size=1, max_size=4))
    def enqueue_batch(self, batch: list[tuple[int, str | None, str | None, float | None]]) -> None:
        expected = [self.model_enqueue(*item) for item in batch]
        payloads = [
            Item({"n": n}, priority, dedup_key=key, group=group, ttl=ttl)
            for n, (priority, group, key, ttl) in zip(expected, batch, strict=True)
        ]
        assert ok(self.q.enqueue_batch(payloads)) == expected

    def take(self, size: int) -> list[Model]:
        """Dequeue (one, or a batch) and check the delivery against the model's choice."""
        self.fold()
        chosen = self.deliverable()[:size]
        if size == 1:
            one = ok(self.q.dequeue())
            got = [] if one is None else [one]
        else:
            got = ok(self.q.dequeue_batch(size))
        assert [m.id for m in got] == [m.id for m in chosen]
        for message, m in zip(got, chosen, strict=True):
            m.attempts += 1
            m.message = message
            assert message.payload == {"n": m.id}
            assert message.attempts == m.attempts
            assert message.group == m.group
            assert message.priority == m.priority
        return chosen

    def settle(self, m: Model, outcome: str) -> None:
        """Complete the leased message, or fail it: "retry" now, "retry_later" (2 s) or
        "bury" (straight to the dead letters)."""
        assert m.message is not None
        if outcome == "complete":
            ok(self.q.complete(m.message))
            del self.live[m.id]
            self.totals["completed"] += 1
            return
        delay = 2.0 if outcome == "retry_later" else 0.0
        to_dlq = outcome == "bury"
        ok(self.q.fail_message(m.message, send_to_dlq=to_dlq, error="boom", delay=delay))
        self.totals["failed"] += 1
        if to_dlq or m.attempts >= MAX_ATTEMPTS:
            del self.live[m.id]
            self.dead[m.id] = "failed"
            self.totals["dead_lettered"] += 1
        else:
            m.message = None
            m.visible_at = self.clock() + delay

    @rule(size=st.integers(min_value=1, max_value=3))
    def dequeue(self, size: int) -> None:
        self.take(size)

    @rule(
        size=st.integers(min_value=1, max_value=3),
        outcomes=st.lists(outcomes, min_size=3, max_size=3),
    )
    def work(self, size: int, outcomes: list[str]) -> None:
        """Dequeue and settle what was delivered, like a consumer."""
        for m, outcome in zip(self.take(size), outcomes, strict=False):
            self.settle(m, outcome)

    @precondition(lambda self: any(m.message is not None for m in self.live.values()))
    @rule(pick=st.integers(min_value=0, max_value=10), outcome=outcomes)
    def settle_one(self, pick: int, outcome: str) -> None:
        """Settle one of the messages leased earlier."""
        leased = self.leased()
        self.settle(leased[pick % len(leased)], outcome)

    @rule(seconds=st.sampled_from([0.5, 1.0, 2.5, 4.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @precondition(lambda self: bool(self.boundaries()))
    @rule(pick=st.integers(min_value=0, max_value=10))
    def advance_to_boundary(self, pick: int) -> None:
        """Move the clock exactly to a ttl or dedup window end: the edges are exact."""
        ahead = self.boundaries()
        self.clock.advance(ahead[pick % len(ahead)] - self.clock())

    def boundaries(self) -> list[float]:
        now = self.clock()
        times = {m.expires_at for m in self.live.values() if m.expires_at is not None}
        times |= {m.visible_at for m in self.live.values()}
        if self.window != "exists":
            times |= {until for _, until in self.dedup.values()}
        return sorted(t for t in times if t > now)

    @rule()
    def recover(self) -> None:
        assert ok(self.q.recover_processing_messages()) == self.fold()

    # -- invariants --------------------------------------------------------------------

    @invariant()
    def statuses_match(self) -> None:
        if self.queue is None:
            return
        expected = [(m.id, self.status(m), m.attempts) for m in self.live.values()]
        expected += [(i, "dead", None) for i in self.dead]
        got = [
            (r["id"], r["status"], None if r["status"] == "dead" else r["attempts"])
            for r in message_statuses(self.q)
        ]
        assert got == sorted(expected)

    @invariant()
    def stats_match(self) -> None:
        if self.queue is None:
            return
        stats = ok(self.q.stats())
        counts = dict.fromkeys(STATES, 0)
        now = self.clock()
        for m in self.live.values():
            # Past its ttl and not leased: where the next dequeue puts it (the messages
            # behind it in its group wait until then).
            if m.expires_at is not None and m.expires_at <= now and m.message is None:
                counts["dead"] += self.on_expire == "dead"
            else:
                counts[self.status(m)] += 1
        counts["dead"] += len(self.dead)
        assert {s: getattr(stats, s) for s in STATES} == counts
        statuses = ok(self.q.get_all_statuses())
        assert statuses == {
            "pending": counts["ready"] + counts["delayed"],
            "processing": counts["processing"],
            "waiting": counts["waiting"],
            "dead": counts["dead"],
        }
        assert stats.enqueued_total == self.totals["enqueued"]
        assert stats.completed_total == self.totals["completed"]
        assert stats.failed_total == self.totals["failed"]
        assert stats.dead_lettered_total == self.totals["dead_lettered"]
        assert stats.ttl_expired_total == self.totals["ttl_expired"]

    @invariant()
    def dead_letters_say_why(self) -> None:
        if self.queue is None or not self.dead:
            return
        for row in ok(self.q.get_dead_letters()):
            if self.dead[row["id"]] == "ttl":
                assert "time to live" in row["last_error"]
            else:
                assert row["last_error"] == "boom"


FeatureMachine.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
    # No shrinking: a failure prints its (unshrunk) steps at once instead of spending
    # minutes shrinking. Add Phase.shrink here for the shortest reproduction.
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)
TestFeatureModel = FeatureMachine.TestCase
