"""A client: its summary and its account statement (the read models of ``billingworker summary``
and ``billingworker statement``), its failures and its undelivered emails."""

from __future__ import annotations

from datetime import date, timedelta

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from ...clock import SystemClock
from ...db import unit_of_work
from ...domain.errors import BillingError
from ...domain.reports.statements import account_statement
from ...domain.reports.summary import client_summary
from ..web import BadQuery, console, is_id, not_found, query_day, render

#: The statement's default range: this many days back to today.
STATEMENT_DAYS = 90


async def find_client(request: Request) -> Response:
    """The search box: ``?id=42`` goes to client 42."""
    raw = request.query_params.get("id", "").strip()
    if raw.isascii() and raw.isdigit() and len(raw) <= 10 and is_id(int(raw)):
        return RedirectResponse(f"/clients/{int(raw)}", status_code=303)
    return render(request, "client_find.html", error=f"client: {raw!r} is not a client id" if raw else "")


def _read(request: Request, client_id: int, first: date, last: date):
    state = console(request)
    with unit_of_work(state.engine) as session:
        summary = client_summary(session, client_id)
        statement = account_statement(session, client_id, first, last, time_zone=state.time_zone)
    return summary, statement


async def client_page(request: Request) -> Response:
    client_id = request.path_params["client_id"]
    state = console(request)
    today = state.now().astimezone(SystemClock(state.time_zone).zone).date()
    if not is_id(client_id):
        return not_found(request, f"client {client_id}")
    error = ""
    try:
        first = query_day(request, "from", today - timedelta(days=STATEMENT_DAYS))
        last = query_day(request, "to", today)
    except BadQuery as exc:
        first, last, error = today - timedelta(days=STATEMENT_DAYS), today, str(exc)
    if first > last:
        first, last, error = last, first, "from: the first day is after the last; swapped"
    try:
        summary, statement = await run_in_threadpool(_read, request, client_id, first, last)
    except BillingError:
        return not_found(request, f"client {client_id}")
    return render(request, "client.html", summary=summary, statement=statement, first=first, last=last,
                  error=error)


routes = [
    Route("/clients", find_client),
    Route("/clients/{client_id:int}", client_page),
]
