"""What a target names: an SQLite file or a PostgreSQL database.

Commands and helpers that accept "a database" take a path (``jobs.db``), an SQLite URL
(``sqlite:///jobs.db``, ``sqlite:////var/lib/app/jobs.db``) or a PostgreSQL URL
(``postgresql://app@db.internal/app``); this is the one place that tells them apart.
"""

from __future__ import annotations

import os
from typing import Literal, NamedTuple

__all__ = ["Target", "parse_target"]


class Target(NamedTuple):
    kind: Literal["sqlite", "postgresql"]
    #: the file path for SQLite (``:memory:`` allowed), the URL for PostgreSQL
    location: str


def parse_target(target: str | os.PathLike[str]) -> Target:
    """Split a target into its backend and location; ``ValueError`` says what is wrong."""
    if isinstance(target, os.PathLike):
        target = os.fspath(target)
    if not isinstance(target, str) or not target:
        raise ValueError(
            f"expected a database: a file path, sqlite:///path or postgresql://..., got {target!r}"
        )
    if target.startswith(("postgresql://", "postgres://")):
        return Target("postgresql", target)
    if target.startswith("sqlite://"):
        rest = target[len("sqlite://") :]
        if not rest.startswith("/"):
            raise ValueError(
                f"bad SQLite URL {target!r}: use sqlite:///relative.db or sqlite:////absolute.db"
            )
        return Target("sqlite", rest[1:] or ":memory:")
    if "://" in target:
        raise ValueError(
            f"unsupported URL {target!r}: use a file path, sqlite:///path/to/file.db or "
            "postgresql://..."
        )
    return Target("sqlite", target)
