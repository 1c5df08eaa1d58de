"""The operator commands' screens: a rich table on the command's standard output, amounts added
up per currency, and JSON for scripts.

Every cell is plain text (``rich.text.Text``), never markup: a client named ``[bold]`` or a
reason quoting ``[red]`` is printed as it is. Off a terminal (a pipe, click's test runner) rich
writes no colour codes and the width is ``COLUMNS`` or ``WIDTH_OFF_TERMINAL``, so a script or
a test reads the same table whatever the terminal it ran under.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any

import click
from rich.console import Console
from rich.table import Column, Table
from rich.text import Text

__all__ = ["Column", "console", "print_table", "make_table", "money_by_currency", "totals_by_currency",
           "print_json", "cell", "InputRefused"]

#: Characters per line when standard output is not a terminal and ``COLUMNS`` is not set: wide
#: enough that a reason or a description is not folded into many lines in a log or a test.
WIDTH_OFF_TERMINAL = 160


def console(*, stderr: bool = False) -> Console:
    """A Console on the current ``sys.stdout`` (or stderr), which is click's output under its test
    runner. Colour only on a terminal; a fixed width elsewhere (``COLUMNS`` wins)."""
    stream = sys.stderr if stderr else sys.stdout
    width = None
    if os.environ.get("COLUMNS", "").isdigit():
        width = int(os.environ["COLUMNS"])
    elif not _is_terminal(stream):
        width = WIDTH_OFF_TERMINAL
    return Console(file=stream, width=width, highlight=False, soft_wrap=False,
                   emoji=False, markup=False)


def _is_terminal(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (OSError, ValueError):
        return False


def cell(value: Any) -> Text:
    """One table cell as plain text: ``-`` for None, ``yes``/``no`` for booleans, no markup."""
    if value is None:
        return Text("-")
    if isinstance(value, Text):
        return value
    if isinstance(value, bool):
        return Text("yes" if value else "no")
    return Text(str(value))


def make_table(title: str | None, columns: Sequence[str | Column], rows: Iterable[Sequence[Any]]) -> Table:
    """A rich Table of plain-text cells; pass ``Column(name, justify="right")`` for numbers."""
    table = Table(*columns, title=title, title_justify="left", header_style="bold", box=None, pad_edge=False,
                  show_edge=False)
    for row in rows:
        table.add_row(*(cell(v) for v in row))
    return table


def print_table(title: str | None, columns: Sequence[str | Column], rows: Iterable[Sequence[Any]], *,
                out: Console | None = None) -> None:
    """Print one table (title above it) to the command's output."""
    (out or console()).print(make_table(title, columns, rows))


def totals_by_currency(pairs: Iterable[tuple[str | None, Decimal | str | int]]) -> dict[str, Decimal]:
    """Amounts added up per currency code (never GBP to USD), codes sorted; a missing code is ``?``."""
    totals: dict[str, Decimal] = {}
    for code, amount in pairs:
        key = code or "?"
        totals[key] = totals.get(key, Decimal(0)) + Decimal(str(amount))
    return dict(sorted(totals.items()))


def money_by_currency(pairs: Iterable[tuple[str | None, Decimal | str | int]]) -> str:
    """``GBP 29.39, USD 120.00``: the amounts per currency, or ``-`` when there are none."""
    totals = totals_by_currency(pairs)
    return ", ".join(f"{code} {amount}" for code, amount in totals.items()) or "-"


def print_json(data: Any) -> None:
    """One JSON document on standard output (Decimals, dates as strings), no markup."""
    click.echo(json.dumps(data, indent=2, default=str))


class InputRefused(click.ClickException):
    """Bad input from the operator: ``Error: <what, naming the field>`` and exit status 2 (as a
    usage error), no traceback, nothing done."""

    exit_code = 2
