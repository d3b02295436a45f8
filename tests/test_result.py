"""The Result type: the spec's interface plus unwrap, equality, repr and pattern matching."""

from __future__ import annotations

import pytest

from sqqueue import Err, Ok, QueueError, Result, UnwrapError
from sqqueue.exceptions import ErrorKind


def test_ok_interface() -> None:
    r = Ok(5)
    assert r.is_ok() and not r.is_err()
    assert r.value == 5
    assert r.error is None
    assert r.unwrap() == 5
    assert r.unwrap_or(0) == 5
    assert repr(r) == "Ok(5)"
    assert bool(r) is True
    # As true as its value: the 0.1.0 README's `if dequeued:` and `if queue.is_empty():`.
    assert [bool(Ok(v)) for v in (None, False, 0, [], "", True, [1])] == [False] * 5 + [True] * 2
    assert r.map(lambda v: v + 1) == Ok(6)


def test_err_interface() -> None:
    e = QueueError("boom", ErrorKind.NOT_FOUND, 3)
    r = Err(e)
    assert r.is_err() and not r.is_ok()
    assert r.error is e
    assert not hasattr(r, "value")  # as in 0.1.0: a failure never reads as an empty result
    assert r.unwrap_or(7) == 7
    assert bool(r) is False
    assert "boom" in repr(r) and "not_found" in repr(r)
    with pytest.raises(QueueError, match="boom"):
        r.unwrap()
    with pytest.raises(UnwrapError):
        Err("plain").unwrap()


def test_equality_and_hash() -> None:
    assert Ok(1) == Ok(1)
    assert Ok(1) != Ok(2)
    assert Ok(1) != Err(1)
    assert Err(QueueError("x")) == Err(QueueError("x"))
    assert Err(QueueError("x")) != Err(QueueError("y"))
    assert len({Ok(1), Ok(1), Err("a"), Err("a")}) == 2
    assert Ok(None) == Ok(None)


@pytest.mark.parametrize(
    ("result", "expected"),
    [(Ok(None), "empty"), (Ok(3), "value 3"), (Err(QueueError("bad")), "error bad")],
)
def test_match_case(result: Result[int | None, QueueError], expected: str) -> None:
    match result:
        case Ok(None):
            seen = "empty"
        case Ok(value):
            seen = f"value {value}"
        case Err(error):
            seen = f"error {error}"
    assert seen == expected
