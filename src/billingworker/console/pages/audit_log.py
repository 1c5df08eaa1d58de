"""The audit log page: who did what, when, and how it ended (sign-ins included)."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..audit import recent
from ..web import bad_request, console, render

SHOWN = 300


async def audit_page(request: Request) -> Response:
    who = request.query_params.get("user") or None
    # PostgreSQL refuses NUL in text, and no name holds control characters: not a user name.
    if who is not None and (len(who) > 100 or any(ord(c) < 32 or ord(c) == 127 for c in who)):
        return bad_request(request, "user: not a user name (control characters, or longer than 100)")
    events = await run_in_threadpool(lambda: recent(console(request).engine, limit=SHOWN, username=who))
    return render(request, "audit.html", events=events, who=who or "")


routes = [Route("/audit", audit_page)]
