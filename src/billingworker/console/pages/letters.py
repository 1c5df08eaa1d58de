"""Retries and dead letters (Redis): each message with its job, masked arguments, attempts and
reason; a dead letter can be requeued (optionally with corrected arguments) or purged, one or
all of a queue. The work is ``ops.dead_letters`` and ``ops.retries``, through ``sources``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from redis.exceptions import RedisError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ...db import unit_of_work
from ...ops.dead_letters import refusal
from ...ops.errors import OpsError
from ...ops.runs import failures_by_message
from ...queue_names import QUEUES
from .. import sources
from ..web import ActionError, act, console, not_found, render

#: Messages listed per queue.
SHOWN = 200


def _failures(request: Request, message_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    ids = [m for m in message_ids if m]
    if not ids:
        return {}
    with unit_of_work(console(request).engine) as session:
        return failures_by_message(session, ids)


def _read_retries(request: Request) -> dict[str, Any]:
    state = console(request)
    now_ms = int(state.now().timestamp() * 1000)
    with sources.retries(state.broker_url) as store:
        pending = {q: store.list(q, limit=SHOWN) for q in QUEUES}
        totals = {q: store.count(q) for q in QUEUES}
        failures = _failures(request, [r.message_id for rs in pending.values() for r in rs])
        rows = {q: [store.summary(r, now_ms=now_ms, failures=failures.get(r.message_id)) for r in rs]
                for q, rs in pending.items()}
    return {"rows": rows, "totals": totals}


def _read_dead(request: Request) -> dict[str, Any]:
    state = console(request)
    now_ms = int(state.now().timestamp() * 1000)
    with sources.dead_letters(state.broker_url) as store:
        letters = {q: store.list(q, limit=SHOWN) for q in QUEUES}
        totals = {q: store.count(q) for q in QUEUES}
        # The newest death the page knows of: "requeue all" and "purge all" act on the letters up
        # to it, never on one that died after the page was shown (the operator has not seen it).
        newest = {q: (store.newest_death_ms(q) if totals[q] > len(letters[q]) else
                      max((letter.died_at_ms for letter in letters[q]), default=0)) for q in QUEUES}
    failures = _failures(request, [letter.message_id for ls in letters.values() for letter in ls])
    rows = {}
    for q, ls in letters.items():
        rows[q] = []
        for letter in ls:
            row = letter.summary(now_ms)
            why = refusal(letter, failures.get(letter.message_id, []))
            row["refused"] = why
            row["reason"] = why or row["error"] or "retries spent"
            row["undecodable"] = letter.decode_error
            rows[q].append(row)
    refused = {q: sum(1 for row in rs if row["refused"]) for q, rs in rows.items()}
    return {"rows": rows, "totals": totals, "newest": newest, "refused": refused}


async def retries_page(request: Request) -> Response:
    try:
        data = await run_in_threadpool(_read_retries, request)
    except (OpsError, RedisError) as exc:
        return render(request, "retries.html", rows={}, totals={}, error=str(exc))
    return render(request, "retries.html", error="", **data)


async def dead_letters_page(request: Request) -> Response:
    try:
        data = await run_in_threadpool(_read_dead, request)
    except (OpsError, RedisError) as exc:
        return render(request, "dead_letters.html", rows={}, totals={}, newest={}, refused={}, error=str(exc))
    return render(request, "dead_letters.html", error="", **data)


def _letter(request: Request, store):
    queue, ident = request.path_params["queue"], request.path_params["ident"]
    if queue not in QUEUES:
        raise ActionError(f"queue: {queue!r} is not one of {', '.join(QUEUES)}")
    return store.find(ident, (queue,))


async def dead_letter_page(request: Request) -> Response:
    state = console(request)

    def read() -> dict[str, Any]:
        with sources.dead_letters(state.broker_url) as store:
            letter = _letter(request, store)
        message, traceback = letter.shown()
        why = refusal(letter, _failures(request, [letter.message_id]).get(letter.message_id, []))
        died = datetime.fromtimestamp(letter.died_at_ms / 1000, UTC)
        return {"letter": letter.summary(int(state.now().timestamp() * 1000)), "message": message,
                "traceback": traceback, "refused": why, "died": died, "undecodable": letter.decode_error}

    try:
        data = await run_in_threadpool(read)
    except (OpsError, ActionError) as exc:
        return not_found(request, f"dead letter ({exc})")
    except RedisError as exc:
        return render(request, "unavailable.html", status_code=503, what="the broker (dead letters)",
                      reason=f"{type(exc).__name__}: {exc}")
    return render(request, "dead_letter.html", **data)


async def requeue(request: Request) -> Response:
    queue, ident = request.path_params["queue"], request.path_params["ident"]
    state = console(request)
    form = await request.form()
    corrections_text = str(form.get("set", ""))

    def work(form: dict[str, str]) -> str:
        with sources.dead_letters(state.broker_url) as store:
            letter = _letter(request, store)
            changes = sources.corrections(letter, corrections_text)
            new_id = store.requeue_with(letter, changes)
        if new_id is None:
            raise ActionError("already gone (purged or requeued meanwhile)")
        fixed = f" with {', '.join(sorted(changes))} corrected" if changes else ""
        why = refusal(letter, _failures(request, [letter.message_id]).get(letter.message_id, []))
        warning = (f" Warning: it died of bad input ({why}) and was requeued unchanged: it will die again."
                   if why and not changes else "")
        return f"requeued {letter.actor} {letter.id}{fixed} to {letter.queue} as {new_id}.{warning}"

    return await act(request, "requeue", f"{queue}/{ident}", work, back="/dead-letters",
                     detail=f"set {corrections_text.strip()}" if corrections_text.strip() else "")


async def purge(request: Request) -> Response:
    queue, ident = request.path_params["queue"], request.path_params["ident"]
    state = console(request)

    def work(form: dict[str, str]) -> str:
        with sources.dead_letters(state.broker_url) as store:
            letter = _letter(request, store)
            if not store.purge(letter):
                raise ActionError("already gone")
        return f"purged {letter.actor} {letter.id} from {letter.queue}"

    return await act(request, "purge", f"{queue}/{ident}", work, back="/dead-letters")


def _queue(request: Request) -> str:
    queue = request.path_params["queue"]
    if queue not in QUEUES:
        raise ActionError(f"queue: {queue!r} is not one of {', '.join(QUEUES)}")
    return queue


def _seen(form: dict[str, str], store, queue: str) -> tuple[list, int]:
    """The letters of ``queue`` the page showed (died at or before its ``upto``), and how many
    died since (left alone). A form without ``upto`` is stale."""
    upto = form.get("upto", "")
    if not (upto.isascii() and upto.isdigit() and len(upto) <= 16):
        raise ActionError("the form is stale (it does not say which letters it showed): reload the page")
    letters = store.list(queue)
    seen = [letter for letter in letters if letter.died_at_ms <= int(upto)]
    return seen, len(letters) - len(seen)


def _since(later: int) -> str:
    return f"; {later} that died after the page was shown left alone (reload to see them)" if later else ""


async def requeue_all(request: Request) -> Response:
    """Requeue the letters the page showed. When some died of bad input (they die again unless
    corrected), only with the box ticked that says so, as the CLI asks first."""
    state = console(request)

    def work(form: dict[str, str]) -> str:
        queue = _queue(request)
        with sources.dead_letters(state.broker_url) as store:
            letters, later = _seen(form, store, queue)
            failures = _failures(request, [letter.message_id for letter in letters])
            doomed = sum(1 for letter in letters if refusal(letter, failures.get(letter.message_id, [])))
            if doomed and form.get("bad_input") != "yes":
                raise ActionError(f"{doomed} of the {len(letters)} dead letters died of bad input and would die "
                                  "again: correct them one by one, or tick the box to requeue them as they are; "
                                  "nothing was requeued")
            new_ids, skipped = store.requeue_all(queue, letters=letters)
        left = f"; {len(skipped)} left (not a message: read, then purge them)" if skipped else ""
        warned = f" ({doomed} died of bad input and will die again unless their cause is fixed)" if doomed else ""
        return f"requeued {len(new_ids)} dead letters to {queue}{warned}{left}{_since(later)}"

    return await act(request, "requeue_all", request.path_params["queue"], work, back="/dead-letters")


async def purge_all(request: Request) -> Response:
    """Drop the letters the page showed ("drop all N"), not one that died after."""
    state = console(request)

    def work(form: dict[str, str]) -> str:
        queue = _queue(request)
        if form.get("confirm") != "yes":
            raise ActionError("tick the box to confirm: every dead letter of the queue is dropped for good")
        with sources.dead_letters(state.broker_url) as store:
            letters, later = _seen(form, store, queue)
            count = sum(1 for letter in letters if store.purge(letter))
        return f"purged {count} dead letters of {queue}{_since(later)}"

    return await act(request, "purge_all", request.path_params["queue"], work, back="/dead-letters")


routes = [
    Route("/retries", retries_page),
    Route("/dead-letters", dead_letters_page),
    Route("/dead-letters/{queue}/requeue-all", requeue_all, methods=["POST"]),
    Route("/dead-letters/{queue}/purge-all", purge_all, methods=["POST"]),
    Route("/dead-letters/{queue}/{ident}", dead_letter_page),
    Route("/dead-letters/{queue}/{ident}/requeue", requeue, methods=["POST"]),
    Route("/dead-letters/{queue}/{ident}/purge", purge, methods=["POST"]),
]
