"""Producing: payloads and items to validated, encoded new messages, stored in one
transaction (waiting for room when the queue is full, if asked), which concurrent
callers share (:mod:`.group_commit`). This is the one place a message is built for
insert."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from ..backends.base import NewMessage
from ..exceptions import ErrorKind, QueueError, QueueFull
from ..message import Item
from ..serializers import Encoded
from .checks import (
    MAX_ATTEMPTS,
    MAX_DELAY,
    MAX_PRIORITY,
    MAX_WAIT,
    MIN_PRIORITY,
    bounded_int,
    plain,
    seconds,
)

if TYPE_CHECKING:
    from .parts import Parts

logger = logging.getLogger(__name__)

# Builds a named tuple without running its __new__ (a Python function): 2% of an
# enqueue, 5% of a batch (bench/profile-notes.md).
_tuple_new = tuple.__new__
# Producers waiting for room (max_depth) poll from every 2 ms up to every 50 ms; in-process
# completions wake them at once.
_ROOM_POLL_MIN, _ROOM_POLL_MAX = 0.002, 0.05


class Defaults(Protocol):
    """Where a producer reads the defaults of new messages: the queue's public
    attributes, which may be set at any time (they are checked when next used)."""

    default_priority: int
    default_max_attempts: int
    default_ttl: float | None


class Producer:
    """Builds and stores new messages with the queue's defaults."""

    def __init__(self, parts: Parts, defaults: Defaults) -> None:
        self.parts = parts
        self.queue = defaults
        self._cached: tuple[Any, Any, Any, tuple[int, int, float | None]] | None = None

    def defaults(self) -> tuple[int, int, float | None]:
        """The queue's default priority, max attempts and time to live (seconds),
        validated again only when one of them is set to another object (validating them
        on every enqueue would cost it 38% more: bench/profile-notes.md)."""
        queue = self.queue
        priority, attempts, ttl = (
            queue.default_priority,
            queue.default_max_attempts,
            queue.default_ttl,
        )
        cached = self._cached
        if cached is None or (
            cached[0] is not priority or cached[1] is not attempts or cached[2] is not ttl
        ):
            probe = self.with_options(Item(None), Encoded("", "text", 0))
            valid = (probe.priority, probe.max_attempts, probe.ttl)
            cached = self._cached = (priority, attempts, ttl, valid)
        return cached[3]

    def new_message(self, item: object, defaults: tuple[int, int, float | None]) -> NewMessage:
        """Validate and encode one item: an :class:`Item` with its options, or a bare
        payload (``enqueue`` and ``enqueue_batch`` pass those when there are no options),
        which takes the queue's ``defaults`` (from ``defaults``, once per call)."""
        if isinstance(item, Item):
            return self.with_options(item, self.parts.codec.encode(item.payload))
        data, encoding, checksum = self.parts.codec.encode(item)
        priority, max_attempts, ttl = defaults
        signer = self.parts.signer
        signature = None
        if signer is not None:
            signature = signer.sign(data, encoding, priority, max_attempts, None)
        # tuple.__new__: NewMessage(...) would run the named tuple's __new__ in Python.
        return _tuple_new(
            NewMessage,
            (data, encoding, checksum, priority, 0.0, max_attempts, None, None, ttl, signature),
        )

    def with_options(self, item: Item, encoded: Encoded) -> NewMessage:
        queue = self.queue
        prio = queue.default_priority if item.priority is None else item.priority
        prio = bounded_int(prio, "priority", MIN_PRIORITY, MAX_PRIORITY)
        delay = 0 if item.delay is None else item.delay
        after = seconds(delay, "delay", minimum=0, maximum=MAX_DELAY, strict=False)
        attempts = queue.default_max_attempts if item.max_attempts is None else item.max_attempts
        attempts = bounded_int(attempts, "max_attempts", 1, MAX_ATTEMPTS)
        ttl = queue.default_ttl if item.ttl is None else item.ttl
        if ttl is not None:
            ttl = seconds(ttl, "ttl", minimum=0, maximum=MAX_DELAY, strict=True)
        for label, value in (("dedup_key", item.dedup_key), ("group", item.group)):
            if value is None:
                continue
            if not isinstance(value, str) or not 0 < len(value) <= 512:
                raise QueueError(
                    f"{label} must be a non-empty str of at most 512 characters, got {value!r}",
                    ErrorKind.INVALID_INPUT,
                )
            if "\x00" in value:
                # PostgreSQL text cannot hold one; refused on every backend alike.
                raise QueueError(
                    f"{label} must not contain NUL characters (\\x00), got {value!r}",
                    ErrorKind.INVALID_INPUT,
                )
            if not _is_utf8(value):
                # A key is matched exactly, so it is refused rather than escaped (an escaped
                # key could equal another caller's). The database cannot store it as text.
                raise QueueError(
                    f"{label} must be valid UTF-8 text, got {value!r}, which holds a lone "
                    "surrogate (as os.fsdecode() makes of bytes that are not UTF-8); build "
                    "it from text, or escape it first",
                    ErrorKind.INVALID_INPUT,
                )
        signer = self.parts.signer
        signature = None
        if signer is not None:
            signature = signer.sign(encoded.data, encoded.encoding, prio, attempts, item.group)
        return NewMessage(
            data=encoded.data,
            encoding=encoded.encoding,
            checksum=encoded.checksum,
            priority=prio,
            delay=after,
            max_attempts=attempts,
            dedup_key=item.dedup_key,
            group_key=item.group,
            ttl=ttl,
            signature=signature,
        )

    def new_messages(self, items: Sequence[object]) -> list[NewMessage]:
        """Validate and encode ``items``, all or none; an error names its item. (A single
        item goes through ``new_message`` alone: its error needs no number.)"""
        batch: list[NewMessage] = []
        defaults = self.defaults()
        for index, item in enumerate(items):
            try:
                batch.append(self.new_message(item, defaults))
            except QueueError as exc:
                raise QueueError(f"item {index}: {exc}; nothing was enqueued", exc.kind) from exc
        return batch

    def store(self, items: Sequence[object], wait: object, conn: Any = None) -> list[int]:
        """Encode and insert ``items`` in one transaction; wait for room if asked."""
        patience = deadline = 0.0  # no waiting for room
        if not (type(wait) is int and wait == 0):  # (not bool(wait): it may raise)
            patience = seconds(wait, "wait", minimum=0, maximum=MAX_WAIT, strict=False)
            deadline = time.monotonic() + patience
        if len(items) == 1:
            batch = [self.new_message(items[0], self.defaults())]  # enqueue()
        else:
            batch = self.new_messages(items)
            if not batch:
                return []
        try:
            ids = self._insert(batch, conn)
        except QueueError as exc:
            if exc.kind is not ErrorKind.QUEUE_FULL:
                raise
            ids = self._insert_when_room(batch, conn, patience, deadline, exc)
        parts = self.parts
        parts.signal.notify()
        parts.metrics.incr("enqueue", len(ids))
        # Inside the caller's transaction (the outbox), no upkeep: it would wait for the
        # write lock that transaction holds.
        parts.upkeep.count(len(ids), conn is None)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("queue %r: enqueued message(s) %s", parts.name, ids[:20])
        return ids

    def _insert(self, batch: list[NewMessage], conn: Any) -> list[int]:
        """Insert encoded messages: in ``conn``'s transaction if given, else in one of
        their own, perhaps shared with other callers."""
        if conn is not None:
            return self.parts.backend.enqueue_in(conn, batch)
        return self.parts.commits.enqueue(batch)

    def _insert_when_room(
        self,
        batch: list[NewMessage],
        conn: Any,
        patience: float,
        deadline: float,
        full: QueueError,
    ) -> list[int]:
        """Insert ``batch`` into a full queue once it has room, trying until ``deadline``
        (``time.monotonic()``, ``patience`` seconds after the call began); completions in
        this process wake the wait at once, others are polled."""
        room = self.parts.room
        nap = _ROOM_POLL_MIN
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or conn is not None:
                raise QueueFull(f"enqueue failed: {full}{_full_advice(patience, conn)}") from full
            room.wait(room.seq, min(nap, remaining))
            nap = min(nap * 2, _ROOM_POLL_MAX)
            try:
                return self._insert(batch, conn)
            except QueueError as exc:
                if exc.kind is not ErrorKind.QUEUE_FULL:
                    raise
                full = exc


