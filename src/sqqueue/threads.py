"""Plain functions called from asyncio code, each on a thread of its own.

``asyncio.to_thread`` runs a function on the event loop's default thread pool, which a few
threads bound (six on a 2-core machine). That pool also runs what the asyncio API does in
threads: the SQLite calls, the heartbeats, the shutdown. Handlers are user code: slow ones
would queue behind each other and starve those calls (leases would run out while a
heartbeat waits for a thread), and a hung one would hold a pool thread for good, so that
``asyncio.run`` never returns (it waits for the pool's threads). A thread of its own per
call costs about a tenth of a millisecond, bounds nothing but the handler itself, and, as
a daemon thread, never keeps the process from exiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

__all__ = ["run_in_own_thread"]

P = ParamSpec("P")
T = TypeVar("T")


async def run_in_own_thread(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn(*args, **kwargs)`` on a new daemon thread, in a copy of the caller's context
    (as ``asyncio.to_thread``). Cancelling the caller stops waiting, not the function."""
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

    def run() -> None:
        value: Any = None
        error: BaseException | None = None
        try:
            value = context.run(fn, *args, **kwargs)
        except BaseException as exc:  # handed to the caller, whatever it is
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
            loop.call_soon_threadsafe(settle, value, error)

    threading.Thread(target=run, name=f"sqqueue-call-{_name(fn)}", daemon=True).start()
    return await done


def _name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__name__", type(fn).__name__)
