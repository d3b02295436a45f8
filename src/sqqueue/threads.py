"""Plain functions called from asyncio code, on threads of their own.

``asyncio.to_thread`` runs a function on the event loop's default thread pool, which a few
threads bound (six on a 2-core machine). That pool also runs what the asyncio API does in
threads: the SQLite calls, a worker's steps that run hooks, the shutdown, and whatever an
application hands it (``asyncio.to_thread`` in a handler). Handlers are user code: slow
ones would queue behind each other and starve those calls, and a hung one would hold a
pool thread for good, so that ``asyncio.run`` never returns (it waits for the pool's
threads). A thread of its own per call costs about a tenth of a millisecond, bounds
nothing but the handler itself, and, as a daemon thread, never keeps the process from
exiting. A worker's heartbeat, which keeps the running handlers' leases, must never wait
for that pool either: it has a thread of its own for the worker's life
(:class:`DedicatedThread`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import queue
import threading
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

__all__ = ["DedicatedThread", "run_in_own_thread"]

P = ParamSpec("P")
T = TypeVar("T")


async def run_in_own_thread(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn(*args, **kwargs)`` on a new daemon thread, in a copy of the caller's context
    (as ``asyncio.to_thread``). Cancelling the caller stops waiting, not the function."""
    done, call = _handed_over(fn, *args, **kwargs)
    threading.Thread(target=call, name=f"sqqueue-call-{_name(fn)}", daemon=True).start()
    return await done


class DedicatedThread:
    """One daemon thread that runs the calls handed to it, one after another, in the
    order given, each in a copy of its caller's context: for calls that must never wait
    behind others' (a worker's heartbeat). Started when made; :meth:`close` lets it end
    once the calls handed over before have run."""

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    async def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args, **kwargs)`` on this thread, once the calls before it have run.
        Cancelling the caller stops waiting, not the function."""
        if self._closed:
            raise RuntimeError(f"thread {self._thread.name} is closed")
        done, call = _handed_over(fn, *args, **kwargs)
        self._calls.put(call)
        return await done

    def close(self) -> None:
        """Let the thread end after the calls handed over so far (without waiting)."""
        if not self._closed:
            self._closed = True
            self._calls.put(None)

    def _serve(self) -> None:
        while (call := self._calls.get()) is not None:
            call()


def _handed_over(
    fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
) -> tuple[asyncio.Future[T], Callable[[], None]]:
    """A future on the running loop, and the call to run on another thread that settles
    it with what ``fn(*args, **kwargs)`` returns or raises."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()
    context = contextvars.copy_context()

    def settle(value: Any, error: BaseException | None) -> None:
        if done.done():  # the caller was cancelled meanwhile
            return
        if error is None:
            done.set_result(value)
        elif isinstance(error, StopIteration):
            # A future refuses it (the await would end as if a generator had): it arrives
            # as a coroutine would pass it on (PEP 479), a RuntimeError caused by it.
            wrapped = RuntimeError(f"{_name(fn)} raised StopIteration")
            wrapped.__cause__ = error
            done.set_exception(wrapped)
        else:
            done.set_exception(error)

    def call() -> None:
        value: Any = None
        error: BaseException | None = None
        try:
            value = context.run(fn, *args, **kwargs)
        except BaseException as exc:  # handed to the caller, whatever it is
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
            loop.call_soon_threadsafe(settle, value, error)

    return done, call


def _name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__name__", type(fn).__name__)
