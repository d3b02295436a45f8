"""The JSON API under ``/api``: what the pages show, and the dead-letter actions.

Clients authenticate with ``Authorization: Bearer <token>``; the pages' own script uses
the session cookie (and, to change data, the ``X-CSRF-Token`` header). States are named
as the pages name them: ready, delayed, waiting, processing, dead, done, all. A body
with a key an endpoint does not take is refused, not ignored: a misspelt ``older_than``
must not purge every dead letter.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..result import Err
from . import present, states
from .source import RedriveJob, takes_long, value_of
from .web import (
    UNAVAILABLE,
    Context,
    Dashboard,
    Endpoint,
    FormError,
    action_status,
    answering,
    failure_status,
)

__all__ = ["routes"]

logger = logging.getLogger(__name__)

MAX_LIMIT = 1000

#: what a dead-letter endpoint does, given the checked JSON body, the queue's name and queue
DeadLetterAction = Callable[[dict[str, Any], str, Any], Awaitable[Response]]


def routes(d: Dashboard) -> list[Route]:  # noqa: PLR0915 - the endpoints, declared together
    """The JSON routes of dashboard ``d`` (mounted under ``/api``)."""

    def error(message: str, status: int, **headers: str) -> Response:
        return d.json({"error": message}, status=status, headers=headers or None)

    def answered(endpoint: Endpoint) -> Endpoint:
        return answering(endpoint, lambda _request, exc: error(str(exc), UNAVAILABLE))

    def failed(exc: Exception) -> Response:
        return error(str(exc), failure_status(exc))

    def unknown_keys(body: dict[str, Any], *taken: str) -> Response | None:
        """The refusal of a body with keys the endpoint does not take (a misspelt key is
        a mistake to report, never a default to apply), else None."""
        unknown = [key for key in body if key not in taken]
        if not unknown:
            return None
        names = ", ".join(json.dumps(key, ensure_ascii=False) for key in unknown)
        takes = ", ".join(json.dumps(key) for key in taken)
        plural = "s" if len(unknown) > 1 else ""
        return error(f"unknown key{plural} {names}: this endpoint takes {takes}", 400)

    def unauthorized(ctx: Context) -> Response:
        if ctx.retry_after is not None:  # locked out: the token it sent was not even read
            return error(
                f"too many wrong tokens from your address; retry in {ctx.retry_after} s",
                429,
                **{"Retry-After": str(ctx.retry_after)},
            )
        return error(
            "authenticate with the header 'Authorization: Bearer <token>'",
            401,
            **{"WWW-Authenticate": 'Bearer realm="sqqueue"'},
        )

    def may_act(ctx: Context) -> Response | None:
        """None when the request may change data, else the refusal."""
        if not ctx.authed:
            return unauthorized(ctx)
        if d.read_only:
            return error("this dashboard is read-only: it changes nothing", 403)
        if not ctx.bearer and not d.auth.csrf_matches(
            ctx.session, ctx.request.headers.get("x-csrf-token")
        ):
            return error("a call made with the session cookie needs the X-CSRF-Token header", 403)
        return None

    def with_chart(row: dict[str, Any]) -> dict[str, Any]:
        if row.get("chart") is not None:
            row["chart_max"] = present.chart(row["chart"])["top"]
        return row

    async def overview(request: Request) -> Response:
        ctx = d.context(request)
        if not ctx.authed:
            return unauthorized(ctx)
        data = await d.call(d.source.overview)
        data["queues"] = [with_chart(row) for row in data["queues"]]
        data["health"] = dataclasses.asdict(data["health"])
        data["read_only"] = d.read_only
        data["sample_every"] = d.source.sample_every
        return d.json(data)

    async def queue_list(request: Request) -> Response:
        ctx = d.context(request)
        if not ctx.authed:
            return unauthorized(ctx)
        data = await d.call(d.source.overview)
        return d.json({"queues": [with_chart(row) for row in data["queues"]],
                       "error": data["error"], "legacy_queues": data["legacy_queues"],
                       "legacy_error": data["legacy_error"]})  # fmt: skip

    async def queue(request: Request) -> Response:
        ctx = d.context(request)
        if not ctx.authed:
            return unauthorized(ctx)
        name = request.path_params["name"]

        def read() -> dict[str, Any] | None:
            if not d.source.has(name):
                return None
            # A queue that cannot be opened (an older layout, read-only) has its error in
            # the row, as in the overview.
            row = with_chart(d.source.queue_summary(name, d.source.clock()))
            job = d.source.redrive_job(name)
            row["redrive"] = None if job is None else job.to_dict()
            return row

        row = await d.call(read)
        if row is None:
            return error(f"no queue {name!r}", 404)
        return d.json(row)

    async def messages(request: Request) -> Response:
        ctx = d.context(request)
        if not ctx.authed:
            return unauthorized(ctx)
        name = request.path_params["name"]
        query = request.query_params
        label = query.get("state", "ready")
        state = states.by_label(label)
        if state is None and label != "all":
            return error(
                "state must be ready, delayed, waiting, processing, dead, done or all", 400
            )
        try:
            after = int(query.get("after", "0"))
            limit = int(query.get("limit", "50"))
        except ValueError:
            return error("after and limit must be whole numbers", 400)
        if not (0 <= after < 2**63 and 1 <= limit <= MAX_LIMIT):
            return error(f"after must be 0 or more and limit 1 to {MAX_LIMIT}", 400)
        library = "all" if state is None else state.library

        def read() -> list[dict[str, Any]] | None:
            queue_ = d.source.queue(name)
            if queue_ is None:
                return None
            # One row more than asked: whether there is a next page (a last page exactly
            # full has none, and says so).
            listed = d.source.checked(name, queue_, queue_.list_messages(library, limit + 1, after))
            return [present.message_view(r) for r in value_of(listed)]

        try:
            rows = await d.call(read)
        except Exception as exc:
            return failed(exc)
        if rows is None:
            return error(f"no queue {name!r}", 404)
        page = rows[:limit]
        return d.json({
            "queue": name,
            "state": label,
            "messages": page,
            "next_after": page[-1]["id"] if len(rows) > limit else None,
        })  # fmt: skip

    async def message(request: Request) -> Response:
        ctx = d.context(request)
        if not ctx.authed:
            return unauthorized(ctx)
        name = request.path_params["name"]
        message_id = request.path_params["message_id"]

        try:
            exists, entry = await d.call(d.source.message, name, message_id)
        except Exception as exc:
            return failed(exc)
        if not exists:
            return error(f"no queue {name!r}", 404)
        if entry is None:
            return error(f"queue {name!r} has no message {message_id}", 404)
        return d.json(present.message_view(entry))

    async def body_of(ctx: Context) -> tuple[dict[str, Any] | None, Response | None]:
        refusal = may_act(ctx)
        if refusal is not None:
            return None, refusal
        try:
            return await d.json_body(ctx.request), None
        except FormError as exc:
            return None, error(str(exc), 400)

    def ids_of(body: dict[str, Any]) -> list[int] | None:
        ids = body.get("ids")
        if not isinstance(ids, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) and 0 <= i < 2**63 for i in ids
        ):
            return None
        return ids

    def on_dead_letters(act: DeadLetterAction) -> Callable[[Request], Awaitable[Response]]:
        """A JSON body posted on a queue's dead letters: checked, and the queue found, first."""

        async def handler(request: Request) -> Response:
            body, refusal = await body_of(d.context(request))
            if body is None:
                assert refusal is not None
                return refusal
            name = request.path_params["name"]
            queue_ = await d.call(d.source.queue, name)
            if queue_ is None:
                return error(f"no queue {name!r}", 404)
            return await act(body, name, queue_)

        return handler

    def busy(job: RedriveJob) -> Response:
        return d.json({
            "error": f"a background redrive of queue {job.queue!r} is running ({job.done} of "
                     f"{job.total} so far); wait for it to finish, then retry",
            "redrive": job.to_dict(),
        }, status=409)  # fmt: skip

    @on_dead_letters
    async def redrive(body: dict[str, Any], name: str, queue_: Any) -> Response:
        refusal = unknown_keys(body, "ids", "all", "rate")
        if refusal is not None:
            return refusal
        every = body.get("all", False)
        if not isinstance(every, bool):
            return error('"all" must be true or false', 400)
        if every and "ids" in body:
            return error('give "ids": [id, ...] or "all": true, not both', 400)
        rate = body.get("rate", d.redrive_rate)
        if rate is not None:
            try:
                rate = present.rate(rate)
            except ValueError as exc:
                return error(f"{exc}; or null for no limit", 400)
        if every:
            job, started = await d.call(d.source.start_redrive, name, rate)
            if not started and job.selected is not None:
                return busy(job)
            return d.json({"redrive": job.to_dict()}, status=202)
        ids = ids_of(body)
        if not ids:
            return error('give "ids": [id, ...] or "all": true', 400)
        if takes_long(len(ids), rate):
            # Paced for longer than a request should last: in the background, as "all".
            job, started = await d.call(d.source.start_redrive, name, rate, ids)
            return d.json({"redrive": job.to_dict()}, status=202) if started else busy(job)
        result = await d.call(d.source.run, name, queue_, queue_.redrive, ids, None, rate)
        if isinstance(result, Err):
            return error(str(result.error), action_status(result.error))
        logger.info("dashboard: redrove %d dead letter(s) of %r", result.value, name)
        return d.json({"redriven": result.value})

    @on_dead_letters
    async def delete(body: dict[str, Any], name: str, queue_: Any) -> Response:
        refusal = unknown_keys(body, "ids")
        if refusal is not None:
            return refusal
        ids = ids_of(body)
        if ids is None:
            return error('give "ids": [id, ...]', 400)
        result = await d.call(d.source.run, name, queue_, queue_.delete_dead_letters, ids)
        if isinstance(result, Err):
            return error(str(result.error), action_status(result.error))
        logger.info("dashboard: deleted %d dead letter(s) of %r", result.value, name)
        return d.json({"deleted": result.value})

    @on_dead_letters
    async def purge(body: dict[str, Any], name: str, queue_: Any) -> Response:
        refusal = unknown_keys(body, "older_than")
        if refusal is not None:
            return refusal
        if "older_than" not in body:
            # Required, null included: purging every dead letter is said, never a default.
            return error(
                '"older_than" is required: seconds since the dead letters died (0 to '
                f"{present.MAX_OLDER_THAN:.0f}, 100 years), or null to purge every dead letter",
                400,
            )
        older_than = body["older_than"]
        if older_than is not None:
            try:
                older_than = present.older_than(older_than)
            except ValueError:
                return error(
                    f"older_than must be seconds from 0 to {present.MAX_OLDER_THAN:.0f} "
                    "(100 years), or null for every dead letter",
                    400,
                )
        result = await d.call(d.source.run, name, queue_, queue_.purge, "dead", older_than)
        if isinstance(result, Err):
            return error(str(result.error), action_status(result.error))
        logger.info("dashboard: purged %d dead letter(s) of %r", result.value, name)
        return d.json({"purged": result.value})

    return [
        Route("/overview", answered(overview), methods=["GET"]),
        Route("/queues", answered(queue_list), methods=["GET"]),
        Route("/queues/{name}", answered(queue), methods=["GET"]),
        Route("/queues/{name}/messages", answered(messages), methods=["GET"]),
        Route("/queues/{name}/messages/{message_id:int}", answered(message), methods=["GET"]),
        Route("/queues/{name}/dead/redrive", answered(redrive), methods=["POST"]),
        Route("/queues/{name}/dead/delete", answered(delete), methods=["POST"]),
        Route("/queues/{name}/dead/purge", answered(purge), methods=["POST"]),
    ]
