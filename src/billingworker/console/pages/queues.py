"""Queues: per queue waiting / delayed / in progress / dead, the oldest message's age, the
consuming workers (refreshed every 5 s), and charts of depth and throughput over the last hours."""

from __future__ import annotations

from datetime import timedelta

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ...queue_names import QUEUES
from .. import sources
from ..charts import queue_charts
from ..web import console, render

#: Hours of samples the charts show (the scheduler keeps 24).
CHART_HOURS = 6


def _status(request: Request) -> dict:
    state = console(request)
    return sources.status(state.broker_url, state.engine, now=state.now())


def _charts(request: Request) -> list:
    state = console(request)
    hours = CHART_HOURS
    try:
        hours = max(1, min(24, int(request.query_params.get("hours", CHART_HOURS))))
    except ValueError:
        pass
    try:
        data = sources.samples(state.broker_url, since=state.now() - timedelta(hours=hours))
    except Exception as exc:  # noqa: BLE001 - the numbers above still show; the chart says why it is missing
        return [f"samples not read: {type(exc).__name__}"]
    return queue_charts(data, QUEUES)


async def queues_page(request: Request) -> Response:
    status = await run_in_threadpool(_status, request)
    charts = await run_in_threadpool(_charts, request)
    return render(request, "queues.html", status=status, charts=charts, hours=CHART_HOURS)


async def queues_live(request: Request) -> Response:
    return render(request, "_queues_live.html", status=await run_in_threadpool(_status, request))


async def queues_charts(request: Request) -> Response:
    return render(request, "_queues_charts.html", charts=await run_in_threadpool(_charts, request))


routes = [
    Route("/queues", queues_page),
    Route("/queues/live", queues_live),
    Route("/queues/charts", queues_charts),
]
