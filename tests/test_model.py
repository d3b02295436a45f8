"""Model-based test: the queue, on every backend, against a small in-memory model.

A hypothesis state machine drives two queue objects (two "consumers") on one database
(an SQLite file, or a PostgreSQL schema) with a fake clock, and checks every answer (ids,
delivery order, attempts, leases, late acks, dead letters, statuses) against a plain
Python model of the documented semantics. A few deterministic tests at the end pin the shortest reproductions of
divergences the state machine can find.
"""

from __future__ import annotations

import copy
import itertools
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from conftest import TEST_KEY, FakeClock, QueueTarget, drop_schema
from helpers import at, err, message_statuses, ok
from sqqueue import (
    CompletionError,
    EnqueueError,
    Err,
    ErrorKind,
    Message,
    Ok,
    Queue,
    QueueError,
    RequeueError,
)

pytestmark = pytest.mark.slow

# A fresh, empty database for one run of the state machine, and how to throw it away.
Database = Callable[[], tuple[QueueTarget, Callable[[], None]]]

TABLE = "jobs"
DEFAULT_MAX_ATTEMPTS = 2
DEFAULT_VISIBILITY = 4.0
CONSUMERS = 2
UNKNOWN_ID_BASE = 1_000_000

# Every duration below is a multiple of 0.5 s, so clock arithmetic in doubles is exact
# and "expired" (expiry <= now) / "visible" (visible_at <= now) have no rounding doubt.
priorities = st.integers(min_value=-1, max_value=2)
delays = st.sampled_from([0, 0, 0, 0.5, 1, 2, 3])
max_attempts_st = st.one_of(st.none(), st.integers(min_value=1, max_value=3))
timeouts = st.sampled_from([1, 2, 3, 5])
advances = st.sampled_from([0.5, 1, 1, 2, 3, 5, 11])
consumers = st.integers(min_value=0, max_value=CONSUMERS - 1)
payloads = st.one_of(
    st.text(max_size=6),
    st.binary(max_size=6),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.booleans(),
    st.none(),
    st.lists(st.integers(min_value=0, max_value=9), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(min_value=0, max_value=9), max_size=2),
)
errors = st.one_of(st.none(), st.sampled_from(["boom", "timeout", "bad input"]))


class _LeaseNote:
    """Stands for the library's own text about an expired lease (we only check the gist)."""

    def __repr__(self) -> str:
        return "<lease expired note>"


LEASE_NOTE = _LeaseNote()


@dataclass
class Rec:
    """The model's view of one message."""

    id: int
    payload: Any
    priority: int
    max_attempts: int
    created_at: float
    visible_at: float
    status: str = "pending"  # pending | processing | dead | completed
    attempts: int = 0
    token: int | None = None
    lease_expires_at: float | None = None
    last_error: str | _LeaseNote | None = None
    dead_at: float | None = None


def same_payload(actual: Any, expected: Any) -> bool:
    """Equal and of the same type (so True is not 1 and b"x" is not "x")."""
    if type(actual) is not type(expected):
        return False
    if isinstance(expected, dict):
        return actual.keys() == expected.keys() and all(
            same_payload(actual[k], v) for k, v in expected.items()
        )
    if isinstance(expected, list):
        return len(actual) == len(expected) and all(
            same_payload(a, e) for a, e in zip(actual, expected, strict=True)
        )
    return bool(actual == expected)


def error_matches(actual: str | None, expected: str | _LeaseNote | None) -> bool:
    if expected is LEASE_NOTE:
        return actual is not None and "lease expired" in actual.lower()
    return actual == expected


# What a call on one message finds, and the ErrorKind the user must see for it.
KIND_OF = {
    "not_found": ErrorKind.NOT_FOUND,
    "dead": ErrorKind.WRONG_STATE,
    "pending": ErrorKind.WRONG_STATE,
    "lease_lost": ErrorKind.LEASE_LOST,
    "lease_expired": ErrorKind.LEASE_EXPIRED,
}


