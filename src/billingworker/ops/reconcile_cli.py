"""``billingworker reconcile [--as-of DAY] [--json]``: do the books hold together (issue 12)?

The checks are ``domain/reports/reconciliation.py``'s, the same that end every daily run (and
that the benchmarks print). Here: the summary table (one row per check: status, findings,
explained), then each check's findings with the rows they name, at most ``--limit`` per check
("and N more"). Reads only.

Exit status: 0 clean (explained findings allowed), 1 findings, 2 bad input (``--as-of``),
3 the books could not be read (the database did not answer or is not migrated).
"""

from __future__ import annotations

from datetime import date
from typing import Any

import click

from .cli_support import services_answer, utc_now
from .tables import Column, InputRefused, console, make_table, print_json

#: Row ids shown per finding in the table (the JSON has them all).
SHOWN_IDS = 10


class CouldNotCheck(click.ClickException):
    """The database did not answer: neither clean nor unclean."""

    exit_code = 3


@click.command()
@click.option("--as-of", "as_of", default=None, metavar="DAY",
              help="The day to check the books for (YYYY-MM-DD); default today in BILLING_TIME_ZONE.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document (every finding and row id), for scripts.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True,
              help="Findings shown per check (the rest are counted).")
def reconcile(as_of: str | None, as_json: bool, limit: int) -> None:
    """Check the books: every thing due invoiced for its period, no period billed twice, numbers
    without gaps, paid invoices moved their due dates, credit history = balance, every email
    settled, lines + taxes = totals. Exit 0 when clean, 1 when there are findings."""
    from ..clock import SystemClock
    from ..config import get_config
    from ..db import get_engine, unit_of_work
    from ..domain.errors import ValidationError
    from ..domain.reports.reconciliation import reconcile as reconcile_books

    cfg = get_config()
    today = SystemClock(cfg.time_zone).today()
    day = _day(as_of, today, cfg.time_zone)
    try:
        with services_answer():
            with unit_of_work(get_engine()) as session:
                result = reconcile_books(session, day, now=utc_now())
    except click.ClickException as exc:
        raise CouldNotCheck(exc.format_message()) from None
    except ValidationError as exc:  # a setting the admin panel stored badly
        raise CouldNotCheck(str(exc)) from None
    if as_json:
        print_json(result.as_dict())
    else:
        render(result, limit=limit)
    raise SystemExit(0 if result.clean else 1)


def _day(as_of: str | None, today: date, zone: str) -> date:
    """The day ``--as-of`` names, today by default; never a day after today."""
    if as_of is None:
        return today
    try:
        day = date.fromisoformat(as_of.strip())
    except ValueError:
        raise InputRefused(f"--as-of: {as_of!r} is not a day (YYYY-MM-DD)") from None
    if day > today:
        raise InputRefused(f"--as-of: {day} is after today ({today} in {zone}): the books of a day to come "
                           "cannot be checked yet")
    return day


def render(result: Any, *, limit: int) -> None:
    """The summary table, then each check's findings (at most ``limit``), then the verdict."""
    from ..domain.reports.reconciliation import CHECKS, findings_by_check

    out = console()
    counts = result.counts()
    rows = []
    for name, description in CHECKS.items():
        c = counts[name]
        status = "FAIL" if c["findings"] else "ok"
        rows.append([name, status, c["findings"], c["explained"], description])
    out.print(make_table(f"Reconciliation of the books as of {result.as_of.isoformat()}",
                         ["check", "status", Column("findings", justify="right"),
                          Column("explained", justify="right"), "rule"], rows))
    for name, findings in findings_by_check(result.findings).items():
        if not findings:
            continue
        findings = sorted(findings, key=lambda f: f.explained)  # the ones to act on first
        shown = findings[:limit]
        table_rows = [[f.table, _ids(f.ids), "explained" if f.explained else "finding", f.reason] for f in shown]
        if len(findings) > limit:
            table_rows.append(["", "", "", f"and {len(findings) - limit} more"])
        out.print()
        out.print(make_table(f"{name}: {CHECKS[name]}", ["table", "ids", "kind", "reason"], table_rows))
    out.print()
    errors = len(result.errors())
    out.print("books clean" if result.clean else f"books NOT clean: {errors} finding(s) to look at")


def _ids(ids: tuple[int, ...]) -> str:
    if not ids:
        return "-"
    text = ", ".join(str(i) for i in ids[:SHOWN_IDS])
    return text + (f" and {len(ids) - SHOWN_IDS} more" if len(ids) > SHOWN_IDS else "")
