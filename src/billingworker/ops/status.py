"""``billingworker status``: one screen (or one JSON document) with the queues, the workers, the
last daily runs and the parked clients. A source that does not answer is reported, not fatal.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Engine

from ..broker import QUEUES
from ..db import get_engine, unit_of_work
from .logs import redact_text
from .queues import NAMESPACE, broker_kind, read_broker_state, safe_url
from .runs import TASK_COUNTS, count_parked, last_runs, parked_clients


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
    except Exception as exc:  # noqa: BLE001 - shown on the screen, exit status 1
        status["daily_runs"] = []
        status["parked_clients"] = {"total": None, "clients": []}
        status["errors"].append(f"database: {_reason(exc)}")
    return status


def _kind(url: str) -> str:
    try:
        return broker_kind(url)
    except ValueError:
        return "unknown"


def _reason(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return redact_text(f"{type(exc).__name__}: {lines[0] if lines else ''}")


# --- the screen ---------------------------------------------------------------------------------

def render_status(status: dict[str, Any]) -> str:
    """The status as a terminal screen: aligned tables, ``n/a`` where the broker cannot tell."""
    broker = status["broker"]
    workers = "n/a" if broker.get("workers") is None else str(broker["workers"])
    out = [f"Broker {broker['url']} ({broker['kind']}): live workers {workers}"]
    if broker.get("note"):
        out.append(f"  {broker['note']}")
    rows = [[q["queue"], _n(q["waiting"]), _n(q["delayed"]), _n(q["in_progress"]), _n(q["dead"]),
             "n/a" if q["oldest_age_seconds"] is None else ("-" if not q["waiting"] else
                                                             format_age(q["oldest_age_seconds"])),
             q.get("note", "")] for q in status["queues"]]
    if rows:
        out.append(table(["queue", "waiting", "delayed", "in progress", "dead", "oldest waiting", ""], rows))
    out.append("")
    runs = status["daily_runs"]
    out.append(f"Daily runs (last {len(runs)})" if runs else "Daily runs: none yet")
    if runs:
        out.append(table(["run", "date", "status", "trigger", "started", "finished", "failures"],
                         [[f"#{r['id']}" + (" dry" if r["dry_run"] else ""), r["run_date"], r["status"], r["trigger"],
                           _when(r["started_at"]), _when(r["finished_at"]), str(r["failures"])] for r in runs]))
        last = runs[0]
        if last["tasks"]:
            out.append(f"Tasks of run #{last['id']}")
            out.append(table(["task", "status", "batches", *TASK_COUNTS],
                             [[t["task"], t["status"], f"{t['batches_done']}/{t['batches_total']}",
                               *(str(t["counts"][c]) for c in TASK_COUNTS)] for t in last["tasks"]]))
    out.append("")
    parked = status["parked_clients"]
    if parked["total"] is None:
        out.append("Parked clients: n/a")
    elif not parked["total"]:
        out.append("Parked clients: none")
    else:
        shown = len(parked["clients"])
        out.append(f"Parked clients: {parked['total']}" + (f" (the {shown} most recent)" if shown < parked["total"]
                                                            else ""))
        out.append(table(["client", "name", "parked at", "failures", "reason"],
                         [[str(c["id"]), c["name"], _when(c["parked_at"]), str(c["failure_count"]), c["reason"]]
                          for c in parked["clients"]]))
    for error in status["errors"]:
        out.append(f"ERROR {error}")
    return "\n".join(out)


def table(headers: list[str], rows: list[list[str]]) -> str:
    """Columns padded to their widest cell; a column of numbers is right-aligned."""
    columns = list(zip(headers, *rows, strict=True))
    widths = [max(len(str(c)) for c in col) for col in columns]
    right = [bool(rows) and all(_numeric(c) for c in col[1:]) for col in columns]

    def line(cells: list[str]) -> str:
        return "  ".join(str(c).rjust(w) if r else str(c).ljust(w)
                         for c, w, r in zip(cells, widths, right, strict=True)).rstrip()

    return "\n".join([line(headers), *(line(r) for r in rows)])


def _numeric(cell: Any) -> bool:
    return str(cell).replace("/", "").isdigit() or cell in ("n/a", "-")


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
