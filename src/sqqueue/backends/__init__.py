"""Storage backends: one interface (``base.Backend``), one module per database."""

from .base import Backend, Outcome, StorageError

__all__ = ["Backend", "Outcome", "StorageError"]
