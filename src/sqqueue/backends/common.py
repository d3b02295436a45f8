"""What the SQL backends share: every operation, written once, over each backend's SQL.

SQLite and PostgreSQL differ in their SQL text (kept in ``sqlite_sql.py`` and
``postgres_sql.py``), in how they connect and retry, and in a few steps that need the
database's own tools (claiming and folding under concurrency, deduplication races, large
payloads). Everything else, the state checks, fencing, dead-lettering and bookkeeping,
is here, over a small set of hooks. Both drivers take the same named parameters
(``{"id": 1, "now": ...}``) and return cursors with ``fetchone``/``fetchall``/``rowcount``.

Times: every statement computes its instants from ``now`` and durations (``now + lease``).
``now`` comes from :meth:`SQLBackend._now`, read inside the transaction, once the locks
are held: SQLite's statements use it as given; PostgreSQL's use the server's clock instead
(see ``postgres_sql``), so there ``now`` only matters to tests that pin the server's time.
"""

from __future__ import annotations

import logging
import math
import time
from abc import abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from ..exceptions import ErrorKind
from .base import (
    Backend,
    NewMessage,
    Outcome,
    StorageError,
    StoredDeadLetter,
    StoredDone,
    StoredMessage,
    peek_choice,
)

__all__ = ["TOTALS", "Refused", "SQLBackend"]

T = TypeVar("T")
Conn = Any  # sqlite3.Connection or psycopg.Connection

logger = logging.getLogger(__name__)

#: the event totals each operation may add to
TOTALS = ("enqueued", "completed", "failed", "dead_lettered", "expired", "ttl_expired")
#: seconds between a queue object's looks for stranded rows (see _repair_stranded)
STRANDED_LOOK_EVERY = 60.0


class Refused(Exception):
    """Ends a batch transaction (rolling it back) when one of its messages is refused."""

    def __init__(self, outcomes: list[Outcome]) -> None:
        super().__init__("a message of the batch was refused")
        self.outcomes = outcomes


