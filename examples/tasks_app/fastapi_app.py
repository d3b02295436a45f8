"""A FastAPI endpoint that hands its slow work to a worker::

    JOBS_DB=jobs.db uvicorn fastapi_app:app        # the web app
    JOBS_DB=jobs.db sqqueue worker jobs:tasks      # the worker(s), in another shell

POST /emails enqueues and answers at once with the call's id; GET /emails/{id} says how
it went.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, HTTPException
from jobs import send_email
from pydantic import BaseModel

app = FastAPI()


class Email(BaseModel):
    to: str
    subject: str


@app.post("/emails", status_code=202)
async def queue_email(email: Email) -> dict[str, Any]:
    result = await send_email.delay_async(email.to, email.subject)
    if result.is_err():
        raise HTTPException(status_code=503, detail=str(result.error))
    return {"id": result.value.id}


@app.get("/emails/{call_id}")
async def email_status(call_id: int) -> dict[str, Any]:
    handle = send_email.handle(call_id)
    status = await handle.status_async()
    if status.is_err():
        raise HTTPException(status_code=503, detail=str(status.error))
    answer: dict[str, Any] = {"id": call_id, "status": status.value}
    if status.value == "done":
        answer["result"] = await handle.result_async(timeout=0)
    return answer
