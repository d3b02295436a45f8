"""A small Result type: every queue operation returns ``Ok(value)`` or ``Err(error)``.

Expected failures (unknown id, expired lease, locked database, bad input) come back as
``Err`` instead of raising, so callers can branch on them explicitly::

    result = queue.enqueue("hello")
    if result.is_ok():
        print(result.value)
    else:
        print(result.error)

An ``Ok`` is as true as its value and an ``Err`` is false, so ``if queue.is_empty():``
and ``if dequeued:`` read as they say; ask ``is_ok()`` whether a call succeeded.

``Result`` is the generic base class of ``Ok`` and ``Err`` (as in sqqueue 0.1.0), so
``isinstance(result, Result)`` holds for both and ``Result[int, QueueError]`` annotates
either. Both variants support structural pattern matching::

    match queue.dequeue():
        case Ok(None):
            print("empty")
        case Ok(message):
            handle(message)
        case Err(error):
            log(error)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, Literal, NoReturn, TypeVar

__all__ = ["Err", "Ok", "Result", "UnwrapError"]

T = TypeVar("T", covariant=True)
E = TypeVar("E", covariant=True)
U = TypeVar("U")


class UnwrapError(Exception):
    """Raised by ``Err.unwrap()`` when the error held is not itself an exception."""


class Result(Generic[T, E]):
    """``Ok[T, E]`` or ``Err[T, E]``: the outcome of an operation.

    ``value`` is the success value (reading it on an ``Err`` raises ``AttributeError``,
    as in 0.1.0, rather than passing for an empty result); ``error`` is the failure, or
    ``None`` on ``Ok``.
    """

    __slots__ = ()

    @property
    def value(self) -> T:
        raise NotImplementedError

    @property
    def error(self) -> E | None:
        raise NotImplementedError

    def is_ok(self) -> bool:
        raise NotImplementedError

    def is_err(self) -> bool:
        raise NotImplementedError

    def unwrap(self) -> T:
        """The value; on ``Err``, raise the error (or ``UnwrapError``)."""
        raise NotImplementedError

    def unwrap_or(self, default: U) -> T | U:
        """The value, or ``default`` on ``Err``."""
        raise NotImplementedError

    def map(self, fn: Callable[[T], U]) -> Result[U, E]:
        """``Ok(fn(value))``, or this ``Err`` unchanged."""
        raise NotImplementedError


class Ok(Result[T, E]):
    """A successful result holding ``value``."""

    __slots__ = ("_value",)
    __match_args__ = ("value",)

    def __init__(self, value: T) -> None:
        self._value = value

    @property
    def value(self) -> T:
        return self._value

    @property
    def error(self) -> None:
        """Always ``None`` on ``Ok``: there is no error."""
        return None

    def is_ok(self) -> Literal[True]:
        return True

    def is_err(self) -> Literal[False]:
        return False

    def unwrap(self) -> T:
        return self._value

    def unwrap_or(self, default: object) -> T:
        return self._value

    def map(self, fn: Callable[[T], U]) -> Ok[U, E]:
        return Ok(fn(self._value))

    def __iter__(self) -> Iterator[Any]:
        """Iterate over the value, so an ``Ok`` unpacks like what it holds: 0.1.0's first
        README example does ``message_id, payload = queue.dequeue()``."""
        values: Any = self._value  # not iterable: iter() raises TypeError, as unpacking would
        return iter(values)

    def __repr__(self) -> str:
        return f"Ok({self._value!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ok) and self._value == other._value

    def __hash__(self) -> int:
        return hash(("Ok", self._value))

    def __bool__(self) -> bool:
        """As true as the value held (an ``Err`` is false): so the 0.1.0 README's
        ``if dequeued:`` is false for an empty queue (``Ok(None)``) and ``if
        queue.is_empty():`` reads as written. Success is ``is_ok()``, not truth:
        ``complete()`` succeeds with ``Ok(None)``."""
        return bool(self._value)


class Err(Result[T, E]):
    """A failed result holding ``error`` (a ``QueueError`` for queue operations)."""

    __slots__ = ("_error",)
    __match_args__ = ("error",)

    def __init__(self, error: E) -> None:
        self._error = error

    @property
    def error(self) -> E:
        return self._error

    @property
    def value(self) -> NoReturn:
        """There is no value: raises ``AttributeError`` saying what failed, so that a
        failure is never mistaken for an empty result (``Ok(None)``)."""
        raise AttributeError(
            f"Err has no value (the call failed: {self._error}); check is_ok() first, "
            "or use unwrap_or(default)"
        )

    def is_ok(self) -> Literal[False]:
        return False

    def is_err(self) -> Literal[True]:
        return True

    def unwrap(self) -> NoReturn:
        """Raise the error (when it is an exception) or ``UnwrapError``."""
        if isinstance(self._error, BaseException):
            raise self._error
        raise UnwrapError(f"called unwrap() on {self!r}")

    def unwrap_or(self, default: U) -> U:
        return default

    def map(self, fn: Callable[[Any], object]) -> Err[Any, E]:
        return self

    def __repr__(self) -> str:
        return f"Err({self._error!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Err):
            return False
        mine, theirs = self._error, other._error
        if isinstance(mine, BaseException) and isinstance(theirs, BaseException):
            # Exceptions compare by identity; for results, the same type and text is equal.
            return type(mine) is type(theirs) and mine.args == theirs.args
        return bool(mine == theirs)

    def __hash__(self) -> int:
        err = self._error
        key = (type(err), err.args) if isinstance(err, BaseException) else err
        return hash(("Err", key))

    def __bool__(self) -> Literal[False]:
        return False
