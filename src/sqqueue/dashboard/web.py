"""What the pages and the JSON API share: the source, the auth, sessions per request,
form parsing, rendering and responses."""

from __future__ import annotations

import json
import logging
import re
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from jinja2 import Environment, PackageLoader, StrictUndefined
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from .. import __version__
from ..exceptions import DATABASE_FAILURES, ErrorKind, QueueError
from ..targets import parse_target, redact
from . import present, states
from .auth import FLASH_MAX_AGE, SESSION_MAX_AGE, Auth, LoginThrottle, Session, bearer_of
from .source import Source

__all__ = [
    "UNAVAILABLE",
    "Context",
    "Dashboard",
    "Endpoint",
    "FormError",
    "action_status",
    "answering",
    "client_of",
    "failure_status",
]

T = TypeVar("T")
logger = logging.getLogger(__name__)
SESSION_COOKIE = "sqqueue_dashboard"
FLASH_COOKIE = "sqqueue_dashboard_flash"
#: where a request's verdict on its Authorization header is kept (in its ASGI scope), so
#: that a wrong token is counted once however often the request's context is read
_BEARER_VERDICT = "sqqueue.dashboard.bearer"
FORM_LIMIT = 256 * 1024  # bytes of a form body
FORM_FIELDS = 20_000  # fields of a form body (a form selects at most 1,000 ids)
#: the status of a request the database failed (its file deleted, locked, unreadable, or
#: a queue in a layout a read-only dashboard cannot read): the service, not the request
UNAVAILABLE = 503
#: kinds of error that are failures of the database itself, not of the request
_DATABASE_KINDS = DATABASE_FAILURES | {ErrorKind.STORAGE}


class FormError(Exception):
    """A form or JSON body the dashboard cannot take (what is wrong, for the user)."""


#: a page's or an endpoint's handler
Endpoint = Callable[[Request], Awaitable[Response]]


def failure_status(exc: BaseException) -> int:
    """The HTTP status of a read that raised: 503 for the database's failure, else 500."""
    return UNAVAILABLE if isinstance(exc, QueueError) else 500


def answering(endpoint: Endpoint, answer: Callable[[Request, QueueError], Response]) -> Endpoint:
    """``endpoint``, with a failure of the database it meets (its file deleted, say:
    ``QueueError`` from finding the queue) answered by ``answer`` (an error page, a JSON
    error): an expected condition, logged as one line, not an unhandled error."""

    async def handler(request: Request) -> Response:
        try:
            return await endpoint(request)
        except QueueError as exc:
            logger.info("dashboard: %s %s failed: %s", request.method, request.url.path, exc)
            return answer(request, exc)

    return handler


def client_of(request: Request) -> str:
    """The address wrong tokens are counted by: the connection's peer (never a header a
    client may forge, such as ``X-Forwarded-For``)."""
    return request.client.host if request.client else "?"


def action_status(error: BaseException) -> int:
    """The HTTP status of an action that failed with ``error``: 404 (no such dead letter)
    or 400 (bad input) for the caller's mistake, 503 when the database failed, else 500."""
    kind = error.kind if isinstance(error, QueueError) else None
    if kind is ErrorKind.NOT_FOUND:
        return 404
    if kind is ErrorKind.INVALID_INPUT:
        return 400
    return UNAVAILABLE if kind in _DATABASE_KINDS else 500


@dataclass
class Context:
    """One request as the dashboard sees it."""

    request: Request
    session: Session
    #: the app's URL prefix when mounted (``/ops/queues``), else ``""``
    base: str
    #: authenticated by the Authorization header (JSON clients), not by the session
    bearer: bool = False
    #: seconds the client must wait: it sent an Authorization header while locked out
    #: for too many wrong tokens (the header was not read); else None
    retry_after: int | None = None

    @property
    def authed(self) -> bool:
        return self.bearer or self.session.authed

    def url(self, path: str, **query: Any) -> str:
        """A URL inside the app: ``base + path``, with a query string if given."""
        pairs = [(k, v) for k, v in query.items() if v is not None]
        suffix = "?" + urllib.parse.urlencode(pairs, doseq=True) if pairs else ""
        return self.base + path + suffix


