"""Password reset (SPEC §10): a single-use link, only its hash stored, emailed after commit.

The token is never stored anywhere, not even in the outbox: it is *derived*,
``token = base64url(HMAC-SHA256(SECRET_KEY, "password-reset:<row id>:<nonce>"))``, where the
nonce is random and kept in the outbox row's context. The ``password_reset_tokens`` row keeps
``sha256(token)``; the worker that delivers the email re-derives the token from the secret
(``render_password_reset_email``) and checks it against that hash, so a worker with another
SECRET_KEY refuses to send a dead link. The email log keeps the message with the token
replaced by ``[redacted]``.

Keys and rotation: new tokens are made with SECRET_KEY. Delivering and checking a token try
SECRET_KEY, then each key of SECRET_KEY_FALLBACKS (``Config.secret_keys``), all of them every
time (no early exit, ``hmac.compare_digest``): a link made under an old key works while that
key is listed, and stops working once it is removed. ``verify_reset_token`` re-derives the
token from the nonce of the reset's outbox row, so a link whose outbox row was deleted no longer
works either.

Limits: at most ``MAX_RESETS_PER_HOUR`` links per user, and at most the setting
``password_reset_installation_limit`` links per rolling hour for the whole installation (a
flood of requests for many addresses must not turn the worker into a mail cannon). The
installation limit is checked before the user is looked up, so its refusal says nothing about
whether an account exists.

Serialisation: every change to a user's tokens takes the ``users`` row lock first (request,
complete), so two requests for one user run one after the other (the later invalidates the
earlier) and lock order is always user, then token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ...clock import as_utc
from ...config import get_config
from ...db import for_update
from ...store.locks import transaction_lock
from ..errors import NotFound, ValidationError
from ..messaging.emails import RenderedEmail, load_context, render
from ..messaging.outbox import QueuedEmail, queue_emails
from ..models import ClientUser, OutboxEmail, PasswordResetToken, User
from ..settings import BillingSettings, load_settings
from .passwords import HIDDEN, check_new_password, hash_password

log = logging.getLogger(__name__)

TEMPLATE = "password_reset"
#: The page of the client area that takes the token: ``<system_url>password-reset?token=...``.
RESET_PATH = "password-reset"
#: At most this many reset links per user in any rolling hour (client- and admin-requested
#: alike); a further request completes without a token or an email (outcome ``rate_limited``).
MAX_RESETS_PER_HOUR = 5
RATE_WINDOW = timedelta(hours=1)
REQUESTERS = ("client", "admin")
#: A token is 43 URL-safe base64 characters (256 bits); anything far from that is not one.
_TOKEN_SHAPE = re.compile(r"^[A-Za-z0-9_-]{20,128}$")
#: PostgreSQL advisory lock (transaction-scoped) that serialises the installation-wide count,
#: so that concurrent requests for different users cannot overshoot the limit together.
INSTALLATION_LIMIT_LOCK = int.from_bytes(b"pw-reset", "big")

ResetOutcome = Literal["sent", "already_requested", "unknown_email", "rate_limited", "installation_rate_limited"]


class InvalidResetToken(ValidationError):
    """A reset token that is wrong, expired, used or superseded: one message for all of them
    (SPEC §10: the failure does not say which), and the token itself is never in it."""

    def __init__(self) -> None:
        super().__init__("token", HIDDEN, "is not a valid password reset link (it may have expired or been used): "
                                          "request a new one")


@dataclass(frozen=True)
class ResetRequest:
    """What ``request_password_reset`` did. ``email_ids`` are to be sent after the commit."""

    outcome: ResetOutcome
    user_id: int | None = None
    token_id: int | None = None
    expires_at: datetime | None = None
    email_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class ResetCompleted:
    user_id: int
    token_id: int
    #: Other open tokens of the user ended by this reset.
    invalidated: int


def derive_token(secret_key: bytes, token_id: int, nonce: str) -> str:
    """The token of row ``token_id``: URL-safe base64 of HMAC-SHA256, 43 characters, no padding."""
    digest = hmac.new(secret_key, f"password-reset:{token_id}:{nonce}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _made_with_a_listed_key(keys: Sequence[bytes], token_id: int, nonce: str, token: str) -> bool:
    """Whether ``token`` is the token of row ``token_id`` under one of ``keys``.

    Every key is tried, whatever the earlier ones gave, each with ``hmac.compare_digest``: the
    time taken does not say which key (if any) made the token.
    """
    made = False
    for key in keys:
        made |= hmac.compare_digest(derive_token(key, token_id, nonce).encode(), token.encode())
    return made


def hash_token(token: str) -> str:
    """The hex SHA-256 kept in ``password_reset_tokens.token_hash``."""
    return hashlib.sha256(token.encode()).hexdigest()


def _aware(name: str, now: datetime) -> datetime:
    if not isinstance(now, datetime) or now.tzinfo is None:
        raise ValidationError(name, now, "must be a timezone-aware datetime")
    return now.astimezone(UTC)


def reset_link(settings: BillingSettings, token: str) -> str:
    return f"{settings.system_url.rstrip('/')}/{RESET_PATH}?token={token}"


def installation_limit(settings: BillingSettings) -> int:
    limit = settings.password_reset_installation_limit
    if limit < 1:
        raise ValidationError("settings.password_reset_installation_limit", limit, "must be at least 1")
    return limit


def _installation_limit_reached(session: Session, settings: BillingSettings, now: datetime) -> bool:
    """Whether the installation made ``password_reset_installation_limit`` links in the last hour.

    On PostgreSQL the count is taken under a transaction-scoped advisory lock, held until the
    caller commits: two requests at once count in turn. (SQLite writers take the database lock
    up front, ``BEGIN IMMEDIATE``.) The lock is taken before any user row lock, always.
    """
    limit = installation_limit(settings)
    transaction_lock(session, INSTALLATION_LIMIT_LOCK)
    made = session.scalar(select(func.count()).select_from(PasswordResetToken).where(
        PasswordResetToken.created_at > now - RATE_WINDOW))
    return made >= limit


def validity(settings: BillingSettings) -> timedelta:
    hours = settings.password_reset_validity_hours
    if hours < 1:
        raise ValidationError("settings.password_reset_validity_hours", hours, "must be at least 1")
    return timedelta(hours=hours)


def _find_user_id(session: Session, user_id: int | None, email: str | None) -> int | None:
    if user_id is not None:
        if session.scalar(select(User.id).where(User.id == user_id)) is None:
            raise NotFound("user_id", user_id, "user")
        return user_id
    address = (email or "").strip()
    found = session.scalar(select(User.id).where(User.email == address))
    if found is not None:
        return found
    # users.email is unique as typed; a case-insensitive match counts only when it is unambiguous.
    ids = session.scalars(select(User.id).where(func.lower(User.email) == address.lower()).limit(2)).all()
    return ids[0] if len(ids) == 1 else None


def _owner_client_id(session: Session, user_id: int) -> int | None:
    """The client the email log files a user's reset under: an owned client first, else any."""
    return session.scalar(select(ClientUser.client_id).where(ClientUser.user_id == user_id)
                          .order_by(ClientUser.is_owner.desc(), ClientUser.client_id).limit(1))


