"""Limits and validators shared by the queue's calls and its settings.

A validator raises :class:`~sqqueue.QueueError` (``INVALID_INPUT``) saying what is wrong;
the Result API turns that into ``Err``, construction into ``ValueError`` (:func:`config`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, TypeVar

from ..exceptions import ErrorKind, QueueError

if TYPE_CHECKING:
    from ..message import Message

T = TypeVar("T")

# Limits that catch mistakes (a delay in milliseconds, a negative timeout) early.
MIN_PRIORITY, MAX_PRIORITY = -(2**31), 2**31 - 1
MAX_DELAY = 10 * 366 * 86400.0  # ten years
MAX_VISIBILITY_TIMEOUT = 7 * 86400.0  # a week; longer work extends its lease
MAX_ATTEMPTS = 1_000_000
MAX_BATCH_SIZE = 10_000
MAX_ID = 2**63 - 1  # SQLite's largest integer
MAX_ERROR_TEXT = 8_192
MAX_WAIT = 86400.0


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def seconds(value: object, what: str, *, minimum: float, maximum: float, strict: bool) -> float:
    """Validate a duration in seconds (number or timedelta); raise QueueError if invalid."""
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise QueueError(
            f"{what} must be a number of seconds, got {type(value).__name__}",
            ErrorKind.INVALID_INPUT,
        )
    number = float(value)
    too_small = number <= minimum if strict else number < minimum
    if not math.isfinite(number) or too_small or number > maximum:
        low = f"> {plain(minimum)}" if strict else f">= {plain(minimum)}"
        raise QueueError(
            f"{what} must be {low} and <= {plain(maximum)} seconds{_in_days(maximum)}, "
            f"got {value!r}",
            ErrorKind.INVALID_INPUT,
        )
    return number


def plain(number: float) -> str:
    """A number as people write it: 316224000, not 3.16224e+08."""
    return str(int(number)) if float(number).is_integer() else f"{number:.15g}"


def _in_days(limit: float) -> str:
    """`` (N days)`` for a limit of a day or more, which is easier to read in days."""
    days = limit / 86400
    return f" ({int(days)} days)" if days >= 1 and days.is_integer() else ""


def bounded_int(value: object, what: str, low: int, high: int) -> int:
    if not is_int(value):
        raise QueueError(
            f"{what} must be an int, got {type(value).__name__}", ErrorKind.INVALID_INPUT
        )
    assert isinstance(value, int)
    if not low <= value <= high:
        raise QueueError(
            f"{what} must be between {low} and {high}, got {value}", ErrorKind.INVALID_INPUT
        )
    return value


def config(check: Callable[[], T]) -> T:
    """Run a validator at construction time, where bad settings raise ValueError."""
    try:
        return check()
    except QueueError as exc:
        raise ValueError(str(exc)) from None


def storable_text(text: str) -> str:
    """``text`` with each lone surrogate written as its escape (``\\udcff``).

    os.fsdecode() puts one in for each byte of a file name that is not UTF-8, and no
    database takes it as text (nor a log file written as UTF-8). An error naming such a
    file must still be recorded: refused, the failure was lost, and a rejected message
    was delivered again and again. An escape, not "?", keeps the text telling which byte
    it was."""
    if text.isascii():
        return text  # the usual case, checked cheaply
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def error_text(exc: BaseException) -> str:
    """The last line of a traceback: ``ValueError: bad input``, storable (see
    ``storable_text``). Never raises, even for an exception whose ``__str__`` does."""
    name = type(exc).__name__
    try:
        text = str(exc)
    except BaseException as broken:  # (a __str__ raising KeyboardInterrupt is input too)
        return f"{name} (its message could not be read: str() raised {type(broken).__name__})"
    return storable_text(f"{name}: {text}" if text else name)


def message_ref(message: Message, queue: str) -> tuple[int, int]:
    """A Message's (id, lease token), checked before queue ``queue`` acts on its lease.

    Its fields may have been set to anything since a queue made it, and a wrong one must
    be refused as such, not fail in the database (an int too large for it) or name another
    message ("1" for 1). A Message with no lease token (from peek(), or built by hand) is
    refused too: acting on it by id alone could end the lease another consumer holds, and
    a Message promises exact fencing (a bare id stays unfenced, as in 0.1.0). So is one
    another queue delivered: its id names another message here."""
    mid, token = message.id, message.lease_token
    id_ok = type(mid) is int and 0 <= mid <= MAX_ID
    if not id_ok or not (token is None or (type(token) is int and 0 <= token <= MAX_ID)):
        raise QueueError(
            f"this Message's id ({mid!r}) or lease token ({token!r}) is not one a queue "
            "gives: pass the Message as dequeue() returned it, or its id",
            ErrorKind.INVALID_INPUT,
        )
    # An empty name: a Message built by hand, which says nothing about its queue.
    if message.queue and message.queue != queue:
        raise QueueError(
            f"message {mid} is from queue {message.queue!r}, not {queue!r}: pass it to the "
            "queue that delivered it; nothing was changed",
            ErrorKind.INVALID_INPUT,
        )
    if token is None:
        raise QueueError(
            f"this Message (id {mid}) was not leased: it came from peek(), or was built from "
            "a listing, so it holds no lease to act on. Dequeue the message to act on it, or "
            f"pass its id ({mid}) to act without fencing; nothing was changed",
            ErrorKind.INVALID_INPUT,
        )
    return mid, token
