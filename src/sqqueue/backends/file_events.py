"""Notice of writes to a database's files, from Linux's inotify.

An idle watcher used to look at the database 20 times a second; each look after a sleep
costs far more CPU than the look itself (caches gone cold), which put an idle worker near
1% of a core. With file events the watcher sleeps until a file is written. The standard
library has no inotify binding, so this module calls the C library through ``ctypes``;
where that is not possible (another system, the per-user limit on inotify instances
reached, a file that cannot be watched) :func:`watch` returns ``None`` and the watcher
polls as before.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import logging
import os
import select
import sys

__all__ = ["FileEvents", "watch"]

logger = logging.getLogger(__name__)

# From <sys/inotify.h>: a file was written; the watch went away (file deleted, filesystem
# unmounted). Any event, an overflow of the kernel's queue included, counts as a write.
_IN_MODIFY = 0x00000002
_IN_IGNORED = 0x00008000
_EVENT_HEADER = 16  # int wd; uint32 mask, cookie, len
_READ_SIZE = 64 * 1024


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.inotify_init1.argtypes = [ctypes.c_int]
        libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    except (OSError, AttributeError):
        return None
    return libc


class FileEvents:
    """An inotify instance watching some files for writes.

    :meth:`wait` blocks until a write is pending (without consuming it);
    :meth:`touched` consumes what is pending and says whether there was any. A watcher
    that calls them in that order, and reads the database after ``touched``, misses no
    commit: a write before ``touched`` is reported by it, one after makes the next
    ``wait`` return at once.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._poller = select.poll()  # not select(): it fails for descriptors past 1023
        self._poller.register(fd, select.POLLIN)
        #: False once a watched file went away: the watcher then polls again
        self.working = True

    def wait(self, seconds: float) -> None:
        """Return when a watched file has been written, or after ``seconds``."""
        self._poller.poll(max(0, int(seconds * 1000)))

    def touched(self) -> bool:
        """Whether any watched file was written since the last call (consumes the events)."""
        written = False
        while True:
            try:
                data = os.read(self._fd, _READ_SIZE)
            except BlockingIOError:
                return written
            if not data:
                return written
            written = True
            offset = 0
            while offset + _EVENT_HEADER <= len(data):
                mask = int.from_bytes(data[offset + 4 : offset + 8], sys.byteorder)
                length = int.from_bytes(data[offset + 12 : offset + 16], sys.byteorder)
                if mask & _IN_IGNORED:
                    self.working = False  # a file was deleted or replaced under the queue
                offset += _EVENT_HEADER + length

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)


def watch(paths: list[str]) -> FileEvents | None:
    """File events for writes to each of ``paths`` that exists, or None where inotify
    cannot serve (the caller then polls)."""
    libc = _libc()
    if libc is None:
        return None
    fd = int(libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC))
    if fd < 0:
        logger.debug("no file events: inotify_init1: %s", os.strerror(ctypes.get_errno()))
        return None
    watched = 0
    for path in paths:
        if not os.path.exists(path):
            continue
        if int(libc.inotify_add_watch(fd, os.fsencode(path), _IN_MODIFY)) < 0:
            logger.debug("no file events: inotify_add_watch: %s", os.strerror(ctypes.get_errno()))
            os.close(fd)
            return None
        watched += 1
    if not watched:
        os.close(fd)
        return None
    return FileEvents(fd)