def _existing(session: Session, request_key: str) -> PasswordResetToken | None:
    return session.scalar(select(PasswordResetToken).where(PasswordResetToken.request_key == request_key))


def _invalidate_open_tokens(session: Session, user_id: int, now: datetime, *, keep: int | None = None) -> int:
    """End the user's open tokens (all but ``keep``); returns how many. The caller holds the user lock.

    Few rows (at most the rate limit's worth), so they are loaded, locked and changed as objects:
    the session then shows the change too.
    """
    stmt = select(PasswordResetToken).where(
        PasswordResetToken.user_id == user_id, PasswordResetToken.used_at.is_(None),
        PasswordResetToken.invalidated_at.is_(None)).order_by(PasswordResetToken.id)
    if keep is not None:
        stmt = stmt.where(PasswordResetToken.id != keep)
    rows = session.execute(for_update(stmt)).scalars().all()
    for row in rows:
        row.invalidated_at = now
    session.flush()
    return len(rows)


def request_password_reset(session: Session, *, user_id: int | None = None, email: str | None = None,
                           requested_by: str = "client", security_checked: bool = False,
                           request_key: str, now: datetime, secret_key: bytes | None = None) -> ResetRequest:
    """Create a reset token for a user (by id, or by email) and queue its email; the caller commits.

    Guarantees:
    - locks the ``users`` row: two requests for one user run in turn, the later one invalidating
      the earlier token;
    - once per ``request_key`` (unique on the token row): a redelivered request, even one waiting
      on the lock while its twin committed, changes nothing (``already_requested``);
    - an unknown ``email`` writes nothing and is not an error (``unknown_email``): no account
      enumeration. An unknown ``user_id`` is ``NotFound`` (only the admin panel knows ids);
    - ``password_reset_installation_limit`` links made in the last hour, all users together:
      nothing written, a warning logged (``installation_rate_limited``, decided before the user
      is looked up, so the same for an unknown email as for a known one);
    - ``MAX_RESETS_PER_HOUR`` tokens for the user in the last hour: nothing written (``rate_limited``);
    - a client-requested reset for a user with a security question must come with
      ``security_checked=True`` (the calling app checked the answer), else ``ValidationError``.
    """
    now = _aware("now", now)
    if requested_by not in REQUESTERS:
        raise ValidationError("requested_by", requested_by, f"must be one of {', '.join(REQUESTERS)}")
    if (user_id is None) == (email is None):
        raise ValidationError("user_id", user_id, "give either user_id or email, not both or neither")
    if _existing(session, request_key) is not None:
        return ResetRequest("already_requested")
    settings = load_settings(session)
    if _installation_limit_reached(session, settings, now):
        log.warning("password reset refused: the installation already sent %s reset links in the last hour "
                    "(setting password_reset_installation_limit); nothing sent",
                    settings.password_reset_installation_limit)
        return ResetRequest("installation_rate_limited")
    found = _find_user_id(session, user_id, email)
    if found is None:
        return ResetRequest("unknown_email")
    user = session.execute(for_update(select(User).where(User.id == found))).scalar_one()
    # A twin of this request may have committed while we waited for the lock.
    twin = _existing(session, request_key)
    if twin is not None:
        return ResetRequest("already_requested", user_id=user.id, token_id=twin.id)
    if requested_by == "client" and user.security_question.strip() and not security_checked:
        raise ValidationError("security_checked", security_checked,
                              "must be true: this user has a security question, which the calling app must "
                              "check before a client-requested reset is sent")
    recent = session.scalar(select(func.count()).select_from(PasswordResetToken).where(
        PasswordResetToken.user_id == user.id, PasswordResetToken.created_at > now - RATE_WINDOW))
    if recent >= MAX_RESETS_PER_HOUR:
        return ResetRequest("rate_limited", user_id=user.id)

    expires_at = now + validity(settings)
    key = secret_key if secret_key is not None else get_config().secret_key()
    nonce = secrets.token_urlsafe(24)
    _invalidate_open_tokens(session, user.id, now)
    try:
        with session.begin_nested():
            # The token depends on the row id: insert with a random placeholder hash, then set it.
            row = PasswordResetToken(user_id=user.id, token_hash=hash_token("pending:" + nonce),
                                     requested_by=requested_by, security_checked=bool(security_checked),
                                     request_key=request_key, created_at=now, expires_at=expires_at)
            session.add(row)
            session.flush()
            row.token_hash = hash_token(derive_token(key, row.id, nonce))
            session.flush()
    except IntegrityError:
        # The database is the last guard: the same request_key was committed meanwhile.
        twin = _existing(session, request_key)
        if twin is None:
            raise
        return ResetRequest("already_requested", user_id=user.id, token_id=twin.id)
    email_ids = queue_emails(session, [QueuedEmail(
        template=TEMPLATE, client_id=_owner_client_id(session, user.id),
        context={"token_id": row.id, "nonce": nonce, "requested_by": requested_by},
        dedupe_key=f"{TEMPLATE}:{row.id}")])
    return ResetRequest("sent", user_id=user.id, token_id=row.id, expires_at=expires_at,
                        email_ids=tuple(email_ids))