class QueueMachine(RuleBasedStateMachine):
    """Two queue objects on one fresh database versus one model."""

    def __init__(self, database: Database) -> None:
        super().__init__()
        self.clock = FakeClock()
        target, self.discard = database()
        self.queues = [
            target.open(
                TABLE,
                default_max_attempts=DEFAULT_MAX_ATTEMPTS,
                default_visibility_timeout=DEFAULT_VISIBILITY,
                clock=self.clock,
            )
            for _ in range(CONSUMERS)
        ]
        self.msgs: dict[int, Rec] = {}
        self.next_id = 1
        # Per queue object: id -> lease token it remembered at dequeue (for bare-id acks).
        self.memory: list[dict[int, int]] = [{} for _ in range(CONSUMERS)]
        # Per queue object: the leases it ended itself (completed, failed, gave back), by
        # (id, token): the messages of one batch claim share their token.
        self.ended: list[set[tuple[int, int]]] = [set() for _ in range(CONSUMERS)]
        self.handles: list[Message] = []  # every Message ever delivered (live or stale)

    def teardown(self) -> None:
        for q in self.queues:
            q.close()
        self.discard()

    # -- model helpers -------------------------------------------------------------------

    @property
    def now(self) -> float:
        return self.clock()

    def live(self, rec: Rec) -> bool:
        return (
            rec.status == "processing"
            and rec.lease_expires_at is not None
            and rec.lease_expires_at > self.now
        )

    def fold(self, msgs: dict[int, Rec]) -> int:
        """Fold expired leases back (or bury them on their last attempt); return count."""
        now = self.now
        folded = 0
        for rec in msgs.values():
            if rec.status != "processing":
                continue
            assert rec.lease_expires_at is not None
            if rec.lease_expires_at > now:
                continue
            folded += 1
            if rec.attempts >= rec.max_attempts:
                rec.status, rec.dead_at = "dead", now
            else:
                rec.status, rec.visible_at = "pending", rec.lease_expires_at
            rec.token = rec.lease_expires_at = None
            rec.last_error = LEASE_NOTE
        return folded

    def ready(self, msgs: dict[int, Rec]) -> list[Rec]:
        """Pending and visible, in delivery order: priority desc, visible_at, id."""
        now = self.now
        ready = [r for r in msgs.values() if r.status == "pending" and r.visible_at <= now]
        return sorted(ready, key=lambda r: (-r.priority, r.visible_at, r.id))

    def find(self, message_id: int, token: int | None) -> str:
        """What a complete/fail/requeue/extend on (id, token) finds: 'live' or a refusal."""
        rec = self.msgs.get(message_id)
        if rec is None or rec.status == "completed":
            return "not_found"
        if rec.status == "dead":
            return "dead"
        if rec.status == "pending":
            # With a token the caller did hold it: its lease ran out and was folded back.
            return "pending" if token is None else "lease_expired"
        if self.live(rec) and (token is None or token == rec.token):
            return "live"
        if token is not None and token != rec.token:
            return "lease_lost"
        return "lease_expired"

    def kind_of(self, found: str, c: int, message_id: int, token: int | None) -> ErrorKind:
        """The ErrorKind of a refusal: a queue object that ended the lease itself says so,
        and the message back in the queue is WRONG_STATE for it, not an expired lease."""
        if found == "lease_expired" and token is not None and (message_id, token) in self.ended[c]:
            return ErrorKind.WRONG_STATE
        return KIND_OF[found]

    def end(self, c: int, message_id: int, token: int | None) -> None:
        """Queue object ``c`` ended the lease ``token`` on ``message_id`` itself."""
        self.memory[c].pop(message_id, None)
        if token is not None:
            self.ended[c].add((message_id, token))

    def add(
        self, payload: Any, priority: int | None, delay: float, max_attempts: int | None
    ) -> Rec:
        now = self.now
        rec = Rec(
            id=self.next_id,
            payload=payload,
            priority=0 if priority is None else priority,
            max_attempts=DEFAULT_MAX_ATTEMPTS if max_attempts is None else max_attempts,
            created_at=now,
            visible_at=now + delay,
        )
        self.msgs[rec.id] = rec
        self.next_id += 1
        return rec

    # -- checks on results -----------------------------------------------------------------

    @staticmethod
    def refused(result: Any, cls: type[QueueError], kind: ErrorKind, message_id: int) -> None:
        assert err(result, kind, cls=cls).message_id == message_id, result

    def check_delivery(self, msg: Message, rec: Rec, until: float) -> None:
        assert msg.id == rec.id
        assert same_payload(msg.payload, rec.payload), (msg.payload, rec.payload)
        assert msg.priority == rec.priority
        assert msg.attempts == rec.attempts
        assert msg.max_attempts == rec.max_attempts
        assert msg.enqueued_at == at(rec.created_at)
        assert msg.lease_expires_at == at(until)
        assert error_matches(msg.last_error, rec.last_error), (msg.last_error, rec.last_error)
        assert msg.queue == TABLE
        assert msg.lease_token is not None
        assert tuple(msg) == (rec.id, msg.payload)

    def draw_ref(
        self, data: st.DataObject, c: int | None = None
    ) -> tuple[Message | int, int, int, int | None]:
        """Pick what to act on: (ref, consumer, id, token the call will carry); the
        consumer is drawn too unless given."""
        if c is None:
            c = data.draw(consumers, label="consumer")
        kind = data.draw(st.sampled_from(["live", "handle", "id", "unknown"]), label="target")
        live = [h for h in self.handles if self.find(h.id, h.lease_token) == "live"]
        if kind == "live" and live:
            m = data.draw(st.sampled_from(live), label="live message")
            return m, c, m.id, m.lease_token
        if kind in ("live", "handle") and self.handles:
            m = data.draw(st.sampled_from(self.handles), label="message")
            return m, c, m.id, m.lease_token
        if kind in ("live", "handle", "id") and self.msgs:
            i = data.draw(st.sampled_from(sorted(self.msgs)), label="id")
            return i, c, i, self.memory[c].get(i)
        i = UNKNOWN_ID_BASE + data.draw(st.integers(0, 5), label="unknown id")
        return i, c, i, self.memory[c].get(i)

    # -- rules: producing --------------------------------------------------------------------

    @initialize(
        items=st.lists(
            st.tuples(payloads, st.one_of(st.none(), priorities), delays, max_attempts_st),
            min_size=1,
            max_size=6,
        )
    )
    def start_with_work(self, items: list[tuple[Any, int | None, float, int | None]]) -> None:
        """Every run starts with a few messages, so leases and retries happen early."""
        for payload, priority, delay, max_attempts in items:
            self.enqueue(0, payload, priority, delay, max_attempts)

    @rule(
        c=consumers,
        payload=payloads,
        priority=st.one_of(st.none(), priorities),
        delay=delays,
        max_attempts=max_attempts_st,
    )
    def enqueue(
        self, c: int, payload: Any, priority: int | None, delay: float, max_attempts: int | None
    ) -> None:
        result = self.queues[c].enqueue(
            payload, priority=priority, delay=delay, max_attempts=max_attempts
        )
        rec = self.add(payload, priority, delay, max_attempts)
        assert ok(result) == rec.id

    @rule(
        c=consumers,
        items=st.lists(
            st.tuples(
                payloads,
                st.integers(min_value=0, max_value=4),  # how many tuple parts to pass
                st.one_of(st.none(), priorities),
                delays,
                max_attempts_st,
            ),
            max_size=4,
        ),
        poison_at=st.one_of(st.none(), st.integers(min_value=0, max_value=4)),
    )
    def enqueue_batch(
        self, c: int, items: list[tuple[Any, int, Any, float, Any]], poison_at: int | None
    ) -> None:
        batch: list[Any] = []
        specs = []
        for payload, parts, priority, delay, attempts in items:
            full = (payload, priority, delay, attempts)
            if parts == 0:
                batch.append(payload)
                specs.append((payload, None, 0, None))
            else:
                batch.append(full[:parts])
                kept = full[:parts] + (None, 0, None)[parts - 1 :]
                specs.append(kept)
        if poison_at is not None:
            # A tuple payload cannot be serialised: the whole batch must be refused.
            batch.insert(min(poison_at, len(batch)), (("not", "json"),))
            result = self.queues[c].enqueue_batch(batch)
            assert isinstance(result, Err), result
            assert isinstance(result.error, EnqueueError)
            assert result.error.kind is ErrorKind.SERIALIZATION, result
            return  # nothing enqueued: the invariants check the database did not change
        result = self.queues[c].enqueue_batch(batch)
        ids = [self.add(p, prio, d or 0, a).id for p, prio, d, a in specs]
        assert ok(result) == ids

    # -- rules: consuming ----------------------------------------------------------------

    def _deliver(self, limit: int, timeout: float | None) -> list[Rec]:
        """Model a claim of up to ``limit`` messages; return the records in order."""
        self.fold(self.msgs)
        chosen = self.ready(self.msgs)[:limit]
        until = self.now + (DEFAULT_VISIBILITY if timeout is None else timeout)
        for rec in chosen:
            rec.status, rec.attempts, rec.lease_expires_at = "processing", rec.attempts + 1, until
        return chosen

    def _record(self, c: int, msgs: list[Message], recs: list[Rec], until: float) -> None:
        assert [m.id for m in msgs] == [r.id for r in recs], (msgs, recs)
        # A fresh lease gets a fresh token: no earlier handle may hold the new one.
        earlier = {h.lease_token for h in self.handles}
        assert not {m.lease_token for m in msgs} & earlier
        for m, rec in zip(msgs, recs, strict=True):
            self.check_delivery(m, rec, until)
            rec.token = m.lease_token
            assert m.lease_token is not None
            self.memory[c][m.id] = m.lease_token
            self.handles.append(m)

    @rule(c=consumers, timeout=st.one_of(st.none(), timeouts))
    def dequeue(self, c: int, timeout: float | None) -> None:
        live_before = {r.id for r in self.msgs.values() if self.live(r)}
        result = self.queues[c].dequeue(visibility_timeout=timeout)
        msg = ok(result)
        recs = self._deliver(1, timeout)
        if msg is not None:
            assert msg.id not in live_before, f"message {msg.id} leased twice"
        if not recs:
            assert msg is None, f"expected no message, got {msg!r}"
            return
        assert msg is not None, f"expected message {recs[0].id}, got none"
        until = self.now + (DEFAULT_VISIBILITY if timeout is None else timeout)
        self._record(c, [msg], recs, until)

    @rule(c=consumers, size=st.integers(min_value=1, max_value=4), timeout=timeouts)
    def dequeue_batch(self, c: int, size: int, timeout: float) -> None:
        live_before = {r.id for r in self.msgs.values() if self.live(r)}
        result = self.queues[c].dequeue_batch(batch_size=size, visibility_timeout=timeout)
        msgs = ok(result)
        assert isinstance(msgs, list)
        assert not {m.id for m in msgs} & live_before, "a live lease was handed out again"
        assert len({m.id for m in msgs}) == len(msgs), "one message twice in a batch"
        recs = self._deliver(size, timeout)
        self._record(c, msgs, recs, self.now + timeout)

    @rule(data=st.data())
    def complete(self, data: st.DataObject) -> None:
        ref, c, message_id, token = self.draw_ref(data)
        found = self.find(message_id, token)
        result = self.queues[c].complete(ref)
        if found != "live":
            self.refused(
                result, CompletionError, self.kind_of(found, c, message_id, token), message_id
            )
            return
        assert ok(result) is None
        rec = self.msgs[message_id]
        rec.status, rec.token, rec.lease_expires_at = "completed", None, None
        self.end(c, message_id, token)

    def batch(
        self, data: st.DataObject, call: str, cls: type[QueueError]
    ) -> list[tuple[int, int | None]] | None:
        """One consumer's ``call`` (complete_batch or release_batch) on up to four refs:
        all or none. The (id, token) pairs it ended, or None when it was refused."""
        c = data.draw(consumers, label="consumer")
        picks = [self.draw_ref(data, c) for _ in range(data.draw(st.integers(0, 4)))]
        result = getattr(self.queues[c], call)([ref for ref, _, _, _ in picks])
        found = [self.find(message_id, token) for _, _, message_id, token in picks]
        ids = [message_id for _, _, message_id, _ in picks]
        if all(f == "live" for f in found) and len(set(ids)) == len(ids):
            assert ok(result) == len(picks)
            for _, _, message_id, token in picks:
                self.end(c, message_id, token)
            return [(message_id, token) for _, _, message_id, token in picks]
        assert isinstance(result, Err) and isinstance(result.error, cls), result
        if len(set(ids)) == len(ids):
            # Named after the first it refused (ending one message does not change another).
            first = next(i for i, f in enumerate(found) if f != "live")
            _, _, message_id, token = picks[first]
            assert result.error.kind is self.kind_of(found[first], c, message_id, token), result
            assert result.error.message_id == message_id, result
        return None

    @rule(data=st.data())
    def complete_batch(self, data: st.DataObject) -> None:
        for message_id, _ in self.batch(data, "complete_batch", CompletionError) or []:
            rec = self.msgs[message_id]
            rec.status, rec.token, rec.lease_expires_at = "completed", None, None

    @rule(data=st.data())
    def release_batch(self, data: st.DataObject) -> None:
        for message_id, _ in self.batch(data, "release_batch", RequeueError) or []:
            rec = self.msgs[message_id]
            rec.status, rec.visible_at, rec.attempts = "pending", self.now, max(rec.attempts - 1, 0)
            rec.token = rec.lease_expires_at = None

    @rule(data=st.data(), send_to_dlq=st.booleans(), error=errors, delay=delays)
    def fail_message(
        self, data: st.DataObject, send_to_dlq: bool, error: str | None, delay: float
    ) -> None:
        ref, c, message_id, token = self.draw_ref(data)
        found = self.find(message_id, token)
        result = self.queues[c].fail_message(ref, send_to_dlq=send_to_dlq, error=error, delay=delay)
        if found == "pending" and send_to_dlq:
            found = "live"  # send_to_dlq also buries a pending message (no lease needed)
        if found != "live":
            self.refused(
                result, RequeueError, self.kind_of(found, c, message_id, token), message_id
            )
            return
        assert ok(result) is None
        rec = self.msgs[message_id]
        if error is not None:
            rec.last_error = error
        if send_to_dlq or rec.attempts >= rec.max_attempts:
            rec.status, rec.dead_at = "dead", self.now
        else:
            rec.status, rec.visible_at = "pending", self.now + delay
        rec.token = rec.lease_expires_at = None
        self.end(c, message_id, token)

    @rule(data=st.data())
    def requeue(self, data: st.DataObject) -> None:
        ref, c, message_id, token = self.draw_ref(data)
        found = self.find(message_id, token)
        result = self.queues[c].requeue(ref)
        if found != "live":
            self.refused(
                result, RequeueError, self.kind_of(found, c, message_id, token), message_id
            )
            return
        assert ok(result) is None
        rec = self.msgs[message_id]
        if rec.attempts >= rec.max_attempts:  # no attempt left: dead
            rec.status, rec.dead_at = "dead", self.now
            rec.last_error = (
                f"requeued with no attempt left ({rec.attempts} of {rec.attempts} used)"
            )
        else:
            rec.status, rec.visible_at = "pending", self.now
        rec.token = rec.lease_expires_at = None
        self.end(c, message_id, token)

    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        ref, c, message_id, token = self.draw_ref(data)
        found = self.find(message_id, token)
        result = self.queues[c].release(ref)
        if found != "live":
            self.refused(
                result, RequeueError, self.kind_of(found, c, message_id, token), message_id
            )
            return
        assert ok(result) is None
        rec = self.msgs[message_id]
        rec.status, rec.visible_at, rec.attempts = "pending", self.now, max(rec.attempts - 1, 0)
        rec.token = rec.lease_expires_at = None
        self.end(c, message_id, token)

    @rule(data=st.data(), seconds=timeouts)
    def extend(self, data: st.DataObject, seconds: float) -> None:
        ref, c, message_id, token = self.draw_ref(data)
        found = self.find(message_id, token)
        result = self.queues[c].extend(ref, seconds)
        if found != "live":
            self.refused(
                result, RequeueError, self.kind_of(found, c, message_id, token), message_id
            )
            return
        assert ok(result) == at(self.now + seconds)
        self.msgs[message_id].lease_expires_at = self.now + seconds

    @rule(seconds=advances)
    def advance_clock(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(data=st.data(), c=consumers)
    def reprocess_dead_letter(self, data: st.DataObject, c: int) -> None:
        dead = sorted(i for i, r in self.msgs.items() if r.status == "dead")
        others = sorted(i for i, r in self.msgs.items() if r.status != "dead")
        pool = st.sampled_from(dead) if dead else st.nothing()
        if others:
            pool = pool | st.sampled_from(others)
        message_id = data.draw(pool | st.just(UNKNOWN_ID_BASE), label="id")
        result = self.queues[c].reprocess_dead_letter(message_id)
        rec = self.msgs.get(message_id)
        if rec is None or rec.status != "dead":
            self.refused(result, RequeueError, ErrorKind.NOT_FOUND, message_id)
            return
        assert ok(result) is None
        rec.status, rec.visible_at, rec.attempts, rec.dead_at = "pending", self.now, 0, None

    @rule(c=consumers)
    def recover_processing_messages(self, c: int) -> None:
        result = self.queues[c].recover_processing_messages()
        assert ok(result) == self.fold(self.msgs)

    @rule(c=consumers)
    def peek(self, c: int) -> None:
        """peek() shows the next message without leasing it (the model is unchanged)."""
        msg = ok(self.queues[c].peek())
        # peek names what the next dequeue would deliver: expired leases count, as if
        # folded back, without changing anything.
        folded = copy.deepcopy(self.msgs)
        self.fold(folded)
        ready = self.ready(folded)
        assert (msg.id if msg is not None else None) == (ready[0].id if ready else None), (
            msg,
            ready[:1],
        )
        if msg is not None:
            assert same_payload(msg.payload, ready[0].payload)
            assert msg.attempts == ready[0].attempts

    # -- invariants -----------------------------------------------------------------------

    @invariant()
    def statuses_match(self) -> None:
        """Every enqueued id is in exactly one place, with the model's attributes."""
        rows = message_statuses(self.queues[0])
        ids = [r["id"] for r in rows]
        assert ids == sorted(set(ids)), f"duplicate or unsorted ids: {ids}"
        completed = {i for i, r in self.msgs.items() if r.status == "completed"}
        assert not set(ids) & completed, "a completed message came back"
        assert set(ids) | completed == set(range(1, self.next_id)), "a message was lost"
        expected = []
        for i in sorted(self.msgs):
            rec = self.msgs[i]
            if rec.status == "completed":
                continue
            status = rec.status
            if status == "pending":  # the model's word; the queue says which of the two
                status = "delayed" if rec.visible_at > self.now else "ready"
            expected.append(
                {
                    "id": i,
                    "status": status,
                    "priority": rec.priority,
                    "attempts": rec.attempts,
                    "max_attempts": rec.max_attempts,
                }
            )
        assert rows == expected

    @invariant()
    def dead_letters_match(self) -> None:
        letters = ok(self.queues[1].get_dead_letters())
        dead = sorted(
            (r for r in self.msgs.values() if r.status == "dead"),
            key=lambda r: (r.dead_at, r.id),
        )
        assert [d["id"] for d in letters] == [r.id for r in dead]
        for d, rec in zip(letters, dead, strict=True):
            assert rec.dead_at is not None
            assert d["status"] == "dead"
            assert same_payload(d["payload"], rec.payload), (d, rec)
            assert d["priority"] == rec.priority
            assert d["attempts"] == rec.attempts
            assert d["max_attempts"] == rec.max_attempts
            assert error_matches(d["last_error"], rec.last_error), (d["last_error"], rec)
            assert d["created_at"] == at(rec.created_at)
            assert d["dead_at"] == at(rec.dead_at)

    @invariant()
    def emptiness_matches(self) -> None:
        waiting = any(r.status in ("pending", "processing") for r in self.msgs.values())
        assert ok(self.queues[0].is_drained()) is (not waiting)


MODEL_SETTINGS = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    database=None,
    # Stop at the first divergence and skip the slow "explain" phase, so a failing run
    # stays well inside the suite's time budget.
    report_multiple_bugs=False,
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
    suppress_health_check=[HealthCheck.too_slow],
)


