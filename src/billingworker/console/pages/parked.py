"""Failures and parked clients: what the jobs could not do, per client with the reason, and the
clients the daily run skips until an operator unparks them (``domain.runs.daily_run.unpark``)."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ...db import unit_of_work
from ...domain.models import Client
from ...domain.runs.daily_run import unpark
from ...ops.failures import recent_failures
from ...ops.runs import count_parked, parked_clients
from ..web import ActionError, BadQuery, act, bad_request, console, is_id, query_id, render

#: Failures the page lists.
FAILURES_SHOWN = 200


def _read(request: Request, run_id: int | None, client_id: int | None) -> dict:
    with unit_of_work(console(request).engine) as session:
        failures = recent_failures(session, limit=FAILURES_SHOWN, client_id=client_id, run_id=run_id)
        parked = parked_clients(session, 500)
        return {"failures": failures, "parked": parked, "parked_ids": {c.id for c in parked},
                "parked_total": count_parked(session)}


async def parked_page(request: Request) -> Response:
    try:
        run_id, client_id = query_id(request, "run"), query_id(request, "client")
    except BadQuery as exc:
        return bad_request(request, str(exc))
    data = await run_in_threadpool(_read, request, run_id, client_id)
    return render(request, "parked.html", run_id=run_id, client_id=client_id, **data)


async def unpark_client(request: Request) -> Response:
    client_id = request.path_params["client_id"]

    def work(form: dict[str, str]) -> str:
        if not is_id(client_id):
            raise ActionError(f"there is no client {client_id}")
        with unit_of_work(console(request).engine) as session:
            if session.get(Client, client_id) is None:
                raise ActionError(f"there is no client {client_id}")
            changed = unpark(session, client_id)
            session.commit()
        if not changed:
            raise ActionError(f"client {client_id} was not parked")
        return f"client {client_id} unparked: the next daily run processes it again"

    return await act(request, "unpark", f"client {client_id}", work, back="/parked")


routes = [
    Route("/parked", parked_page),
    Route("/parked/{client_id:int}/unpark", unpark_client, methods=["POST"]),
]