def _nonce_of(session: Session, token_id: int) -> str | None:
    """The nonce kept in the context of the reset's outbox row (``password_reset:<token id>``)."""
    context = session.scalar(select(OutboxEmail.context).where(OutboxEmail.dedupe_key == f"{TEMPLATE}:{token_id}",
                                                               OutboxEmail.template == TEMPLATE))
    try:
        values = json.loads(context) if context else None
    except json.JSONDecodeError:
        return None
    if not isinstance(values, dict) or values.get("token_id") != token_id or not isinstance(values.get("nonce"), str):
        return None
    return values["nonce"]


def _keys(secret_keys: Sequence[bytes] | None) -> tuple[bytes, ...]:
    return tuple(secret_keys) if secret_keys is not None else get_config().secret_keys()


def _open_row(session: Session, token: Any, now: datetime, *, lock: bool,
              secret_keys: Sequence[bytes] | None = None) -> PasswordResetToken:
    """The token's row if the token is valid at ``now``; else ``InvalidResetToken``.

    Looks the row up by hash (an index), compares the hashes with ``hmac.compare_digest``, then
    re-derives the token from the row's nonce under SECRET_KEY and each fallback key: a token
    made under a key no longer listed fails. Every path compares and derives under every key,
    so every failure costs about the same.
    """
    keys = _keys(secret_keys)
    if not isinstance(token, str) or not _TOKEN_SHAPE.match(token):
        hmac.compare_digest("0" * 64, "1" * 64)
        _made_with_a_listed_key(keys, 0, "", "0" * 43)
        raise InvalidResetToken()
    wanted = hash_token(token)
    stmt = select(PasswordResetToken).where(PasswordResetToken.token_hash == wanted)
    row = session.execute(for_update(stmt) if lock else stmt).scalar_one_or_none()
    stored = row.token_hash if row is not None else "0" * 64
    matches = hmac.compare_digest(stored.encode(), wanted.encode())
    nonce = _nonce_of(session, row.id) if row is not None and matches else None
    signed = _made_with_a_listed_key(keys, row.id if row is not None else 0, nonce or "", token)
    if row is None or not matches or nonce is None or not signed or row.used_at is not None \
            or row.invalidated_at is not None or now >= as_utc(row.expires_at):
        raise InvalidResetToken()
    return row


