"""The message handed to consumers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from typing import Any

__all__ = ["Item", "Message"]


def to_datetime(timestamp: float | None) -> datetime | None:
    """Unix seconds (as stored) to an aware UTC datetime."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, tz=timezone.utc)


@dataclass(frozen=True, slots=True)
class Message:
    """A message taken from a queue.

    It unpacks like the ``(id, payload)`` pair of sqqueue 0.1.0, and equals it::

        msg_id, payload = message
        assert message == (msg_id, payload)

    and carries the rest as attributes. Pass the message itself (not just its id) to
    ``complete``/``fail_message``/``extend``/``requeue``: it holds the lease token that
    proves this consumer still owns the message.
    """

    id: int
    payload: Any
    priority: int
    attempts: int
    max_attempts: int
    enqueued_at: datetime
    lease_expires_at: datetime | None
    last_error: str | None = None
    queue: str = ""
    lease_token: int | None = field(default=None, repr=False, compare=False)
    group: str | None = None
    expires_at: datetime | None = None
    prior_attempts: int = 0  #: attempts made before the message was last redriven

    def __init__(
        self,
        id: int,
        payload: Any,
        priority: int,
        attempts: int,
        max_attempts: int,
        enqueued_at: datetime,
        lease_expires_at: datetime | None,
        last_error: str | None = None,
        queue: str = "",
        lease_token: int | None = None,
        group: str | None = None,
        expires_at: datetime | None = None,
        prior_attempts: int = 0,
    ) -> None:
        # The fields, in their order, each set through its slot's own setter: the
        # __init__ a frozen dataclass gets calls object.__setattr__ once per field, twice
        # the instructions, and a queue makes a Message for every message it delivers
        # (bench/profile-notes.md).
        set_field = _FIELD_SETTERS
        set_field[0](self, id)
        set_field[1](self, payload)
        set_field[2](self, priority)
        set_field[3](self, attempts)
        set_field[4](self, max_attempts)
        set_field[5](self, enqueued_at)
        set_field[6](self, lease_expires_at)
        set_field[7](self, last_error)
        set_field[8](self, queue)
        set_field[9](self, lease_token)
        set_field[10](self, group)
        set_field[11](self, expires_at)
        set_field[12](self, prior_attempts)

    def __eq__(self, other: object) -> bool:
        # 0.1.0 handed out (id, payload) tuples: a message still equals its pair.
        if isinstance(other, tuple):
            return (self.id, self.payload) == other
        if type(other) is not Message:
            return NotImplemented
        return self._compared() == other._compared()

    def __hash__(self) -> int:
        # The pair's hash, so that a message and the pair it equals hash alike.
        return hash((self.id, self.payload))

    def _compared(self) -> tuple[Any, ...]:
        """The fields equality compares: all but the lease token (a fencing detail)."""
        return (
            self.id,
            self.payload,
            self.priority,
            self.attempts,
            self.max_attempts,
            self.enqueued_at,
            self.lease_expires_at,
            self.last_error,
            self.queue,
            self.group,
            self.expires_at,
            self.prior_attempts,
        )

    def __iter__(self) -> Iterator[Any]:
        yield self.id
        yield self.payload

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> Any:
        return (self.id, self.payload)[index]

    # Ordered, counted and searched as its (id, payload) pair, as 0.1.0's tuples were:
    # ``sorted(batch)`` orders a batch by id.
    def _pair(self, other: object) -> tuple[tuple[Any, Any], tuple[Any, ...]] | None:
        if isinstance(other, Message):
            return (self.id, self.payload), (other.id, other.payload)
        if isinstance(other, tuple):
            return (self.id, self.payload), other
        return None

    def __lt__(self, other: object) -> bool:
        pair = self._pair(other)
        return NotImplemented if pair is None else pair[0] < pair[1]

    def __le__(self, other: object) -> bool:
        pair = self._pair(other)
        return NotImplemented if pair is None else pair[0] <= pair[1]

    def __gt__(self, other: object) -> bool:
        pair = self._pair(other)
        return NotImplemented if pair is None else pair[0] > pair[1]

    def __ge__(self, other: object) -> bool:
        pair = self._pair(other)
        return NotImplemented if pair is None else pair[0] >= pair[1]

    def count(self, value: Any) -> int:
        return (self.id, self.payload).count(value)

    def index(self, value: Any) -> int:
        return (self.id, self.payload).index(value)

    def __repr__(self) -> str:
        payload = repr(self.payload)
        if len(payload) > 60:
            payload = payload[:57] + "..."
        return (
            f"Message(id={self.id}, payload={payload}, priority={self.priority}, "
            f"attempts={self.attempts}/{self.max_attempts}, queue={self.queue!r})"
        )


# Message's slot setters in the order of its fields (dataclass(slots=True) makes the class
# with its slots, so they exist only once the decorator has run).
_FIELD_SETTERS: tuple[Callable[[Message, Any], None], ...] = tuple(
    getattr(Message, f.name).__set__ for f in fields(Message)
)


@dataclass(frozen=True, slots=True)
class Item:
    """A message to enqueue with its options, for ``enqueue_batch``::

    queue.enqueue_batch([Item({"order": 1}, dedup_key="order-1", group="cust-7")])
    """

    payload: Any
    priority: int | None = None
    delay: Any = 0
    max_attempts: int | None = None
    dedup_key: str | None = None
    group: str | None = None
    ttl: Any = None
