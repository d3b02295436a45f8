"""A web dashboard for sqqueue: see and operate every queue of a database from a browser.

Needs the ``dashboard`` extra: ``pip install 'sqqueue[dashboard]'`` (Starlette, Jinja2,
uvicorn). Serve it with ``sqqueue dashboard jobs.db``, or mount :func:`create_app` in
your own ASGI application.
"""

from __future__ import annotations

NEEDS = "the sqqueue dashboard needs: pip install 'sqqueue[dashboard]'"

try:
    import jinja2  # noqa: F401
    import starlette  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(NEEDS) from exc

from .app import TOKEN_ENV, create_app  # noqa: E402 - after the check above

__all__ = ["NEEDS", "TOKEN_ENV", "create_app"]
