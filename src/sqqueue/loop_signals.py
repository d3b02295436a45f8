"""SIGTERM and SIGINT on an event loop, shared by whatever runs there until a signal:
each signal goes to every receiver registered on the loop, and when the last one leaves,
the handlers the program had before are put back."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from typing import Any

__all__ = ["receive_signals", "stop_receiving"]


class _LoopSignals:
    """SIGTERM and SIGINT for the receivers on one event loop (AsyncWorkers, a task
    worker; the main thread's loop: only it takes signals). One handler per signal, on the
    loop, passes each signal to every receiver; when the last one leaves, the handlers
    that were there before are put back."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.receivers: list[Callable[[int], None]] = []
        # The handler each signal had before (signal.getsignal), to put back; None when
        # it cannot be (set outside Python, or by the loop: loop.add_signal_handler's
        # callbacks cannot be read back), and the default comes back instead.
        self.previous: dict[int, Any] = {}

    def install(self) -> bool:
        """Take SIGTERM and SIGINT on the loop; whether it could (not on Windows)."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            before = signal.getsignal(signum)
            try:
                self.loop.add_signal_handler(signum, self.deliver, int(signum))
            except (NotImplementedError, RuntimeError):
                continue
            # One the program added on the loop shows as the loop's, the same as ours.
            self.previous[int(signum)] = None if before is signal.getsignal(signum) else before
        return bool(self.previous)

    def deliver(self, signum: int) -> None:
        for receiver in list(self.receivers):
            receiver(signum)

    def restore(self) -> None:
        for signum, before in self.previous.items():
            self.loop.remove_signal_handler(signum)  # back to the default
            if before is not None:
                signal.signal(signum, before)


_by_loop: dict[asyncio.AbstractEventLoop, _LoopSignals] = {}


def receive_signals(receiver: Callable[[int], None]) -> bool:
    """Pass SIGTERM and SIGINT to ``receiver`` (on the running loop, with every other
    receiver of that loop's) until :func:`stop_receiving`; whether they will come."""
    loop = asyncio.get_running_loop()
    signals = _by_loop.get(loop)
    if signals is None:
        signals = _LoopSignals(loop)
        if not signals.install():
            return False
        _by_loop[loop] = signals
    signals.receivers.append(receiver)
    return True


def stop_receiving(receiver: Callable[[int], None]) -> None:
    """``receiver`` gets no more signals; after the last of its loop's, the handlers that
    were there before are put back."""
    loop = asyncio.get_running_loop()
    signals = _by_loop[loop]
    signals.receivers.remove(receiver)
    if not signals.receivers:
        del _by_loop[loop]
        signals.restore()
