"""Stored rows to Messages and dicts; rows that cannot be read are set aside (poison
isolation) rather than blocking the queue. This is the one place rows become Messages."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..backends.base import Outcome, StoredDeadLetter, StoredDone, StoredMessage
from ..exceptions import ErrorKind, QueueError
from ..message import Message, to_datetime
from .checks import error_text

if TYPE_CHECKING:
    from .parts import Parts

logger = logging.getLogger(__name__)

# The stored fields of a row by the type a reader gets for each. A row edited by hand or
# damaged can hold anything (SQLite columns take any value); such a field is reported by
# name instead of failing the call that reads it.
_TIME_FIELDS = frozenset(
    {"created_at", "visible_at", "lease_expires_at", "expires_at", "updated_at", "dead_at",
     "completed_at"}
)  # fmt: skip
_INT_FIELDS = frozenset(
    {"priority", "attempts", "max_attempts", "prior_attempts", "lease_token", "checksum"}
)
_TEXT_FIELDS = frozenset({"encoding", "last_error", "group_key", "status"})


def _shown(value: object) -> str:
    """A short repr of a stored value, for error texts and markers."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _field_problem(name: str, value: object) -> str | None:
    """Why a stored field cannot be read as its type; None when it can (NULL included)."""
    if value is None:
        return None
    if name in _TIME_FIELDS:
        try:
            to_datetime(value)  # type: ignore[arg-type]
        except (TypeError, ValueError, OverflowError, OSError):
            return f"{name} is {_shown(value)}, not a time"
    elif name in _INT_FIELDS and type(value) is not int:
        return f"{name} is {_shown(value)}, not an integer"
    elif name in _TEXT_FIELDS and type(value) is not str:
        return f"{name} is {_shown(value)}, not text"
    return None


def _readable(name: str, value: Any) -> Any:
    """A stored field for a listing: as its type (times as datetimes), or, when it cannot
    be read as one, the marker ``"<invalid: VALUE>"``."""
    if _field_problem(name, value) is not None:
        return f"<invalid: {_shown(value)}>"
    return to_datetime(value) if name in _TIME_FIELDS else value


def _unreadable(row: StoredMessage, exc: Exception) -> QueueError:
    """The error for a row that cannot become a Message, naming its bad fields."""
    problems = [
        problem
        for name, value in zip(row._fields, row, strict=True)
        if (problem := _field_problem(name, value)) is not None
    ]
    reason = "; ".join(problems) if problems else error_text(exc)
    return QueueError(f"stored row cannot be read: {reason}", ErrorKind.CORRUPT, row.id)


def _no_delay(_attempts: int) -> float:
    return 0.0


def message(
    parts: Parts,
    row: StoredMessage,
    when: Callable[[float | None], datetime | None] = to_datetime,
) -> Message:
    """The Message of a stored row; raises QueueError (CORRUPT) for a row that cannot
    be read as one (a payload, time, number or text field that is not what it must be)."""
    try:
        # The counts and texts a Message promises, checked: a database edited by hand
        # can hold anything there (times are checked by converting them).
        if not (
            type(row.priority) is int
            and type(row.attempts) is int
            and type(row.max_attempts) is int
            and type(row.prior_attempts) is int
            and (row.last_error is None or type(row.last_error) is str)
            and (row.group_key is None or type(row.group_key) is str)
        ):
            raise TypeError("a stored field is not of its type")
        # Positional, in the order of Message's fields: keywords cost a third more, and
        # this runs for every message delivered.
        return Message(
            row.id,
            parts.codec.decode(row.data, row.encoding, row.checksum),
            row.priority,
            row.attempts,
            row.max_attempts,
            when(row.created_at) or datetime.fromtimestamp(0),  # enqueued_at
            when(row.lease_expires_at),
            row.last_error,
            parts.name,  # queue
            row.lease_token,
            row.group_key,  # group
            when(row.expires_at),
            row.prior_attempts,
        )
    except QueueError:
        raise  # the payload's own error (checksum, encoding) says it best
    except Exception as exc:
        raise _unreadable(row, exc) from exc


