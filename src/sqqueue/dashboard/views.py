"""The HTML pages: overview, queue, message, dead-letter actions, login.

Every page works without JavaScript. Actions that change data are POST forms carrying a
CSRF token, reached through a confirmation page (a GET that changes nothing), and answer
with a redirect and a one-time result message.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from . import present, states
from .source import NAME, RedriveJob, takes_long, value_of
from .web import Context, Dashboard, Endpoint, FormError, answering, client_of, failure_status

__all__ = ["routes"]

logger = logging.getLogger(__name__)

PAGE_SIZE = 50
MAX_SELECTED = 1000  # dead letters one form may act on


def _int(text: str | None, default: int = 0) -> int | None:
    """A non-negative integer from a query or form field; None if it is not one."""
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        return None
    return value if 0 <= value < 2**63 else None


def _first(form: dict[str, list[str]], name: str, default: str = "") -> str:
    """The first value of a form field."""
    values = form.get(name)
    return values[0] if values else default


def _safe_next(path: str | None) -> str:
    """Where to go after logging in: a path inside the app, never another site."""
    if not path or not path.startswith("/") or path.startswith("//") or "\\" in path:
        return "/"
    return path


#: a posted form's fields
Form = dict[str, list[str]]
#: what a dead-letter form does, given the checked form and the queue it names
DeadLetterAction = Callable[[Context, Form, str, Any], Awaitable[Response]]


def routes(d: Dashboard) -> list[Route]:  # noqa: PLR0915 - the pages, declared together
    """The page routes of dashboard ``d``."""

    def login_first(ctx: Context) -> Response:
        if ctx.retry_after is not None:  # a locked-out client sent a token in a header
            return locked_out(ctx, ctx.retry_after)
        here = ctx.request.url.path[len(ctx.base) :] or "/"
        if ctx.request.url.query:
            here += "?" + ctx.request.url.query
        return d.redirect(ctx, ctx.url("/login", next=here)[len(ctx.base) :])

    def refused(ctx: Context, why: str, status: int = 403) -> Response:
        return d.page(ctx, "error.html", status=status, title="Refused", error=why)

    def locked_out(
        ctx: Context, retry_after: int, template: str = "error.html", **values: Any
    ) -> Response:
        """429: the client sent too many wrong tokens; it may try again in ``retry_after`` s."""
        values.setdefault("title", "Refused")
        response = d.page(
            ctx, template, status=429,
            error=f"Too many wrong tokens from your address; wait {retry_after} s and retry.",
            **values,
        )  # fmt: skip
        response.headers["Retry-After"] = str(retry_after)
        return response

    def not_found(ctx: Context, why: str) -> Response:
        return d.page(ctx, "error.html", status=404, title="Not found", error=why)

    def failed(ctx: Context, exc: Exception) -> Response:
        return d.page(ctx, "error.html", status=failure_status(exc), title="Error", error=str(exc))

    def answered(endpoint: Endpoint) -> Endpoint:
        return answering(endpoint, lambda request, exc: failed(d.context(request), exc))

    async def checked_form(ctx: Context) -> tuple[dict[str, list[str]] | None, Response | None]:
        """The form of an action, or the refusal: not logged in, read-only, bad CSRF."""
        if not ctx.session.authed:
            return None, refused(ctx, "Log in first: actions need the dashboard token.", 401)
        if d.read_only:
            return None, refused(ctx, "This dashboard is read-only: it changes nothing.")
        try:
            form = await d.form(ctx.request)
        except FormError as exc:
            return None, refused(ctx, str(exc), 400)
        if not d.auth.csrf_matches(ctx.session, _first(form, "csrf")):
            return None, refused(
                ctx, "The form has expired or did not come from this dashboard; reload and retry."
            )
        return form, None

    # -- login -------------------------------------------------------------------------------

    async def login_page(request: Request) -> Response:
        ctx = d.context(request)
        nxt = _safe_next(request.query_params.get("next"))
        if ctx.session.authed:
            return d.redirect(ctx, nxt)
        return d.page(ctx, "login.html", title="Log in", next=nxt, error=None)

    async def login(request: Request) -> Response:
        ctx = d.context(request)
        client = client_of(request)
        try:
            form = await d.form(request)
        except FormError as exc:
            return refused(ctx, str(exc), 400)
        nxt = _safe_next(_first(form, "next", "/"))
        if ctx.session.fresh:
            return d.page(
                ctx,
                "login.html",
                status=400,
                title="Log in",
                next=nxt,
                error="Your browser sent no session cookie: allow cookies for this site and retry.",
            )
        if not d.auth.csrf_matches(ctx.session, _first(form, "csrf")):
            return refused(ctx, "The login form has expired; reload it and retry.")
        wait = d.throttle.retry_after(client)
        if wait is not None:
            return locked_out(ctx, wait, "login.html", title="Log in", next=nxt)
        if not d.auth.token_matches(_first(form, "token")):
            d.throttle.failed(client)
            logger.warning("dashboard: a login with a wrong token from %s", client)
            return d.page(
                ctx, "login.html", status=401, title="Log in", next=nxt,
                error="That is not the dashboard's token.",
            )  # fmt: skip
        # A new session id on login: a session id planted before it is worth nothing.
        session = d.auth.new_session(True)
        response = d.redirect(ctx, nxt)
        d.set_session(ctx, response, session)
        return response

    async def logout(request: Request) -> Response:
        ctx = d.context(request)
        try:
            form = await d.form(request)
        except FormError as exc:
            return refused(ctx, str(exc), 400)
        if not d.auth.csrf_matches(ctx.session, _first(form, "csrf")):
            return refused(ctx, "The form has expired; reload the page and retry.")
        # Ended on the server too: a copy of the cookie (another local service on
        # 127.0.0.1 receives it, cookies are not per port) must not outlive the logout.
        d.auth.revoke(ctx.session)
        response = d.redirect(ctx, "/login", "Logged out.")
        d.set_session(ctx, response, d.auth.new_session(False))
        return response

    # -- looking -----------------------------------------------------------------------------

    async def overview(request: Request) -> Response:
        ctx = d.context(request)
        if not ctx.authed:
            return login_first(ctx)
        data = await d.call(d.source.overview)
        for row in data["queues"]:
            if row.get("chart") is not None:
                row["chart_svg"] = present.chart(row["chart"])
        return d.page(ctx, "overview.html", title="Queues", data=data)

    async def queue_page(request: Request) -> Response:
        ctx = d.context(request)
        if not ctx.authed:
            return login_first(ctx)
        name = request.path_params["name"]
        query = request.query_params
        label = query.get("state", "ready")
        state = states.by_label(label)
        if state is None and label != "all":
            return not_found(ctx, f"No state {label!r}: use one of ready, delayed, waiting, "
                                  "processing, dead, done or all.")  # fmt: skip
        after = _int(query.get("after"))
        if after is None:
            return refused(ctx, "after must be a message id (a whole number).", 400)
        find = query.get("find", "").strip()
        if find:
            wanted = _int(find, default=-1)
            if wanted is None or wanted < 0:
                return refused(ctx, f"{find!r} is not a message id.", 400)
            if not NAME.fullmatch(name):
                return not_found(ctx, f"No queue {name!r} in this database.")
            return d.redirect(ctx, f"/queues/{name}/messages/{wanted}")

        def read() -> dict[str, Any] | None:
            if not d.source.has(name):
                return None
            now = d.source.clock()
            # A queue that cannot be opened (an older layout, read-only) has its error in
            # the summary, which the page shows.
            summary = d.source.queue_summary(name, now)
            library = "all" if state is None else state.library
            counted = summary.get("counts", {}).get(label)
            rows: list[dict[str, Any]] = []
            # A state with no messages is not listed at all: nothing to find, nothing read.
            queue = d.source.queue(name) if counted != 0 and summary.get("error") is None else None
            if queue is not None:
                listed = queue.list_messages(library, PAGE_SIZE + 1, after)
                page = value_of(d.source.checked(name, queue, listed))
                rows = [present.message_view(r) for r in page]
            return {
                "summary": summary,
                "rows": rows[:PAGE_SIZE],
                "more": len(rows) > PAGE_SIZE,
                "job": d.source.redrive_job(name),
            }

        try:
            found = await d.call(read)
        except Exception as exc:
            return failed(ctx, exc)
        if found is None:
            return not_found(ctx, f"No queue {name!r} in this database.")
        summary = found["summary"]
        if summary.get("chart") is not None:
            summary["chart_svg"] = present.chart(summary["chart"])
        return d.page(
            ctx,
            "queue.html",
            title=name,
            name=name,
            label=label,
            state=state,
            after=after,
            page_size=PAGE_SIZE,
            redrive_rate=d.redrive_rate,
            **found,
        )

    async def message_page(request: Request) -> Response:
        ctx = d.context(request)
        if not ctx.authed:
            return login_first(ctx)
        name = request.path_params["name"]
        message_id = request.path_params["message_id"]

        try:
            exists, entry = await d.call(d.source.message, name, message_id)
        except Exception as exc:
            return failed(ctx, exc)
        if not exists:
            return not_found(ctx, f"No queue {name!r} in this database.")
        if entry is None:
            return not_found(ctx, f"Queue {name!r} has no message {message_id}: it was completed "
                                  "(and the queue keeps no history), or never existed.")  # fmt: skip
        view = present.message_view(entry)
        kind, text = present.payload_text(entry.get("payload"))
        return d.page(
            ctx, "message.html", title=f"{name} #{message_id}", name=name, m=view,
            payload_kind=kind, payload=text,
        )  # fmt: skip

    # -- acting on dead letters ----------------------------------------------------------------

    def selected(values: list[str]) -> list[int] | None:
        ids = [_int(v, default=-1) for v in values]
        if any(i is None or i < 0 for i in ids):
            return None
        return sorted({i for i in ids if i is not None})

    async def confirm(request: Request) -> Response:
        """What an action will do, with the form that does it (nothing changes here)."""
        ctx = d.context(request)
        if not ctx.authed:
            return login_first(ctx)
        if d.read_only:
            return refused(ctx, "This dashboard is read-only: it changes nothing.")
        name = request.path_params["name"]
        if await d.call(d.source.queue, name) is None:
            return not_found(ctx, f"No queue {name!r} in this database.")
        query = request.query_params
        action = query.get("action", "")
        back = f"/queues/{name}?state=dead"
        values: dict[str, Any] = {"name": name, "action": action, "back": back}
        if action in ("redrive", "delete"):
            ids = selected(query.getlist("id"))
            if ids is None:
                return refused(ctx, "Message ids are whole numbers.", 400)
            if not ids:
                return d.redirect(ctx, back, "Select at least one dead letter first.", ok=False)
            if len(ids) > MAX_SELECTED:
                return refused(ctx, f"At most {MAX_SELECTED} dead letters at a time.", 400)
            values["ids"] = ids
        elif action == "redrive_all":
            pass
        elif action == "purge":
            number, unit = query.get("older_than", "7"), query.get("unit", "days")
            try:
                values["older_than"] = present.seconds_from(number, unit)
            except ValueError as exc:
                return refused(ctx, str(exc), 400)
            values["older_than_text"] = f"{number} {unit}"
        else:
            return refused(ctx, "Unknown action: use redrive, redrive_all, delete or purge.", 400)
        values["redrive_rate"] = d.redrive_rate
        return d.page(ctx, "confirm.html", title="Confirm", **values)

    def on_dead_letters(act: DeadLetterAction) -> Callable[[Request], Awaitable[Response]]:
        """A form posted on a queue's dead letters: checked, and the queue found, first."""

        async def handler(request: Request) -> Response:
            ctx = d.context(request)
            form, refusal = await checked_form(ctx)
            if form is None:
                assert refusal is not None
                return refusal
            name = request.path_params["name"]
            queue = await d.call(d.source.queue, name)
            if queue is None:
                return not_found(ctx, f"No queue {name!r} in this database.")
            return await act(ctx, form, name, queue)

        return handler

    def rate_from(form: Form) -> float | None:
        text = _first(form, "rate").strip()
        if not text:
            return d.redrive_rate
        try:
            value = float(text)
        except ValueError:
            raise ValueError(
                f"the rate must be a number of messages per second, got {text!r}"
            ) from None
        return present.rate(value)

    def busy(job: RedriveJob) -> str:
        return (f"Nothing redriven: a background redrive of this queue is running ({job.done:,} "
                f"of {job.total:,} so far); wait for it to finish, then retry.")  # fmt: skip

    @on_dead_letters
    async def redrive(ctx: Context, form: Form, name: str, queue: Any) -> Response:
        back = f"/queues/{name}?state=dead"
        try:
            rate = rate_from(form)
        except ValueError as exc:
            return d.redirect(ctx, back, f"Nothing redriven: {exc}.", ok=False)
        pace = "as fast as possible" if rate is None else f"at {rate:g} per second"
        if _first(form, "all") == "1":
            job, started = await d.call(d.source.start_redrive, name, rate)
            if not started and job.selected is not None:
                return d.redirect(ctx, back, busy(job), ok=False)
            return d.redirect(ctx, back, f"Redriving every dead letter in the background, {pace}; "
                                         f"progress shows below (job started {present.when(job.started_at)}).")  # fmt: skip
        ids = selected(form.get("id", []))
        if not ids:
            return d.redirect(ctx, back, "Nothing redriven: no dead letter was selected.", ok=False)
        if takes_long(len(ids), rate):
            # Paced for longer than a request should last: in the background, as "all".
            job, started = await d.call(d.source.start_redrive, name, rate, ids)
            if not started:
                return d.redirect(ctx, back, busy(job), ok=False)
            return d.redirect(ctx, back, f"Redriving {len(ids)} dead letter(s) in the background, "
                                         f"{pace}; progress shows below: {_ids(ids)}.")  # fmt: skip
        result = await d.call(d.source.run, name, queue, queue.redrive, ids, None, rate)
        if result.is_err():
            return d.redirect(ctx, back, _sentence(str(result.error)), ok=False)
        logger.info("dashboard: redrove %d dead letter(s) of %r", result.value, name)
        return d.redirect(ctx, back, f"Redrove {result.value} dead letter(s): {_ids(ids)}.")

    @on_dead_letters
    async def delete(ctx: Context, form: Form, name: str, queue: Any) -> Response:
        back = f"/queues/{name}?state=dead"
        ids = selected(form.get("id", []))
        if not ids:
            return d.redirect(ctx, back, "Nothing deleted: no dead letter was selected.", ok=False)
        result = await d.call(d.source.run, name, queue, queue.delete_dead_letters, ids)
        if result.is_err():
            return d.redirect(ctx, back, _sentence(str(result.error)), ok=False)
        logger.info("dashboard: deleted %d dead letter(s) of %r", result.value, name)
        gone = len(ids) - result.value
        note = f" ({gone} were no longer dead letters)" if gone else ""
        return d.redirect(ctx, back, f"Deleted {result.value} dead letter(s){note}.")

    @on_dead_letters
    async def purge(ctx: Context, form: Form, name: str, queue: Any) -> Response:
        back = f"/queues/{name}?state=dead"
        try:
            older_than = present.older_than(float(_first(form, "older_than")))
        except ValueError:
            return d.redirect(ctx, back, "Nothing purged: older_than must be seconds, from 0 to "
                              f"{present.MAX_OLDER_THAN:.0f} (100 years).", ok=False)  # fmt: skip
        result = await d.call(d.source.run, name, queue, queue.purge, "dead", older_than)
        if result.is_err():
            return d.redirect(ctx, back, _sentence(str(result.error)), ok=False)
        logger.info("dashboard: purged %d dead letter(s) of %r", result.value, name)
        return d.redirect(ctx, back, f"Purged {result.value} dead letter(s) that died more than "
                                     f"{present.age(older_than)} ago.")  # fmt: skip

    return [
        Route("/", answered(overview), methods=["GET"], name="overview"),
        Route("/login", login_page, methods=["GET"], name="login_page"),
        Route("/login", login, methods=["POST"], name="login"),
        Route("/logout", logout, methods=["POST"], name="logout"),
        Route("/queues/{name}", answered(queue_page), methods=["GET"], name="queue"),
        Route(
            "/queues/{name}/messages/{message_id:int}",
            answered(message_page),
            methods=["GET"],
            name="message",
        ),
        Route("/queues/{name}/confirm", answered(confirm), methods=["GET"], name="confirm"),
        Route("/queues/{name}/dead/redrive", answered(redrive), methods=["POST"], name="redrive"),
        Route("/queues/{name}/dead/delete", answered(delete), methods=["POST"], name="delete"),
        Route("/queues/{name}/dead/purge", answered(purge), methods=["POST"], name="purge"),
    ]


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def _ids(ids: list[int]) -> str:
    shown = ", ".join(str(i) for i in ids[:10])
    return shown + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")
