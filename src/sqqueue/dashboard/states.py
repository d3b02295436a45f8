"""The words the dashboard shows for message states, in one place.

They are the library's states (the glossary: ready, delayed, waiting, processing, dead,
done); ``processing`` is shown as *processing (leased)* where there is room.
"""

from __future__ import annotations

from typing import NamedTuple

from ..stats import QueueStats

__all__ = ["LIVE", "STATES", "State", "by_label", "counts"]


class State(NamedTuple):
    label: str  #: what users see, and what URLs and the JSON API take
    library: str  #: the state ``list_messages`` and ``purge`` take
    title: str  #: a longer heading
    meaning: str  #: one line of explanation


STATES = (
    State("ready", "ready", "Ready", "can be delivered now"),
    State("delayed", "delayed", "Delayed", "waiting for a delay or a retry backoff to pass"),
    State("waiting", "waiting", "Waiting", "behind an earlier message of their group"),
    State("processing", "processing", "Processing (leased)", "held by a consumer under a lease"),
    State("dead", "dead", "Dead", "in the dead-letter queue"),
    State("done", "done", "Done (kept history)", "completed, kept by the queue's retention"),
)
#: the states counted in ``QueueStats`` (done has no counter)
LIVE = STATES[:5]
_BY_LABEL = {state.label: state for state in STATES}


def by_label(label: str) -> State | None:
    """The state a user-facing label names, or None."""
    return _BY_LABEL.get(label)


def counts(stats: QueueStats) -> dict[str, int]:
    """``QueueStats`` counts under the dashboard's labels, in display order."""
    return {
        "ready": stats.ready,
        "delayed": stats.delayed,
        "waiting": stats.waiting,
        "processing": stats.processing,
        "dead": stats.dead,
    }