def messages(parts: Parts, rows: Sequence[StoredMessage]) -> list[Message]:
    """The Messages of claimed rows; a row that cannot be one, or that a signing queue
    finds without a valid signature, is dead-lettered instead."""
    when = to_datetime
    if len(rows) > 1:
        # A batch shares its lease expiry, and often its enqueue time: convert each
        # timestamp once (datetime.fromtimestamp is a third of a Message's cost).
        when = functools.lru_cache(maxsize=8)(to_datetime)
    found = []
    signer = parts.signer
    for row in rows:
        if signer is not None and not signed(parts, row):
            continue
        try:
            found.append(message(parts, row, when))
        except QueueError as exc:
            isolate_poison(parts, row, exc)
    return found


def isolate_poison(parts: Parts, row: StoredMessage, reason: QueueError) -> bool:
    """Dead-letter a row that cannot be delivered, so it never blocks the queue.

    Returns whether it was moved. Never raises: a failure here is logged, and the row
    stays where it is (a leased one comes back when its lease runs out).
    """
    name = parts.name
    moved = _bury(parts, row, f"undeliverable: {reason}", f"is undeliverable ({reason})")
    if moved:
        logger.error(
            "queue %r: message %d dead-lettered as undeliverable: %s", name, row.id, reason
        )
        parts.metrics.incr("poison")
        parts.metrics.incr("dead_letter")
    return moved


#: The error a message without a valid signature is dead-lettered with.
SIGNATURE_INVALID = "signature invalid"


def signed(parts: Parts, row: StoredMessage) -> bool:
    """Whether a signing queue may deliver ``row``: its signature matches one of the
    queue's keys (or it has none and the queue accepts unsigned messages). A row that
    may not be delivered is dead-lettered as "signature invalid"."""
    signer = parts.signer
    assert signer is not None
    if row.signature is None and parts.accept_unsigned:
        _count(parts, "unsigned_accepted")
        logger.info(
            "queue %r: message %d has no signature and is delivered (accept_unsigned)",
            parts.name,
            row.id,
        )
        return True
    if signer.verify(
        row.signature, row.data, row.encoding, row.priority, row.max_attempts, row.group_key
    ):
        return True
    what = "has no signature" if row.signature is None else "has a signature that does not match"
    if _bury(parts, row, SIGNATURE_INVALID, what):
        # The payload and the key are never logged: the id says which row to look at.
        logger.warning(
            "queue %r: message %d %s; dead-lettered as %r, not delivered",
            parts.name,
            row.id,
            what,
            SIGNATURE_INVALID,
        )
        _count(parts, "signature_invalid")
        parts.metrics.incr("dead_letter")
    return False


def _count(parts: Parts, counter: str) -> None:
    with parts.counts_lock:
        parts.signature_counts[counter] += 1
    parts.metrics.incr(counter)


def _bury(parts: Parts, row: StoredMessage, error: str, problem: str) -> bool:
    """Dead-letter ``row`` with ``error``, fenced by its lease; whether it was moved.
    Never raises: a failure is logged (saying the row ``problem``), and the row stays where
    it is (a leased one comes back when its lease runs out)."""
    backend, name = parts.backend, parts.name
    try:
        outcome, _ = backend.fail(row.id, row.lease_token, error, _no_delay, True)
        if outcome is not Outcome.DONE and row.lease_token is None:
            # Seen by peek in an expired lease: fold the lease back, then bury it.
            backend.recover()
            outcome, _ = backend.fail(row.id, None, error, _no_delay, True)
    except Exception:
        logger.exception(
            "queue %r: message %d %s and could not be dead-lettered", name, row.id, problem
        )
        return False
    if outcome is not Outcome.DONE:
        logger.error(
            "queue %r: message %d %s and was not dead-lettered (%s)",
            name,
            row.id,
            problem,
            outcome.value,
        )
        return outcome is Outcome.DEAD
    return True


