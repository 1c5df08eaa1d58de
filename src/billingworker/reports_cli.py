"""Read-model commands (SPEC §13): ``billingworker statement`` and ``billingworker summary``.

Both only read the database at DATABASE_URL. An unknown client (or a bad range) is an error
message and exit code 1.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import date, datetime

import click

from .config import get_config


def register(main: click.Group) -> None:
    """Add the read-model commands to ``main``."""
    for command in (statement, summary):
        main.add_command(command)


_DATE = click.DateTime(formats=["%Y-%m-%d"])


@click.command()
@click.argument("client_id", type=int)
@click.option("--from", "date_from", type=_DATE, required=True, help="First day (YYYY-MM-DD), included.")
@click.option("--to", "date_to", type=_DATE, default=None, help="Last day (YYYY-MM-DD), included; default today.")
@click.option("--format", "output", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
def statement(client_id: int, date_from: datetime, date_to: datetime | None, output: str) -> None:
    """The client's account statement: invoices, payments and credits with running balances.

    \b
    billingworker statement 42 --from 2026-01-01 --to 2026-03-31 --format csv
    """
    from .clock import SystemClock
    from .db import get_engine, unit_of_work
    from .domain.errors import BillingError
    from .domain.reports.statements import account_statement

    cfg = get_config()
    last = date_to.date() if date_to else SystemClock(cfg.time_zone).today()
    try:
        with unit_of_work(get_engine()) as session:
            result = account_statement(session, client_id, date_from.date(), last, time_zone=cfg.time_zone)
    except BillingError as exc:
        raise click.ClickException(str(exc)) from None
    if output == "json":
        click.echo(json.dumps(result.as_dict(), indent=2))
    elif output == "csv":
        click.echo(_statement_csv(result), nl=False)
    else:
        click.echo(_statement_table(result))


def _statement_csv(result) -> str:
    plain = result.client.plain
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["type", "date", "description", "credit", "debit", "balance"])
    writer.writerow(["Opening Balance", result.date_from.isoformat(), "", "", "", plain(result.opening_balance)])
    for r in result.rows:
        writer.writerow([r.type, r.date.isoformat(), r.description, plain(r.credit), plain(r.debit), plain(r.balance)])
    writer.writerow(["Closing Balance", result.date_to.isoformat(), "", plain(result.total_credits),
                     plain(result.total_debits), plain(result.closing_balance)])
    return out.getvalue()


def _statement_table(result) -> str:
    money = result.client.money
    width = max([40, *(len(r.description) for r in result.rows)])
    amounts = [result.opening_balance, result.closing_balance, result.total_credits, result.total_debits,
               *(r.balance for r in result.rows)]
    cell = max(len(money(a)) for a in amounts)
    line = f"{{:<10}}  {{:<8}}  {{:<{width}}}  {{:>{cell}}}  {{:>{cell}}}  {{:>{cell}}}"
    out = [f"Account statement of {result.client.name} (client {result.client.client_id}), "
           f"{result.date_from.isoformat()} to {result.date_to.isoformat()}", "",
           line.format("Date", "Type", "Description", "Credit", "Debit", "Balance"),
           line.format(_iso(result.date_from), "", "Opening Balance", "", "", money(result.opening_balance))]
    for r in result.rows:
        out.append(line.format(_iso(r.date), r.type, r.description, money(r.credit) if r.credit else "",
                               money(r.debit) if r.debit else "", money(r.balance)))
    out.append(line.format(_iso(result.date_to), "", "Closing Balance", money(result.total_credits),
                           money(result.total_debits), money(result.closing_balance)))
    return "\n".join(out)


@click.command()
@click.argument("client_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="One JSON document, for scripts.")
def summary(client_id: int, as_json: bool) -> None:
    """The client's summary: invoices per status, income, counts, the last five emails."""
    from .db import get_engine, unit_of_work
    from .domain.errors import BillingError
    from .domain.reports.summary import client_summary

    try:
        with unit_of_work(get_engine()) as session:
            result = client_summary(session, client_id)
    except BillingError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2))
        return
    money = result.client.money
    out = [f"Summary of {result.client.name} (client {result.client.client_id}, {result.client.currency_code})",
           "", "Invoices"]
    for f in result.invoices:
        label = f"{f.status} (due)" if f.status == "Unpaid" else f.status
        out.append(f"  {label:<18} {f.count:>6}  {money(f.amount):>16}")
    out += ["", "Income",
            f"  {'Gross revenue':<18} {money(result.gross_revenue):>23}",
            f"  {'Client expenses':<18} {money(result.client_expenses):>23}",
            f"  {'Net income':<18} {money(result.net_income):>23}",
            f"  {'Credit balance':<18} {money(result.credit_balance):>23}",
            "", "Other",
            f"  {'Services':<18} {result.services.active} active / {result.services.total} total",
            f"  {'Addons':<18} {result.addons.active} active / {result.addons.total} total",
            f"  {'Domains':<18} {result.domains.active} active / {result.domains.total} total",
            f"  {'Quotes':<18} {result.quotes}",
            f"  {'Tickets':<18} {result.tickets}",
            f"  {'Affiliates':<18} {result.affiliates}",
            "", "Recent emails (UTC)"]
    if not result.recent_emails:
        out.append("  none")
    for e in result.recent_emails:
        out.append(f"  {e.sent_at:%Y-%m-%d %H:%M}  {e.subject}  ({e.to_address})")
    click.echo("\n".join(out))


def _iso(day: date) -> str:
    return day.isoformat()
