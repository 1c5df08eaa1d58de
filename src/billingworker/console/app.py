"""The console's composition root: ``create_app`` builds the Starlette application from explicit
arguments (database engine, broker URL, users, secret), so tests build one without globals.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import jinja2
from sqlalchemy import Engine
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Receive, Scope, Send

from .auth import SignInThrottle, User
from .formatting import FILTERS
from .pages import ROUTES
from .web import Console, resolve_user

HERE = Path(__file__).parent
COOKIE = "billingworker_console"
#: The session cookie's life (seconds) without a request; SESSION_LIFETIME bounds it from sign-in,
#: and sign-out ends it at once (``console.sessions``).
SESSION_IDLE_SECONDS = 2 * 3600
#: Paths served without signing in: nothing in them is sensitive.
PUBLIC_PREFIXES = ("/sign-in", "/static/", "/healthz")
#: Scripts, styles and images come from the console only; no frame may embed it.
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "x-frame-options": "DENY",
    "cache-control": "no-store",
}


def session_key(secret_key: bytes) -> str:
    """The cookie-signing key, derived from SECRET_KEY: not the key that signs reset links itself."""
    return hmac.new(secret_key, b"billingworker console session", hashlib.sha256).hexdigest()


def create_app(*, engine: Engine, broker_url: str, users: dict[str, User], secret_key: bytes,
               time_zone: str = "UTC", https_only: bool = False, throttle: SignInThrottle | None = None,
               now: Callable[[], datetime] | None = None) -> Starlette:
    """The console over ``engine`` and the broker of ``broker_url``, for ``users``.

    ``https_only`` marks the cookie Secure (behind a TLS proxy). ``now`` is the clock (aware UTC).
    """
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    env.filters.update(FILTERS)
    state = Console(engine=engine, broker_url=broker_url, users=users, throttle=throttle or SignInThrottle(),
                    now=now or (lambda: datetime.now(UTC)), time_zone=time_zone,
                    templates=Jinja2Templates(env=env))
    app = Starlette(
        routes=[Route("/healthz", healthz), Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
                *ROUTES],
        middleware=[Middleware(SecurityHeaders),
                    Middleware(SessionMiddleware, secret_key=session_key(secret_key), session_cookie=COOKIE,
                               max_age=SESSION_IDLE_SECONDS, same_site="strict", https_only=https_only),
                    Middleware(SignInGate)])
    app.state.console = state
    return app


async def healthz(request: Request) -> Response:
    """For a load balancer: the process answers. Says nothing about the installation."""
    return PlainTextResponse("ok")


class SignInGate:
    """Nothing but PUBLIC_PREFIXES without a signed-in user: a page is redirected to the sign-in
    page (htmx polls are told to go there), anything else is refused with 403."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(PUBLIC_PREFIXES):
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        if await resolve_user(request) is not None:
            await self.app(scope, receive, send)
            return
        response: Response
        if request.headers.get("hx-request"):
            response = Response(status_code=401, headers={"HX-Redirect": "/sign-in"})
        elif request.method in ("GET", "HEAD"):
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            response = RedirectResponse(f"/sign-in?next={_quote(target)}", status_code=303)
        else:
            response = PlainTextResponse("Sign in first.", status_code=403)
        await response(scope, receive, send)


def _quote(path: str) -> str:
    from urllib.parse import quote

    return quote(path, safe="/")


class SecurityHeaders:
    """SECURITY_HEADERS on every response (pure ASGI: works for streamed static files too)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                for name, value in SECURITY_HEADERS.items():
                    if name.encode() not in present:
                        headers.append((name.encode(), value.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)
