"""Outbox: emails that were not delivered (failed, skipped), with a resend of one or of every
failed one (``ops.outbox``: the rows go back to queued, their delivery is sent after the commit)."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ...db import unit_of_work
from ...ops.outbox import STATUSES, UNDELIVERED, ResendDone, count_by_status, list_outbox, resend
from ..web import ActionError, BadQuery, Warned, act, bad_request, console, is_id, query_id, render

SHOWN = 200


async def outbox_page(request: Request) -> Response:
    status = request.query_params.get("status", "")
    statuses = (status,) if status in STATUSES else UNDELIVERED
    try:
        client_id = query_id(request, "client")
    except BadQuery as exc:
        return bad_request(request, str(exc))

    def read():
        with unit_of_work(console(request).engine) as session:
            return (list_outbox(session, statuses=statuses, client_id=client_id, limit=SHOWN),
                    count_by_status(session))

    rows, counts = await run_in_threadpool(read)
    return render(request, "outbox.html", rows=rows, counts=counts, status=status if status in STATUSES else "",
                  statuses=STATUSES, client_id=client_id)


def _said(done: ResendDone, what: str) -> str | Warned:
    """The flash of a resend. The rows were committed to ``queued`` before their delivery was
    sent: if the broker did not answer then, the resend is still done (the scheduler's relay
    offers queued rows again), so it is a warning saying so, not an error."""
    left = ", ".join(f"{i}: {s}" for i, s in sorted(done.left.items()))
    if not done.queued:
        if done.left and all(s in ("queued", "sending") for s in done.left.values()):
            raise ActionError(f"nothing to resend: already queued for delivery ({left})")
        raise ActionError(f"nothing to resend ({left or 'no failed email'})")
    also = f"; left as they are: {left}" if left else ""
    if done.warning:
        return Warned(f"{what}: {done.warning}{also}")
    return f"{what}: {len(done.queued)} email(s) queued for delivery{also}"


async def resend_one(request: Request) -> Response:
    email_id = request.path_params["email_id"]
    state = console(request)

    def work(form: dict[str, str]) -> str:
        if not is_id(email_id):
            raise ActionError(f"there is no email {email_id}")
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
