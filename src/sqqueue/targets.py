"""What a target names: an SQLite file or a PostgreSQL database.

Commands and helpers that accept "a database" take a path (``jobs.db``), an SQLite URL
(``sqlite:///jobs.db``, ``sqlite:////var/lib/app/jobs.db``) or a PostgreSQL URL
(``postgresql://app@db.internal/app``); this is the one place that tells them apart.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from typing import Literal, NamedTuple

__all__ = ["Target", "hide_password", "parse_target", "redact"]


class Target(NamedTuple):
    kind: Literal["sqlite", "postgresql"]
    #: the file path for SQLite (``:memory:`` allowed), the URL for PostgreSQL
    location: str


_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")
_SCHEME_WORDS = ("sqlite", "postgres", "postgresql", "file")


def parse_target(target: str | os.PathLike[str]) -> Target:
    """Split a target into its backend and location; ``ValueError`` says what is wrong."""
    if isinstance(target, os.PathLike):
        target = os.fspath(target)
    if not isinstance(target, str) or not target:
        raise ValueError(
            "expected a database: a file path, an sqlite:///path URL or a postgresql:// URL, "
            f"got {target!r}"
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
    if _SCHEME.match(target) or target.lower() in _SCHEME_WORDS:
        raise ValueError(
            f"unsupported URL {target!r}: use a file path, sqlite:///path/to/file.db or "
            "postgresql://user@host/db (for a file whose name has a ':', write ./name)"
        )
    return Target("sqlite", target)


_SECRET_PARAM = re.compile(r"(?i)\b(password=)([^&\s'\"]*)")


def redact(target: str) -> str:
    """The target as messages and logs may show it: a PostgreSQL URL's password (in the
    user part or a ``password=`` parameter) becomes ``***``; anything else is unchanged."""
    if not target.startswith(("postgresql://", "postgres://")):
        return target
    parts = urllib.parse.urlsplit(target)
    netloc = parts.netloc
    if parts.password is not None:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.partition(':')[0]}:***@{host}"
    return urllib.parse.urlunsplit(
        parts._replace(netloc=netloc, query=_SECRET_PARAM.sub(r"\1***", parts.query))
    )


def hide_password(text: str, target: str) -> str:
    """``text`` (a driver's error, say) with the password of the PostgreSQL URL
    ``target`` replaced by ``***`` wherever it appears, as typed or as decoded."""
    if not target.startswith(("postgresql://", "postgres://")):
        return text
    parts = urllib.parse.urlsplit(target)
    secrets = [parts.password] if parts.password else []
    secrets += [m.group(2) for m in _SECRET_PARAM.finditer(parts.query)]
    for secret in secrets:
        for form in {secret, urllib.parse.unquote(secret)}:
            if form:
                text = text.replace(form, "***")
    return text
