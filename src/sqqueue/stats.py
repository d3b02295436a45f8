"""Queue statistics."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["QueueStats"]


@dataclass(frozen=True, slots=True)
class QueueStats:
    """A snapshot of one queue, cheap enough to take every second on a deep queue.

    Counts come from counters kept exact in the database, each message counted where the
    next dequeue puts it: one whose lease ran out as ready (dead on its last attempt), one
    past its time to live (unless a live lease holds it) as dead, or nowhere with
    ``on_expire="drop"``. Totals count events since the queue was created, across all
    processes and restarts.
    """

    queue: str
    ready: int  #: can be dequeued now
    delayed: int  #: waiting for their delay (or retry backoff) to pass
    waiting: int  #: behind an earlier message of their group
    processing: int  #: leased by a consumer whose lease has not run out
    dead: int  #: in the dead-letter queue, or going there at the next dequeue
    oldest_ready_age: float | None  #: seconds the oldest ready message has waited
    expiring_soon: int  #: live leases that run out within ``expiring_within`` seconds
    enqueued_total: int
    completed_total: int
    failed_total: int  #: failed attempts (each fail_message, including dead-lettering ones)
    dead_lettered_total: int
    lease_expirations_total: int
    ttl_expired_total: int  #: messages whose time to live ran out before delivery
    db_bytes: int
    wal_bytes: int
    #: frames (pages written) in the write-ahead log (SQLite; 0 on PostgreSQL)
    wal_frames: int = 0
    #: of those, frames a checkpoint could not copy back because another connection
    #: still reads an older snapshot; growing steadily, it means a reader never lets go
    #: and the WAL grows with every write
    wal_frames_not_checkpointed: int = 0
    #: messages this queue object dead-lettered as "signature invalid" since it was
    #: opened (a queue with a signing key; see docs/security.md)
    signature_invalid: int = 0
    #: messages stored without a signature that it delivered (``accept_unsigned``)
    unsigned_accepted: int = 0

    @property
    def pending(self) -> int:
        """Ready and delayed messages: 0.1.0's "pending", as ``get_all_statuses()`` counts."""
        return self.ready + self.delayed

    @property
    def depth(self) -> int:
        """Messages not yet done: ready + delayed + waiting + processing (what
        ``max_depth`` counts)."""
        return self.ready + self.delayed + self.waiting + self.processing

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["pending"] = self.pending
        data["depth"] = self.depth
        return data
