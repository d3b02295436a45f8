"""What the API says when a call does nothing: the right kind, what happened, what to do,
in one line, with no traceback logged for an expected failure.

Behaviour tests run on every backend (``queue``/``make_queue``).
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from sqqueue import (
    Err,
    ErrorKind,
    Message,
    Ok,
    Queue,
    QueueError,
    Result,
)

README = Path(__file__).resolve().parent.parent / "README.md"


def ok(result: Result[Any, Any]) -> Any:
    assert isinstance(result, Ok), f"expected Ok, got {result!r}"
    return result.value


def err(result: Result[Any, Any], kind: ErrorKind) -> QueueError:
    assert isinstance(result, Err), f"expected Err({kind}), got {result!r}"
    assert result.error.kind is kind, f"expected {kind}, got {result.error!r}"
    return result.error


def take(queue: Queue, **kwargs: Any) -> Message:
    message = ok(queue.dequeue(**kwargs))
    assert isinstance(message, Message)
    return message


# -- payloads that JSON cannot carry -----------------------------------------------------------


def _nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


def _self_containing() -> list[Any]:
    value: list[Any] = []
    value.append(value)
    return value


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        (10**5000, "integer too long"),
        ({"n": -(10**5000)}, "integer too long"),
        (_nested(5000), "nested more than"),
        ({"tree": _nested(600)}, "nested more than"),
        (_self_containing(), "contains itself"),
    ],
    ids=["huge-int", "huge-int-inside", "deep-list", "deep-dict", "cycle"],
)
def test_unstorable_json_is_a_serialization_error_without_traceback(
    queue: Queue, payload: Any, words: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Not STORAGE "failed unexpectedly" with an ERROR traceback: SERIALIZATION, saying
    what is wrong and what to do, logged at DEBUG only, and nothing enqueued."""
    with caplog.at_level(logging.DEBUG, logger="sqqueue"):
        error = err(queue.enqueue(payload), ErrorKind.SERIALIZATION)
        batch = err(queue.enqueue_batch(["fine", payload]), ErrorKind.SERIALIZATION)
    text = str(error)
    assert words in text
    assert "unexpectedly" not in text and "\n" not in text
    assert "serializer=" in text or "string" in text
    assert "item 1" in str(batch)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [r for r in caplog.records if r.exc_info]
    assert ok(queue.stats()).enqueued_total == 0


def test_json_nested_within_the_limit_round_trips(queue: Queue) -> None:
    deep = _nested(400)
    ok(queue.enqueue(deep))
    assert take(queue).payload == deep


@pytest.mark.parametrize(
    ("value", "hint"),
    [
        (datetime(2026, 1, 31), "isoformat"),
        ((1, 2), "to a list"),
        ({1, 2}, "sorted"),
    ],
    ids=["datetime", "tuple", "set"],
)
def test_unsupported_value_inside_json_gets_a_hint_for_its_type(
    queue: Queue, value: Any, hint: str
) -> None:
    error = err(queue.enqueue({"when": value}), ErrorKind.SERIALIZATION)
    assert hint in str(error)
    if not isinstance(value, tuple):
        assert "tuple" not in str(error)
