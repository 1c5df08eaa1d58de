"""Daily runs: today's run, live (htmx polls its tasks); the history; any run's tasks; and the
dry-run preview of any day as a table, amounts per currency."""

from __future__ import annotations

import threading
from datetime import date

from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ...clock import SystemClock
from ...db import unit_of_work
from ...domain.models import DailyRun
from ...ops.runs import RunView, last_runs, run_views
from .. import sources
from ..web import FIRST_DAY, LAST_DAY, console, is_id, not_found, render

#: Runs the history shows.
HISTORY = 30


def _today(request: Request) -> date:
    """The installation's day (BILLING_TIME_ZONE) at the console's clock."""
    state = console(request)
    return state.now().astimezone(SystemClock(state.time_zone).zone).date()


def _run(request: Request, run_id: int) -> RunView | None:
    with unit_of_work(console(request).engine) as session:
        run = session.get(DailyRun, run_id)
        return run_views(session, [run])[0] if run is not None else None


def _today_and_history(request: Request, day: date) -> tuple[RunView | None, list[RunView]]:
    """Today's run and the history, read together so that the two agree."""
    with unit_of_work(console(request).engine) as session:
        run = session.execute(select(DailyRun).where(DailyRun.run_date == day, DailyRun.dry_run.is_(False))
                              .limit(1)).scalar()
        today = run_views(session, [run])[0] if run is not None else None
        return today, last_runs(session, HISTORY)


async def runs_page(request: Request) -> Response:
    day = _today(request)
    today, history = await run_in_threadpool(_today_and_history, request, day)
    return render(request, "runs.html", today=today, day=day, history=history)


async def today_live(request: Request) -> Response:
    """The polled part of the page: today's run and its tasks, and the history (swapped out of
    band), so a run that started after the page was opened shows in both."""
    day = _today(request)
    today, history = await run_in_threadpool(_today_and_history, request, day)
    # The page's container polls this every 2 s: the part itself does not poll again.
    return render(request, "_runs_today.html", run=today, day=day, live=False, history=history)


async def run_page(request: Request) -> Response:
    run_id = request.path_params["run_id"]
    run = await run_in_threadpool(_run, request, run_id) if is_id(run_id) else None
    if run is None:
        return not_found(request, f"daily run {run_id}")
    return render(request, "run.html", run=run, live=run.status == "running")


async def run_live(request: Request) -> Response:
    run_id = request.path_params["run_id"]
    if not is_id(run_id):
        return not_found(request, f"daily run {run_id}")
    run = await run_in_threadpool(_run, request, run_id)
    return render(request, "_run_live.html", run=run, day=run.run_date if run else "", live=True)


#: Held while this process computes a preview.
PREVIEW_RUNNING = threading.Lock()


async def preview_page(request: Request) -> Response:
    """The dry-run of ``?day=YYYY-MM-DD`` (today if none): nothing is written."""
    raw = request.query_params.get("day", "")
    error = ""
    preview = None
    try:
        day = date.fromisoformat(raw) if raw else _today(request)
    except ValueError:
        day, error = _today(request), f"day: {raw!r} is not a date (YYYY-MM-DD)"
    if not error and not FIRST_DAY <= day <= LAST_DAY:
        day, error = _today(request), f"day: {day} is out of range ({FIRST_DAY} to {LAST_DAY})"
    if raw and not error:
        # One preview at a time per console process: each runs the whole day's tasks (a viewer
        # may preview, but not start many at once).
        if PREVIEW_RUNNING.acquire(blocking=False):
            try:
                preview = await run_in_threadpool(sources.dry_run_preview, console(request).engine, day)
            finally:
                PREVIEW_RUNNING.release()
        else:
            error = "a preview is already running: try again when it has finished"
    return render(request, "preview.html", day=day, preview=preview, error=error)


routes = [
    Route("/runs", runs_page),
    Route("/runs/today/live", today_live),
    Route("/runs/preview", preview_page),
    Route("/runs/{run_id:int}", run_page),
    Route("/runs/{run_id:int}/live", run_live),
]
