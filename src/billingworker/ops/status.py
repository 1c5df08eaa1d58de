"""``billingworker status``: one screen (or one JSON document) with the queues, the workers, the
last daily runs and the parked clients. A source that does not answer is reported, not fatal.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from rich.console import Group
from rich.text import Text
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from ..clock import as_utc
from ..db import get_engine, unit_of_work
from ..domain.reports.reconciliation import recorded_reconciliation
from ..queue_names import QUEUES
from .logs import redact_text
from .queues import NAMESPACE, broker_kind, read_broker_state, safe_url
from .runs import TASK_COUNTS, count_parked, last_real_run, last_runs, parked_clients
from .tables import Column, make_table


def collect_status(broker_url: str, database_url: str | None = None, *, now: datetime, engine: Engine | None = None,
                   runs: int = 5, parked: int = 20, queues: tuple[str, ...] = QUEUES,
                   namespace: str = NAMESPACE) -> dict[str, Any]:
    """Everything ``status`` shows, as plain JSON-ready data. ``errors`` names what did not answer.

    The database is ``engine``, else the process-wide engine of ``database_url``.
    """
    status: dict[str, Any] = {"generated_at": now.isoformat(), "errors": []}
    try:
        state = read_broker_state(broker_url, queues, namespace=namespace, now_ms=int(now.timestamp() * 1000))
        data = state.as_dict()
        status["queues"] = data.pop("queues")
        status["broker"] = data
    except Exception as exc:  # noqa: BLE001 - shown on the screen, exit status 1
        status["broker"] = {"kind": _kind(broker_url), "url": safe_url(broker_url), "workers": None, "note": ""}
        status["queues"] = []
        status["errors"].append(f"broker: {_reason(exc)}")
    try:
        with unit_of_work(engine or get_engine(database_url)) as session:
            status["daily_runs"] = [r.as_dict() for r in last_runs(session, runs)]
            status["parked_clients"] = {"total": count_parked(session),
                                        "clients": [c.as_dict() for c in parked_clients(session, parked)]}
            status["books"] = _books(session)
    except Exception as exc:  # noqa: BLE001 - shown on the screen, exit status 1
        status["daily_runs"] = []
        status["parked_clients"] = {"total": None, "clients": []}
        status["books"] = None
        status["errors"].append(f"database: {_reason(exc)}")
    return status


def _books(session: Session) -> dict[str, Any] | None:
    """The reconciliation recorded by the latest real run that has one, and whether that is the
    latest real run (one still running, or one that failed, records none). None: no real run yet."""
    latest = last_real_run(session)
    if latest is None:
        return None
    recorded = recorded_reconciliation(session)
    books: dict[str, Any] = {"latest_run": {"id": latest.id, "status": latest.status,
                                            "reconciled": recorded is not None and recorded.run_id == latest.id}}
    if recorded is not None:
        # "findings" counts what no failure explains (the explained ones are counted apart)
        books.update(run_id=recorded.run_id, as_of=recorded.as_of.isoformat(),
                     checked_at=as_utc(recorded.checked_at).isoformat(), clean=recorded.clean,
                     findings=sum(c.get("findings", 0) for c in recorded.counts.values()))
    return books


def _kind(url: str) -> str:
    try:
        return broker_kind(url)
    except ValueError:
        return "unknown"


def _reason(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return redact_text(f"{type(exc).__name__}: {lines[0] if lines else ''}")


# --- the screen ---------------------------------------------------------------------------------

def status_view(status: dict[str, Any]) -> Group:
    """The status as rich renderables (tables, ``n/a`` where the broker cannot tell): printed once
    by ``status``, redrawn by ``status --watch``."""
    parts: list[Any] = []
    broker = status["broker"]
    workers = "n/a" if broker.get("workers") is None else str(broker["workers"])
    parts.append(Text(f"Broker {broker['url']} ({broker['kind']}): live workers {workers}"))
    if broker.get("note"):
        parts.append(Text(f"  {broker['note']}"))
    if status["queues"]:
        parts.append(make_table(None, ["queue", *(_right(c) for c in ("waiting", "delayed", "in progress", "dead",
                                                                       "oldest waiting")), ""],
                                [[q["queue"], _n(q["waiting"]), _n(q["delayed"]), _n(q["in_progress"]), _n(q["dead"]),
                                  _oldest(q), q.get("note", "")] for q in status["queues"]]))
    consumers = broker.get("consumers") or []
    if consumers:
        parts.append(make_table("Consuming workers", ["host", _right("pid"), "queues", _right("last seen")],
                                [[c["host"], _n(c["pid"]), ", ".join(c["queues"]),
                                  format_age(c["last_seen_seconds_ago"]) + " ago"] for c in consumers]))
    parts.append(Text(""))
    runs = status["daily_runs"]
    if not runs:
        parts.append(Text("Daily runs: none yet"))
    else:
        parts.append(make_table(f"Daily runs (last {len(runs)})",
                                ["run", "date", "status", "trigger", "started", "finished", _right("failures")],
                                [[f"#{r['id']}" + (" dry" if r["dry_run"] else ""), r["run_date"], r["status"],
                                  r["trigger"], _when(r["started_at"]), _when(r["finished_at"]), r["failures"]]
                                 for r in runs]))
        last = runs[0]
        if last["tasks"]:
            parts.append(make_table(f"Tasks of run #{last['id']}",
                                    ["task", "status", _right("batches"), *(_right(c) for c in TASK_COUNTS)],
                                    [[t["task"], t["status"], f"{t['batches_done']}/{t['batches_total']}",
                                      *(t["counts"][c] for c in TASK_COUNTS)] for t in last["tasks"]]))
    parts.append(Text(""))
    parked = status["parked_clients"]
    if parked["total"] is None:
        parts.append(Text("Parked clients: n/a"))
    elif not parked["total"]:
        parts.append(Text("Parked clients: none"))
    else:
        shown = len(parked["clients"])
        title = f"Parked clients: {parked['total']}" + (f" (the {shown} most recent)" if shown < parked["total"]
                                                        else "")
        parts.append(make_table(title, [_right("client"), "name", "parked at", _right("failures"), "reason"],
                                [[c["id"], c["name"], _when(c["parked_at"]), c["failure_count"], c["reason"]]
                                 for c in parked["clients"]]))
    parts.append(Text(_books_line(status.get("books"), database_answered=parked["total"] is not None)))
    for error in status["errors"]:
        parts.append(Text(f"ERROR {error}"))
    return Group(*parts)


def _books_line(books: dict[str, Any] | None, *, database_answered: bool) -> str:
    if not database_answered:
        return "Books: n/a"
    if books is None:
        return "Books: no daily run yet"
    latest = books["latest_run"]
    pending = "" if latest["reconciled"] else f"; run #{latest['id']} ({latest['status']}) has not checked them"
    if "run_id" not in books:
        return f"Books: not reconciled yet (a real run checks them when it finishes){pending}"
    where = f"as of {books['as_of']} (run #{books['run_id']}, checked {_when(books['checked_at'])})"
    if books["clean"]:
        return f"Books: clean {where}{pending}"
    return (f"Books: NOT CLEAN {where}: {books['findings']} finding(s) to look at; "
            f"billingworker reconcile --as-of {books['as_of']} lists them{pending}")


def _right(name: str) -> Column:
    return Column(name, justify="right")


def _oldest(queue: dict[str, Any]) -> str:
    if queue["oldest_age_seconds"] is None:
        return "n/a"
    return format_age(queue["oldest_age_seconds"]) if queue["waiting"] else "-"


def _n(value: int | None) -> str:
    return "n/a" if value is None else str(value)


def _when(iso: str | None) -> str:
    return iso[:16].replace("T", " ") if iso else "-"


def format_age(seconds: float) -> str:
    """``45s``, ``12m``, ``3h 05m``, ``2d 04h``: an age at a glance."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86400:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d {seconds % 86400 // 3600:02d}h"
