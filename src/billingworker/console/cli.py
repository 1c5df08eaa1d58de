"""``billingworker console``: serve the web console; ``billingworker console hash-password``:
print a CONSOLE_USERS entry. Registered on the main group by ``register``."""

from __future__ import annotations

import os

import click

#: Where the console listens unless told otherwise: this machine only (put a TLS proxy in front
#: to reach it from elsewhere).
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
#: LOG_LEVEL values uvicorn knows (its access log included); anything else logs at info.
UVICORN_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


def register(main: click.Group) -> None:
    """Add ``console`` (and ``console hash-password``) to ``main``."""
    main.add_command(console)


@click.group(invoke_without_command=True)
@click.option("--host", default=DEFAULT_HOST, show_default=True,
              help="Address to listen on (0.0.0.0: every interface; only behind a TLS proxy).")
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=click.IntRange(1, 65535))
@click.option("--secure-cookie", is_flag=True,
              help="Send the session cookie over HTTPS only (set it when a TLS proxy serves the console).")
@click.option("--forwarded-allow-ips", default=None, metavar="ADDRESSES",
              help="The proxy addresses (comma-separated) whose X-Forwarded-For / X-Forwarded-Proto are "
                   "believed: the client's address then comes from the proxy (sign-in throttle, audit log). "
                   "Default: none (the headers are ignored; the address is the connection's).")
@click.pass_context
def console(ctx: click.Context, host: str, port: int, secure_cookie: bool, forwarded_allow_ips: str | None) -> None:
    """Serve the operator's web console (queues, retries, dead letters, daily runs, parked
    clients, outbox, clients, audit log).

    \b
    Users come from CONSOLE_USERS: entries name:role:argon2-hash separated by spaces or ';'
    (role admin acts, role viewer only looks); `billingworker console hash-password NAME` prints one.
    Sessions are signed with SECRET_KEY.
    """
    if ctx.invoked_subcommand is not None:
        return
    import uvicorn

    from ..config import SecretKeyError, get_config
    from ..db import get_engine
    from .app import create_app
    from .auth import ConsoleConfigError, parse_users

    cfg = get_config()
    try:
        users = parse_users(os.environ.get("CONSOLE_USERS", ""))
        secret = cfg.secret_key()
    except (ConsoleConfigError, SecretKeyError) as exc:
        raise click.ClickException(str(exc)) from None
    if not users:
        raise click.ClickException("CONSOLE_USERS is empty: nobody could sign in. Add a user: "
                                   "export CONSOLE_USERS=\"$(billingworker console hash-password alice --role admin)\"")
    # The resend of emails enqueues through the jobs' broker (BROKER_URL), as the jobs do.
    from .. import actors  # noqa: F401

    app = create_app(engine=get_engine(cfg.database_url), broker_url=cfg.broker_url, users=users, secret_key=secret,
                     time_zone=cfg.time_zone, https_only=secure_cookie)
    click.echo(f"console on http://{host}:{port}/ ({len(users)} user(s))", err=True)
    level = os.environ.get("LOG_LEVEL", "info").strip().lower()
    uvicorn.run(app, host=host, port=port, log_level=level if level in UVICORN_LEVELS else "info",
                # Only a proxy named here may say who the client is: anyone else could forge the header.
                proxy_headers=bool(forwarded_allow_ips), forwarded_allow_ips=forwarded_allow_ips or None,
                server_header=False)


@console.command("hash-password")
@click.argument("name")
@click.option("--role", type=click.Choice(["admin", "viewer"]), default="viewer", show_default=True)
@click.option("--password", default=None, help="The password (default: asked on the terminal, twice).")
def hash_password_command(name: str, role: str, password: str | None) -> None:
    """Print the CONSOLE_USERS entry NAME:ROLE:ARGON2-HASH for a password (never printed itself).

    Only the entry goes to standard output (the questions go to stderr), so that
    CONSOLE_USERS="$(billingworker console hash-password alice --role admin)" works.
    """
    from ..domain.accounts.passwords import hash_password
    from ..domain.errors import ValidationError
    from .auth import ConsoleConfigError, parse_users

    if password is None:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True, err=True)
    try:
        entry = f"{name}:{role}:{hash_password(password)}"
        parse_users(entry)
    except ValidationError as exc:
        raise click.ClickException(f"password {exc.rule}") from None
    except ConsoleConfigError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(entry)
