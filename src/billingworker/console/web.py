"""What every page and action shares: the console's state, the signed-in user, rendering with
the layout, and ``act``, the one way an action is performed (CSRF, role, audit, flash)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from redis.exceptions import RedisError
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.templating import Jinja2Templates

from ..domain.errors import BillingError
from ..ops.enqueue_check import MessageRefused
from ..ops.errors import OpsError
from . import csrf
from .audit import AuditEvent, record
from .auth import SignInThrottle, User

#: A session older than this (seconds since sign-in) is signed out, however active it was.
SESSION_LIFETIME = 12 * 3600


@dataclass
class Console:
    """Everything the pages need, built once by ``create_app`` (no globals)."""

    engine: Engine
    broker_url: str
    users: dict[str, User]
    throttle: SignInThrottle
    #: The real clock as an aware UTC datetime (tests pass their own).
    now: Callable[[], datetime]
    time_zone: str
    templates: Jinja2Templates


class ActionError(Exception):
    """An action that could not be done for a reason the operator should read (shown, audited
    as failed)."""


def console(request: Request) -> Console:
    return request.app.state.console


def current_user(request: Request) -> User | None:
    """The signed-in user, looked up again in CONSOLE_USERS on every request: a user removed
    from (or demoted in) the environment loses access with the next restart."""
    name = request.session.get("user")
    signed_in_at = request.session.get("signed_in_at")
    if not name or not isinstance(signed_in_at, (int, float)):
        return None
    if console(request).now().timestamp() - signed_in_at > SESSION_LIFETIME:
        return None
    return console(request).users.get(name)


def remote(request: Request) -> str:
    return request.client.host if request.client else ""


def flash(request: Request, text: str, kind: str = "ok") -> None:
    request.session.setdefault("flash", []).append({"text": text[:500], "kind": kind})


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> Response:
    """``template`` with the layout's context: user, CSRF token, flash messages, the clock."""
    user = current_user(request)
    flashes = request.session.pop("flash", []) if not template.startswith("_") else []
    return console(request).templates.TemplateResponse(request, template, {
        "user": user, "csrf_token": csrf.csrf_token(request), "csrf_field": csrf.FIELD, "flashes": flashes,
        "now": console(request).now(), **context}, status_code=status_code)


def audit(request: Request, action: str, *, target: str = "", detail: str = "", outcome: str = "ok",
          username: str | None = None, role: str | None = None) -> None:
    user = current_user(request)
    record(console(request).engine, AuditEvent(
        username=username if username is not None else (user.name if user else ""),
        role=role if role is not None else (user.role if user else ""),
        action=action, target=target, detail=detail, outcome=outcome, remote_addr=remote(request)),
        now=console(request).now())


def refuse(request: Request, why: str) -> Response:
    return render(request, "refused.html", status_code=403, reason=why)


async def act(request: Request, action: str, target: str, work: Callable[[dict[str, str]], str], *,
              back: str, detail: str = "") -> Response:
    """Perform an action: refuse it (403, audited, nothing done) without a valid CSRF token or to
    a role that may not act; else run ``work(form)`` (in a thread: it talks to the database and
    Redis), audit the outcome and go ``back`` with what it said.

    ``work`` returns the sentence shown to the operator; ``ActionError``, ``OpsError``,
    ``BillingError``, ``MessageRefused`` (a bad correction) and ``RedisError`` (the broker did not
    answer) are shown and audited as failed.
    """
    form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
    user = current_user(request)
    if not csrf.is_valid(request, form.get(csrf.FIELD)):
        audit(request, action, target=target, detail="CSRF token missing or wrong", outcome="refused")
        return refuse(request, "This form is stale or did not come from the console (CSRF token missing or wrong). "
                               "Reload the page and try again.")
    if user is None or not user.can_act:
        audit(request, action, target=target, detail=f"role {user.role if user else '?'} may not act",
              outcome="refused")
        return refuse(request, f"The role {user.role if user else '?'} can look but not act.")
    try:
        said = await run_in_threadpool(work, form)
    except (ActionError, OpsError, BillingError, MessageRefused, RedisError) as exc:
        audit(request, action, target=target, detail=f"{detail} {exc}".strip(), outcome="failed")
        flash(request, f"{action} {target}: {exc}", "error")
    else:
        audit(request, action, target=target, detail=f"{detail} {said}".strip(), outcome="ok")
        flash(request, said)
    return RedirectResponse(back, status_code=303)