def test_queue_matches_model(backend: str, tmp_path: Path, request: Any) -> None:
    """Random sequences of calls by two consumers give exactly the model's answers."""
    runs = itertools.count()

    def database() -> tuple[QueueTarget, Callable[[], None]]:
        n = next(runs)
        if backend.startswith("sqlite"):
            directory = tmp_path / f"run-{n}"
            directory.mkdir()
            key = TEST_KEY if backend == "sqlite-encrypted" else None
            target = QueueTarget("sqlite", f"sqlite:///{directory / 'model.db'}", key=key)
            return target, lambda: shutil.rmtree(directory, ignore_errors=True)
        url, schema = request.getfixturevalue("pg_url"), request.getfixturevalue("pg_schema")
        target = QueueTarget("postgres", url, f"{schema}_run{n}")
        return target, lambda: drop_schema(url, str(target.schema))

    run_state_machine_as_test(lambda: QueueMachine(database), settings=MODEL_SETTINGS)


# --------------------------------------------------------------------------------------
# Shortest reproductions of what the state machine checks, as plain tests.
# --------------------------------------------------------------------------------------


MakeQueue = Callable[..., Queue]


def test_retried_late_ack_by_id_stays_fenced(make_queue: MakeQueue, clock: FakeClock) -> None:
    """A consumer whose lease was lost cannot, by retrying ``complete(id)``, delete the
    message another consumer now holds under a live lease."""
    a, b = make_queue(table_name=TABLE), make_queue(table_name=TABLE)
    try:
        message_id = a.enqueue("x").unwrap()
        assert a.dequeue(visibility_timeout=1).unwrap() is not None
        clock.advance(2)
        held = b.dequeue(visibility_timeout=100).unwrap()
        assert held is not None
        assert held.id == message_id
        for _ in range(2):  # the first late ack and its retry are both refused
            result = a.complete(message_id)
            assert isinstance(result, Err)
            assert result.error.kind is ErrorKind.LEASE_LOST
        assert b.complete(held) == Ok(None)
    finally:
        a.close()
        b.close()