def verify_reset_token(session: Session, token: str, *, now: datetime,
                       secret_keys: Sequence[bytes] | None = None) -> int:
    """The user id of a valid ``token`` (for the panel to show the "choose a password" form).

    Reads only. A wrong, expired (at ``expires_at`` exactly or later), used or superseded token,
    or one made under a key that is neither SECRET_KEY nor in SECRET_KEY_FALLBACKS, raises
    ``InvalidResetToken``, the same error for each. ``secret_keys`` defaults to
    ``Config.secret_keys()``.
    """
    return _open_row(session, token, _aware("now", now), lock=False, secret_keys=secret_keys).user_id


def complete_password_reset(session: Session, token: str, new_password: str, *, now: datetime,
                            secret_keys: Sequence[bytes] | None = None) -> ResetCompleted:
    """Set the user's password (argon2id) from a valid ``token``, once; the caller commits.

    Locks the user row, then the token row (the order ``request_password_reset`` uses), and
    checks the token again under the locks: of two completions with one token, one wins and the
    other gets ``InvalidResetToken``. Marks the token used and invalidates the user's other open
    tokens. A password that is too short or too long is a ``ValidationError`` on ``new_password``
    (the token stays usable); the password is never in an error or a log.
    """
    now = _aware("now", now)
    keys = _keys(secret_keys)
    user_id = _open_row(session, token, now, lock=False, secret_keys=keys).user_id
    user = session.execute(for_update(select(User).where(User.id == user_id))).scalar_one_or_none()
    if user is None:
        raise InvalidResetToken()
    row = _open_row(session, token, now, lock=True, secret_keys=keys)
    check_new_password(new_password)
    user.password_hash = hash_password(new_password)
    row.used_at = now
    invalidated = _invalidate_open_tokens(session, user.id, now, keep=row.id)
    session.flush()
    return ResetCompleted(user_id=user.id, token_id=row.id, invalidated=invalidated)


def render_password_reset_email(session: Session, outbox: OutboxEmail,
                                settings: BillingSettings | None = None,
                                secret_keys: Sequence[bytes] | None = None) -> RenderedEmail:
    """Render a ``password_reset`` outbox row for delivery, to the user's email. Reads only.

    Re-derives the token from the row's nonce under SECRET_KEY, then each SECRET_KEY_FALLBACKS
    key (``secret_keys`` defaults to ``Config.secret_keys()``), and keeps the one that gives the
    stored hash: a link queued just before a rotation still goes out while its key is listed.
    No key matching (another SECRET_KEY, an edited context) is a ``ValidationError`` rather than
    an email with a dead link. The token is in ``log_redactions``: the email log never keeps it.
    """
    context = load_context(outbox)
    if not isinstance(context.get("token_id"), int) or not isinstance(context.get("nonce"), str):
        raise ValidationError("email_outbox.context", outbox.id, "is not a password reset context")
    row = session.get(PasswordResetToken, context["token_id"])
    if row is None:
        raise NotFound("token_id", context["token_id"], "password reset token")
    user = session.get(User, row.user_id)
    if user is None:
        raise NotFound("user_id", row.user_id, "user")
    token = None
    for key in _keys(secret_keys):
        candidate = derive_token(key, row.id, context["nonce"])
        if hmac.compare_digest(hash_token(candidate).encode(), row.token_hash.encode()) and token is None:
            token = candidate
    if token is None:
        raise ValidationError("email_outbox.context", outbox.id,
                              "does not give the stored token: the link was made with a key that is neither SECRET_KEY "
                              "nor listed in SECRET_KEY_FALLBACKS (every host must share one SECRET_KEY; after a "
                              "rotation, list the old key in SECRET_KEY_FALLBACKS)")
    settings = settings if settings is not None else load_settings(session)
    created, expires = as_utc(row.created_at), as_utc(row.expires_at)
    hours = round((expires - created).total_seconds() / 3600, 2)
    rendered = render(TEMPLATE, {
        "user": {"first_name": user.first_name, "last_name": user.last_name, "email": user.email},
        "reset_link": reset_link(settings, token),
        "validity_hours": int(hours) if hours == int(hours) else hours,
        "expires_at": expires.strftime("%Y-%m-%d %H:%M UTC"),
        "requested_by": row.requested_by,
        "settings": settings,
    }, to=[user.email.strip()] if user.email and user.email.strip() else [],
        client_id=outbox.client_id)
    return replace(rendered, log_redactions=(token,))
