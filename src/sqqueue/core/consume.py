"""Consuming: claims, the wait plan shared by the sync and asyncio queues, and the lease
memory that fences calls by bare id."""

from __future__ import annotations

import collections
import itertools
import logging
import math
import os
import random
import threading
import time
from collections.abc import Callable, Generator, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, TypeVar

from ..backends.base import Backend, Outcome
from ..exceptions import ErrorKind, QueueError
from ..message import Message
from . import convert
from .checks import MAX_ID, MAX_VISIBILITY_TIMEOUT, MAX_WAIT, is_int, message_ref, seconds

if TYPE_CHECKING:
    from .parts import Parts

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Leases a queue object remembers for calls by bare id (about 10 MB at most). Past that it
# forgets the oldest, and from then on fences bare ids by the lease's issuer (see ref).
LEASE_MEMORY = 100_000
# A lease token is this queue object's issuer number (a random 30 bits, new in each process)
# and a count of its claims (32 bits): a token says which object issued it.
_ISSUER_SHIFT = 32
# Leases a queue object ended itself (completed, failed, gave back), remembered so that a
# second call on the same Message says what happened instead of "expired".
_ENDED_MEMORY = 10_000
# A waiting consumer sleeps until it is woken (an enqueue in this process, or the watcher
# seeing another connection's commit: see wakeup.py) or something falls due, re-reading
# the clock at least this often while something is due (with nothing due, a clock jump
# changes nothing, and an idle consumer sleeps until woken or its wait ends).
_RECHECK = 1.0

# A wait is a small plan of steps that a driver carries out: ("call", fn) runs a storage
# call, ("sleep", seconds, seq, changes) waits for a wake-up (the signal's seq or changes
# moving past these). The sync queue runs the steps inline; the asyncio queue runs calls
# in a thread and sleeps on the event loop: one logic, two drivers.
Step: TypeAlias = (
    tuple[Literal["call"], Callable[[], Any]] | tuple[Literal["sleep"], float, int, int]
)


