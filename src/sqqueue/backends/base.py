"""The storage interface the queue logic talks to.

A backend stores rows and runs each operation as one atomic transaction; it knows nothing
about payload types, Results or metrics. Times are Unix seconds, and the backend decides
what "now" is, at the moment it matters: SQLite reads the queue's clock (injectable in
tests) once the write lock is held, PostgreSQL uses the server's clock in its statements.
The caller passes durations (a lease, a delay), never instants, so a call that waited for
a lock, a connection or a retry still gets its whole lease, and clients whose clocks
disagree share one clock on the server.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any, NamedTuple

from ..exceptions import QueueError

#: Unix seconds a clock may say: from 1970 to the year 2100 (beyond, a clock that says
#: so is wrong, and the times computed from it would not fit where they are stored).
LATEST_TIME = 4_102_444_800.0

__all__ = [
    "Backend",
    "NewMessage",
    "Outcome",
    "Policy",
    "StorageError",
    "StoredDeadLetter",
    "StoredDone",
    "StoredMessage",
]


class StorageError(QueueError):
    """A database failure, already classified (``kind``) and explained."""


@dataclass(frozen=True)
class Policy:
    """The settings the storage applies: what it enforces inside its transactions and how
    long a call may wait. Each is the queue's setting of the same name (:meth:`of`); the
    defaults are those of the settings table."""

    #: seconds a dedup key is remembered after enqueue; None: while the message exists
    dedup_window: float | None = 300.0
    #: "dead": messages past their time to live go to the dead-letter queue; "drop"
    on_expire: str = "dead"
    #: keep completed messages this many seconds (None: delete at once)
    retention: float | None = None
    #: keep at most this many completed messages
    retention_max: int | None = None
    #: refuse enqueues past this many messages (pending, delayed, waiting, processing)
    max_depth: int | None = None
    #: seconds a call may wait for a lock (and, in all, for the database)
    lock_timeout: float = 30.0
    #: the attempts of rows that arrive without any (sqqueue 0.1.0's, when migrated)
    default_max_attempts: int = 5
    #: SQLite's durability of a commit, "normal" or "full" (PostgreSQL: the server's)
    synchronous: str = "normal"

    @classmethod
    def of(cls, settings: Any) -> Policy:
        """The policy of a queue's resolved settings (``settings.NAME`` for each field; a
        setting that does not apply to the backend keeps its default)."""
        defaults = cls()
        values: dict[str, Any] = {
            f.name: getattr(settings, f.name, getattr(defaults, f.name)) for f in fields(cls)
        }
        return cls(**values)

    @property
    def expired_to_dlq(self) -> bool:
        """Whether messages past their time to live go to the dead-letter queue."""
        return self.on_expire == "dead"

    @property
    def keeps_history(self) -> bool:
        """Whether completed messages are kept (retention by age or by count)."""
        return self.retention is not None or self.retention_max is not None


class NewMessage(NamedTuple):
    """A validated, encoded message on its way in (a tuple: built for every enqueue)."""

    data: str | bytes
    encoding: str
    checksum: int
    priority: int
    delay: float  #: seconds until it may be delivered (0: at once)
    max_attempts: int
    dedup_key: str | None = None
    group_key: str | None = None
    ttl: float | None = None  #: seconds it may wait to be delivered (None: forever)
    signature: str | None = None  #: see sqqueue.signing (None: unsigned)


class StoredMessage(NamedTuple):
    id: int
    data: Any
    encoding: str
    checksum: int | None
    priority: int
    attempts: int
    max_attempts: int
    created_at: float
    visible_at: float
    lease_token: int | None
    lease_expires_at: float | None
    last_error: str | None
    group_key: str | None = None
    expires_at: float | None = None
    prior_attempts: int = 0
    #: pending (incl. delayed), waiting or processing; "delayed" in a listing of all states
    status: str = "pending"
    signature: str | None = None  #: see sqqueue.signing (None: unsigned)


class StoredDeadLetter(NamedTuple):
    id: int
    data: Any
    encoding: str
    checksum: int | None
    priority: int
    attempts: int
    max_attempts: int
    last_error: str | None
    created_at: float
    updated_at: float
    dead_at: float
    group_key: str | None = None
    prior_attempts: int = 0
    signature: str | None = None


class StoredDone(NamedTuple):
    id: int
    data: Any
    encoding: str
    checksum: int | None
    priority: int
    attempts: int
    created_at: float
    completed_at: float
    group_key: str | None = None
    result: str | None = None  #: JSON text kept by ``complete(..., result=)``
    signature: str | None = None


class Outcome(enum.Enum):
    """What a state-changing call on one message found."""

    DONE = "done"
    NOT_FOUND = "not_found"
    DEAD = "dead"  #: the message is in the dead-letter queue
    PENDING = "pending"  #: the message is waiting, nobody holds it
    LEASE_EXPIRED = "lease_expired"  #: the caller's lease ran out
    LEASE_LOST = "lease_lost"  #: a newer lease (another consumer) holds it


class Backend(ABC):
    """One queue's storage. Implementations: SQLite (``sqlite.py``), PostgreSQL
    (``postgres.py``).

    ``token`` arguments fence leases: when given, the call only acts if the message is
    still held under that token and the lease has not expired. ``None`` means "whoever
    holds a live lease" (a caller that only knows the id).
    """

    name: str
    policy: Policy
    #: identifies the queue's storage within this process, for in-process wake-ups
    wakeup_key: str
    #: opened read-only: nothing is created, migrated or written (writes raise READ_ONLY)
    read_only: bool = False
    #: whether concurrent enqueues share commits by default: worth it where a commit is a
    #: round trip and a flush (PostgreSQL), not where it is a WAL append in this process
    #: (SQLite: measured, 8 threads sharing were slower, bench/profile-notes.md)
    shares_commits: bool = False
    #: whether the writers of one database take its one write lock in turn (SQLite): a
    #: worker's runner about to claim then commits the completions gathered so far itself,
    #: just before its claim, rather than leave them to a second thread that would wait for
    #: the claim's lock (bench/profile-notes.md)
    one_writer: bool = False
    #: whether the asyncio API may run this backend's calls on the event loop (through
    #: sqqueue.bridge: its driver has an asyncio face, PostgreSQL), rather than in threads
    native_asyncio: bool = False

    @abstractmethod
    def enqueue(self, messages: Sequence[NewMessage], started: float | None = None) -> list[int]:
        """Insert all messages in one transaction; return their ids in order.

        A message whose dedup key was seen within the policy's window is not inserted:
        its id is that of the original. Raises QUEUE_FULL past the policy's max depth.
        ``started``: when the caller began (``time.monotonic()``), if it waited before
        this call (in line for a shared commit): the lock timeout counts from then.
        """

    @abstractmethod
    def enqueue_in(self, conn: Any, messages: Sequence[NewMessage]) -> list[int]:
        """``enqueue`` inside the caller's own open transaction on ``conn`` (outbox)."""

    @abstractmethod
    def claim(self, limit: int, lease: float, token: int) -> tuple[list[StoredMessage], int]:
        """Lease up to ``limit`` ready messages, best first, in one transaction, for
        ``lease`` seconds from the moment the claim holds its locks.

        Expired leases are folded back first (to pending, or to the dead-letter queue on
        their last attempt). Returns the claimed rows and how many leases were folded.
        """

    @abstractmethod
    def complete(self, message_id: int, token: int | None, result: str | None = None) -> Outcome:
        """Delete a message held under a live lease (keeping it, with ``result``, when the
        policy keeps history)."""

    @abstractmethod
    def complete_many(self, refs: Sequence[tuple[int, int | None]]) -> list[Outcome]:
        """Complete several (id, token) messages in one transaction, all or none: if any
        is refused, nothing changes. Returns each one's outcome."""

    @abstractmethod
    def release(
        self,
        message_id: int,
        token: int | None,
        delay: float,
        error: str | None,
        refund_attempt: bool,
    ) -> tuple[Outcome, bool]:
        """Return a leased message to pending, visible ``delay`` seconds from now; and
        whether it was dead-lettered instead (an attempt not refunded that was its last)."""

    @abstractmethod
    def release_many(self, refs: Sequence[tuple[int, int | None]]) -> list[Outcome]:
        """Give back several (id, token) messages not worked on (visible at once, their
        attempts refunded) in one transaction, all or none. Each one's outcome."""

    @abstractmethod
    def fail(
        self,
        message_id: int,
        token: int | None,
        error: str | None,
        retry_after: Callable[[int], float],
        force_dead: bool,
    ) -> tuple[Outcome, bool]:
        """Record a failed attempt on a leased message, in one transaction.

        The message goes to the dead-letter queue (keeping its id and history) when
        ``force_dead`` or when it has used all its attempts, else back to pending, visible
        ``retry_after(attempts)`` seconds from now. With ``force_dead`` a pending message is
        buried too (the immediate failure of the lifecycle). Returns the outcome and whether
        it died.
        """

    @abstractmethod
    def extend(
        self, message_id: int, token: int | None, seconds: float
    ) -> tuple[Outcome, float | None]:
        """Move a live lease's expiry to ``seconds`` from now; the outcome and the new
        expiry (None when refused)."""

    @abstractmethod
    def extend_many(
        self, refs: Sequence[tuple[int, int | None]], seconds: float
    ) -> list[tuple[Outcome, float | None]]:
        """:meth:`extend` for several leases in one transaction: each live one is extended,
        the others are left as they are; an outcome and new expiry per ref, in order."""

    @abstractmethod
    def lease_of(self, message_id: int) -> tuple[str, int | None] | None:
        """A message's status and lease token, or None if it is not in the queue."""

    @abstractmethod
    def peek(self) -> StoredMessage | None:
        """The message the next claim would take, unchanged."""

    @abstractmethod
    def is_drained(self) -> bool:
        """True when no message is ready, delayed, waiting or leased (dead letters aside)."""

    @abstractmethod
    def count_unleased(self) -> int:
        """Messages not leased: ready, delayed and waiting (the size gauge)."""

    @abstractmethod
    def next_due(self) -> float | None:
        """Seconds until a claim could succeed: until the first pending message's
        visibility or lease expiry (``<= 0`` when something is claimable already), None if
        the queue is empty."""

    @abstractmethod
    def watch(self) -> None:
        """Have commits by other connections wake this process's waiters on this queue.

        Afterwards, a commit to the queue's database by another connection (another
        process, another queue object) notifies or nudges the queue's signal
        (``wakeup.signal_for(wakeup_key)``) within milliseconds, for as long as some
        consumer waits on it. One watcher per process and database (SQLite) or per queue
        object (PostgreSQL's listener) does this, whatever the number of waiters. Cheap
        when already watching; raises CLOSED once the queue is closed.
        """

    @abstractmethod
    def recover(self) -> int:
        """Fold every expired lease back now; return how many."""

    @abstractmethod
    def dead_letters(self) -> list[StoredDeadLetter]:
        """All dead letters, oldest death first."""

    @abstractmethod
    def revive(self, message_id: int) -> bool:
        """Move a dead letter back to pending with its id, attempts reset; False if absent."""

    @abstractmethod
    def redrive(
        self, ids: Sequence[int] | None, target: str | None, limit: int, after: int
    ) -> tuple[list[int], list[int]]:
        """Move up to ``limit`` dead letters (``ids``, or every id after ``after``) back to
        this queue (same ids) or to queue ``target``; returns (moved, not found)."""

    @abstractmethod
    def delete_dead(self, ids: Sequence[int]) -> int:
        """Delete the dead letters with these ids in one transaction; return how many."""

    @abstractmethod
    def export_rows(self, table: str, after: Any, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` rows of one of the queue's tables ("messages", "dead", "done" or
        "dedup"), after the key ``after`` (an id; a dedup key), in key order, each with
        every column the table has, the stored payload as ``payload``: what a copy of the
        queue moves."""

    @abstractmethod
    def export_row(self, table: str, key: Any) -> dict[str, Any] | None:
        """The row of ``table`` whose key is ``key``, as ``export_rows`` gives it, found by
        a direct lookup (salvage reads a damaged table this way, row by row); None if
        there is none."""

    @abstractmethod
    def import_rows(self, table: str, rows: Sequence[dict[str, Any]]) -> None:
        """Insert rows exported from another queue (``export_rows``), keeping every column,
        in one transaction; the rows' ids stay taken and are counted as enqueues."""

    @abstractmethod
    def ddl(self) -> list[str]:
        """The statements that create this queue's storage."""

    @abstractmethod
    def status_counts(self) -> dict[str, int]:
        """Messages by status as stored, from the maintained counters: ``pending`` (ready
        and delayed), ``processing``, ``waiting`` (group members behind their head),
        ``dead`` (the rows of the dead-letter table)."""

    @abstractmethod
    def settled_counts(self) -> dict[str, int]:
        """The keys of ``status_counts``, each message counted where the next claim puts
        it, as ``stats`` counts."""

    @abstractmethod
    def stats(self, horizon: float) -> dict[str, Any]:
        """Counts by state, each message where the next claim puts it (a lease that ran
        out: ready, or dead on its last attempt; past its time to live and not under a
        live lease: dead, or nowhere when dropped), totals since creation, how long the
        oldest ready message has been visible, live leases expiring within ``horizon``
        seconds, file sizes."""

    @abstractmethod
    def list_messages(
        self, state: str, limit: int, after_id: int
    ) -> list[StoredMessage] | list[StoredDeadLetter] | list[StoredDone]:
        """A page of messages in ``state`` (pending, delayed, waiting, processing, dead,
        done, all) by id; in "all", a delayed message's status says "delayed"."""

    @abstractmethod
    def find(self, message_id: int) -> StoredMessage | StoredDeadLetter | StoredDone | None:
        """One message by id: in the queue, a dead letter, or kept history; None if absent."""

    @abstractmethod
    def dedup_key(self, message_id: int) -> str | None:
        """The deduplication key message ``message_id`` holds, or None."""

    @abstractmethod
    def purge(self, states: Sequence[str], older_than: float | None) -> int:
        """Delete messages in ``states`` (created more than ``older_than`` seconds ago if
        given), atomically."""

    @abstractmethod
    def maintain(self, rounds: int = 1) -> None:
        """Cheap periodic upkeep (reclaim a few free pages, passive checkpoint); ``rounds``
        says how many thresholds' worth of messages were written since the last one."""

    @abstractmethod
    def vacuum(self, conn: Any = None) -> None:
        """Rebuild the database file to reclaim all free space."""

    @abstractmethod
    def checkpoint(self, conn: Any = None) -> None:
        """Write the journal back into the database file and truncate it."""

    @abstractmethod
    def close(self) -> None:
        """Release connections. Idempotent."""


def peek_choice(ready: StoredMessage | None, expired: StoredMessage | None) -> StoredMessage | None:
    """Which of the ready head and the best expired lease the next claim would deliver.

    An expired lease comes back as if it became visible when its lease ran out. Neither
    is leased by peeking: their lease fields are left empty.
    """
    if ready is not None and (ready.lease_token is not None or ready.lease_expires_at is not None):
        ready = ready._replace(lease_token=None, lease_expires_at=None)
    if expired is not None:
        assert expired.lease_expires_at is not None
        expired = expired._replace(
            visible_at=expired.lease_expires_at,
            lease_token=None,
            lease_expires_at=None,
        )
    candidates = [m for m in (ready, expired) if m is not None]
    if len(candidates) < 2:
        return candidates[0] if candidates else None
    try:
        return min(candidates, key=lambda m: (-m.priority, m.visible_at, m.id))
    except TypeError:  # a field edited by hand into something that does not compare
        return candidates[0]
