"""Validation of queue (table) and schema names: the only identifiers ever put into SQL
text."""

from __future__ import annotations

import re

__all__ = ["validate_queue_name", "validate_schema_name"]

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_RESERVED_PREFIXES = ("sqlite_", "sqqueue_", "pg_")
_RESERVED_SUFFIX = "_dlq"


def validate_queue_name(name: object) -> str:
    """Return ``name`` if it is a safe queue name, else raise ``ValueError``.

    A name is 1-63 ASCII letters, digits or underscores, not starting with a digit, so it
    can be used as a table name on every backend without quoting surprises. Names that
    collide with internal tables (``sqlite_*``, ``sqqueue_*``, ``pg_*``) or with a queue's
    dead-letter table (``*_dlq``) are refused.
    """
    name = _identifier(name, "queue name")
    if name.lower().endswith(_RESERVED_SUFFIX):
        raise ValueError(
            f"invalid queue name {name!r}: the suffix '_dlq' is reserved for the "
            "dead-letter table of each queue"
        )
    return name


def validate_schema_name(name: object) -> str:
    """Return ``name`` if it is a safe PostgreSQL schema name (the rules of a queue name
    but the ``_dlq`` suffix), else raise ``ValueError`` naming the schema."""
    return _identifier(name, "schema name")


def _identifier(name: object, what: str) -> str:
    if not isinstance(name, str):
        raise ValueError(f"{what} must be a str, got {type(name).__name__}")
    if not _IDENTIFIER.fullmatch(name):
        raise ValueError(
            f"invalid {what} {name!r}: use 1-63 ASCII letters, digits and underscores, "
            "starting with a letter or underscore (e.g. 'emails' or 'image_jobs')"
        )
    if name.lower().startswith(_RESERVED_PREFIXES):
        raise ValueError(
            f"invalid {what} {name!r}: names starting with "
            f"{', '.join(_RESERVED_PREFIXES)} are reserved"
        )
    return name
