"""A Flask app that hands its slow work to a worker::

JOBS_DB=jobs.db flask --app flask_app run      # the web app
JOBS_DB=jobs.db sqqueue worker jobs:tasks      # the worker(s), in another shell
"""

from __future__ import annotations

from typing import Any

from flask import Flask, request
from jobs import send_email

app = Flask(__name__)


@app.post("/emails")
def queue_email() -> tuple[dict[str, Any], int]:
    data = request.get_json(force=True)
    result = send_email.delay(data["to"], data["subject"])
    if result.is_err():
        return {"error": str(result.error)}, 503
    return {"id": result.value.id}, 202


@app.get("/emails/<int:call_id>")
def email_status(call_id: int) -> tuple[dict[str, Any], int]:
    handle = send_email.handle(call_id)
    status = handle.status()
    if status.is_err():
        return {"error": str(status.error)}, 503
    answer: dict[str, Any] = {"id": call_id, "status": status.value}
    if status.value == "done":
        answer["result"] = handle.result(timeout=0)
    return answer, 200