class Dashboard:
    """The state of one dashboard app: its source, auth and templates."""

    def __init__(
        self,
        source: Source,
        auth: Auth,
        *,
        read_only: bool,
        redrive_rate: float | None,
        refresh: float,
        secure_cookies: bool | None = None,
    ) -> None:
        self.source = source
        self.auth = auth
        self.read_only = read_only
        self.redrive_rate = redrive_rate
        self.refresh = refresh
        #: True: cookies always Secure; False: never; None: when the request came by https
        self.secure_cookies = secure_cookies
        #: wrong tokens per client, in the login form and the Authorization header alike
        self.throttle = LoginThrottle()
        self.templates = Environment(
            loader=PackageLoader("sqqueue.dashboard", "templates"),
            autoescape=True,  # every template is HTML: payloads and errors are escaped
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.templates.filters.update(
            when=present.when,
            age=present.age,
            size=present.size,
            one_line=present.one_line,
            num=lambda n: "-" if n is None else f"{n:,}",
        )
        self.templates.globals.update(
            version=__version__,
            states=states.STATES,
            live_states=states.LIVE,
            target=shown_target(source.target),
            backend=source.backend,
            read_only=read_only,
            refresh_ms=int(refresh * 1000),
        )

    def __repr__(self) -> str:
        return f"<Dashboard {shown_target(self.source.target)!r}>"

    # -- requests --------------------------------------------------------------------------

    def context(self, request: Request) -> Context:
        self.source.start()  # sampling begins with the first request (mounted apps too)
        session = self.auth.read_session(request.cookies.get(SESSION_COOKIE))
        bearer, retry_after = self.bearer(request)
        base = str(request.scope.get("root_path", "")).rstrip("/")
        return Context(request, session, base, bearer, retry_after)

    def bearer(self, request: Request) -> tuple[bool, int | None]:
        """Whether the request's ``Authorization: Bearer`` header carries the token, and,
        when its client is locked out for too many wrong tokens, the seconds it must wait
        (the header is then not even compared). A wrong token counts against the client,
        as one typed in the login form does; the token is never logged."""
        verdict: tuple[bool, int | None] | None = request.scope.get(_BEARER_VERDICT)
        if verdict is not None:
            return verdict
        given = bearer_of(request.headers.get("authorization"))
        verdict = (False, None)
        if given is not None:
            client = client_of(request)
            wait = self.throttle.retry_after(client)
            if wait is not None:
                verdict = (False, wait)
            elif self.auth.token_matches(given):
                verdict = (True, None)
            else:
                self.throttle.failed(client)
                logger.warning("dashboard: a request with a wrong bearer token from %s", client)
        request.scope[_BEARER_VERDICT] = verdict
        return verdict

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a (blocking) database call in a worker thread."""
        return await run_in_threadpool(fn, *args)

    async def form(self, request: Request) -> dict[str, list[str]]:
        """A url-encoded form body (its size bounded); field -> values."""
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/x-www-form-urlencoded":
            raise FormError("expected a form (application/x-www-form-urlencoded)")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > FORM_LIMIT:
                raise FormError("the form is too large")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise FormError("the form is not UTF-8") from None
        try:
            return urllib.parse.parse_qs(text, keep_blank_values=True, max_num_fields=FORM_FIELDS)
        except ValueError:  # parse_qs refuses more than max_num_fields
            raise FormError(
                f"the form has more than {FORM_FIELDS:,} fields; send fewer at a time"
            ) from None

    async def json_body(self, request: Request) -> dict[str, Any]:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/json":
            raise FormError("expected a JSON body (Content-Type: application/json)")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > FORM_LIMIT:
                raise FormError("the body is too large")
        try:
            # An empty body is an empty object: each endpoint says which keys it needs
            # (a purge's "older_than" included), so it never stands for a default action.
            data = json.loads(body or b"{}")
        except ValueError as exc:
            raise FormError(f"the body is not JSON: {exc}") from None
        except RecursionError:  # the parser recurses per level of nesting
            raise FormError("the JSON body is nested too deeply; send a flat object") from None
        if not isinstance(data, dict):
            raise FormError("the body must be a JSON object")
        return data

    # -- responses -------------------------------------------------------------------------

    def page(self, ctx: Context, template: str, status: int = 200, **values: Any) -> HTMLResponse:
        flash = self.auth.unsign(ctx.request.cookies.get(FLASH_COOKIE), "flash")
        html = self.templates.get_template(template).render(
            ctx=ctx,
            csrf=self.auth.csrf_token(ctx.session),
            flash=flash if flash and time.time() - flash.get("at", 0) < FLASH_MAX_AGE else None,
            **values,
        )
        response = HTMLResponse(html, status_code=status)
        if flash is not None:
            response.delete_cookie(
                FLASH_COOKIE,
                path=self.cookie_path(ctx),
                secure=self.secure(ctx),
                httponly=True,
                samesite="strict",
            )
        self.keep_session(ctx, response)
        return response

    def redirect(
        self, ctx: Context, path: str, flash: str | None = None, ok: bool = True
    ) -> Response:
        """303 to ``path`` in the app, carrying a one-time result message."""
        response = RedirectResponse(ctx.base + path, status_code=303)
        if flash is not None:
            value = self.auth.sign({"text": flash, "ok": ok, "at": time.time()}, "flash")
            response.set_cookie(
                FLASH_COOKIE,
                value,
                max_age=FLASH_MAX_AGE,
                path=self.cookie_path(ctx),
                httponly=True,
                samesite="strict",
                secure=self.secure(ctx),
            )
        self.keep_session(ctx, response)
        return response

    def secure(self, ctx: Context) -> bool:
        """Whether the cookies sent to ``ctx`` are Secure (sent back over HTTPS only):
        as ``secure_cookies`` says, else when the request came by https. Behind a proxy
        that ends TLS every request comes by http: ``secure_cookies=True`` marks them
        Secure all the same."""
        if self.secure_cookies is not None:
            return self.secure_cookies
        return ctx.request.url.scheme == "https"

    def cookie_path(self, ctx: Context) -> str:
        return (ctx.base or "") + "/"

    def keep_session(self, ctx: Context, response: Response) -> None:
        """Send the session cookie when the session is new."""
        if ctx.session.fresh:
            self.set_session(ctx, response, ctx.session)

    def set_session(self, ctx: Context, response: Response, session: Session) -> None:
        response.set_cookie(
            SESSION_COOKIE,
            self.auth.session_cookie(session),
            max_age=SESSION_MAX_AGE,
            path=self.cookie_path(ctx),
            httponly=True,
            samesite="strict",
            secure=self.secure(ctx),
        )

    def json(self, data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
        body = json.dumps(data, default=present.json_default, ensure_ascii=False)
        return Response(body, status_code=status, media_type="application/json", headers=headers)


def shown_target(target: str) -> str:
    """The target as pages show it: a PostgreSQL URL without its password or options.

    Read the way sqqueue connects (any case of the scheme; a password may hold '#', '?'
    or '@', which a URL parser would cut it at), masked by ``sqqueue.targets.redact``,
    then cut before its options; a file path as given."""
    try:
        parsed = parse_target(target)
    except ValueError:
        return redact(target)
    if parsed.kind != "postgresql":
        return target
    return re.split(r"[?#]", redact(parsed.location), maxsplit=1)[0]