def next_in_line(parts: Parts) -> Message | None:
    """The message a claim would take next, not leased (``peek``); rows that cannot be
    delivered are set aside on the way, or reported when the queue is read-only."""
    stuck: set[int] = set()
    while True:
        row = parts.backend.peek()
        if row is None:
            return None
        if parts.signer is not None:
            if parts.read_only:
                verified = parts.signer.verify(
                    row.signature, row.data, row.encoding, row.priority, row.max_attempts,
                    row.group_key,
                )  # fmt: skip
                if not verified and not (row.signature is None and parts.accept_unsigned):
                    raise QueueError(
                        f"message {row.id}, next in line, has no valid signature: a "
                        f"consumer dead-letters it as {SIGNATURE_INVALID!r}",
                        ErrorKind.CORRUPT,
                        row.id,
                    )
            elif not signed(parts, row):
                if parts.backend.lease_of(row.id) is not None:  # could not be moved
                    raise QueueError(
                        f"message {row.id}, next in line, has no valid signature and could "
                        "not be dead-lettered (see the log)",
                        ErrorKind.STORAGE,
                        row.id,
                    )
                continue
        try:
            return message(parts, row)
        except QueueError as exc:
            if parts.read_only:  # cannot set it aside: say what is wrong with it
                raise QueueError(
                    f"message {row.id}, next in line, cannot be delivered: {exc}",
                    exc.kind,
                    row.id,
                ) from exc
            if row.id in stuck:  # could not be moved out of the way: do not spin
                raise
            if not isolate_poison(parts, row, exc):
                stuck.add(row.id)


# The keys of the dicts listings give, each with the stored field it is read from, by
# kind of row, in the order they appear.
_MESSAGE_KEYS = (
    ("priority", "priority"), ("attempts", "attempts"), ("max_attempts", "max_attempts"),
    ("last_error", "last_error"), ("enqueued_at", "created_at"), ("visible_at", "visible_at"),
    ("lease_expires_at", "lease_expires_at"), ("group", "group_key"),
    ("expires_at", "expires_at"), ("prior_attempts", "prior_attempts"),
)  # fmt: skip
_DEAD_KEYS = (
    ("priority", "priority"), ("attempts", "attempts"), ("max_attempts", "max_attempts"),
    ("last_error", "last_error"), ("enqueued_at", "created_at"),
    ("created_at", "created_at"),  # 0.1.0's key
    ("updated_at", "updated_at"), ("dead_at", "dead_at"), ("group", "group_key"),
    ("prior_attempts", "prior_attempts"),
)  # fmt: skip
_DONE_KEYS = (
    ("priority", "priority"), ("attempts", "attempts"), ("enqueued_at", "created_at"),
    ("completed_at", "completed_at"), ("group", "group_key"),
)  # fmt: skip


def _entry(
    parts: Parts,
    row: StoredMessage | StoredDeadLetter | StoredDone,
    status: str,
    keys: tuple[tuple[str, str], ...],
) -> dict[str, Any]:
    """A stored row as a dict: ``id``, ``payload`` (raw, with ``payload_error``, when it
    cannot be decoded), ``status``, then ``keys`` read as their types (see _readable)."""
    entry: dict[str, Any] = {"id": row.id}
    try:
        entry["payload"] = parts.codec.decode(row.data, row.encoding, row.checksum)
    except Exception as exc:
        entry["payload"] = row.data
        entry["payload_error"] = str(exc) if isinstance(exc, QueueError) else error_text(exc)
    entry["status"] = status
    for key, field in keys:
        entry[key] = _readable(field, getattr(row, field))
    return entry


def dead_letter_dict(parts: Parts, row: StoredDeadLetter) -> dict[str, Any]:
    return _entry(parts, row, "dead", _DEAD_KEYS)


def row_dict(
    parts: Parts, row: StoredMessage | StoredDeadLetter | StoredDone, state: str
) -> dict[str, Any]:
    """A stored row of any state as the dict ``list_messages`` and ``get_message`` give."""
    if isinstance(row, StoredDeadLetter):
        return dead_letter_dict(parts, row)
    if isinstance(row, StoredDone):
        return _done_dict(parts, row)
    # "all" and "pending" cover several states: the row says which (ready or delayed,
    # waiting, processing)
    status = row.status if state in ("all", "pending") else state
    return _entry(parts, row, status, _MESSAGE_KEYS)


def _done_dict(parts: Parts, row: StoredDone) -> dict[str, Any]:
    entry = _entry(parts, row, "done", _DONE_KEYS)
    entry["result"] = None
    if row.result is not None:
        try:
            entry["result"] = json.loads(row.result)
        except Exception as exc:  # not JSON, not even text: shown as stored, with why
            entry["result"] = row.result
            entry["result_error"] = f"stored result is not valid JSON: {exc}"
    return entry
