"""``billingworker settings show|set``: the installation settings (SPEC §2) in the shared
database. The rules live in ``domain.settings`` (``check_setting``, ``setting_from_text``): this
module only reads the operator's text and shows the result."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import click

from .cli_support import answering
from .tables import InputRefused, print_json, print_table


@click.group()
def settings() -> None:
    """Installation settings (SPEC §2), kept in the shared database."""


@settings.command("show")
@click.option("--json", "as_json", is_flag=True, help="One JSON document, for scripts.")
@answering
def settings_show(as_json: bool) -> None:
    """Every setting: its value, whether it is the default, and what it means."""
    from dataclasses import asdict

    from ..db import get_engine, unit_of_work
    from ..domain.errors import ValidationError
    from ..domain.settings import SETTINGS, load_settings, setting_text

    try:
        with unit_of_work(get_engine()) as session:
            current = asdict(load_settings(session))
    except ValidationError as exc:
        # A row another application wrote that the worker cannot read: every job fails on it.
        raise click.ClickException(f"{exc} (fix it with `billingworker settings set`)") from None
    rows = [{"name": name, "value": _plain(current[name]), "default": _plain(spec.default),
             "is_default": current[name] == spec.default, "description": spec.description}
            for name, spec in SETTINGS.items()]
    if as_json:
        print_json(rows)
        return
    print_table(None, ["setting", "value", "default?", "meaning"],
                [[r["name"], setting_text(r["name"], current[r["name"]]),
                  "yes" if r["is_default"] else f"no ({setting_text(r['name'], SETTINGS[r['name']].default)})",
                  r["description"]] for r in rows])


def _plain(value: Any) -> Any:
    """A setting's value as JSON holds it: money as a string, lists as lists."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value


@settings.command("set")
@click.argument("assignments", nargs=-1, required=True)
@answering
def settings_set(assignments: tuple[str, ...]) -> None:
    """Write settings, all or none: NAME=VALUE as you would say it.

    \b
    billingworker settings set invoice_generation_days=10 late_fee_amount=5.00
    billingworker settings set daily_run_time=06:30 auto_apply_credit=false
    billingworker settings set invoiceable_statuses=Active,Suspended
    billingworker settings set 'invoice_generation_days_by_cycle={"Annually": 30}'

    A bad name or value is refused (exit status 2) and nothing is saved.
    """
    from ..db import get_engine, unit_of_work
    from ..domain.errors import ValidationError
    from ..domain.settings import UnknownSetting, save_settings, setting_from_text, setting_text

    values: dict[str, Any] = {}
    try:
        for arg in assignments:
            name, sep, raw = arg.partition("=")
            if not sep:
                raise InputRefused(f"{arg!r} is not NAME=VALUE")
            values[name.strip()] = setting_from_text(name.strip(), raw)
        with unit_of_work(get_engine()) as session:
            save_settings(session, **values)
            session.commit()
    except UnknownSetting as exc:
        raise InputRefused(f"{exc.value!r} is not a setting; the settings are: {', '.join(exc.known)}") from None
    except ValidationError as exc:
        raise InputRefused(str(exc)) from None
    for name, value in values.items():
        click.echo(f"saved {name} = {setting_text(name, value)}")
