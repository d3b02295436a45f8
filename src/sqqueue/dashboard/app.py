"""The dashboard as an ASGI app: :func:`create_app`."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import api, views
from .auth import Auth
from .source import Source
from .web import Dashboard

__all__ = ["TOKEN_ENV", "create_app"]

TOKEN_ENV = "SQQUEUE_DASHBOARD_TOKEN"  # noqa: S105 - the name of a variable, not a token
STATIC = Path(__file__).parent / "static"

# No inline script or style anywhere: everything comes from the app's own static files.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "content-security-policy": CSP,
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
    "permissions-policy": "camera=(), microphone=(), geolocation=()",
}


class SecurityHeaders:
    """Adds the security headers to every response of the dashboard, and forbids caching
    of anything but its static files (pages and API answers hold queue data)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        root = str(scope.get("root_path", ""))
        path = str(scope.get("path", ""))
        static = path[len(root) :].startswith("/static/") if path.startswith(root) else False

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for key, value in HEADERS.items():
                    headers[key] = value
                headers["cache-control"] = "no-cache" if static else "no-store"
            await send(message)

        await self.app(scope, receive, send_with_headers)


class HostCheck:
    """Answers 400 to a request whose ``Host`` header is not one of ``allowed``: against
    DNS rebinding, where a web page of another site makes the browser send requests to
    the dashboard under that site's name (and so with its cookies, origin and scripts)."""

    def __init__(self, app: ASGIApp, allowed: Iterable[str]) -> None:
        self.app = app
        self.allowed = frozenset(host.lower() for host in allowed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":  # (the dashboard serves no websockets)
            host = Headers(scope=scope).get("host", "").lower()
            if host not in self.allowed:
                response = PlainTextResponse(
                    "unexpected Host header: open the dashboard at the address it serves "
                    "(sqqueue dashboard --allow-host NAME adds a name, for a proxy)",
                    status_code=400,
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def server_error(_request: Request, exc: Exception) -> Response:
    """The answer to an error nothing else caught: a plain 500 carrying the security
    headers itself, since Starlette sends it from outside every middleware."""
    # (Starlette raises the exception again once this is sent: the server logs it.)
    headers = {**HEADERS, "cache-control": "no-store"}
    return PlainTextResponse(
        "Internal Server Error: the dashboard failed; its log says why", 500, headers=headers
    )


def create_app(
    target: str | os.PathLike[str],
    *,
    token: str | None = None,
    read_only: bool = False,
    schema: str | None = None,
    redrive_rate: float | None = 100.0,
    refresh: float = 2.0,
    sample_every: float = 5.0,
    allowed_hosts: Iterable[str] | None = None,
    secure_cookies: bool | None = None,
) -> Starlette:
    """The dashboard of every queue in ``target`` (an SQLite file path, ``sqlite:///`` or
    ``postgresql://`` URL; ``schema``: the PostgreSQL schema of the queues), as an ASGI
    app to serve or to mount in your own application::

        from starlette.routing import Mount
        from sqqueue.dashboard import create_app

        app.routes.append(Mount("/ops/queues", create_app("jobs.db", token=token)))

    ``token`` (default: ``$SQQUEUE_DASHBOARD_TOKEN``) is what operators log in with, and
    what JSON clients send as ``Authorization: Bearer <token>``; at least 16 characters.
    ``read_only`` hides and refuses every action, and opens the queues read-only: nothing
    in the database changes (without it, opening a queue of an older sqqueue brings its
    layout up to date, as an application opening it does). ``redrive_rate`` caps
    redrives (messages per second; None: no cap). Pages refresh every ``refresh``
    seconds (with JavaScript); the charts come from totals sampled every
    ``sample_every`` seconds by this process.
    ``allowed_hosts``: the ``Host`` header values to answer (``"127.0.0.1:8844"``), others
    get 400 (against DNS rebinding); None (mounted in your app): your app checks them.
    ``secure_cookies``: whether the session cookie is ``Secure`` (sent back over HTTPS
    only). None: when the request came by https, which a proxy that ends TLS hides unless
    the server is told the scheme it forwards; True: always, for such a proxy; False:
    never.
    """
    if token is None:
        token = os.environ.get(TOKEN_ENV) or None
    if token is None:
        raise ValueError(
            f"the dashboard needs a token: pass token=..., or set {TOKEN_ENV} "
            "(at least 16 characters)"
        )
    if redrive_rate is not None and not redrive_rate > 0:
        raise ValueError("redrive_rate must be above 0 messages per second, or None")
    if not refresh > 0 or not sample_every > 0:
        raise ValueError("refresh and sample_every must be above 0 seconds")
    auth = Auth(token)
    source = Source(
        os.fspath(target), schema=schema, read_only=read_only, sample_every=sample_every
    )
    dashboard = Dashboard(
        source,
        auth,
        read_only=read_only,
        redrive_rate=redrive_rate,
        refresh=refresh,
        secure_cookies=secure_cookies,
    )

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        # Run when the app is served on its own; a host app that mounts it closes it
        # with app.state.dashboard.source.close() if it wants a clean stop.
        try:
            yield
        finally:
            source.close()

    routes = [
        *views.routes(dashboard),
        Mount("/api", routes=api.routes(dashboard)),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={500: server_error})
    if allowed_hosts is not None:
        app.add_middleware(HostCheck, allowed=list(allowed_hosts))
    app.add_middleware(SecurityHeaders)  # added last: the outermost, so on every answer
    app.state.dashboard = dashboard
    return app
