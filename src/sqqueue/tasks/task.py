"""A task: a function that can also be called later, by a worker, through the queue."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import inspect
import json
import math
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from ..exceptions import EnqueueError, ErrorKind, QueueError
from ..result import Err, Ok, Result
from ..retry import RetryPolicy
from .payload import check_json, encode
from .periodic import Periodic, periodic_group
from .results import TaskHandle

if TYPE_CHECKING:
    from .app import Tasks

__all__ = ["Task"]

P = ParamSpec("P")
R = TypeVar("R")

KeyOption = str | Callable[..., str] | None

#: ``_enqueue``'s ``conn`` when the call is not ``delay_in``'s (whose ``conn`` may be None)
_NO_CONNECTION: Any = object()


class Task(Generic[P, R]):
    """A registered function. Calling it runs it here, as before; ``delay(...)`` has a
    worker run it (``Ok(TaskHandle)``), ``schedule(...)`` with options (a delay, an
    ``eta``, a priority, a deduplication key...), ``delay_in(conn, ...)`` inside your
    own transaction, and ``await delay_async(...)`` from asyncio code.

    Arguments must be JSON values; anything else is refused at ``delay()`` with an
    ``Err`` naming the argument, before anything is enqueued.
    """

    def __init__(
        self,
        app: Tasks,
        fn: Callable[P, R],
        *,
        name: str,
        queue: str,
        priority: int | None = None,
        max_attempts: int | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        dedup: bool | Callable[..., str] | None = None,
        group: KeyOption = None,
        ttl: float | timedelta | None = None,
        store_result: bool = False,
        periodic: Periodic | None = None,
    ) -> None:
        if not callable(fn):
            raise ValueError(f"a task must be a function, got {type(fn).__name__}")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise ValueError("retry must be a sqqueue.RetryPolicy")
        if timeout is not None and not (
            isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0
        ):
            raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
        if dedup is not None and not isinstance(dedup, bool) and not callable(dedup):
            raise ValueError("dedup must be True (a key from the arguments) or a function")
        if group is not None and not isinstance(group, str) and not callable(group):
            raise ValueError("group must be a str or a function of the task's arguments")
        self.app = app
        self.fn = fn
        self.name = name
        self.queue = queue
        self.priority = priority
        self.max_attempts = max_attempts
        self.retry = retry
        self.timeout = None if timeout is None else float(timeout)
        self.dedup = dedup
        self.group = group
        self.ttl = ttl
        self.store_result = store_result
        self.periodic = periodic
        self.is_async = inspect.iscoroutinefunction(fn)
        self.signature = inspect.signature(fn)
        functools.update_wrapper(self, fn)

    def __repr__(self) -> str:
        return f"<Task {self.name} on queue {self.queue!r}>"

    # The methods taking the task's arguments take their own parameters positional-only
    # (``/``): a task parameter named ``self`` or ``conn`` is then one of the task's.

    def __call__(self, /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the function here, now, like a plain call."""
        return self.fn(*args, **kwargs)

    def handle(self, message_id: int) -> TaskHandle:
        """The handle of an earlier call, from its id (``handle.id``)."""
        return TaskHandle(self, message_id)

    # -- enqueueing ------------------------------------------------------------------------

    def delay(self, /, *args: P.args, **kwargs: P.kwargs) -> Result[TaskHandle, EnqueueError]:
        """Have a worker run ``fn(*args, **kwargs)`` as soon as it can: ``Ok(TaskHandle)``."""
        return self._enqueue(args, kwargs, {})

    def schedule(
        self,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        delay: float | timedelta | None = None,
        eta: datetime | None = None,
        priority: int | None = None,
        dedup_key: str | None = None,
        group: str | None = None,
        ttl: float | timedelta | None = None,
    ) -> Result[TaskHandle, EnqueueError]:
        """``delay()`` with options: run no earlier than ``delay`` seconds from now or at
        ``eta`` (a timezone-aware datetime), with this ``priority``, deduplication key,
        message group or time to live (each overriding the task's own)::

            send_email.schedule(("ada@example.com",), {"subject": "hi"}, delay=3600)
        """
        options = {
            "delay": delay,
            "eta": eta,
            "priority": priority,
            "dedup_key": dedup_key,
            "group": group,
            "ttl": ttl,
        }
        return self._enqueue(args, kwargs, options)

    def delay_in(
        self, conn: Any = None, /, *args: P.args, **kwargs: P.kwargs
    ) -> Result[TaskHandle, EnqueueError]:
        """``delay()`` inside your own open transaction on ``conn`` (an ``sqlite3``
        connection on the queue's file, or a ``psycopg`` connection): the call is enqueued
        if and only if your transaction commits (the outbox pattern). ``conn`` None is an
        ``Err`` (INVALID_INPUT), nothing enqueued: never an enqueue outside the
        transaction. ``conn=`` by keyword is the connection too, unless the task itself
        has a parameter named ``conn``."""
        if conn is None and "conn" in kwargs and "conn" not in self.signature.parameters:
            conn = kwargs.pop("conn")
        return self._enqueue(args, kwargs, {}, conn=conn)

    async def delay_async(
        self, /, *args: P.args, **kwargs: P.kwargs
    ) -> Result[TaskHandle, EnqueueError]:
        """``delay()`` for asyncio: the database work runs in a thread."""
        return await asyncio.to_thread(self._enqueue, args, kwargs, {})

    async def schedule_async(
        self,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> Result[TaskHandle, EnqueueError]:
        """``schedule()`` for asyncio."""
        return await asyncio.to_thread(functools.partial(self.schedule, args, kwargs, **options))

    # -- the parts of an enqueue -------------------------------------------------------------

    def _enqueue(
        self,
        call_args: object,
        call_kwargs: object,
        options: dict[str, Any],
        conn: Any = _NO_CONNECTION,
    ) -> Result[TaskHandle, EnqueueError]:
        try:
            args, kwargs = _arguments(call_args, call_kwargs)
            bound = self._bind(args, kwargs)
            payload = encode(self.name, args, kwargs)
            dedup_key = options.get("dedup_key") or self._key(self.dedup, bound, args, kwargs)
            group = self._group(options.get("group"), bound, args, kwargs)
            delay = self._delay(options.get("delay"), options.get("eta"))
            if self.periodic is not None and delay:
                # In the task's group, a call not due yet would hold back every tick
                # behind it until its time.
                raise QueueError(
                    "a periodic task called by hand runs now (its runs share a group, which "
                    "a later call would hold back): no delay or eta",
                    ErrorKind.INVALID_INPUT,
                )
            priority = options.get("priority")
            ttl = options.get("ttl")
            queue = self.app.queue(self.queue)
        except QueueError as exc:
            return Err(EnqueueError(f"{self.name}: {exc}; nothing was enqueued", exc.kind))
        except ValueError as exc:
            return Err(
                EnqueueError(f"{self.name}: {exc}; nothing was enqueued", ErrorKind.INVALID_INPUT)
            )
        keywords: dict[str, Any] = {
            "dedup_key": dedup_key,
            "group": group,
            "ttl": self.ttl if ttl is None else ttl,
        }
        priority = self.priority if priority is None else priority
        if conn is not _NO_CONNECTION:
            # None too: the queue refuses it (Err), where enqueue() would commit at once,
            # outside the transaction the caller meant.
            result = queue.enqueue_in(conn, payload, priority, delay, self.max_attempts, **keywords)
        else:
            result = queue.enqueue(payload, priority, delay, self.max_attempts, **keywords)
        if isinstance(result, Err):
            return Err(EnqueueError(f"{self.name}: {result.error}", result.error.kind))
        return Ok(TaskHandle(self, result.value))

    def _bind(self, args: list[Any], kwargs: dict[str, Any]) -> inspect.BoundArguments:
        """Check the arguments against the function's signature and JSON, by name."""
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise QueueError(f"bad arguments: {exc}", ErrorKind.INVALID_INPUT) from None
        parameters = self.signature.parameters
        for pname, value in bound.arguments.items():
            kind = parameters[pname].kind
            if kind is inspect.Parameter.VAR_POSITIONAL:
                for i, item in enumerate(value):
                    check_json(item, f"argument *{pname}[{i}]")
            elif kind is inspect.Parameter.VAR_KEYWORD:
                for key, item in value.items():
                    check_json(item, f"argument {key!r}")
            else:
                check_json(value, f"argument {pname!r}")
        return bound

    def _group(
        self,
        given: str | None,
        bound: inspect.BoundArguments,
        args: list[Any],
        kwargs: dict[str, Any],
    ) -> str | None:
        """The call's message group: ``schedule(group=)``, else the task's. Every call of
        a periodic task, its ticks' and one made by hand alike, is in the task's periodic
        group, so that no two of its runs overlap."""
        if self.periodic is None:
            return given or self._key(self.group, bound, args, kwargs)
        own = periodic_group(self.name)
        if given is not None and given != own:
            raise QueueError(
                f"a periodic task's calls are all in its group {own!r}, so that its runs "
                f"never overlap: group={given!r} is refused",
                ErrorKind.INVALID_INPUT,
            )
        return own

    def _key(
        self,
        option: bool | Callable[..., str] | str | None,
        bound: inspect.BoundArguments,
        args: list[Any],
        kwargs: dict[str, Any],
    ) -> str | None:
        """A deduplication key or group: fixed, computed by a function of the arguments,
        or (``True``) a digest of the task's name and its arguments."""
        if option is None or option is False:
            return None
        if isinstance(option, str):
            return option
        if option is True:
            return self._digest_key(bound)
        try:
            key = option(*args, **kwargs)
        except Exception as exc:
            raise QueueError(
                f"the key function raised {type(exc).__name__}: {exc}", ErrorKind.INVALID_INPUT
            ) from exc
        if not isinstance(key, str):
            raise QueueError(
                f"the key function returned a {type(key).__name__}, not a str",
                ErrorKind.INVALID_INPUT,
            )
        return key

    def _digest_key(self, bound: inspect.BoundArguments) -> str:
        """``dedup=True``'s key: a digest of the task's name and its arguments as bound
        to its parameters, with the defaults that are JSON values (so ``f(7)`` and
        ``f(7, full=False)`` are one call).

        Only JSON goes in, so every process makes the same key for the same call. A
        default that is not JSON (an ``object()`` sentinel: its repr holds a memory
        address) is left out: a call that does not give that argument is keyed by the
        arguments it gives (which delay() checked to be JSON)."""
        full = self.signature.bind(*bound.args, **bound.kwargs)
        full.apply_defaults()
        arguments: dict[str, Any] = {}
        parameters = self.signature.parameters
        for pname, value in full.arguments.items():
            # (An absent *args or **kwargs is () or {}, written as [] or {}: kept.)
            variadic = parameters[pname].kind in (
                inspect.Parameter.VAR_POSITIONAL,
                inspect.Parameter.VAR_KEYWORD,
            )
            if pname in bound.arguments or variadic or _is_json(value):
                arguments[pname] = value
        try:
            text = json.dumps(arguments, sort_keys=True, separators=(",", ":"))
        except RecursionError:
            # check_json bounds the nesting, but the caller's own stack may be deep already:
            # refused as the queue's serializer refuses it, not raised where a Result is due.
            raise QueueError(
                "the arguments are nested too deeply to write as JSON here; flatten them",
                ErrorKind.SERIALIZATION,
            ) from None
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        return f"{self.name}:{digest}"

    def _delay(self, delay: float | timedelta | None, eta: datetime | None) -> float | timedelta:
        if eta is None:
            return 0 if delay is None else delay
        if delay is not None:
            raise QueueError("give delay or eta, not both", ErrorKind.INVALID_INPUT)
        if not isinstance(eta, datetime) or eta.tzinfo is None or eta.utcoffset() is None:
            raise QueueError(
                f"eta must be a timezone-aware datetime (e.g. datetime.now(timezone.utc) + "
                f"timedelta(hours=1)), got {eta!r}",
                ErrorKind.INVALID_INPUT,
            )
        return max(0.0, eta.timestamp() - self.app.now())


def _is_json(value: object) -> bool:
    """Whether ``value`` comes back the same from JSON (see :func:`check_json`)."""
    try:
        check_json(value, "a default")
    except QueueError:
        return False
    return True


def _arguments(args: object, kwargs: object) -> tuple[list[Any], dict[str, Any]]:
    """A call's arguments as a list and a dict. ``schedule()`` takes them as values, which
    may be anything: a str would be split into characters, a list of pairs read as a dict;
    refused (``QueueError``, INVALID_INPUT) instead, as a Result, not raised."""
    if not isinstance(args, (tuple, list)):
        raise QueueError(
            f"args must be a tuple or list of the task's positional arguments, got "
            f"{type(args).__name__}",
            ErrorKind.INVALID_INPUT,
        )
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise QueueError(
            f"kwargs must be a dict of the task's keyword arguments, got {type(kwargs).__name__}",
            ErrorKind.INVALID_INPUT,
        )
    return list(args), dict(kwargs or {})