class Leases:
    """The leases one queue object issued and ended: tokens for calls by bare id, and
    what it did with each lease it ended, to explain a second call on it."""

    def __init__(self, backend: Backend, name: str) -> None:
        self.backend = backend
        self.name = name
        self.held: dict[int, int] = {}
        # By (id, token): the messages of one batch claim share their token.
        self.ended: collections.OrderedDict[tuple[int, int], str] = collections.OrderedDict()
        self.lock = threading.Lock()
        self.forgot = False  # set once LEASE_MEMORY overflowed: see ref
        self.issuer = random.getrandbits(30) or 1
        self.issuer_pid = os.getpid()  # the issuer number is drawn again in a forked child
        self.claims = itertools.count(1)

    def ref(self, message: object) -> tuple[int, int | None]:
        """(id, lease token) of a Message or an id this object may have leased."""
        if isinstance(message, Message):
            return message_ref(message, self.name)
        if is_int(message):
            assert isinstance(message, int)
            if not 0 <= message <= MAX_ID:
                raise QueueError(
                    f"message id {message} is out of range (0 to {MAX_ID})",
                    ErrorKind.INVALID_INPUT,
                    None,
                )
            with self.lock:
                token = self.held.get(message)
                if token is not None or not self.forgot:
                    return message, token
            return message, self.own_lease(message)
        raise QueueError(
            f"expected a Message or a message id (int), got {type(message).__name__}",
            ErrorKind.INVALID_INPUT,
        )

    def own_lease(self, message_id: int) -> int | None:
        """The token to act on ``message_id`` by bare id once this object has forgotten
        leases: that of a lease this object issued; none (the backend then reports what it
        finds) when nobody holds the message. A lease issued by another consumer is refused:
        this object may have held the message before and forgotten it, and acting on the
        other's lease would undo that consumer's work."""
        found = self.backend.lease_of(message_id)
        if found is None or found[0] != "processing":
            return None
        token = found[1]
        if token is not None and token >> _ISSUER_SHIFT == self.issuer:
            return token
        raise QueueError(
            f"message {message_id} is held by another consumer's lease, and this queue "
            f"object no longer remembers whether it held the message before (it had more "
            f"than {LEASE_MEMORY:,} leases not yet finished, and forgot the oldest); nothing "
            "was changed. Pass the Message returned by dequeue to act on a lease exactly",
            ErrorKind.LEASE_LOST,
            message_id,
        )

    def new_token(self) -> int:
        """A lease token: this object's issuer number, then the claim count."""
        if self.issuer_pid != os.getpid():  # a forked child's first claim
            self.issuer = random.getrandbits(30) or 1
            self.issuer_pid = os.getpid()
        return self.issuer << _ISSUER_SHIFT | (next(self.claims) & 0xFFFF_FFFF)

    def remember(self, messages: Sequence[Message]) -> None:
        with self.lock:
            for m in messages:
                if m.lease_token is not None:
                    self.held.pop(m.id, None)
                    self.held[m.id] = m.lease_token
            if len(self.held) <= LEASE_MEMORY:
                return
            while len(self.held) > LEASE_MEMORY:
                del self.held[next(iter(self.held))]
            if self.forgot:
                return
            self.forgot = True
        logger.warning(
            "queue %r: this queue object holds more than %d leases not yet finished and "
            "forgets the oldest; from now on a call by bare id acts only on a lease this "
            "object issued (pass the Message for exact fencing, or finish messages sooner)",
            self.name,
            LEASE_MEMORY,
        )

    def forget(self, refs: Sequence[tuple[int, int | None]], what: str) -> None:
        """Forget leases this object just ended, remembering ``what`` it did with each
        (a past-tense verb: "completed", "failed", ...) for :meth:`outcome_error`."""
        with self.lock:
            ended = self.ended
            for message_id, token in refs:
                self.held.pop(message_id, None)
                if token is not None:
                    ended[message_id, token] = what
            while len(ended) > _ENDED_MEMORY:
                ended.popitem(last=False)

    def ended_here(self, message_id: int, token: int | None) -> str | None:
        """What this object did with message ``message_id``'s lease ``token``, if it ended
        it itself."""
        if token is None:
            return None
        with self.lock:
            return self.ended.get((message_id, token))

    def outcome_error(
        self,
        outcome: Outcome,
        message_id: int,
        action: str,
        token: int | None = None,
        by_id: str = "",
    ) -> QueueError:
        """Explain why a call on one message did nothing. ``by_id`` is the call that does
        it by id, for a message back in the queue (see :meth:`ended_error`)."""
        q = self.name
        done = self.ended_here(message_id, token)
        if done is not None:
            return self.ended_error(outcome, message_id, action, done, by_id)
        if outcome is Outcome.NOT_FOUND:
            return QueueError(
                f"message {message_id} is not in queue {q!r}: it was completed, or never existed",
                ErrorKind.NOT_FOUND,
                message_id,
            )
        if outcome is Outcome.DEAD:
            return QueueError(
                f"message {message_id} is in the dead-letter queue of {q!r}; "
                f"use reprocess_dead_letter({message_id}) to retry it",
                ErrorKind.WRONG_STATE,
                message_id,
            )
        if outcome is Outcome.PENDING:
            return QueueError(
                f"message {message_id} is pending, not being processed, so it cannot be "
                f"{action}; dequeue it first",
                ErrorKind.WRONG_STATE,
                message_id,
            )
        if outcome is Outcome.LEASE_LOST:
            return QueueError(
                f"message {message_id} was delivered to another consumer after this lease "
                "expired; nothing was changed. Extend leases for slow work",
                ErrorKind.LEASE_LOST,
                message_id,
            )
        return QueueError(
            f"the lease on message {message_id} has expired, so it cannot be {action}; "
            "it will be delivered again. Extend leases (extend()) for slow work",
            ErrorKind.LEASE_EXPIRED,
            message_id,
        )

    def ended_error(
        self, outcome: Outcome, message_id: int, action: str, done: str, by_id: str
    ) -> QueueError:
        """Why a call on a lease this object already ended did nothing: say what it did,
        and where the message is now (nothing expired)."""
        said = f"this queue object already {done} message {message_id}, which ended its lease"
        if outcome is Outcome.NOT_FOUND:
            return QueueError(
                f"{said}; it is no longer in queue {self.name!r} (completed); nothing was changed",
                ErrorKind.NOT_FOUND,
                message_id,
            )
        if outcome is Outcome.DEAD:
            return QueueError(
                f"{said}; it is in the dead-letter queue now, so it cannot be {action}; use "
                f"reprocess_dead_letter({message_id}) to retry it",
                ErrorKind.WRONG_STATE,
                message_id,
            )
        if outcome is Outcome.LEASE_LOST:
            return QueueError(
                f"{said}; another consumer holds it now, so it cannot be {action} by this "
                "lease; nothing was changed",
                ErrorKind.LEASE_LOST,
                message_id,
            )
        then = f"; to do it now, pass its id: {by_id}" if by_id else ""
        return QueueError(
            f"{said}; it is back in the queue, not leased, so it cannot be {action} again "
            f"with that lease; nothing was changed{then}",
            ErrorKind.WRONG_STATE,
            message_id,
        )


def lease_seconds(visibility_timeout: object, default: object) -> float:
    """The lease length a claim asked for (``None``: the queue's ``default``, checked
    too: ``default_visibility_timeout`` may have been set to anything since)."""
    if visibility_timeout is None:
        value, what = default, "default_visibility_timeout"
    else:
        value, what = visibility_timeout, "visibility_timeout"
    return seconds(value, what, minimum=0, maximum=MAX_VISIBILITY_TIMEOUT, strict=True)