def _is_utf8(text: str) -> bool:
    """Whether ``text`` can be written as UTF-8: it holds no lone surrogate."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def batch_items(payloads: object) -> list[object]:
    """``enqueue_batch``'s entries as Items, or as bare payloads when they have no
    options (cheaper: most batches are plain payloads)."""
    if isinstance(payloads, (str, bytes, bytearray, dict)) or not isinstance(payloads, Sequence):
        raise QueueError(
            f"enqueue_batch expects a list of payloads, got {type(payloads).__name__}",
            ErrorKind.INVALID_INPUT,
        )
    items: list[object] = []
    for index, entry in enumerate(payloads):
        if isinstance(entry, tuple):
            if not 1 <= len(entry) <= 4:
                raise QueueError(
                    f"item {index}: a tuple item must be (payload, priority, delay, "
                    f"max_attempts) with 1 to 4 elements, got {len(entry)}; nothing was "
                    "enqueued",
                    ErrorKind.INVALID_INPUT,
                )
            payload, priority, delay, attempts = (*entry, None, None, None)[:4]
            items.append(Item(payload, priority, delay, attempts))
        else:
            items.append(entry)  # an Item, or a bare payload
    return items


def _full_advice(waited: float, conn: object) -> str:
    """What to do about a full queue, after waiting ``waited`` seconds (or not at all)."""
    if conn is not None:
        return "; retry later (enqueue_in cannot wait: your transaction holds the lock)"
    if waited:
        return (
            f" after waiting {plain(waited)} s for room; consumers are not keeping up: "
            "add consumers, raise max_depth, or wait longer"
        )
    return ". Retry later, or pass wait= to block until there is room"


def driver_connection(conn: Any) -> Any:
    """The database driver's connection behind ``conn``, for ``enqueue_in``: ``conn``
    itself, or what a SQLAlchemy ``Session``, ``Connection`` or pooled connection wraps.

    Duck-typed, so the core never imports SQLAlchemy. A SQLAlchemy ``Connection`` must be
    in a transaction: its ``commit()`` does nothing otherwise, and the message would be
    rolled back when the connection goes back to the pool.
    """
    module = type(conn).__module__ or ""
    if not module.startswith("sqlalchemy."):
        return conn
    if module.startswith("sqlalchemy.ext.asyncio"):
        raise QueueError(
            "enqueue_in takes a synchronous connection; for SQLAlchemy's asyncio API, "
            "enqueue from a synchronous Session or Connection on the same database",
            ErrorKind.INVALID_INPUT,
        )
    if callable(getattr(conn, "get_bind", None)):
        conn = conn.connection()  # a Session: the connection of its transaction (begun now)
    if callable(getattr(conn, "in_transaction", None)) and hasattr(conn, "connection"):
        if not conn.in_transaction():
            raise QueueError(
                "the SQLAlchemy connection has no transaction yet: open one first (with "
                "engine.begin() as conn:, or conn.begin()) so the message commits with "
                "your rows",
                ErrorKind.INVALID_INPUT,
            )
        conn = conn.connection  # the pool's proxy of the driver connection
    driver = getattr(conn, "driver_connection", None) or getattr(conn, "dbapi_connection", None)
    if driver is None:
        raise QueueError(
            f"cannot find the database connection inside SQLAlchemy's {type(conn).__name__}; "
            "pass a Session, a Connection, or the driver's connection "
            "(conn.connection.driver_connection)",
            ErrorKind.INVALID_INPUT,
        )
    return driver
