"""sqqueue's asyncio API on PostgreSQL with ``native=False``: every call in a worker
thread (see sqqueue_pg_asyncio.py)."""

from __future__ import annotations

from .sqqueue_pg_asyncio import ThreadsAdapter as Adapter

__all__ = ["Adapter"]
