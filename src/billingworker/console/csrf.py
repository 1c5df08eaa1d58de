"""CSRF tokens: one random token per session, sent back with every POST (form field
``csrf_token``) and compared in constant time. A POST without it, or with another session's,
is refused before anything is done.
"""

from __future__ import annotations

import hmac
import secrets

from starlette.requests import Request

FIELD = "csrf_token"
_SESSION_KEY = "csrf"


def csrf_token(request: Request) -> str:
    """The session's token, created on first use (also before sign-in, for the sign-in form)."""
    token = request.session.get(_SESSION_KEY)
    if not token:
        token = request.session[_SESSION_KEY] = secrets.token_urlsafe(32)
    return token


def renew(request: Request) -> None:
    """A fresh token (at sign-in): a token seen before signing in is worth nothing after."""
    request.session[_SESSION_KEY] = secrets.token_urlsafe(32)


def is_valid(request: Request, submitted: object) -> bool:
    expected = request.session.get(_SESSION_KEY)
    if not expected or not isinstance(submitted, str) or not submitted:
        return False
    return hmac.compare_digest(expected.encode(), submitted.encode())
