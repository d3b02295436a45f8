"""Ending or changing a lease: complete, fail, give back, extend (one or several). Each
checks the lease (fencing) in the backend's transaction and explains a refusal; the
queue's methods wrap them in Results."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from ..backends.base import Outcome
from ..exceptions import ErrorKind, LeasesNotExtended, QueueError
from ..message import Message, to_datetime
from ..result import Err, Result
from ..serializers import json_text
from .checks import (
    MAX_DELAY,
    MAX_ERROR_TEXT,
    MAX_VISIBILITY_TIMEOUT,
    message_ref,
    seconds,
    storable_text,
)

if TYPE_CHECKING:
    from .parts import Parts

logger = logging.getLogger(__name__)

#: a message as a lease call names it: its id and lease token (None: by id alone)
Ref = tuple[int, int | None]


def result_text(parts: Parts, result: object) -> str:
    """A result as the JSON text kept with a completed message; raises QueueError."""
    if not parts.backend.policy.keeps_history:
        raise QueueError(
            f"queue {parts.name!r} does not keep completed messages, so a result has nowhere "
            "to go; open it with retention=SECONDS (or retention_max=N). Nothing was changed",
            ErrorKind.INVALID_INPUT,
        )
    try:
        return json_text(result, "the result")
    except QueueError as exc:
        raise QueueError(f"{exc}; nothing was changed", exc.kind) from exc


def unsettled(queue: str, message: Message, what: str, result: Result[None, Any]) -> None:
    """Log it when a claim block that raised could not have its message failed or given
    back (``what``): the block's own exception is what the caller sees, so this Err is
    not raised in its place; unlogged, it would be lost (no error recorded, the message
    left leased until its lease expires)."""
    if isinstance(result, Err):
        logger.warning(
            "queue %r: the block of claim() raised, and message %d could not be %s: %s",
            queue,
            message.id,
            what,
            result.error,
        )


def complete(parts: Parts, message: object, text: str | None) -> None:
    """Complete one leased message, keeping ``text`` as its result."""
    leases = parts.leases
    message_id, token = leases.ref(message)
    outcome = parts.backend.complete(message_id, token, text)
    if outcome is not Outcome.DONE:
        # A refused call keeps the remembered token: later calls by id stay fenced.
        raise leases.outcome_error(outcome, message_id, "completed", token)
    leases.forget(((message_id, token),), "completed")
    if parts.backend.policy.max_depth is not None:
        parts.room.notify()
    parts.metrics.incr("complete")
    parts.upkeep.count()
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("queue %r: completed message %d", parts.name, message_id)


def _batch_refs(parts: Parts, messages: Sequence[object], action: str) -> list[Ref]:
    """The (id, lease token) of each message of a batch call; raises for a non-list."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise QueueError(f"{action} expects a list of messages or ids", ErrorKind.INVALID_INPUT)
    leases = parts.leases
    # A Message is the usual reference: read without the lease memory's lock.
    name = parts.name
    refs = [message_ref(m, name) if type(m) is Message else leases.ref(m) for m in messages]
    # The same lease twice is a mistake to say. One id under two leases is not: a worker
    # may hold a message again after its first lease ran out, and its heartbeat extends
    # both (the first is refused, by itself).
    if len(set(refs)) < len(refs):
        twice = next(ref[0] for i, ref in enumerate(refs) if ref in refs[:i])
        raise QueueError(
            f"{action} was given message {twice} more than once; pass each message once "
            "(nothing was changed)",
            ErrorKind.INVALID_INPUT,
            twice,
        )
    return refs


def _all_done(parts: Parts, refs: list[Ref], outcomes: list[Outcome], verb: str) -> None:
    """Raise, naming the refused messages, unless every outcome of an all-or-none batch is
    DONE (``verb``: what a DONE one was, "completed" say)."""
    refused = [
        (mid, token, o)
        for (mid, token), o in zip(refs, outcomes, strict=True)
        if o is not Outcome.DONE
    ]
    if refused:
        first_id, first_token, first = refused[0]
        reason = parts.leases.outcome_error(first, first_id, verb, first_token)
        raise QueueError(
            f"{len(refused)} of {len(refs)} message(s) could not be {verb} "
            f"(ids {', '.join(str(i) for i, _, _ in refused[:10])}), so none was; "
            f"message {first_id}: {reason}",
            reason.kind,
            first_id,
        )


def complete_batch(parts: Parts, messages: Sequence[object]) -> int:
    """Complete several leased messages in one transaction, all or none; the count."""
    refs = _batch_refs(parts, messages, "complete_batch")
    if not refs:
        return 0
    _all_done(parts, refs, parts.backend.complete_many(refs), "completed")
    parts.leases.forget(refs, "completed")
    if parts.backend.policy.max_depth is not None:
        parts.room.notify()
    parts.metrics.incr("complete", len(refs))
    parts.upkeep.count(len(refs))
    return len(refs)


