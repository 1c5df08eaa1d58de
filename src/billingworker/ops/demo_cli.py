"""``billingworker seed-demo``: the demo clients written into a real database (PostgreSQL, or any
DATABASE_URL), for an operator who wants to watch a real worker, scheduler and Redis bill them.

A command of its own rather than an option of ``demo``: ``demo`` is a self-contained show (it
recreates its SQLite file and runs the jobs in-process), while this one only adds rows to the
database the worker uses and leaves the running to the real worker. It never deletes anything,
and refuses a database that already holds clients unless ``--force``: demo clients must never
land in production by accident.
"""

from __future__ import annotations

import click

from .tables import console


@click.command("seed-demo")
@click.option("--database-url", default=None, metavar="URL",
              help="The database to seed  [default: DATABASE_URL]. It is migrated first (db upgrade).")
@click.option("--clients", default=12, show_default=True, type=click.IntRange(1, 100_000),
              help="How many demo clients (the dozen demo people, repeated and numbered).")
@click.option("--force", is_flag=True, help="Seed even though the database already holds clients.")
def seed_demo(database_url: str | None, clients: int, force: bool) -> None:
    """Put the demo clients into a real database, then bill them with the real worker:

    \b
    billingworker seed-demo --database-url postgresql://postgres@127.0.0.1/billing_demo
    billingworker enqueue daily-run
    billingworker status --watch
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
    from sqlalchemy import func, select

    from .. import runtime as rt
    from ..config import get_config
    from ..db import create_db_engine, session_factory
    from ..demo import seed_demo as seed
    from ..domain.models import Client
    from ..migrate import upgrade_engine
    from .queues import safe_url

    url = database_url or get_config().database_url
    shown = safe_url(url)
    try:
        engine = create_db_engine(url)
        upgrade_engine(engine)
    except Exception as exc:  # noqa: BLE001 - a wrong URL or a server that does not answer
        raise click.ClickException(f"database at {shown}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    try:
        with session_factory(engine)() as session:
            existing = session.scalar(select(func.count()).select_from(Client))
            if existing and not force:
                raise click.ClickException(
                    f"the database at {shown} already holds {existing} clients: seed-demo adds demo clients only to an "
                    "empty database (--force to add them anyway; never on production)")
            today = rt.runtime().clock.today()
            with Progress(TextColumn("seeding demo clients"), BarColumn(), MofNCompleteColumn(),
                          console=console(), transient=False) as progress:
                bar = progress.add_task("seed", total=clients)
                seed(session, today, clients=clients, on_client=lambda n: progress.update(bar, completed=n))
    finally:
        engine.dispose()
    click.echo(f"Seeded {clients} demo clients into {shown} (today is {today}).")
    click.echo("Next: start a worker (`dramatiq billingworker.worker`), then `billingworker enqueue daily-run` "
               "and watch it with `billingworker status --watch`.")
