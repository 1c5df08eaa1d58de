"""Operator commands, registered on the main CLI group by ``register``: status, dead-letters,
retries, outbox, health, metrics. See docs/operations.md.

The reading and the changes live in the modules the web console shares (``dead_letters``,
``retries``, ``outbox``, ``status``, ``health``); here are only the options and the screens.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

import click

from ..config import get_config
from .cli_support import utc_now
from .dead_letters_cli import dead_letters
from .mass_update_cli import mass_update
from .outbox_cli import outbox
from .reconcile_cli import reconcile
from .retries_cli import retries


def register(main: click.Group) -> None:
    """Add the operator commands (status, dead-letters, retries, outbox, health, metrics, reconcile) to ``main``."""
    for command in (status, dead_letters, retries, health, metrics, outbox, reconcile, mass_update):
        main.add_command(command)


# --- status -------------------------------------------------------------------------------------

@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON document, for scripts.")
@click.option("--runs", default=5, show_default=True, help="How many daily runs to show.")
@click.option("--parked", default=20, show_default=True, help="How many parked clients to list.")
@click.option("--watch", is_flag=True, help="Redraw the screen every --interval seconds, until Ctrl-C.")
@click.option("--interval", default=2.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds between two redraws of --watch.")
def status(as_json: bool, runs: int, parked: int, watch: bool, interval: float) -> None:
    """Queues (waiting, delayed, in progress, dead, oldest), consuming workers, daily runs, parked clients.

    Exits 1 if the broker or the database did not answer (what did answer is still shown).
    """
    from .status import collect_status, status_view
    from .tables import console

    cfg = get_config()

    def collect() -> dict[str, Any]:
        return collect_status(cfg.broker_url, cfg.database_url, now=utc_now(), runs=runs, parked=parked)

    if watch:
        if as_json:
            raise click.UsageError("--watch draws the screen; --json prints one document: choose one")
        _watch(lambda: status_view(collect()), interval)
        return
    data = collect()
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        console().print(status_view(data))
    if data["errors"]:
        sys.exit(1)


def _watch(frame: Callable[[], Any], interval: float) -> None:
    """Redraw ``frame()`` in place every ``interval`` seconds (rich Live) until Ctrl-C; off a
    terminal (a pipe, a log) each frame is printed after the last, under its time."""
    from rich.console import Group
    from rich.live import Live
    from rich.text import Text

    from .tables import console

    out = console()

    def stamped() -> Group:
        return Group(Text(f"{utc_now():%Y-%m-%d %H:%M:%S} UTC, every {interval:g} s (Ctrl-C to stop)"), frame())

    try:
        if out.is_terminal:
            with Live(stamped(), console=out, auto_refresh=False, screen=False) as live:
                while True:
                    time.sleep(interval)
                    live.update(stamped(), refresh=True)
        else:
            while True:
                out.print(stamped())
                out.file.flush()
                time.sleep(interval)
    except KeyboardInterrupt:
        return


# --- health -------------------------------------------------------------------------------------

@click.command()
@click.option("--max-age-hours", type=float, default=26.0, show_default=True,
              help="The last successful daily run must have finished within this many hours.")
@click.option("--max-worker-silence", type=click.FloatRange(min=1), default=120.0, show_default=True,
              envvar="HEALTH_MAX_WORKER_SILENCE", show_envvar=True,
              help="Seconds within which a consuming worker must have been seen.")
@click.option("--no-run-check", is_flag=True, help="Skip the daily-run check.")
@click.option("--no-worker-check", is_flag=True, help="Skip the consuming-worker check (e.g. on a worker host "
                                                          "probing itself before its worker started).")
@click.option("--json", "as_json", is_flag=True)
def health(max_age_hours: float, max_worker_silence: float, no_run_check: bool, no_worker_check: bool,
           as_json: bool) -> None:
    """Exit 0 if the database and the broker answer, a worker consumes the queues and the daily run
    is on time; else 1, with why."""
    from .health import check_health

    cfg = get_config()
    report = check_health(cfg.database_url, cfg.broker_url, now=utc_now(), run_check=not no_run_check,
                          max_age_hours=max_age_hours, worker_check=not no_worker_check,
                          max_worker_silence=max_worker_silence)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    else:
        for check in report.checks:
            click.echo(f"{'ok  ' if check.ok else 'FAIL'}  {check.name}: {check.detail}")
    sys.exit(0 if report.ok else 1)


# --- metrics ------------------------------------------------------------------------------------

@click.command()
@click.option("--port", type=int, default=None, help="Port to serve /metrics on  [default: 9192]")
@click.option("--host", default="0.0.0.0", show_default=True)
@click.option("--once", is_flag=True, help="Print the metrics once (Prometheus text format) and exit.")
def metrics(port: int | None, host: str, once: bool) -> None:
    """Serve Prometheus metrics: queues, dead letters, oldest message age, workers, daily run, parked."""
    try:
        from prometheus_client import generate_latest
    except ImportError:
        raise click.ClickException("prometheus-client is not installed (pip install prometheus-client)") from None
    from .metrics import DEFAULT_METRICS_PORT, OpsCollector, make_registry, serve

    cfg = get_config()
    registry = make_registry(OpsCollector(cfg.broker_url, cfg.database_url))
    if once:
        click.echo(generate_latest(registry).decode(), nl=False)
        return
    port = port or DEFAULT_METRICS_PORT
    click.echo(f"serving metrics on http://{host}:{port}/metrics", err=True)
    serve(registry, port, host)

