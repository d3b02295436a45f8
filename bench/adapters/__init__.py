"""One adapter module per benchmark subject, all with the interface of :class:`base.Adapter`.

An adapter module imports its library lazily, inside the adapter, so that the driver can
import this package in any of the three virtualenvs (ours, the peers', sqqueue 0.1.0's).
"""

from __future__ import annotations

import importlib
from typing import Any

# subject name -> (module, virtualenv key). "main" is the project's .venv; the others are
# created by bench/setup_venvs.py. Which workloads each subject takes part in: bench/run.py.
SUBJECTS: dict[str, tuple[str, str]] = {
    "sqqueue": ("adapters.sqqueue_current", "main"),
    "sqqueue-before": ("adapters.sqqueue_before", "main"),
    "sqqueue-encrypted": ("adapters.sqqueue_encrypted", "main"),
    "sqlite3": ("adapters.plain_sqlite", "main"),
    "sqlite3-txn": ("adapters.plain_sqlite_txn", "main"),
    "sqlite3-shared-commits": ("adapters.plain_sqlite_shared", "main"),
    "persist-queue": ("adapters.peer_persistqueue", "peers"),
    "litequeue": ("adapters.peer_litequeue", "peers"),
    "localqueue": ("adapters.peer_localqueue", "peers"),
    "huey": ("adapters.peer_huey", "peers"),
    "sqqueue-0.1.0": ("adapters.sqqueue_010", "sqqueue010"),
    # PostgreSQL: the server named by BENCH_PG_URL (see adapters/pg.py and bench/run.py).
    "sqqueue-pg": ("adapters.sqqueue_pg", "main"),
    "sqqueue-pg-before": ("adapters.sqqueue_pg_before", "main"),
    "sqqueue-pg-asyncio": ("adapters.sqqueue_pg_asyncio", "main"),
    "sqqueue-pg-asyncio-threads": ("adapters.sqqueue_pg_asyncio_threads", "main"),
    "plain-pg": ("adapters.plain_pg", "main"),
    "pgqueuer": ("adapters.peer_pgqueuer", "pgpeers"),
    "procrastinate": ("adapters.peer_procrastinate", "pgpeers"),
}
PG_SUBJECTS = (
    "sqqueue-pg",
    "sqqueue-pg-before",
    "sqqueue-pg-asyncio",
    "sqqueue-pg-asyncio-threads",
    "plain-pg",
    "pgqueuer",
    "procrastinate",
)


def load(subject: str) -> Any:
    """The adapter class of ``subject`` (imports its module, not yet the library)."""
    module, _venv = SUBJECTS[subject]
    return importlib.import_module(module).Adapter
