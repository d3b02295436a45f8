"""Group commit: concurrent enqueues of one queue object share a transaction.

A caller that finds no commit running leads at once: it inserts its own messages and
those of every caller that queued up behind it meanwhile, in one call of the backend's
many-message insert (one transaction), then hands the lead to the first caller waiting
and returns. Callers that arrive while a commit runs wait for the next one; each gets its
own ids, or its own error, only once the transaction holding its messages has ended. A
caller alone never waits: there is no timer, and no waiting for company.

Errors keep each caller's answer its own:

- a failure of the database itself (locked past the timeout, disk full, read-only,
  closed, an unknown outcome of the commit, corruption) reaches every caller of the
  group, each raising its own copy;
- any other failure may come from one caller's messages (a full queue that has room for
  some of them, a value the database refuses): every caller of the group, the leader
  too, then inserts its own messages again, alone, and gets the answer it would have got
  without company;
- a leader interrupted by a ``BaseException`` (``KeyboardInterrupt``) before its insert
  returned leaves nothing committed (the backend rolls back on any exception), so the
  other callers of its group insert their messages again, alone; the next caller waiting
  takes the lead as always.

Callers may be threads or asyncio tasks running the core on the event loop (see
:mod:`sqqueue.bridge`): a caller waits on a :class:`~sqqueue.bridge.Wake`, which blocks a
thread but suspends a task, so a task waiting in line never stalls its loop.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Sequence

from ..backends.base import Backend, NewMessage
from ..bridge import Wake
from ..exceptions import DATABASE_FAILURES, ErrorKind, QueueError

# Failures the same for every caller of a group: the database's own, and a commit whose
# outcome is unknown (inserting again alone could store a message twice).
_SHARED_FAILURES = DATABASE_FAILURES | {ErrorKind.UNKNOWN_OUTCOME}


def _shared(error: Exception) -> bool:
    """Whether ``error`` is a failure of the database, the same for every caller."""
    return isinstance(error, QueueError) and error.kind in _SHARED_FAILURES


# Every GroupCommit of this process, to start afresh in a forked child: the threads that
# held the lead or waited in line do not exist there.
_everyone: weakref.WeakSet[GroupCommit] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for commits in list(_everyone):
        commits.reset()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

#: the cap of a shared commit where the backend shares commits by default
DEFAULT_MAX = 1000

# What a waiting caller is told when it wakes up.
_LEAD, _DONE, _ALONE = "lead", "done", "alone"


class _Caller:
    """One call waiting in line: its messages, and then its answer."""

    __slots__ = ("error", "ids", "messages", "started", "verdict", "wake")

    def __init__(self, messages: Sequence[NewMessage]) -> None:
        self.messages = messages
        # Its time in line counts against its lock timeout: no call waits longer in all.
        self.started = time.monotonic()
        self.verdict = ""  # set under the lock, before ``wake`` is set
        self.ids: list[int] = []
        self.error: QueueError | None = None
        # Only callers who wait need one, given by the leader.
        self.wake: Wake | None = None


class GroupCommit:
    """Inserts the messages of concurrent callers through the backend's many-message
    insert (one transaction per call), many callers per call, at most ``max_messages``
    messages per call (a caller's own messages always go together). ``max_messages=1``
    turns grouping off: every caller inserts alone."""

    def __init__(self, backend: Backend, max_messages: int) -> None:
        self.backend = backend
        self.max_messages = max_messages
        self.reset()
        _everyone.add(self)

    def reset(self) -> None:
        """Start with nobody in line (a new object, or one inherited by a forked child)."""
        self._lock = threading.Lock()
        self._busy = False  # a leader holds the lead (committing, or woken to commit)
        self._waiting: deque[_Caller] = deque()

    @property
    def waiting(self) -> int:
        """How many callers wait for a commit that has not started yet."""
        return len(self._waiting)

    def enqueue(self, messages: Sequence[NewMessage]) -> list[int]:
        """Insert ``messages`` in one transaction, possibly shared with other callers;
        their ids, once that transaction has committed. Raises what the insert raises."""
        if self.max_messages <= 1:
            return self.backend.enqueue(messages)
        me: _Caller | None = None
        with self._lock:
            if self._busy:
                me = _Caller(messages)
                me.wake = Wake()
                self._waiting.append(me)
            else:
                self._busy = True
        if me is None:
            # Nobody waits while nobody leads: this caller commits alone, at once (the
            # common case, kept short), then hands the lead to whoever came meanwhile.
            try:
                return self.backend.enqueue(messages)
            finally:
                with self._lock:
                    self._pass_lead()
        self._wait(me)
        if me.verdict == _DONE:
            if me.error is not None:
                raise me.error
            return me.ids
        if me.verdict == _ALONE:
            return self.backend.enqueue(messages, me.started)
        return self._lead(me)  # handed the lead: commit for those waiting behind

    def _wait(self, me: _Caller) -> None:
        """Wait for the verdict. No timeout: a leader always settles its group and hands
        the lead on, whatever its insert does."""
        assert me.wake is not None
        try:
            me.wake.wait()
        except BaseException:
            # Interrupted while waiting: leave the line, and pass the lead on if it had
            # just been handed to this caller, so that nobody waits for it.
            with self._lock:
                if me in self._waiting:
                    self._waiting.remove(me)
                elif me.verdict == _LEAD:
                    me.verdict = _ALONE  # (nothing reads it: the lead is passed on below)
                    self._pass_lead()
            raise

    def _lead(self, me: _Caller) -> list[int]:
        """Insert the messages of this caller, handed the lead, and those of the callers
        waiting behind it."""
        group = [me]
        ids: list[int] | None = None
        error: Exception | None = None
        try:
            with self._lock:
                total = len(me.messages)
                while self._waiting:
                    size = len(self._waiting[0].messages)
                    if total + size > self.max_messages:
                        break  # the rest form the next group
                    group.append(self._waiting.popleft())
                    total += size
            if len(group) == 1:
                messages: Sequence[NewMessage] = me.messages
            else:
                messages = [m for caller in group for m in caller.messages]
            try:
                # By the first caller's clock: nobody in the group waits past its timeout.
                ids = self.backend.enqueue(messages, min(c.started for c in group))
            except Exception as exc:
                error = exc
        finally:
            # Also on a BaseException: the line moves on, and no follower is left waiting.
            with self._lock:
                self._pass_lead()
            self._settle(group[1:], ids, error, len(me.messages))
        if error is not None:
            if len(group) > 1 and not _shared(error):
                # Perhaps another caller's fault: alone.
                return self.backend.enqueue(me.messages, me.started)
            raise error
        assert ids is not None
        return ids[: len(me.messages)]

    def _pass_lead(self) -> None:
        """Hand the lead to the first caller waiting, or let the next caller take it
        (called with the lock held)."""
        if self._waiting:
            nxt = self._waiting.popleft()
            nxt.verdict = _LEAD
            assert nxt.wake is not None
            nxt.wake.give()
        else:
            self._busy = False

    @staticmethod
    def _settle(
        followers: list[_Caller], ids: list[int] | None, error: Exception | None, start: int
    ) -> None:
        """Give each follower its ids (they follow the leader's ``start`` ids, in the
        order of the group), the group's shared failure, or its turn to insert alone."""
        for caller in followers:
            if ids is not None:
                end = start + len(caller.messages)
                caller.ids, caller.verdict = ids[start:end], _DONE
                start = end
            elif isinstance(error, QueueError) and _shared(error):
                # Each caller raises its own exception (a traceback is per raise).
                caller.error, caller.verdict = QueueError(str(error), error.kind), _DONE
            else:
                caller.verdict = _ALONE
            assert caller.wake is not None
            caller.wake.give()