def test_retried_expired_ack_by_id_stays_fenced(make_queue: MakeQueue, clock: FakeClock) -> None:
    """After ``complete(id)`` is refused as LEASE_EXPIRED, a retry after redelivery to
    another consumer is refused as LEASE_LOST, and that consumer's lease is intact."""
    a, b = make_queue(table_name=TABLE), make_queue(table_name=TABLE)
    try:
        message_id = a.enqueue("x").unwrap()
        assert a.dequeue(visibility_timeout=1).unwrap() is not None
        clock.advance(2)
        first = a.complete(message_id)
        assert isinstance(first, Err)
        assert first.error.kind is ErrorKind.LEASE_EXPIRED
        held = b.dequeue(visibility_timeout=100).unwrap()
        assert held is not None
        retry = a.fail_message(message_id, send_to_dlq=True)
        assert isinstance(retry, Err)
        assert retry.error.kind is ErrorKind.LEASE_LOST
        assert b.complete(held) == Ok(None)
        assert a.get_dead_letters() == Ok([])
    finally:
        a.close()
        b.close()


def test_peek_shows_what_dequeue_returns_after_an_expired_lease(
    make_queue: MakeQueue, clock: FakeClock
) -> None:
    """peek() names the message the next dequeue returns, expired leases included."""
    q = make_queue(table_name=TABLE)
    try:
        urgent = q.enqueue("urgent", priority=5).unwrap()
        q.enqueue("routine").unwrap()
        assert q.dequeue(visibility_timeout=1).unwrap().id == urgent
        clock.advance(2)
        peeked = q.peek().unwrap()
        taken = q.dequeue().unwrap()
        assert taken.id == urgent
        assert peeked is not None
        assert peeked.id == taken.id
    finally:
        q.close()
