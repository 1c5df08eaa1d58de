"""Outbox: emails that were not delivered (failed, skipped), with a resend of one or of every
failed one (``ops.outbox``: the rows go back to queued, their delivery is sent after the commit)."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ...db import unit_of_work
from ...ops.outbox import STATUSES, UNDELIVERED, count_by_status, list_outbox, resend
from ..web import ActionError, act, console, render

SHOWN = 200


async def outbox_page(request: Request) -> Response:
    status = request.query_params.get("status", "")
    statuses = (status,) if status in STATUSES else UNDELIVERED
    raw_client = request.query_params.get("client", "")
    client_id = int(raw_client) if raw_client.isdigit() else None

    def read():
        with unit_of_work(console(request).engine) as session:
            return (list_outbox(session, statuses=statuses, client_id=client_id, limit=SHOWN),
                    count_by_status(session))

    rows, counts = await run_in_threadpool(read)
    return render(request, "outbox.html", rows=rows, counts=counts, status=status if status in STATUSES else "",
                  statuses=STATUSES, client_id=client_id)


def _said(done, what: str) -> str:
    left = ", ".join(f"{i}: {s}" for i, s in sorted(done.left.items()))
    if not done.queued:
        raise ActionError(f"nothing to resend ({left or 'no failed email'})")
    return f"{what}: {len(done.queued)} email(s) queued for delivery" + (f"; left as they are: {left}" if left else "")


async def resend_one(request: Request) -> Response:
    email_id = request.path_params["email_id"]
    state = console(request)

    def work(form: dict[str, str]) -> str:
        return _said(resend(state.engine, now=state.now(), email_ids=[email_id]), f"email {email_id}")

    return await act(request, "resend", f"email {email_id}", work, back="/outbox")


async def resend_failed(request: Request) -> Response:
    state = console(request)

    def work(form: dict[str, str]) -> str:
        return _said(resend(state.engine, now=state.now(), all_failed=True), "every failed email")

    return await act(request, "resend_all", "failed emails", work, back="/outbox")


routes = [
    Route("/outbox", outbox_page),
    Route("/outbox/resend-failed", resend_failed, methods=["POST"]),
    Route("/outbox/{email_id:int}/resend", resend_one, methods=["POST"]),
]
