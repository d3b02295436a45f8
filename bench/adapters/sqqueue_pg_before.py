"""sqqueue's PostgreSQL backend as it was before the work on workers and producers (see
sqqueue_before.py), on the rows users see only."""

from __future__ import annotations

from .pg import server_version
from .sqqueue_before import source
from .sqqueue_pg import Adapter as Current


class Adapter(Current):
    name = "sqqueue-pg-before"
    semantics = "sqqueue-pg before the work on workers and producers (same as sqqueue-pg's, then)"

    @classmethod
    def version(cls) -> str:
        import sqqueue

        return f"{sqqueue.__version__} ({source()}) on {server_version()}"
