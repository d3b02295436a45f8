"""Looking after a queue: dead letters, purges, listings and counts. Each function
raises QueueError for the Result API's ``Err``; the queue's methods wrap them."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from ..exceptions import ErrorKind, QueueError
from ..names import validate_queue_name
from ..stats import QueueStats
from ..wakeup import signal_for
from . import convert
from .checks import MAX_BATCH_SIZE, MAX_DELAY, MAX_ID, bounded_int, seconds

if TYPE_CHECKING:
    from .parts import Parts

logger = logging.getLogger(__name__)

#: states ``list_messages`` and ``purge`` accept
# The states of the glossary; "pending" is ready and delayed together (0.1.0's word).
LISTABLE_STATES = (
    "ready", "delayed", "waiting", "processing", "dead", "done", "pending", "all"
)  # fmt: skip
PURGEABLE_STATES = ("ready", "delayed", "waiting", "processing", "dead", "done", "pending")

# Sequences that are not lists of ids or states: iterated, they give characters or bytes.
_NOT_LISTS = (str, bytes, bytearray, memoryview)


def stats(parts: Parts, expiring_within: float | timedelta) -> QueueStats:
    horizon = seconds(
        expiring_within, "expiring_within", minimum=0, maximum=MAX_DELAY, strict=False
    )
    raw = parts.backend.stats(horizon)
    oldest = raw["oldest_ready_age"]
    return QueueStats(
        queue=parts.name,
        ready=raw["ready"],
        delayed=raw["delayed"],
        waiting=raw["waiting"],
        processing=raw["processing"],
        dead=raw["dead"],
        oldest_ready_age=None if oldest is None else max(0.0, oldest),
        expiring_soon=raw["expiring"],
        enqueued_total=raw["enqueued_total"],
        completed_total=raw["completed_total"],
        failed_total=raw["failed_total"],
        dead_lettered_total=raw["dead_lettered_total"],
        lease_expirations_total=raw["expired_total"],
        ttl_expired_total=raw["ttl_expired_total"],
        db_bytes=raw["db_bytes"],
        wal_bytes=raw["wal_bytes"],
        wal_frames=raw["wal_frames"],
        wal_frames_not_checkpointed=raw["wal_frames_not_checkpointed"],
        signature_invalid=parts.signature_counts["signature_invalid"],
        unsigned_accepted=parts.signature_counts["unsigned_accepted"],
    )


def list_messages(parts: Parts, state: str, limit: int, after_id: int) -> list[dict[str, Any]]:
    if state not in LISTABLE_STATES:
        raise QueueError(
            f"state must be one of {', '.join(LISTABLE_STATES)}, got {state!r}",
            ErrorKind.INVALID_INPUT,
        )
    size = bounded_int(limit, "limit", 1, MAX_BATCH_SIZE)
    after = bounded_int(after_id, "after_id", 0, MAX_ID)
    rows = parts.backend.list_messages(state, size, after)
    return [convert.row_dict(parts, row, state) for row in rows]


def get_message(parts: Parts, message_id: int) -> dict[str, Any] | None:
    ident = bounded_int(message_id, "message_id", 0, MAX_ID)
    row = parts.backend.find(ident)
    if row is None:
        return None
    entry = convert.row_dict(parts, row, "all")
    entry["dedup_key"] = parts.backend.dedup_key(ident)
    return entry


def dead_letters(parts: Parts) -> list[dict[str, Any]]:
    return [convert.dead_letter_dict(parts, row) for row in parts.backend.dead_letters()]


def revive(parts: Parts, message_id: int) -> None:
    """Put one dead letter back in the queue with its id and a fresh attempt count."""
    ident = bounded_int(message_id, "message_id", 0, MAX_ID)
    if not parts.backend.revive(ident):
        raise QueueError(
            f"message {ident} is not in the dead-letter queue of {parts.name!r}; "
            "see get_dead_letters() for the ids there",
            ErrorKind.NOT_FOUND,
            ident,
        )
    parts.signal.notify()
    parts.upkeep.count()
    logger.info("queue %r: dead letter %d returned to the queue", parts.name, ident)


def recover(parts: Parts) -> int:
    """Return every message whose lease expired to the queue now; the count."""
    count = parts.backend.recover()
    if count:
        parts.metrics.incr("recovered", count)
        logger.info("queue %r: recovered %d expired lease(s)", parts.name, count)
    return count


#: the longest single wait of a paced redrive: a longer one (a tiny rate's, days or for
#: ever) goes on in waits of this length, each well within what a lock's timeout takes
_MAX_PACE_WAIT = 60.0


def redrive(
    parts: Parts,
    ids: Sequence[int] | None,
    to_queue: str | None,
    rate: float | None,
    progress: Callable[[int, int], Any] | None,
) -> int:
    """Move dead letters back (see ``Queue.redrive``), a chunk per transaction; the count.

    Paced by ``rate`` between chunks only: the wait before a chunk is for the messages
    moved so far, so a redrive returns as soon as the last chunk is moved, and a wait is
    ended at once by close() (CLOSED, saying how many were moved: they stay moved)."""
    if to_queue is not None:
        try:
            validate_queue_name(to_queue)
        except ValueError as exc:
            raise QueueError(f"to_queue: {exc}", ErrorKind.INVALID_INPUT) from None
    _check_rate(rate)
    backend = parts.backend
    wanted = None
    if ids is not None:
        # Any iterable of ids (a list, a set, a generator), but not bytes or a str: b"\x02"
        # would redrive dead letter 2.
        if isinstance(ids, _NOT_LISTS) or not isinstance(ids, Iterable):
            raise QueueError(
                f"ids must be a list of message ids (or None for every dead letter), got "
                f"{type(ids).__name__}",
                ErrorKind.INVALID_INPUT,
            )
        # Each id once, in the order given: a second mention would find it redriven.
        wanted = list(dict.fromkeys(bounded_int(i, "id", 0, MAX_ID) for i in ids))
        total = len(wanted)
    else:
        total = backend.status_counts()["dead"]  # the rows there (stats counts more)
    chunk = 500 if rate is None else max(1, min(500, int(rate // 10) or 1))
    moved = 0
    after = 0
    complained = False  # whether ``progress`` raised already (see _report)
    started = time.monotonic()
    try:
        while True:
            # Read before the chunk: a close() from now on ends the wait that follows it.
            seen = parts.signal.changes
            batch_ids = None if wanted is None else wanted[:chunk]
            if wanted is not None:
                wanted = wanted[chunk:]
                if not batch_ids:
                    break
            done, missing = backend.redrive(batch_ids, to_queue, chunk, after)
            if missing:
                raise QueueError(
                    f"no dead letter with id {', '.join(map(str, missing))} in queue "
                    f"{parts.name!r}; {moved + len(done)} other(s) were redriven",
                    ErrorKind.NOT_FOUND,
                )
            if not done and wanted is None:
                break  # the full chunk before was the last
            moved += len(done)
            after = max(done, default=after)
            _wake_consumers(parts, to_queue)
            if progress is not None:
                complained |= _report(parts, progress, moved, max(total, moved), complained)
            if not _more(parts, wanted, len(done) == chunk, paced=rate is not None):
                break
            if rate is not None:
                _pace(parts, started + moved / rate, seen)
    except QueueError as exc:
        if exc.kind is not ErrorKind.CLOSED:
            raise
        raise QueueError(
            f"queue {parts.name!r} was closed after {moved} of {max(total, moved)} dead "
            "letter(s) were redriven (those stay redriven)",
            ErrorKind.CLOSED,
        ) from exc
    parts.upkeep.count(max(moved, 1))
    logger.info("queue %r: redrove %d dead letter(s)", parts.name, moved)
    return moved


def _check_rate(rate: float | None) -> None:
    # Any rate above 0 is accepted, however small: the last chunk is never waited after,
    # and close() ends any wait, so a tiny rate (a wait of days, or for ever, between
    # chunks) is what was asked for, not a hang to refuse.
    if rate is not None and not (
        isinstance(rate, (int, float))
        and not isinstance(rate, bool)
        and 0 < rate <= 1e9  # NaN fails this too
    ):
        raise QueueError(
            f"rate must be a number of messages a second, > 0 and <= 1000000000, got {rate!r}",
            ErrorKind.INVALID_INPUT,
        )


def _wake_consumers(parts: Parts, to_queue: str | None) -> None:
    """Wake the consumers in this process of the queue the dead letters went to."""
    parts.signal.notify()
    if to_queue is not None:
        key = parts.backend.wakeup_key.rsplit(":", 1)[0] + f":{to_queue}"
        signal_for(key).notify()


def _more(parts: Parts, wanted: list[int] | None, full: bool, paced: bool) -> bool:
    """Whether a redrive has another chunk to move: ids still ``wanted``, or (every dead
    letter) a ``full`` last chunk, since a short one took all there were after the cursor.

    After a full chunk, a paced redrive first checks there are dead letters left, so as not
    to wait for nothing; an unpaced one just looks for the next chunk. (A dead letter that
    died meanwhile with an id below the cursor is counted but not redriven: at worst one
    wait for an empty chunk.)"""
    if wanted is not None:
        return bool(wanted)
    if not full:
        return False
    return not paced or parts.backend.status_counts()["dead"] > 0


def _report(
    parts: Parts, progress: Callable[[int, int], Any], done: int, total: int, quiet: bool
) -> bool:
    """Call ``progress(done, total)``; whether it raised.

    The callback is the caller's code, like a worker's hooks: what it raises is logged and
    the redrive goes on. The chunks moved are committed, so an Err would misreport them,
    and stopping would leave the redrive half done for a broken progress bar. Logged as a
    warning the first time, then (``quiet``) at debug, so a callback that fails at every
    chunk does not flood the log; never with the messages. KeyboardInterrupt, SystemExit
    (not Exception) are let through: unlike a hook, the callback runs on the caller's own
    thread, which they are meant to stop, here as anywhere else in the call."""
    try:
        progress(done, total)
    except Exception:
        logger.log(
            logging.DEBUG if quiet else logging.WARNING,
            "queue %r: redrive progress callback failed at %d of %d; the redrive goes on",
            parts.name,
            done,
            total,
            exc_info=True,
        )
        return True
    return False


def _pace(parts: Parts, until: float, seen: int) -> None:
    """Wait until ``until`` (``time.monotonic()``) for a redrive's rate; raise CLOSED as
    soon as the queue is closed.

    It waits on the queue's wake-up signal, as ``dequeue(wait=...)`` does: close() nudges
    it. ``seen`` is the signal's count of nudges read before the last chunk was moved, so
    that a close() since then is not missed. Other wake-ups do not end the wait: after a
    notify (an enqueue in this process) it waits on at once; after a nudge (close()'s, or
    another connection's commit seen by the watcher) it first reads the database, which
    raises CLOSED once the queue is closed."""
    signal = parts.signal
    while (left := until - time.monotonic()) > 0:
        signal.wait(signal.seq, min(left, _MAX_PACE_WAIT), seen)
        if signal.changes != seen:
            seen = signal.changes  # (read first: a close() during the look is not missed)
            parts.backend.status_counts()


def delete_dead_letters(parts: Parts, ids: Sequence[int]) -> int:
    if isinstance(ids, _NOT_LISTS) or not isinstance(ids, Sequence):
        raise QueueError(
            f"ids must be a list of message ids, got {type(ids).__name__}",
            ErrorKind.INVALID_INPUT,
        )
    if len(ids) > MAX_BATCH_SIZE:
        raise QueueError(
            f"at most {MAX_BATCH_SIZE} ids at a time, got {len(ids)}", ErrorKind.INVALID_INPUT
        )
    wanted = sorted({bounded_int(i, "id", 0, MAX_ID) for i in ids})
    removed = parts.backend.delete_dead(wanted) if wanted else 0
    parts.upkeep.count(max(removed, 1))
    logger.info("queue %r: deleted %d dead letter(s)", parts.name, removed)
    return removed


def purge(
    parts: Parts, state: str | Sequence[str] | None, older_than: float | timedelta | None
) -> int:
    if state is None:
        states: list[str] = ["ready", "delayed", "waiting", "processing"]
    elif isinstance(state, str):
        states = [state]
    elif isinstance(state, _NOT_LISTS) or not isinstance(state, Iterable):
        # (b"dead" would be read as the states 100, 101, 97, 100)
        raise QueueError(
            f"state must be a state name ({', '.join(PURGEABLE_STATES)}) or a list of them, "
            f"got {type(state).__name__}",
            ErrorKind.INVALID_INPUT,
        )
    else:
        states = list(state)
    for item in states:
        if item not in PURGEABLE_STATES:
            raise QueueError(
                f"state must be one of {', '.join(PURGEABLE_STATES)}, got {item!r}",
                ErrorKind.INVALID_INPUT,
            )
    age = None
    if older_than is not None:
        age = seconds(older_than, "older_than", minimum=0, maximum=1e12, strict=False)
    if "pending" in states:
        states = [s for s in states if s != "pending"] + ["ready", "delayed"]
    removed = parts.backend.purge(sorted(set(states)), age)
    if parts.backend.policy.max_depth is not None:
        parts.room.notify()
    parts.upkeep.count(max(removed, 1))
    logger.info("queue %r: purged %d message(s) (%s)", parts.name, removed, ", ".join(states))
    return removed
