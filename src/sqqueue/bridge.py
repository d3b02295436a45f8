"""Synchronous code on the event loop, without a thread: how the one queue core runs
natively on asyncio where the database driver has an asyncio face (PostgreSQL).

The queue logic is synchronous. :func:`run` starts a synchronous call in a greenlet on
the event loop's thread; wherever that call would wait on I/O, the code below it asks
:func:`wait_for` to await a coroutine instead: the greenlet switches back to the task
that started it, the task awaits the coroutine on the loop (other tasks run meanwhile),
and switches back in with its result or exception. Outside such a greenlet nothing
changes, so the very same code keeps running on threads. (SQLAlchemy's asyncio support
is built the same way.)

Code that may run in a bridged call must never block the thread: it asks
:func:`active` and then awaits (:func:`wait_for`, :func:`sleep`, :class:`Wake`).
Locks held only around memory, never across a wait, are safe as they are.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

try:
    import greenlet
except ImportError:  # the postgres extra brings it
    greenlet = None

__all__ = ["AVAILABLE", "Started", "Wake", "active", "run", "sleep", "start", "wait_for"]

T = TypeVar("T")

#: whether the greenlet package is installed (without it, every call runs in a thread)
AVAILABLE = greenlet is not None

_Greenlet: Any = greenlet.greenlet if greenlet is not None else object


class _Bridged(_Greenlet):  # type: ignore[misc]
    """The greenlet of one bridged call; its parent is the event loop's."""


def active() -> bool:
    """Whether this code runs in a bridged call, on the event loop's thread."""
    return greenlet is not None and isinstance(greenlet.getcurrent(), _Bridged)


def wait_for(awaitable: Awaitable[T]) -> T:
    """Await ``awaitable`` on the event loop from inside a bridged call; its result (or
    its exception, raised here)."""
    current = greenlet.getcurrent()
    if not isinstance(current, _Bridged):
        raise RuntimeError("wait_for() is for code that runs in sqqueue.bridge.run()")
    return cast(T, current.parent.switch(awaitable))


class Started:
    """A bridged call, run up to its first wait (or to its end, if it never waits)."""

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        if greenlet is None:
            raise RuntimeError("the greenlet package is needed: pip install 'sqqueue[postgres]'")
        self._call = _Bridged(fn, greenlet.getcurrent())
        # What it awaits next, or (once ended) its value; what it raised is raised here.
        self._request: Any = self._call.switch(*args)

    @property
    def done(self) -> bool:
        """Whether it ended without waiting for anything."""
        return bool(self._call.dead)

    async def finish(self) -> Any:
        """Carry it on to its end, awaiting what it waits for; its value."""
        call, request = self._call, self._request
        while not call.dead:
            try:
                value = await request
            except BaseException as exc:  # raised inside the call, which decides
                request = call.throw(exc)
            else:
                request = call.switch(value)
        return request

    def value(self) -> Any:
        """Its value, once :attr:`done`."""
        assert self.done
        return self._request


def start(fn: Callable[..., Any], *args: Any) -> Started:
    """Run ``fn(*args)`` on this event loop's thread up to its first wait: a call that
    never waits on I/O costs no task (see :func:`run`)."""
    return Started(fn, *args)


async def run(fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(*args)`` on this event loop's thread, awaiting whatever it hands to
    :func:`wait_for`; its value, or what it raised."""
    return cast(T, await Started(fn, *args).finish())


def sleep(seconds: float) -> None:
    """``time.sleep``, or an asyncio sleep inside a bridged call."""
    if active():
        wait_for(asyncio.sleep(seconds))
    else:
        time.sleep(seconds)


class Wake:
    """A one-shot wake-up that one caller waits for and another gives, from any thread
    or bridged call: a locked ``threading.Lock`` for a thread, an asyncio future for a
    bridged call (which must not block its loop)."""

    def __init__(self) -> None:
        self._future: asyncio.Future[None] | None = None
        self._lock: threading.Lock | None = None
        if active():
            self._future = asyncio.get_running_loop().create_future()
        else:
            self._lock = threading.Lock()
            self._lock.acquire()

    def wait(self) -> None:
        """Until :meth:`give` is called."""
        if self._future is not None:
            wait_for(asyncio.shield(self._future))
        else:
            assert self._lock is not None
            self._lock.acquire()

    def give(self) -> None:
        """Wake the waiter (once)."""
        future = self._future
        if future is None:
            assert self._lock is not None
            self._lock.release()
            return
        loop = future.get_loop()
        if _on_loop_thread(loop):
            if not future.done():
                future.set_result(None)
        elif not loop.is_closed():
            loop.call_soon_threadsafe(_settle, future)


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _on_loop_thread(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