def cancel_check(cancel: object) -> Callable[[], bool] | None:
    """What a waiting claim asks to know whether ``cancel`` (a ``threading.Event``, or
    None) was set; anything else is refused, before the wait."""
    if cancel is None:
        return None
    is_set = getattr(cancel, "is_set", None)
    if not callable(is_set):
        raise QueueError(
            f"cancel must be a threading.Event (or None), got {type(cancel).__name__}",
            ErrorKind.INVALID_INPUT,
        )
    return is_set  # type: ignore[no-any-return]


def claim(parts: Parts, limit: int, timeout: float) -> list[Message]:
    """Lease up to ``limit`` messages for ``timeout`` seconds, without waiting."""
    messages: list[Message] = []
    backend, leases = parts.backend, parts.leases
    # Poisoned rows are dead-lettered and skipped; claim again to fill the batch.
    while len(messages) < limit:
        token = leases.new_token()
        # The backend starts the lease when the claim holds its locks, not before.
        rows, folded = backend.claim(limit - len(messages), timeout, token)
        if folded:
            parts.metrics.incr("recovered", folded)
        good = convert.messages(parts, rows)
        messages.extend(good)
        # Claim again only when every row was poisoned: messages already leased are
        # not kept waiting for another transaction.
        if good or not rows:
            break
    leases.remember(messages)
    if messages:
        parts.metrics.incr("dequeue", len(messages))
        parts.upkeep.count(len(messages))
        if logger.isEnabledFor(logging.DEBUG):
            for m in messages:
                logger.debug(
                    "queue %r: leased message %d (attempt %d of %d)",
                    parts.name,
                    m.id,
                    m.attempts,
                    m.max_attempts,
                    extra={"message_id": m.id, "attempt": m.attempts},
                )
    return messages


def claim_plan(
    parts: Parts,
    limit: int,
    timeout: float,
    wait: object,
    cancelled: Callable[[], bool] | None = None,
) -> Generator[Step, Any, list[Message]]:
    """Claim up to ``limit`` messages for ``timeout`` seconds, waiting up to ``wait``
    seconds for some.

    ``cancelled`` is checked at every wake-up: a worker shutting down uses it (and
    ``wake_waiters``) to stop waiting at once.
    """
    patience = seconds(wait, "wait", minimum=0, maximum=MAX_WAIT, strict=False)
    deadline = time.monotonic() + patience
    backend, signal = parts.backend, parts.signal
    while True:
        # Read before claiming, so that a wake-up in between is not missed.
        seq, seen = signal.seq, signal.changes
        messages: list[Message] = yield ("call", lambda: claim(parts, limit, timeout))
        if messages or time.monotonic() >= deadline:
            return messages
        # Commits by other connections nudge the signal from now on (one watcher per
        # process and database does the polling, however many consumers wait).
        yield ("call", backend.watch)
        due = yield ("call", lambda: due_at(parts))
        # A backend whose wake-ups can be lost (NOTIFY over a dropped connection) is
        # also re-checked every poll_fallback seconds.
        fallback = getattr(backend, "poll_fallback", None)
        recheck_at = time.monotonic() + fallback if fallback else math.inf
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (cancelled is not None and cancelled()):
                return []
            if time.monotonic() >= recheck_at:
                break
            until_due = due - parts.now()
            if until_due <= 0:
                break  # a delayed message fell due or a lease expired: claim it
            # While something is due, the clock is read again at least every _RECHECK
            # seconds, so a wait follows a clock that jumps (a stepped wall clock, a
            # test's fake one).
            recheck = _RECHECK if until_due < math.inf else math.inf
            nap = min(remaining, until_due, recheck, max(recheck_at - time.monotonic(), 0))
            woken = yield ("sleep", nap, seq, seen)
            if cancelled is not None and cancelled():
                return []
            if woken:
                break  # an enqueue in this process
            if signal.changes != seen:  # another connection committed: look again
                seen = signal.changes
                due = yield ("call", lambda: due_at(parts))


def due_at(parts: Parts) -> float:
    """When, on the queue's clock, a claim could next succeed; inf if the queue is empty.

    The backend says how long from now (on its own clock), so only the time that passes
    on the queue's clock counts: a client clock that is off by a constant (PostgreSQL)
    does not matter, and an injected clock (tests) moves the wait forward."""
    due = parts.backend.next_due()
    return math.inf if due is None else parts.now() + due


def drive(parts: Parts, plan: Generator[Step, Any, T]) -> T:
    """Carry out a plan synchronously: calls inline, sleeps on the in-process signal."""
    signal = parts.signal
    try:
        step = next(plan)
        while True:
            if step[0] == "call":
                step = plan.send(step[1]())
            else:
                step = plan.send(signal.wait(step[2], step[1], step[3]))
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