def fail(
    parts: Parts,
    message: object,
    send_to_dlq: bool,
    error: str | None,
    delay: float | timedelta | None,
    retry_delay: Callable[[int], float],
) -> None:
    """Record a failed attempt: retried after ``delay`` (else ``retry_delay(attempts)``),
    or dead-lettered when its attempts are used or ``send_to_dlq``."""
    leases = parts.leases
    message_id, token = leases.ref(message)
    if error is not None and not isinstance(error, str):
        raise QueueError(
            f"error must be a str, got {type(error).__name__}", ErrorKind.INVALID_INPUT
        )
    if type(send_to_dlq) is int and send_to_dlq not in (0, 1):
        # fail_message(message, 30) reads as a delay, but would dead-letter it at once.
        # 0 and 1 stay flags: 0.1.0 code may pass them.
        hint = f" (for a delay, pass delay={send_to_dlq})" if 1 < send_to_dlq <= MAX_DELAY else ""
        raise QueueError(
            f"send_to_dlq must be True or False, got {send_to_dlq}{hint}; nothing was changed",
            ErrorKind.INVALID_INPUT,
        )
    if not (send_to_dlq is None or type(send_to_dlq) in (bool, int)):
        # fail_message(message, "timed out") would dead-letter it at once, the text lost.
        raise QueueError(
            f"send_to_dlq must be True or False, got a {type(send_to_dlq).__name__}; to "
            "record why the message failed, pass error=...; nothing was changed",
            ErrorKind.INVALID_INPUT,
        )
    text = storable_text(error[:MAX_ERROR_TEXT])[:MAX_ERROR_TEXT] if error is not None else None
    if delay is None:
        # The storage knows the attempt count, also when only the id was passed.
        retry_after = retry_delay
    else:
        after = seconds(delay, "delay", minimum=0, maximum=MAX_DELAY, strict=False)
        retry_after = lambda _attempts: after  # noqa: E731
    outcome, died = parts.backend.fail(message_id, token, text, retry_after, bool(send_to_dlq))
    if outcome is not Outcome.DONE:
        # A refused call keeps the remembered token: later calls by id stay fenced.
        # Back in the queue after this object gave it back: the id alone may
        # still dead-letter it (as for any message nobody holds).
        hint = f"fail_message({message_id}, send_to_dlq=True)" if send_to_dlq else ""
        raise leases.outcome_error(outcome, message_id, "failed", token, hint)
    leases.forget(((message_id, token),), "dead-lettered" if died else "failed")
    parts.metrics.incr("fail")
    if died:
        parts.metrics.incr("dead_letter")
        logger.info("queue %r: message %d moved to the dead-letter queue", parts.name, message_id)
    else:
        logger.debug("queue %r: failed message %d, to be retried", parts.name, message_id)
        parts.signal.notify()
    parts.upkeep.count()


def give_back(parts: Parts, message: object, refund: bool, action: str) -> None:
    """Return a leased message to the queue, visible at once (requeue and release); a
    requeued message that had no attempt left is dead-lettered instead."""
    leases = parts.leases
    message_id, token = leases.ref(message)
    outcome, died = parts.backend.release(message_id, token, 0.0, None, refund)
    if outcome is not Outcome.DONE:
        raise leases.outcome_error(outcome, message_id, f"{action}d", token)
    leases.forget(((message_id, token),), "dead-lettered" if died else f"{action}d")
    if died:
        parts.metrics.incr("dead_letter")
        logger.info(
            "queue %r: message %d %sd with no attempt left, moved to the dead-letter queue",
            parts.name,
            message_id,
            action,
        )
    else:
        logger.debug("queue %r: message %d %sd", parts.name, message_id, action)
        parts.signal.notify()
    parts.upkeep.count()


def release_batch(parts: Parts, messages: Sequence[object]) -> int:
    """Give back several leased messages not worked on, in one transaction, all or none;
    the count."""
    refs = _batch_refs(parts, messages, "release_batch")
    if not refs:
        return 0
    _all_done(parts, refs, parts.backend.release_many(refs), "released")
    parts.leases.forget(refs, "released")
    logger.debug("queue %r: released message(s) %s", parts.name, [mid for mid, _ in refs][:20])
    parts.signal.notify()
    parts.upkeep.count(len(refs))
    return len(refs)


def extend(parts: Parts, message: object, duration: float | timedelta) -> datetime:
    """Extend a live lease to ``duration`` from now; the new expiry."""
    message_id, token = parts.leases.ref(message)
    length = seconds(duration, "seconds", minimum=0, maximum=MAX_VISIBILITY_TIMEOUT, strict=True)
    # The backend measures the lease from when it holds the message's lock.
    outcome, until = parts.backend.extend(message_id, token, length)
    if outcome is not Outcome.DONE:
        raise parts.leases.outcome_error(outcome, message_id, "extended", token)
    expiry = to_datetime(until)
    assert expiry is not None
    return expiry


def extend_batch(parts: Parts, messages: Sequence[object], length: float) -> int:
    """Extend several live leases to ``length`` seconds from now in one transaction; the
    count. Each lease is fenced by its own token: those lost or expired are left as they
    are, the others are extended all the same, and LeasesNotExtended says which were not
    (a heartbeat keeps what it still holds and learns what it lost)."""
    refs = _batch_refs(parts, messages, "extend_batch")
    if not refs:
        raise QueueError(
            "extend_batch needs at least one message or id; nothing was extended",
            ErrorKind.INVALID_INPUT,
        )
    leases = parts.leases
    outcomes = parts.backend.extend_many(refs, length)
    refused = {
        mid: leases.outcome_error(outcome, mid, "extended", token)
        for (mid, token), (outcome, _) in zip(refs, outcomes, strict=True)
        if outcome is not Outcome.DONE
    }
    extended = sum(outcome is Outcome.DONE for outcome, _ in outcomes)
    if refused:
        first_id, first = next(iter(refused.items()))
        raise LeasesNotExtended(
            f"{len(refs) - extended} of {len(refs)} lease(s) could not be extended "
            f"(ids {', '.join(str(i) for i in list(refused)[:10])}); the other {extended} "
            f"were; message {first_id}: {first}",
            refused,
            extended,
        )
    return extended
