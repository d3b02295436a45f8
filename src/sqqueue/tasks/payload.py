"""The message a task call becomes: a JSON object, with a format number so it can evolve.

::

    {"sqqueue_task": 1, "name": "myapp.jobs.send_email",
     "args": ["ada@example.com"], "kwargs": {"subject": "hi"}}

A periodic task's run also carries ``"tick"``: the Unix time of the tick it is for. A
worker reads format 1; a message of a newer format, one that is not a task call, or one
naming a task the worker does not know is dead-lettered with the reason (it can never
succeed here; redrive it once the workers are upgraded).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from enum import Enum
from typing import Any, NamedTuple

from ..exceptions import ErrorKind, QueueError, Reject
from ..serializers import MAX_JSON_DEPTH

__all__ = [
    "FORMAT",
    "MARK",
    "InvalidTaskMessage",
    "TaskCall",
    "UnknownTask",
    "check_json",
    "decode",
    "encode",
]

FORMAT = 1
MARK = "sqqueue_task"  #: the key that marks a task call; its value is the format number
_ALWAYS_WRITABLE_BITS = 2000  #: ints this long are under any int_max_str_digits limit


class InvalidTaskMessage(Reject):
    """The message is not a task call this worker can read, or its arguments do not fit
    the task's parameters (dead-lettered, not retried)."""


class UnknownTask(Reject):
    """The message names a task this worker does not know (dead-lettered, not retried)."""


class TaskCall(NamedTuple):
    name: str
    args: list[Any]
    kwargs: dict[str, Any]
    tick: float | None = None


def _kind(value: object) -> str:
    return type(value).__name__


def check_json(value: object, where: str, *, keys: bool = True) -> None:
    """Raise ``QueueError`` (SERIALIZATION) if ``value`` would not come back the same from
    JSON, or could not be written as JSON at all; the message names ``where`` it is and the
    path inside it (``['items'][2]``).

    ``keys=False``: the message shows no dict key (``[...][2]``; a bad key by its type),
    for a message that is logged and kept (a task's return value): keys are data.

    It walks the value with a stack of its own, never recursing: a value nested more than
    ``MAX_JSON_DEPTH`` deep, or containing itself, is refused here rather than raising
    ``RecursionError`` (or looping forever) in whatever writes it next (the digest of
    ``dedup=True``, the queue's serializer)."""
    stack: list[tuple[object, str, int]] = [(value, "", 0)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, Enum):  # (an IntEnum or StrEnum member is an int or a str too)
            raise QueueError(
                f"{where}{path} is the Enum member {type(item).__name__}.{item.name}; it would "
                "come back as its plain value: pass .value (and rebuild the member in the task)",
                ErrorKind.SERIALIZATION,
            )
        if item is None or isinstance(item, (bool, str)):
            continue
        if isinstance(item, (int, float)):
            _check_number(item, f"{where}{path}")
            continue
        if type(item) is list or type(item) is dict:
            if depth >= MAX_JSON_DEPTH:
                # Not the path: it would be MAX_JSON_DEPTH subscripts long.
                raise QueueError(
                    f"{where} is nested more than {MAX_JSON_DEPTH} lists or dicts deep (or "
                    "contains itself), too deep to decode reliably; flatten it",
                    ErrorKind.SERIALIZATION,
                )
            stack.extend(
                (sub, sub_path, depth + 1) for sub, sub_path in _items(item, where, path, keys)
            )
            continue
        if isinstance(item, tuple):
            hint = "it would come back as a list: pass a list"
        else:
            hint = (
                "task arguments and results are JSON (str, int, float, bool, None, and lists "
                "and dicts of them): pass a JSON value instead (e.g. a datetime's isoformat())"
            )
        raise QueueError(f"{where}{path} is a {_kind(item)}; {hint}", ErrorKind.SERIALIZATION)


def _items(
    item: list[Any] | dict[Any, Any], where: str, path: str, keys: bool
) -> list[tuple[object, str]]:
    """The values inside a list or dict, each with its path (its keys shown or not);
    refuses a non-str key."""
    if isinstance(item, list):
        return [(sub, f"{path}[{i}]") for i, sub in enumerate(item)]
    for key in item:
        if not isinstance(key, str) or isinstance(key, Enum):
            shown = f"the key {key!r}" if keys else f"a key of type {_kind(key)}"
            raise QueueError(
                f"{where}{path} has {shown}; JSON keys are str, so it would "
                "come back changed: use str keys",
                ErrorKind.SERIALIZATION,
            )
    return [(sub, f"{path}[{key!r}]" if keys else f"{path}[...]") for key, sub in item.items()]


def _check_number(item: int | float, where: str) -> None:
    """Refuse a float JSON cannot represent, or an int too long for Python to write as
    text (``sys.set_int_max_str_digits``), which ``json.dumps`` would raise on."""
    if isinstance(item, float):
        if not math.isfinite(item):
            raise QueueError(
                f"{where} is {item!r}, which JSON cannot represent; pass it as a str",
                ErrorKind.SERIALIZATION,
            )
        return
    # Python's smallest digit limit is 640 digits (over 2,100 bits): shorter ints always
    # convert, so only long ones pay for the conversion that finds out.
    if item.bit_length() <= _ALWAYS_WRITABLE_BITS:
        return
    try:
        int.__repr__(item)
    except ValueError:
        raise QueueError(
            f"{where} is an int too long to write as JSON text; pass it as a str",
            ErrorKind.SERIALIZATION,
        ) from None


def encode(
    name: str, args: list[Any], kwargs: dict[str, Any], tick: float | None = None
) -> dict[str, Any]:
    """The payload of a call (arguments already checked with :func:`check_json`)."""
    payload: dict[str, Any] = {MARK: FORMAT, "name": name, "args": args, "kwargs": kwargs}
    if tick is not None:
        payload["tick"] = tick
    return payload


def decode(payload: object) -> TaskCall:
    """The call a payload holds; raises :class:`InvalidTaskMessage` saying why not."""
    if not isinstance(payload, Mapping) or MARK not in payload:
        raise InvalidTaskMessage(
            f"not a task call (a {_kind(payload)} without the {MARK!r} key): this queue's "
            "workers run tasks; enqueue with a task's .delay()"
        )
    version = payload[MARK]
    if version != FORMAT:
        if not (isinstance(version, int) and not isinstance(version, bool) and 0 < version < 2**31):
            # By its type only: it is no format number, and may be anything (data).
            raise InvalidTaskMessage(
                f"malformed task message: its {MARK!r} field is a {_kind(version)}, not a "
                "format number (a small positive int)"
            )
        raise InvalidTaskMessage(
            f"task message format {version}, but this worker reads format {FORMAT}: "
            "upgrade sqqueue on the workers, then redrive the dead letter"
        )
    name, args, kwargs = payload.get("name"), payload.get("args"), payload.get("kwargs")
    tick = payload.get("tick")
    if (
        not isinstance(name, str)
        or not isinstance(args, list)
        or not isinstance(kwargs, dict)
        or not (tick is None or (isinstance(tick, (int, float)) and not isinstance(tick, bool)))
    ):
        # The fields' types, not their values: arguments are data (payloads are never
        # logged, and this error is, and kept as the dead letter's last_error).
        found = ", ".join(
            f"{key} {_kind(payload[key]) if key in payload else 'missing'}"
            for key in ("name", "args", "kwargs", "tick")
        )
        raise InvalidTaskMessage(
            "malformed task message: expected a str 'name', a list 'args', a dict "
            f"'kwargs' and an optional number 'tick', got {found}"
        )
    return TaskCall(name, args, kwargs, None if tick is None else float(tick))
