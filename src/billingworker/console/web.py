"""What every page and action shares: the console's state, the signed-in user, rendering with
the layout, and ``act``, the one way an action is performed (CSRF, role, audit, flash)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from redis.exceptions import RedisError
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.templating import Jinja2Templates

from ..actors.arguments import MAX_ID
from ..domain.errors import BillingError
from ..ops.enqueue_check import MessageRefused
from ..ops.errors import OpsError
from . import csrf, sessions
from .audit import AuditEvent, record
from .auth import SignInThrottle, User

log = logging.getLogger("billingworker.console")

#: A session older than this (seconds since sign-in) is signed out, however active it was.
SESSION_LIFETIME = 12 * 3600
#: The cookie's key for the session token (``console.sessions``).
SESSION_TOKEN = "sid"
#: Where a request keeps the user it was found to be (looked up once per request).
_USER_KEY = "billingworker.console.user"
_UNKNOWN = object()


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


@dataclass(frozen=True)
class Warned:
    """What an action that was done says when the operator should know more (shown as a warning,
    audited as ok): e.g. emails queued again whose delivery waits for the broker."""

    text: str


class ActionError(Exception):
    """An action that could not be done for a reason the operator should read (shown, audited
    as failed)."""


def console(request: Request) -> Console:
    return request.app.state.console


def current_user(request: Request) -> User | None:
    """The signed-in user: the cookie's session token must name a live row of
    ``console_sessions`` (sign-out deletes it), and the name is looked up again in CONSOLE_USERS,
    so a user removed from (or demoted in) the environment loses access with the next restart.
    Looked up once per request."""
    user = request.scope.get(_USER_KEY, _UNKNOWN)
    if user is _UNKNOWN:
        user = request.scope[_USER_KEY] = _lookup_user(request)
    return user  # type: ignore[return-value]


async def resolve_user(request: Request) -> User | None:
    """``current_user`` with its database read in a thread (for the middleware)."""
    if _USER_KEY not in request.scope:
        request.scope[_USER_KEY] = await run_in_threadpool(_lookup_user, request)
    return request.scope[_USER_KEY]


def forget_user(request: Request) -> None:
    """After a sign-in or sign-out: the next ``current_user`` looks again."""
    request.scope.pop(_USER_KEY, None)


def _lookup_user(request: Request) -> User | None:
    token = request.session.get(SESSION_TOKEN)
    if not token:
        return None
    state = console(request)
    name = sessions.find(state.engine, token, now=state.now(), lifetime=SESSION_LIFETIME)
    return state.users.get(name) if name else None


def remote(request: Request) -> str:
    return request.client.host if request.client else ""


def flash(request: Request, text: str, kind: str = "ok") -> None:
    # Assigned, not appended in place: the session notices an assignment only (an appended
    # second message would be lost). The last few are kept.
    request.session["flash"] = [*request.session.get("flash", []), {"text": text[:500], "kind": kind}][-5:]


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


class BadQuery(ValueError):
    """A query parameter that cannot be used; the message names it (shown with 400)."""


#: The days a page takes (a statement's range, a dry run): wide enough for any billing, narrow
#: enough that the day after and the time zone's midnight still exist.
FIRST_DAY, LAST_DAY = date(1900, 1, 1), date(9000, 12, 31)


def is_id(value: int) -> bool:
    """Whether ``value`` can be a row id (1..MAX_ID): a larger one names nothing, and is not
    sent to the database (SQLite overflows on it)."""
    return 0 < value <= MAX_ID


def query_id(request: Request, name: str) -> int | None:
    """The id in query parameter ``name``; None when absent; ``BadQuery`` when it is not an id."""
    raw = request.query_params.get(name, "").strip()
    if not raw:
        return None
    if not (raw.isascii() and raw.isdigit() and len(raw) <= len(str(MAX_ID)) and is_id(int(raw))):
        raise BadQuery(f"{name}: {raw[:40]!r} is not an id (1 to {MAX_ID})")
    return int(raw)


def query_day(request: Request, name: str, default: date) -> date:
    """The day (YYYY-MM-DD) in query parameter ``name``, ``default`` when absent; ``BadQuery`` otherwise."""
    raw = request.query_params.get(name, "").strip()
    if not raw:
        return default
    try:
        day = date.fromisoformat(raw)
    except ValueError:
        raise BadQuery(f"{name}: {raw[:40]!r} is not a date (YYYY-MM-DD)") from None
    if not FIRST_DAY <= day <= LAST_DAY:
        raise BadQuery(f"{name}: {day} is out of range ({FIRST_DAY} to {LAST_DAY})")
    return day


def bad_request(request: Request, why: str) -> Response:
    return render(request, "bad_request.html", status_code=400, reason=why)


def not_found(request: Request, what: str) -> Response:
    return render(request, "not_found.html", status_code=404, what=what)


def refuse(request: Request, why: str) -> Response:
    return render(request, "refused.html", status_code=403, reason=why)


async def act(request: Request, action: str, target: str, work: Callable[[dict[str, str]], str | Warned], *,
              back: str, detail: str = "") -> Response:
    """Perform an action: refuse it (403, audited, nothing done) without a valid CSRF token or to
    a role that may not act; else run ``work(form)`` (in a thread: it talks to the database and
    Redis), audit the outcome and go ``back`` with what it said.

    ``work`` returns the sentence shown to the operator (``Warned``: shown as a warning); ``ActionError``, ``OpsError``,
    ``BillingError``, ``MessageRefused`` (a bad correction) and ``RedisError`` (the broker did not
    answer) are shown and audited as failed. Any other exception is audited as failed too (an
    action never goes unrecorded), logged with its traceback and shown by its type only.
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
    except Exception as exc:  # noqa: BLE001 - whatever broke, the action is audited and the operator told
        log.exception("console action %s %s failed", action, target)
        said = f"unexpected {type(exc).__name__} (the console's log has the details); nothing was confirmed"
        audit(request, action, target=target, detail=f"{detail} {said}".strip(), outcome="failed")
        flash(request, f"{action} {target}: {said}", "error")
    else:
        text, kind = (said.text, "warn") if isinstance(said, Warned) else (said, "ok")
        audit(request, action, target=target, detail=f"{detail} {text}".strip(), outcome="ok")
        flash(request, text, kind)
    return RedirectResponse(back, status_code=303)
