"""A small Result type: every queue operation returns ``Ok(value)`` or ``Err(error)``.

Expected failures (unknown id, expired lease, locked database, bad input) come back as
``Err`` instead of raising, so callers can branch on them explicitly::

    result = queue.enqueue("hello")
    if result.is_ok():
        print(result.value)
    else:
        print(result.error)

Both variants support structural pattern matching::

    match queue.dequeue():
        case Ok(None):
            print("empty")
        case Ok(message):
            handle(message)
        case Err(error):
            log(error)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, Literal, NoReturn, TypeAlias, TypeVar

__all__ = ["Err", "Ok", "Result", "UnwrapError"]

T = TypeVar("T", covariant=True)
E = TypeVar("E", covariant=True)
U = TypeVar("U")


class UnwrapError(Exception):
    """Raised by ``Err.unwrap()`` when the error held is not itself an exception."""


class Ok(Generic[T]):
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

    def map(self, fn: Callable[[T], U]) -> Ok[U]:
        return Ok(fn(self._value))

    def __repr__(self) -> str:
        return f"Ok({self._value!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ok) and self._value == other._value

    def __hash__(self) -> int:
        return hash(("Ok", self._value))

    def __bool__(self) -> Literal[True]:
        # ``Ok`` is truthy and ``Err`` falsy, so ``assert queue.complete(m)`` checks success.
        # Note ``Ok(None)`` (an empty dequeue) is truthy too: test ``.value`` for that.
        return True


class Err(Generic[E]):
    """A failed result holding ``error`` (a ``QueueError`` for queue operations)."""

    __slots__ = ("_error",)
    __match_args__ = ("error",)

    def __init__(self, error: E) -> None:
        self._error = error

    @property
    def error(self) -> E:
        return self._error

    @property
    def value(self) -> None:
        """Always ``None`` on ``Err``: there is no value."""
        return None

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

    def map(self, fn: Callable[[Any], object]) -> Err[E]:
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


Result: TypeAlias = Ok[T] | Err[E]
"""``Ok[T] | Err[E]``: narrow with ``is_ok()``/``isinstance`` or ``match``."""