class SQLBackend(Backend):
    """Operations shared by the SQL backends; subclasses supply connections and hooks."""

    _sql: dict[str, str]
    path: str  #: the database, for messages (a file path, or a URL without its password)
    #: whether ``_claim_rows`` returns rows in delivery order already (else they are sorted)
    _claims_in_order = False
    #: when (``time.monotonic()``) a claim next looks for stranded rows
    _stranded_look_at = -math.inf

    # -- hooks -----------------------------------------------------------------------------

    @abstractmethod
    def _write(self, fn: Callable[[Conn], T]) -> T:
        """Run ``fn`` in one write transaction (retrying as the backend sees fit)."""

    @abstractmethod
    def _read(self, fn: Callable[[Conn], T]) -> T:
        """Run ``fn`` on a connection, for reads."""

    @abstractmethod
    def _refuse_writes(self) -> None:
        """Raise READ_ONLY if this queue object was opened read-only."""

    def _read_tx(self, fn: Callable[[Conn], T]) -> T:
        """A read of several statements from one snapshot (default: a plain read)."""
        return self._read(fn)

    def _apply_upgrade(
        self, conn: Conn, steps: Sequence[str], set_version: str, old: int, new: int
    ) -> None:
        """Run the statements of a schema upgrade and record the queue's new version, in
        the caller's transaction."""
        for statement in steps:
            conn.execute(statement)
        conn.execute(set_version, (new, self.name))
        logger.info("upgraded queue %r in %s from schema %d to %d", self.name, self.path, old, new)

    @abstractmethod
    def _message(self, row: Sequence[Any]) -> StoredMessage: ...

    @abstractmethod
    def _dead(self, row: Sequence[Any]) -> StoredDeadLetter: ...

    @abstractmethod
    def _done(self, row: Sequence[Any]) -> StoredDone: ...

    @abstractmethod
    def _now(self) -> float | None:
        """The time for the statements about to run, read once the transaction holds its
        locks (PostgreSQL: None, unless a test pins the server's time)."""

    def _before_fold(self, conn: Conn, params: dict[str, Any]) -> None:
        """Put right what must be before expired leases are looked for (default: nothing)."""

    def _lock_expired(self, conn: Conn, params: dict[str, Any]) -> bool:
        """Take the expired rows for this fold; False when another fold has them (default:
        the transaction's write lock holds them already)."""
        return True

    def _fold_expired(self, conn: Conn, now: float | None) -> int:
        """Expired leases back to pending (or dead), messages past their TTL out."""
        params: dict[str, Any] = {"now": now}
        self._before_fold(conn, params)
        if not self._one(conn, "any_expired", params)[0]:
            return 0
        conn.execute(self._sql["lease_repair"], params)
        if not self._lock_expired(conn, params):
            return 0
        if self.policy.expired_to_dlq:
            conn.execute(self._sql["ttl_bury"], params)
        ttl = conn.execute(self._sql["ttl_delete"], params).rowcount
        conn.execute(self._sql["lease_bury"], params)
        dead = conn.execute(self._sql["lease_delete_dead"], params).rowcount
        back = conn.execute(self._sql["lease_return"], params).rowcount
        buried_ttl = ttl if self.policy.expired_to_dlq else 0
        self._bump(conn, expired=dead + back, dead_lettered=dead + buried_ttl, ttl_expired=ttl)
        if back:
            self._notify(conn)
        if dead or ttl:
            logger.info(
                "queue %r: %d expired lease(s) dead-lettered, %d message(s) past their "
                "time to live %s",
                self.name,
                dead,
                ttl,
                "dead-lettered" if self.policy.expired_to_dlq else "dropped",
            )
        return int(dead + back + ttl)

    def _repair_stranded(self) -> bool:
        """Put right the rows edited by hand that no claim would ever take (see
        "any_stranded"): a stranded waiting row becomes pending, an impossible visibility
        time now; whether any was. A claim that found nothing calls it: the look passes
        over the table, so it is made when the queue has nothing to serve, and at most
        once a minute (a read: the write lock is taken only when there is a repair)."""
        looked = time.monotonic()
        if looked < self._stranded_look_at:
            return False
        self._stranded_look_at = looked + STRANDED_LOOK_EVERY
        if not self._read(lambda conn: self._one(conn, "any_stranded", {"now": self._now()})[0]):
            return False

        def run(conn: Conn) -> tuple[int, int]:
            params = {"now": self._now()}
            waiting = conn.execute(self._sql["stranded_repair"], params).rowcount
            hidden = conn.execute(self._sql["visibility_repair"], params).rowcount
            if waiting or hidden:
                self._notify(conn)
            return waiting, hidden

        waiting, hidden = self._write(run)
        if waiting or hidden:
            logger.warning(
                "queue %r: rows edited by hand put right: %d waiting message(s) with no "
                "message of their group ahead made pending, %d message(s) with an impossible "
                "visibility time made visible now",
                self.name,
                waiting,
                hidden,
            )
        return bool(waiting or hidden)

    def _claim_rows(self, conn: Conn, params: dict[str, Any]) -> list[Any]:
        """Claim up to ``params["limit"]`` ready messages; their rows as claimed."""
        rows: list[Any] = conn.execute(self._sql["claim"], params).fetchall()
        return rows

    def _extend_rows(
        self, conn: Conn, refs: Sequence[tuple[int, int | None]], seconds: float
    ) -> list[Any]:
        """Extend the live leases of ``refs`` in one statement; the (id, lease token, new
        expiry) rows of those extended."""
        params = {
            "ids": [message_id for message_id, _ in refs],
            "tokens": [token for _, token in refs],
            "lease": seconds,
            "now": self._now(),
        }
        rows: list[Any] = conn.execute(self._sql["extend_many"], params).fetchall()
        return rows

    def _with_bodies(self, conn: Conn, rows: list[Any]) -> list[Any]:
        """Fill in payloads stored apart from their rows (default: none are)."""
        return rows

    def _store_text(self, text: str | None) -> str | None:
        """An error text as the database can hold it (default: as it is)."""
        return text

    def _notify(self, conn: Conn) -> None:
        """Tell waiting consumers elsewhere, at commit (default: they poll)."""

    #: a payload this large or larger is stored apart from its row (default: never)
    large_payload: float = math.inf
    #: a plain batch is one statement too (else: several, in a transaction)
    plain_batch_alone = False
    #: the plain inserts store signatures too (else signed messages take the checked one)
    plain_signatures = True

    @abstractmethod
    def _run_insert(
        self,
        started: float | None,
        insert: Callable[[Conn, Sequence[NewMessage]], list[int]],
        messages: Sequence[NewMessage],
        alone: bool,
    ) -> list[int]:
        """Run ``insert(conn, messages)`` as one write transaction, retried as the
        backend does; ``alone``: it is one statement, its own transaction (autocommit).
        The lock timeout counts from ``started`` if given."""

    @abstractmethod
    def _insert_plain(self, conn: Conn, messages: Sequence[NewMessage]) -> list[int]:
        """Insert messages that need nothing but their rows (see ``_plain``)."""

    def _lock_insert(self, conn: Conn, messages: Sequence[NewMessage]) -> None:
        """Take the locks a checked insert needs (default: the write lock is enough)."""

    @abstractmethod
    def _take_key(self, conn: Conn, key: str, now: float | None) -> tuple[int | None, int | None]:
        """Look a dedup key up for a new message: (the id of the live message holding
        it, None), or (None, the id reserved for the new message if the backend took the
        key already, else None)."""

    def _early_id(self, conn: Conn) -> int | None:
        """An id for a message without a dedup key, taken while the keys of its batch are
        (default None: the insert gives it). A backend whose ``_take_key`` takes ids
        takes the others here too, so that a batch's ids follow its order."""
        return None

    @abstractmethod
    def _insert_row(
        self, conn: Conn, message: NewMessage, reserved: int | None, now: float | None
    ) -> int:
        """Insert one message of a checked insert (with ``reserved`` as its id if given,
        and its dedup key recorded if the backend did not take it already); its id."""

    def _lock_group(self, conn: Conn, group: str | None) -> None:
        """Serialize work on one message group (default: the write lock already does)."""

    def _reserve_ids(self, conn: Conn, high: int) -> None:
        """Make sure ids up to ``high`` are never handed out (rows arrive with them)."""

    @abstractmethod
    def _count_revived(self, conn: Conn) -> None:
        """Count a dead letter back in the queue, with its id (not a new enqueue)."""

    @abstractmethod
    def _count_imported(self, conn: Conn, messages: int, dead: int) -> None:
        """Count rows that arrived with their ids (a copy): each one an enqueue."""

    # -- helpers -------------------------------------------------------------------------

    def _known(self, row: Any, supported: int) -> int | None:
        """The queue's schema version from its registry row (None: there is none, the
        queue does not exist); raise if it is newer than this sqqueue understands."""
        if row is None:
            return None
        if type(row[0]) is not int:  # (edited by hand)
            raise StorageError(
                f"queue {self.name!r} in {self.path!r} has schema version {row[0]!r} in the "
                "sqqueue_queues table, which is not a version number; set it back to the "
                f"number it was (at most {supported}) or restore the file from a backup",
                ErrorKind.CORRUPT,
            )
        if row[0] > supported:
            raise StorageError(
                f"queue {self.name!r} in {self.path!r} has schema version {row[0]}, newer "
                f"than this sqqueue understands ({supported}); upgrade sqqueue",
                ErrorKind.STORAGE,
            )
        return int(row[0])

    def _one(self, conn: Conn, key: str, params: Any = None) -> Any:
        return conn.execute(self._sql[key], params or {}).fetchone()

    def _bump(self, conn: Conn, **counts: int) -> None:
        """Add to the queue's event totals, in the caller's transaction."""
        params = dict.fromkeys(TOTALS, 0)
        params.update(counts)
        conn.execute(self._sql["bump"], params)

    def _check_depth(self, conn: Conn, fresh: int) -> None:
        """Refuse ``fresh`` new messages past the policy's max depth (QUEUE_FULL)."""
        limit = self.policy.max_depth
        if limit is None or not fresh:
            return
        depth = int(self._one(conn, "depth")[0])
        if depth + fresh > limit:
            raise StorageError(
                f"queue {self.name!r} is full: {depth} messages, the limit is {limit}; "
                "nothing was enqueued",
                ErrorKind.QUEUE_FULL,
            )

    def _diagnose(self, conn: Conn, message_id: int, token: int | None) -> Outcome:
        row = self._one(conn, "state", {"id": message_id})
        if row is None:
            found = self._one(conn, "in_dlq", {"id": message_id})
            return Outcome.DEAD if found else Outcome.NOT_FOUND
        status, lease_token = row
        if status != "processing":
            # With a token the caller did hold it: its lease ran out and was folded back.
            return Outcome.PENDING if token is None else Outcome.LEASE_EXPIRED
        if token is not None and lease_token != token:
            return Outcome.LEASE_LOST
        return Outcome.LEASE_EXPIRED

    def _bury(self, conn: Conn, message_id: int, now: float | None, error: str | None) -> None:
        params = {"id": message_id, "now": now, "error": self._store_text(error)}
        conn.execute(self._sql["bury"], params)
        conn.execute(self._sql["delete"], {"id": message_id})

    # -- operations ----------------------------------------------------------------------

    def enqueue(self, messages: Sequence[NewMessage], started: float | None = None) -> list[int]:
        if self.read_only:
            self._refuse_writes()
        if self._plain(messages):
            # The common case. One statement is a transaction of its own (autocommit): no
            # BEGIN and COMMIT around it.
            alone = len(messages) == 1 or self.plain_batch_alone
            return self._run_insert(started, self._insert_plain, messages, alone)
        return self._run_insert(started, self._insert_checked, messages, False)

    def _insert(self, conn: Conn, messages: Sequence[NewMessage]) -> list[int]:
        """Insert inside a transaction already open (the outbox's, the caller's own)."""
        if self._plain(messages):
            return self._insert_plain(conn, messages)
        return self._insert_checked(conn, messages)

    def _plain(self, messages: Sequence[NewMessage]) -> bool:
        """Whether the messages need nothing but their rows: no dedup key, group, body
        stored apart, depth limit to check, nor a signature where the plain statements
        store none."""
        if self.policy.max_depth is not None:
            return False
        large, signatures = self.large_payload, self.plain_signatures
        for m in messages:
            if m.dedup_key is not None or m.group_key is not None or len(m.data) >= large:
                return False
            if m.signature is not None and not signatures:
                return False
        return True

    def _key_alive(self, conn: Conn, holder: int, expires: bool, fresh: bool) -> bool:
        """Whether the message ``holder`` still holds its dedup key: while the key's
        window lasts (``fresh``) when it has one, else while the message is in the queue."""
        if expires:
            return fresh
        return bool(self._one(conn, "exists", {"id": holder})[0])

    def _insert_checked(self, conn: Conn, messages: Sequence[NewMessage]) -> list[int]:
        """Insert with what a plain insert skips: dedup keys, groups, the depth limit.
        Duplicates are decided first (of stored messages, or of earlier items), so that
        the depth limit counts only what is really added."""
        now = self._now()
        self._lock_insert(conn, messages)
        holders: dict[int, int] = {}  # item -> the live message that holds its key
        same_as: dict[int, int] = {}  # item -> the earlier item with its key
        reserved: dict[int, int] = {}  # item -> the id taken with its key
        first_with: dict[str, int] = {}
        keyed = any(m.dedup_key is not None for m in messages)
        for index, message in enumerate(messages):
            key = message.dedup_key
            if key is None:
                # Ids follow the batch's order (a group's messages are delivered by id):
                # where taking a key takes an id, the other items take theirs in turn.
                early = self._early_id(conn) if keyed else None
                if early is not None:
                    reserved[index] = early
                continue
            if key in first_with:
                same_as[index] = first_with[key]
                continue
            holder, taken = self._take_key(conn, key, now)
            if holder is not None:
                holders[index] = holder
                continue
            first_with[key] = index
            if taken is not None:
                reserved[index] = taken
        fresh = len(messages) - len(holders) - len(same_as)
        self._check_depth(conn, fresh)
        ids: list[int] = []
        for index, message in enumerate(messages):
            if index in same_as:
                ids.append(ids[same_as[index]])
            elif index in holders:
                ids.append(holders[index])
            else:
                ids.append(self._insert_row(conn, message, reserved.get(index), now))
        if fresh:
            self._notify(conn)
        return ids

    def _claim_batch(
        self, limit: int, lease: float, token: int
    ) -> tuple[list[StoredMessage], int] | None:
        """Claim in the backend's own way (a batch, say): the rows as claimed and how many
        leases were folded back first; None to claim the common way (the default)."""
        return None

    def _claim_alone(self, limit: int, lease: float, token: int) -> list[StoredMessage] | None:
        """Claim in one statement of its own, when nothing needs folding first; None when
        something does, or the backend has no such statement (the default)."""
        return None

    def _complete_alone(self, message_id: int, token: int | None) -> bool:
        """Complete one message (no history kept) in one statement of its own; False when
        it was not done so (not held, or no such statement: the default)."""
        return False

    def _complete_all(self, refs: Sequence[tuple[int, int | None]]) -> bool:
        """Complete distinct messages (no history kept) together, all or none, in fewer
        statements than one each; False when nothing was changed (one was not held, or
        the backend has no such way: the default)."""
        return False

    def claim(self, limit: int, lease: float, token: int) -> tuple[list[StoredMessage], int]:
        messages, folded = self._claim(limit, lease, token)
        # Nothing to take: rows edited by hand that no claim would ever take are looked
        # for then (see _repair_stranded), not while the queue serves.
        if not messages and self._repair_stranded():
            messages, more = self._claim(limit, lease, token)
            folded += more
        return messages, folded

    def _claim(self, limit: int, lease: float, token: int) -> tuple[list[StoredMessage], int]:
        """Lease up to ``limit`` ready messages (after folding back expired leases): the
        rows as claimed, and how many leases were folded."""
        batch = self._claim_batch(limit, lease, token)
        if batch is not None:
            return batch
        claimed = self._claim_alone(limit, lease, token)
        if claimed is not None:
            claimed.sort(key=lambda m: (-m.priority, m.visible_at, m.id))
            return claimed, 0

        def run(conn: Conn) -> tuple[list[StoredMessage], int]:
            now = self._now()
            folded = self._fold_expired(conn, now)
            params = {"now": now, "lease": lease, "token": token, "limit": limit}
            rows = self._claim_rows(conn, params)
            return self._with_bodies(conn, [self._message(r) for r in rows]), folded

        messages, folded = self._write(run)
        if len(messages) > 1 and not self._claims_in_order:
            messages.sort(key=lambda m: (-m.priority, m.visible_at, m.id))
        return messages, folded

    def _complete_one(
        self,
        conn: Conn,
        message_id: int,
        token: int | None,
        now: float | None,
        result: str | None = None,
    ) -> Outcome:
        params = {"id": message_id, "token": token, "now": now, "result": result}
        keep = self.policy.keeps_history
        if keep and not conn.execute(self._sql["keep_done"], params).rowcount:
            return self._diagnose(conn, message_id, token)
        if conn.execute(self._sql["complete"], params).rowcount:
            return Outcome.DONE
        return self._diagnose(conn, message_id, token)

    def complete(self, message_id: int, token: int | None, result: str | None = None) -> Outcome:
        if not self.policy.keeps_history and self._complete_alone(message_id, token):
            return Outcome.DONE

        def run(conn: Conn) -> Outcome:
            outcome = self._complete_one(conn, message_id, token, self._now(), result)
            if outcome is Outcome.DONE:
                self._bump(conn, completed=1)
            return outcome

        return self._write(run)

    def _all_or_none(
        self,
        refs: Sequence[tuple[int, int | None]],
        one: Callable[[Conn, int, int | None, float | None], Outcome],
        after: Callable[[Conn, int], None],
    ) -> list[Outcome]:
        """Run ``one`` for each (id, token) in one transaction, then ``after`` with their
        count; if any is refused, nothing changes (rolled back). Each one's outcome."""

        def run(conn: Conn) -> list[Outcome]:
            now = self._now()
            outcomes = [one(conn, mid, token, now) for mid, token in refs]
            if any(o is not Outcome.DONE for o in outcomes):
                raise Refused(outcomes)  # rolls the whole batch back
            after(conn, len(outcomes))
            return outcomes

        try:
            return self._write(run)
        except Refused as refused:
            return refused.outcomes

    def complete_many(self, refs: Sequence[tuple[int, int | None]]) -> list[Outcome]:
        # Together where the backend can; else (or when one is refused) one by one, which
        # finds out why.
        distinct = len({message_id for message_id, _ in refs}) == len(refs)
        if distinct and not self.policy.keeps_history and self._complete_all(refs):
            return [Outcome.DONE] * len(refs)
        return self._all_or_none(
            refs, self._complete_one, lambda conn, n: self._bump(conn, completed=n)
        )

    def _release_one(
        self,
        conn: Conn,
        message_id: int,
        token: int | None,
        now: float | None,
        delay: float = 0.0,
        error: str | None = None,
        refund_attempt: bool = True,
    ) -> Outcome:
        params = {
            "id": message_id,
            "token": token,
            "now": now,
            "delay": delay,
            "error": self._store_text(error),
            "refund": 1 if refund_attempt else 0,
        }
        if conn.execute(self._sql["release"], params).rowcount:
            return Outcome.DONE
        return self._diagnose(conn, message_id, token)

    def release(
        self,
        message_id: int,
        token: int | None,
        delay: float,
        error: str | None,
        refund_attempt: bool,
    ) -> tuple[Outcome, bool]:
        def run(conn: Conn) -> tuple[Outcome, bool]:
            now = self._now()
            if not refund_attempt:
                # Given back with no attempt left: dead, as 0.1.0's next dequeue made it
                # (else it would be delivered again past its max_attempts, forever).
                live = {"id": message_id, "token": token, "now": now}
                row = self._one(conn, "attempts_if_live", live)
                if row is not None and row[0] >= row[1]:
                    why = f"requeued with no attempt left ({row[0]} of {row[1]} used)"
                    self._bury(conn, message_id, now, error or why)
                    self._bump(conn, dead_lettered=1)
                    return Outcome.DONE, True
            outcome = self._release_one(conn, message_id, token, now, delay, error, refund_attempt)
            if outcome is Outcome.DONE:
                self._notify(conn)
            return outcome, False

        return self._write(run)

    def release_many(self, refs: Sequence[tuple[int, int | None]]) -> list[Outcome]:
        return self._all_or_none(refs, self._release_one, lambda conn, _n: self._notify(conn))

    def fail(
        self,
        message_id: int,
        token: int | None,
        error: str | None,
        retry_after: Callable[[int], float],
        force_dead: bool,
    ) -> tuple[Outcome, bool]:
        def run(conn: Conn) -> tuple[Outcome, bool]:
            now = self._now()
            live = {"id": message_id, "token": token, "now": now}
            row = self._one(conn, "attempts_if_live", live)
            if row is None:
                outcome = self._diagnose(conn, message_id, token)
                if outcome is Outcome.PENDING and force_dead and token is None:
                    self._bury(conn, message_id, now, error)
                    self._bump(conn, failed=1, dead_lettered=1)
                    return Outcome.DONE, True
                return outcome, False
            attempts, max_attempts = row
            if force_dead or attempts >= max_attempts:
                self._bury(conn, message_id, now, error)
                self._bump(conn, failed=1, dead_lettered=1)
                return Outcome.DONE, True
            retry = {
                **live,
                "delay": retry_after(attempts),
                "error": self._store_text(error),
            }
            conn.execute(self._sql["release"], {**retry, "refund": 0})
            self._bump(conn, failed=1)
            self._notify(conn)
            return Outcome.DONE, False

        return self._write(run)

    def extend(
        self, message_id: int, token: int | None, seconds: float
    ) -> tuple[Outcome, float | None]:
        params = {"id": message_id, "token": token, "lease": seconds}

        def run(conn: Conn) -> tuple[Outcome, float | None]:
            row = self._one(conn, "extend", {**params, "now": self._now()})
            if row is not None:
                return Outcome.DONE, float(row[0])
            return self._diagnose(conn, message_id, token), None

        return self._write(run)

    def extend_many(
        self, refs: Sequence[tuple[int, int | None]], seconds: float
    ) -> list[tuple[Outcome, float | None]]:
        def run(conn: Conn) -> list[tuple[Outcome, float | None]]:
            rows = self._extend_rows(conn, refs, seconds)
            extended = {int(mid): (token, float(until)) for mid, token, until in rows}
            outcomes: list[tuple[Outcome, float | None]] = []
            for message_id, token in refs:
                found = extended.get(message_id)
                if found is not None and (token is None or found[0] == token):
                    outcomes.append((Outcome.DONE, found[1]))
                else:
                    # Refusals are rare: asking why, message by message, costs nothing
                    # when every lease was extended.
                    outcomes.append((self._diagnose(conn, message_id, token), None))
            return outcomes

        return self._write(run)

    def lease_of(self, message_id: int) -> tuple[str, int | None] | None:
        row = self._read(lambda conn: self._one(conn, "state", {"id": message_id}))
        return None if row is None else (row[0], row[1])

    def peek(self) -> StoredMessage | None:
        def run(conn: Conn) -> StoredMessage | None:
            now = {"now": self._now()}
            ready = self._one(conn, "peek", now)
            expired = self._one(conn, "peek_expired", now)
            chosen = peek_choice(
                None if ready is None else self._message(ready),
                None if expired is None else self._message(expired),
            )
            return None if chosen is None else self._with_bodies(conn, [chosen])[0]

        return self._read_tx(run)

    def is_drained(self) -> bool:
        return bool(self._read(lambda conn: self._one(conn, "is_drained")[0]))

    def count_unleased(self) -> int:
        return int(self._read(lambda conn: self._one(conn, "count_unleased")[0]))

    def next_due(self) -> float | None:
        row = self._read(lambda conn: self._one(conn, "next_due", {"now": self._now()}))
        due = None if row is None else row[0]
        # A time edited into nonsense by hand (text, NaN, infinite) is no wake-up time;
        # waiters still notice other commits, and a claim repairs what it can.
        if not isinstance(due, (int, float)) or not math.isfinite(due):
            return None
        return float(due)

    def recover(self) -> int:
        return self._write(lambda conn: self._fold_expired(conn, self._now()))

    def dead_letters(self) -> list[StoredDeadLetter]:
        def run(conn: Conn) -> list[StoredDeadLetter]:
            rows = conn.execute(self._sql["dead_letters"]).fetchall()
            return self._with_bodies(conn, [self._dead(r) for r in rows])

        return self._read_tx(run)

    def _revive_one(self, conn: Conn, message_id: int, now: float | None) -> bool:
        params = {"id": message_id, "now": now}
        found = self._one(conn, "dead_group", params)
        if found is None:
            return False
        self._lock_group(conn, found[0])
        conn.execute(self._sql["revive"], params)
        conn.execute(self._sql["delete_dead"], params)
        self._count_revived(conn)
        return True

    def revive(self, message_id: int) -> bool:
        def run(conn: Conn) -> bool:
            if not self._revive_one(conn, message_id, self._now()):
                return False
            self._notify(conn)
            return True

        return self._write(run)

    @abstractmethod
    def _other(self, target: str) -> Any:
        """The rendered statements of another queue in the same database."""

    @abstractmethod
    def _redrive_into(self, other: Any) -> str:
        """The statement moving one of our dead letters into queue ``other``."""

    def redrive(
        self, ids: Sequence[int] | None, target: str | None, limit: int, after: int
    ) -> tuple[list[int], list[int]]:
        other = None if target is None or target == self.name else self._other(target)

        def run(conn: Conn) -> tuple[list[int], list[int]]:
            now = self._now()
            if ids is None:
                found = conn.execute(self._sql["dead_ids"], {"after": after, "limit": limit})
                chosen = [int(r[0]) for r in found.fetchall()]
            else:
                chosen = list(ids[:limit])
            if other is not None and self._one(conn, "queue_exists", {"name": target}) is None:
                raise StorageError(
                    f"no queue named {target!r} in {self.path!r}; open it once to create it",
                    ErrorKind.NOT_FOUND,
                )
            moved: list[int] = []
            missing: list[int] = []
            for message_id in chosen:
                if other is None:
                    done = self._revive_one(conn, message_id, now)
                else:
                    params = {"id": message_id, "now": now}
                    done = bool(conn.execute(self._redrive_into(other), params).rowcount)
                    if done:
                        conn.execute(self._sql["delete_dead"], params)
                (moved if done else missing).append(message_id)
            # Moved into another queue with that queue's next ids: counted as its enqueues
            # like any other (SQLite: as fresh ids; PostgreSQL: by its trigger).
            if moved and other is not None:
                if "notify" in other.sql:
                    conn.execute(other.sql["notify"])
            elif moved:
                self._notify(conn)
            return moved, missing

        return self._write(run)

    def delete_dead(self, ids: Sequence[int]) -> int:
        def run(conn: Conn) -> int:
            return sum(conn.execute(self._sql["delete_dead"], {"id": i}).rowcount for i in ids)

        return self._write(run)

    # -- copying whole tables (copy between databases, salvage) ---------------------------

    @abstractmethod
    def _copy_columns(self, table: str) -> list[str]:
        """The columns of one of the copy tables ("messages", "dead", "done", "dedup") as
        the database has them, the stored payload as one ``payload`` column."""

    @abstractmethod
    def _export(
        self, conn: Conn, table: str, after: Any, limit: int, exact: bool = False
    ) -> list[dict[str, Any]]:
        """A page of ``table`` (see ``export_rows``), read on ``conn`` (``exact``: the row
        whose key is ``after``)."""

    @abstractmethod
    def _import_one(self, conn: Conn, table: str, row: dict[str, Any]) -> None:
        """Insert one row of ``table`` as exported (``payload`` stored the backend's way)."""

    def export_rows(self, table: str, after: Any, limit: int) -> list[dict[str, Any]]:
        self._copy_columns(table)  # read (and kept) before the export's transaction
        return self._read_tx(lambda conn: self._export(conn, table, after, limit))

    def export_row(self, table: str, key: Any) -> dict[str, Any] | None:
        self._copy_columns(table)
        rows = self._read_tx(lambda conn: self._export(conn, table, key, 1, exact=True))
        return rows[0] if rows else None

    def import_rows(self, table: str, rows: Sequence[dict[str, Any]]) -> None:
        if not rows:
            return
        own = set(self._copy_columns(table))
        extra = sorted({column for row in rows for column in row} - own)
        if extra:
            raise StorageError(
                f"cannot copy into queue {self.name!r} in {self.path!r}: its {table} table "
                f"has no column {', '.join(map(repr, extra))}; upgrade sqqueue where the "
                "target is opened (nothing was copied)",
                ErrorKind.STORAGE,
            )

        def run(conn: Conn) -> None:
            if table != "dedup":
                # Every id copied stays taken: the target never hands it out again.
                self._reserve_ids(conn, max(int(row["id"]) for row in rows))
            for row in rows:
                self._import_one(conn, table, row)
            if table == "messages":
                self._count_imported(conn, len(rows), 0)
                self._notify(conn)
            elif table == "dead":
                self._count_imported(conn, 0, len(rows))

        self._write(run)

    def status_counts(self) -> dict[str, int]:
        def run(conn: Conn) -> tuple[Any, Any]:
            return self._one(conn, "counters"), self._one(conn, "waiting")[0]

        counters, waiting = self._read_tx(run)
        unleased, processing, dead = (int(n) for n in counters[:3])
        return {
            "pending": unleased - int(waiting),
            "processing": processing,
            "waiting": int(waiting),
            "dead": dead,
        }

    def settled_counts(self) -> dict[str, int]:
        def run(conn: Conn) -> dict[str, Any]:
            return self._settled(conn, self._now(), 0)

        found = self._read_tx(run)
        return {key: found[key] for key in ("pending", "processing", "waiting", "dead")}

    def _settled(self, conn: Conn, now: float | None, horizon: float) -> dict[str, Any]:
        """Messages by state as the next claim will leave them, read in the caller's
        snapshot (``pending`` is ready and delayed): a lease that ran out counts as
        pending, or dead on its last attempt; a message past its time to live that no live
        lease holds as dead (``on_expire="dead"``) or nowhere. With what stats add: the
        counters, live leases running out within ``horizon`` seconds, how long ago the
        first lease the claim returns ran out, and how many of the messages past their
        time to live were delayed. (The messages of a group behind one that leaves count
        as waiting until the claim.)"""
        counters = self._one(conn, "counters")
        waiting = int(self._one(conn, "waiting")[0])
        leases = self._one(conn, "leases", {"now": now, "horizon": horizon})
        expiring, lapsed, lapsed_dead, lapsed_ttl = (int(n) for n in leases[:4])
        past_ttl = self._one(conn, "past_ttl", {"now": now})
        unleased_ttl, delayed_ttl, waiting_ttl = (int(n) for n in past_ttl)
        unleased, processing, dead = (int(n) for n in counters[:3])
        # Lapsed leases return to the queue, but those past their time to live and those
        # on their last attempt; messages past their time to live leave it.
        returned = lapsed - lapsed_ttl - lapsed_dead
        gone = unleased_ttl + lapsed_ttl
        return {
            "pending": unleased - waiting - (unleased_ttl - waiting_ttl) + returned,
            "processing": processing - lapsed,
            "waiting": waiting - waiting_ttl,
            "dead": dead + lapsed_dead + (gone if self.policy.expired_to_dlq else 0),
            "counters": counters,
            "expiring": expiring,
            "lapsed_age": leases[4],
            "delayed_ttl": delayed_ttl,
        }

    def _file_sizes(self) -> dict[str, int]:
        """Sizes of the database's files, where the backend has any, and how far its
        write-ahead log is from being checkpointed."""
        return {"db_bytes": 0, "wal_bytes": 0, "wal_frames": 0, "wal_frames_not_checkpointed": 0}

    def stats(self, horizon: float) -> dict[str, Any]:
        def run(conn: Conn) -> dict[str, Any]:
            now = self._now()
            return {
                "settled": self._settled(conn, now, horizon),
                "delayed_oldest": self._one(conn, "delayed_and_oldest", {"now": now}),
            }

        found = self._read_tx(run)
        settled = found["settled"]
        (_, _, _, enqueued, completed, failed, dead_lettered, expired, ttl_expired,
         created) = settled["counters"]  # fmt: skip
        delayed, oldest_age = found["delayed_oldest"]
        delayed = int(delayed) - settled["delayed_ttl"]
        lapsed_age = settled["lapsed_age"]
        if lapsed_age is not None and (oldest_age is None or lapsed_age > oldest_age):
            oldest_age = lapsed_age
        return {
            "ready": settled["pending"] - delayed,
            "delayed": delayed,
            "waiting": settled["waiting"],
            "processing": settled["processing"],
            "dead": settled["dead"],
            "oldest_ready_age": None if oldest_age is None else float(oldest_age),
            "expiring": settled["expiring"],
            "enqueued_total": int(enqueued),
            "completed_total": int(completed),
            "failed_total": int(failed),
            "dead_lettered_total": int(dead_lettered),
            "expired_total": int(expired),
            "ttl_expired_total": int(ttl_expired),
            "created_at": float(created or 0.0),
            **self._file_sizes(),
        }

    def list_messages(
        self, state: str, limit: int, after_id: int
    ) -> list[StoredMessage] | list[StoredDeadLetter] | list[StoredDone]:
        params = {"limit": limit, "after": after_id}
        convert = {"dead": self._dead, "done": self._done}.get(state, self._message)

        def run(conn: Conn) -> Any:
            rows = conn.execute(self._sql[f"list_{state}"], {**params, "now": self._now()})
            rows = rows.fetchall()
            return self._with_bodies(conn, [convert(r) for r in rows])

        result: list[StoredMessage] | list[StoredDeadLetter] | list[StoredDone]
        result = self._read_tx(run)
        return result

    def find(self, message_id: int) -> StoredMessage | StoredDeadLetter | StoredDone | None:
        def run(conn: Conn) -> StoredMessage | StoredDeadLetter | StoredDone | None:
            params = {"id": message_id, "now": self._now()}
            converters: dict[str, Callable[[Any], Any]] = {
                "find": self._message,
                "find_dead": self._dead,
                "find_done": self._done,
            }
            for key, convert in converters.items():
                row = self._one(conn, key, params)
                if row is not None:
                    found: StoredMessage | StoredDeadLetter | StoredDone
                    found = self._with_bodies(conn, [convert(row)])[0]
                    return found
            return None

        return self._read_tx(run)

    def dedup_key(self, message_id: int) -> str | None:
        row = self._read_tx(lambda conn: self._one(conn, "dedup_of", {"id": message_id}))
        return None if row is None else str(row[0])

    def purge(self, states: Sequence[str], older_than: float | None) -> int:
        def run(conn: Conn) -> int:
            params = {"now": self._now(), "age": older_than}
            # Waiting group members first, so deleting their heads promotes nothing.
            ordered = sorted(states, key=lambda s: s != "waiting")
            return sum(conn.execute(self._sql[f"purge_{s}"], params).rowcount for s in ordered)

        return self._write(run)

    def _prune(self) -> None:
        """Retention and dedup upkeep, in bounded steps."""
        policy = self.policy

        def run(conn: Conn) -> None:
            batch = {"batch": 500, "now": self._now()}
            if policy.retention is not None:
                cutoff = {**batch, "age": policy.retention}
                conn.execute(self._sql["prune_done_age"], cutoff)
            if policy.retention_max is not None:
                keep = {**batch, "keep": policy.retention_max}
                conn.execute(self._sql["prune_done_count"], keep)
            conn.execute(self._sql["prune_dedup"], batch)

        self._write(run)
