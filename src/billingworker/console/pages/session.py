"""Signing in and out. A failed sign-in is audited like a success; after a few failures for a
name from an address, or from an address, further attempts wait (``SignInThrottle``), whatever
the password. What an anonymous visitor can cause without limit (a form without its CSRF token, an
attempt while throttled) goes to the log, not to the audit table, so that nobody can flood the
audit log or write rows in an operator's name from outside."""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from .. import csrf, sessions
from ..auth import check_password
from ..web import (
    SESSION_LIFETIME,
    SESSION_TOKEN,
    audit,
    console,
    current_user,
    forget_user,
    refuse,
    remote,
    render,
)

log = logging.getLogger("billingworker.console")


def _next(value: str | None) -> str:
    """Where to go after sign-in: a path of this console only (never another site)."""
    if not value:
        return "/queues"
    parts = urlsplit(value)
    # "//host" and "/\\host" are read by browsers as another site.
    if parts.scheme or parts.netloc or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/queues"
    return value


async def sign_in_page(request: Request) -> Response:
    if current_user(request) is not None:
        return RedirectResponse(_next(request.query_params.get("next")), status_code=303)
    return render(request, "sign_in.html", next=_next(request.query_params.get("next")), error="")


async def sign_in(request: Request) -> Response:
    form = await request.form()
    name = str(form.get("username", ""))[:100].strip()
    password = str(form.get("password", ""))
    target = _next(str(form.get("next", "")))
    state = console(request)
    if not csrf.is_valid(request, form.get(csrf.FIELD)):
        log.warning("sign-in refused: CSRF token missing or wrong (user name %r, from %s)", name, remote(request))
        return refuse(request, "The sign-in form is stale. Reload the page and try again.")
    address = remote(request)
    # Reserved before the (slow, threaded) password check: parallel attempts are counted as they
    # arrive, not after their checks, so a burst gets no more checks than a sequence would.
    wait = state.throttle.attempt(name, address)
    if wait > 0:
        log.warning("sign-in refused: throttled for %.1f s (user name %r, from %s)", wait, name, address)
        return render(request, "sign_in.html", status_code=429, next=target,
                      error=f"Too many failed attempts: try again in {max(1, round(wait))} s.")
    user = state.users.get(name)
    if not await run_in_threadpool(check_password, user, password):
        audit(request, "sign_in", username=name, role=user.role if user else "",
              detail="unknown user" if user is None else "wrong password", outcome="denied")
        return render(request, "sign_in.html", status_code=401, next=target,
                      error="Wrong user name or password.")
    state.throttle.succeeded(name, address)
    await run_in_threadpool(sessions.end, state.engine, request.session.get(SESSION_TOKEN))
    token = await run_in_threadpool(lambda: sessions.start(state.engine, user.name, now=state.now(),
                                                           lifetime=SESSION_LIFETIME))
    request.session.clear()
    request.session[SESSION_TOKEN] = token
    forget_user(request)
    csrf.renew(request)
    audit(request, "sign_in", username=user.name, role=user.role, outcome="ok")
    return RedirectResponse(target, status_code=303)


async def sign_out(request: Request) -> Response:
    """Ends the session for good: its row is deleted, so a copy of the cookie is worth nothing."""
    form = await request.form()
    if not csrf.is_valid(request, form.get(csrf.FIELD)):
        audit(request, "sign_out", detail="CSRF token missing or wrong", outcome="refused")
        return refuse(request, "This form is stale (CSRF token missing or wrong).")
    audit(request, "sign_out")
    await run_in_threadpool(sessions.end, console(request).engine, request.session.get(SESSION_TOKEN))
    request.session.clear()
    forget_user(request)
    return RedirectResponse("/sign-in", status_code=303)


async def home(request: Request) -> Response:
    return RedirectResponse("/queues", status_code=303)


routes = [
    Route("/", home),
    Route("/sign-in", sign_in_page, methods=["GET"]),
    Route("/sign-in", sign_in, methods=["POST"]),
    Route("/sign-out", sign_out, methods=["POST"]),
]
