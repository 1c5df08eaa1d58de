"""Password reset (SPEC §10): single-use, hash-only, expiring tokens; one email per request."""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import threading
from datetime import datetime, timedelta
from functools import partial

import pytest
from argon2 import PasswordHasher
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from billingworker.adapters.mailer import MemoryMailer
from billingworker.config import Config, _load_or_create_key_file
from billingworker.domain.accounts import password_reset as pr
from billingworker.domain.accounts.password_reset import (
    MAX_RESETS_PER_HOUR,
    RATE_WINDOW,
    InvalidResetToken,
    complete_password_reset,
    request_password_reset,
    verify_reset_token,
)
from billingworker.domain.accounts.passwords import hash_password, verify_password
from billingworker.domain.errors import NotFound, ValidationError
from billingworker.domain.messaging.delivery import deliver_email
from billingworker.domain.messaging.rendering import render_outbox_email
from billingworker.domain.models import ClientUser, EmailLog, OutboxEmail, PasswordResetToken, User
from billingworker.domain.settings import BillingSettings, save_settings
from billingworker.ops.logs import redact_text
from tests import factories as f
from tests.factories import RESET_NOW as NOW
from tests.factories import make_user, race
from tests.factories import request_reset as reset

SECRET = "test-secret-key-for-reset-tokens"
#: A key an installation used before rotating to SECRET (random, as a real key would be).
OLD_SECRET = "h2Qe8-Zr0VbLkP4sWn7TyX1cJm5AaGdF"


@pytest.fixture(autouse=True)
def _secret_key(monkeypatch):
    monkeypatch.setenv("SECRET_KEY", SECRET)
    monkeypatch.delenv("SECRET_KEY_FALLBACKS", raising=False)


def count(session: Session, model, *where) -> int:
    return session.scalar(select(func.count()).select_from(model).where(*where))


def token_of(session: Session, email_id: int) -> str:
    """The token in the link of outbox email ``email_id``, as the delivering worker derives it."""
    rendered = render_outbox_email(session, session.get(OutboxEmail, email_id))
    assert rendered.log_redactions, "the token must be redacted from the email log"
    token = rendered.log_redactions[0]
    assert f"password-reset?token={token}" in rendered.text
    return token


def test_a_request_stores_only_the_hash_and_emails_a_link(session):
    user = make_user(session)
    client = f.client(session, email="billing@example.com")
    session.add(ClientUser(client_id=client.id, user_id=user.id, is_owner=True))
    session.flush()

    done = reset(session)
    session.commit()

    assert done.outcome == "sent" and done.user_id == user.id
    assert done.expires_at == NOW + timedelta(hours=2)
    row = session.get(PasswordResetToken, done.token_id)
    (email_id,) = done.email_ids
    token = token_of(session, email_id)
    assert row.token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert row.requested_by == "client" and row.security_checked is False and row.request_key == "req:1"
    outbox = session.get(OutboxEmail, email_id)
    assert token not in outbox.context, "the outbox (JSON in the database) must not hold the token"
    assert outbox.client_id == client.id
    rendered = render_outbox_email(session, outbox)
    assert rendered.to == ["ada@example.com"], "the reset goes to the user, not to the client's address"
    assert "https://billing.example.com/password-reset?token=" + token in rendered.html


def test_the_email_log_never_keeps_the_token(session):
    make_user(session)
    done = reset(session)
    session.commit()
    token = token_of(session, done.email_ids[0])
    mailer = MemoryMailer()
    deliver_email(session, done.email_ids[0], mailer, sender="Billing <billing@example.com>", now=NOW)
    session.commit()
    assert token in mailer.sent[0].as_string(), "the person gets the link"
    log = session.scalars(select(EmailLog)).one()
    assert token not in log.body_text + log.body_html + log.subject
    assert "password-reset?token=[redacted]" in log.body_text
    # and a log line that carried the link would be masked
    assert token not in redact_text(f"sent https://x/password-reset?token={token}")


def test_the_token_is_valid_until_exactly_the_end_of_the_window(session):
    user = make_user(session)
    save_settings(session, password_reset_validity_hours=3)
    done = reset(session)
    session.commit()
    token = token_of(session, done.email_ids[0])
    end = NOW + timedelta(hours=3)
    assert verify_reset_token(session, token, now=end - timedelta(microseconds=1)) == user.id
    with pytest.raises(InvalidResetToken):
        verify_reset_token(session, token, now=end)
    with pytest.raises(InvalidResetToken):
        complete_password_reset(session, token, "a new password", now=end)
    assert session.get(User, user.id).password_hash == ""


def test_a_reset_sets_an_argon2_hash_once(session):
    user = make_user(session)
    done = reset(session)
    session.commit()
    token = token_of(session, done.email_ids[0])

    completed = complete_password_reset(session, token, "correct horse battery", now=NOW + timedelta(minutes=5))
    session.commit()

    assert completed.user_id == user.id
    stored = session.get(User, user.id).password_hash
    assert stored.startswith("$argon2id$")
    assert PasswordHasher().verify(stored, "correct horse battery")
    assert session.get(PasswordResetToken, done.token_id).used_at is not None
    with pytest.raises(InvalidResetToken):
        complete_password_reset(session, token, "another password", now=NOW + timedelta(minutes=6))
    with pytest.raises(InvalidResetToken):
        verify_reset_token(session, token, now=NOW + timedelta(minutes=6))
    session.rollback()
    assert verify_password(session.get(User, user.id).password_hash, "correct horse battery")


def test_a_new_request_invalidates_the_older_tokens(session):
    user = make_user(session)
    first = reset(session, "req:1")
    second = reset(session, "req:2", now=NOW + timedelta(minutes=1))
    session.commit()
    old, new = token_of(session, first.email_ids[0]), token_of(session, second.email_ids[0])
    assert old != new
    with pytest.raises(InvalidResetToken):
        verify_reset_token(session, old, now=NOW + timedelta(minutes=2))
    assert verify_reset_token(session, new, now=NOW + timedelta(minutes=2)) == user.id
    assert session.get(PasswordResetToken, first.token_id).invalidated_at is not None


def test_completing_invalidates_the_users_other_open_tokens(session):
    user = make_user(session)
    done = reset(session)
    # An open token left by another path (the panel, an old version): completing ends it too.
    other = PasswordResetToken(user_id=user.id, token_hash="f" * 64, requested_by="admin", created_at=NOW,
                               expires_at=NOW + timedelta(hours=2))
    session.add(other)
    session.commit()
    completed = complete_password_reset(session, token_of(session, done.email_ids[0]), "a fine password", now=NOW)
    session.commit()
    assert completed.invalidated == 1
    assert session.get(PasswordResetToken, other.id).invalidated_at is not None


def test_wrong_expired_used_and_superseded_tokens_fail_identically(session):
    make_user(session)
    make_user(session, "grace@example.com")
    expired = reset(session, "req:old", email="grace@example.com", now=NOW - timedelta(hours=5))
    used = reset(session, "req:used", now=NOW - timedelta(minutes=30))
    session.commit()
    used_token = token_of(session, used.email_ids[0])
    complete_password_reset(session, used_token, "first password", now=NOW - timedelta(minutes=20))
    superseded = reset(session, "req:a", now=NOW - timedelta(minutes=10))
    reset(session, "req:b", now=NOW - timedelta(minutes=5))
    session.commit()

    candidates = {
        "wrong": "x" * 43,
        "malformed": "not a token!",
        "not a string": 12345,
        "expired": token_of(session, expired.email_ids[0]),
        "used": used_token,
        "superseded": token_of(session, superseded.email_ids[0]),
    }
    messages = set()
    for name, token in candidates.items():
        for call in (partial(verify_reset_token, session, token, now=NOW),
                     partial(complete_password_reset, session, token, "some password", now=NOW)):
            with pytest.raises(InvalidResetToken) as caught:
                call()
            assert type(caught.value) is InvalidResetToken, name
            messages.add((str(caught.value), caught.value.field, caught.value.value))
            if isinstance(token, str):
                assert token not in str(caught.value)
    assert len(messages) == 1, messages


def test_tokens_are_compared_in_constant_time(session, monkeypatch):
    make_user(session)
    done = reset(session)
    session.commit()
    token = token_of(session, done.email_ids[0])
    calls = []
    real = pr.hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(pr.hmac, "compare_digest", spy)
    verify_reset_token(session, token, now=NOW)
    assert calls, "a valid token is checked with hmac.compare_digest"
    calls.clear()
    with pytest.raises(InvalidResetToken):
        verify_reset_token(session, "y" * 43, now=NOW)
    assert calls, "an unknown token costs a comparison too"


def test_a_too_short_password_is_refused_without_using_the_token(session):
    make_user(session)
    done = reset(session)
    session.commit()
    token = token_of(session, done.email_ids[0])
    with pytest.raises(ValidationError) as caught:
        complete_password_reset(session, token, "short", now=NOW)
    assert caught.value.field == "new_password" and "short" not in str(caught.value)
    session.rollback()
    assert verify_reset_token(session, token, now=NOW)


def test_redelivery_of_one_request_creates_nothing_more(session):
    make_user(session)
    first = reset(session, "req:1")
    again = reset(session, "req:1", now=NOW + timedelta(seconds=5))
    session.commit()
    assert first.outcome == "sent" and again.outcome == "already_requested" and not again.email_ids
    assert count(session, PasswordResetToken) == 1 and count(session, OutboxEmail) == 1


def test_an_unknown_email_completes_silently(session):
    make_user(session)
    done = reset(session, email="nobody@example.com")
    assert done.outcome == "unknown_email" and done.user_id is None and not done.email_ids
    assert count(session, PasswordResetToken) == 0 and count(session, OutboxEmail) == 0
    # the address is matched without regard to case
    assert reset(session, "req:2", email="  ADA@Example.com ").outcome == "sent"


def test_an_unknown_user_id_is_not_found(session):
    with pytest.raises(NotFound):
        reset(session, user_id=999)


def test_requests_are_rate_limited_per_user(session):
    user = make_user(session)
    make_user(session, "grace@example.com")
    for n in range(MAX_RESETS_PER_HOUR):
        assert reset(session, f"req:{n}", now=NOW + timedelta(minutes=n)).outcome == "sent"
    limited = reset(session, "req:over", now=NOW + timedelta(minutes=30), requested_by="admin", user_id=user.id)
    assert limited.outcome == "rate_limited" and not limited.email_ids
    assert reset(session, "req:grace", email="grace@example.com", now=NOW + timedelta(minutes=30)).outcome == "sent"
    # an hour after the first one, there is room again
    assert reset(session, "req:later", now=NOW + timedelta(hours=1, seconds=1)).outcome == "sent"
    assert count(session, PasswordResetToken, PasswordResetToken.user_id == user.id) == MAX_RESETS_PER_HOUR + 1


def test_a_security_question_must_have_been_checked_for_a_client_request(session):
    user = make_user(session, security_question="First pet?", security_answer_hash=hash_password("rex is a dog"))
    with pytest.raises(ValidationError) as caught:
        reset(session)
    assert caught.value.field == "security_checked"
    done = reset(session, "req:2", security_checked=True)
    assert session.get(PasswordResetToken, done.token_id).security_checked is True
    admin = reset(session, "req:3", requested_by="admin", user_id=user.id)
    assert admin.outcome == "sent"
    assert session.get(PasswordResetToken, admin.token_id).security_checked is False


def test_bad_arguments_are_refused(session):
    make_user(session)
    with pytest.raises(ValidationError, match="requested_by"):
        reset(session, requested_by="robot")
    with pytest.raises(ValidationError):
        reset(session, user_id=1, email="ada@example.com")
    with pytest.raises(ValidationError):
        request_password_reset(session, request_key="k", now=NOW)
    with pytest.raises(ValidationError, match="now"):
        reset(session, now=datetime(2026, 1, 10, 9, 0))


def test_admin_wording_differs_from_client_wording(session):
    user = make_user(session)
    client_mail = render_outbox_email(session, session.get(OutboxEmail, reset(session, "a").email_ids[0]))
    admin_mail = render_outbox_email(session, session.get(OutboxEmail, reset(
        session, "b", requested_by="admin", user_id=user.id).email_ids[0]))
    assert "If you did not ask for this" in client_mail.text
    assert "Our staff" in admin_mail.text and "If you did not ask" not in admin_mail.text
    for mail in (client_mail, admin_mail):
        assert "2 hours" in mail.text and "password:" not in mail.text.lower()


def test_a_worker_with_another_secret_key_refuses_to_send_a_dead_link(session, monkeypatch):
    make_user(session)
    done = reset(session)
    session.commit()
    monkeypatch.setenv("SECRET_KEY", "another-secret-key-entirely")
    with pytest.raises(ValidationError, match="SECRET_KEY"):
        render_outbox_email(session, session.get(OutboxEmail, done.email_ids[0]))


# -- key rotation (SECRET_KEY_FALLBACKS) -------------------------------------------------------

def test_a_link_made_under_the_old_key_works_while_the_old_key_is_listed(session, monkeypatch):
    # Given a link made (and emailed) under the old key
    user = make_user(session)
    monkeypatch.setenv("SECRET_KEY", OLD_SECRET)
    done = reset(session)
    session.commit()
    token = token_of(session, done.email_ids[0])
    # When the installation rotates to a new key and lists the old one as a fallback
    monkeypatch.setenv("SECRET_KEY", SECRET)
    monkeypatch.setenv("SECRET_KEY_FALLBACKS", OLD_SECRET)
    # Then the old link still works, and an email queued before the rotation still goes out
    assert verify_reset_token(session, token, now=NOW) == user.id
    assert token_of(session, done.email_ids[0]) == token
    completed = complete_password_reset(session, token, "a new password", now=NOW)
    assert completed.user_id == user.id


def test_a_link_made_under_the_old_key_dies_when_the_old_key_is_removed(session, monkeypatch):
    # Given a link made under the old key, and the rotation done
    make_user(session)
    monkeypatch.setenv("SECRET_KEY", OLD_SECRET)
    done = reset(session)
    session.commit()
    token = token_of(session, done.email_ids[0])
    monkeypatch.setenv("SECRET_KEY", SECRET)
    monkeypatch.setenv("SECRET_KEY_FALLBACKS", f"{OLD_SECRET}, another-secret-key-entirely")
    assert verify_reset_token(session, token, now=NOW)
    # When the old key is removed from the fallbacks
    monkeypatch.setenv("SECRET_KEY_FALLBACKS", "another-secret-key-entirely")
    # Then the link fails like any invalid link, and its email is no longer sent
    with pytest.raises(InvalidResetToken):
        verify_reset_token(session, token, now=NOW)
    with pytest.raises(InvalidResetToken):
        complete_password_reset(session, token, "a new password", now=NOW)
    with pytest.raises(ValidationError, match="SECRET_KEY_FALLBACKS"):
        render_outbox_email(session, session.get(OutboxEmail, done.email_ids[0]))
    monkeypatch.delenv("SECRET_KEY_FALLBACKS")
    with pytest.raises(InvalidResetToken):
        verify_reset_token(session, token, now=NOW)


def test_new_links_are_made_with_the_new_key_only(session, monkeypatch):
    user = make_user(session)
    monkeypatch.setenv("SECRET_KEY_FALLBACKS", OLD_SECRET)
    done = reset(session)
    session.commit()
    token = token_of(session, done.email_ids[0])
    # The new link does not depend on the old key: it survives its removal...
    monkeypatch.delenv("SECRET_KEY_FALLBACKS")
    assert token_of(session, done.email_ids[0]) == token
    assert verify_reset_token(session, token, now=NOW) == user.id
    # ...and is not valid under the old key alone
    with pytest.raises(InvalidResetToken):
        verify_reset_token(session, token, now=NOW, secret_keys=[OLD_SECRET.encode()])


def test_every_key_is_tried_in_constant_time(session, monkeypatch):
    make_user(session)
    monkeypatch.setenv("SECRET_KEY_FALLBACKS", f"{OLD_SECRET} another-secret-key-entirely")
    done = reset(session)
    session.commit()
    token = token_of(session, done.email_ids[0])
    derived = []
    real = pr.derive_token

    def spy(key, token_id, nonce):
        derived.append(key)
        return real(key, token_id, nonce)

    monkeypatch.setattr(pr, "derive_token", spy)
    for candidate in (token, "y" * 43, "not a token!"):
        derived.clear()
        try:
            verify_reset_token(session, candidate, now=NOW)
        except InvalidResetToken:
            pass
        # the current key matches first, yet every key is tried: valid and invalid cost the same
        assert derived == [SECRET.encode(), OLD_SECRET.encode(), b"another-secret-key-entirely"], candidate


def test_a_link_whose_outbox_row_is_gone_no_longer_works(session):
    make_user(session)
    done = reset(session)
    session.commit()
    token = token_of(session, done.email_ids[0])
    session.delete(session.get(OutboxEmail, done.email_ids[0]))
    session.commit()
    with pytest.raises(InvalidResetToken):
        verify_reset_token(session, token, now=NOW)


# -- the installation-wide limit ---------------------------------------------------------------

def test_the_installation_sends_at_most_its_hourly_limit_of_reset_emails(session):
    # Given 40 users, and the default limit of 100 reset links an hour for the installation
    assert BillingSettings().password_reset_installation_limit == 100
    for n in range(40):
        make_user(session, f"user{n}@example.com")
    session.commit()
    # When each asks 6 times within the hour (the per-user limit alone would let 200 through)
    outcomes: dict[str, int] = {}
    for attempt in range(6):
        for n in range(40):
            done = reset(session, f"req:{n}:{attempt}", email=f"user{n}@example.com",
                         now=NOW + timedelta(seconds=attempt * 40 + n))
            outcomes[done.outcome] = outcomes.get(done.outcome, 0) + 1
            if done.outcome != "sent":
                assert not done.email_ids and done.token_id is None
    session.commit()
    # Then at most 100 emails are queued; the rest are refused
    assert count(session, OutboxEmail) == 100 and count(session, PasswordResetToken) == 100
    assert outcomes == {"sent": 100, "installation_rate_limited": 140}


def test_past_the_installation_limit_a_known_and_an_unknown_email_look_the_same(session, caplog):
    make_user(session)
    make_user(session, "grace@example.com")
    save_settings(session, password_reset_installation_limit=1)
    assert reset(session, "req:1", email="grace@example.com").outcome == "sent"
    with caplog.at_level(logging.WARNING):
        known = reset(session, "req:2", email="ada@example.com")
        unknown = reset(session, "req:3", email="nobody@example.com")
    # Then neither outcome nor result says whether the account exists
    assert known == unknown == pr.ResetRequest("installation_rate_limited")
    assert count(session, PasswordResetToken) == 1 and count(session, OutboxEmail) == 1
    # And the refusal is logged for the operator, without the address
    assert "password_reset_installation_limit" in caplog.text and "ada@example.com" not in caplog.text
    # An hour after the first link there is room again
    assert reset(session, "req:4", email="ada@example.com", now=NOW + RATE_WINDOW).outcome == "sent"


def test_the_installation_limit_must_be_at_least_one(session):
    make_user(session)
    save_settings(session, password_reset_installation_limit=0)
    with pytest.raises(ValidationError) as caught:
        reset(session)
    assert caught.value.field == "settings.password_reset_installation_limit"


def test_no_password_or_token_reaches_the_logs(session, caplog):
    make_user(session)
    with caplog.at_level(logging.DEBUG):
        done = reset(session)
        token = token_of(session, done.email_ids[0])
        complete_password_reset(session, token, "my secret password", now=NOW)
    assert token not in caplog.text and "my secret password" not in caplog.text


# -- the secret key ---------------------------------------------------------------------------

def test_without_secret_key_one_is_generated_once_into_a_private_file(tmp_path):
    config = Config.from_env({"DATABASE_URL": f"sqlite:///{tmp_path}/db/billing.sqlite3"})
    assert config.secret_key_file == tmp_path / "db" / "secret_key"
    key = config.secret_key()
    assert len(key) >= 32
    assert stat.S_IMODE(os.stat(config.secret_key_file).st_mode) == 0o600
    assert Config.from_env({"DATABASE_URL": f"sqlite:///{tmp_path}/db/billing.sqlite3"}).secret_key() == key


def test_processes_generating_the_key_at_once_agree(tmp_path):
    path = tmp_path / "secret_key"
    barrier = threading.Barrier(8)
    keys = []

    def load():
        barrier.wait()
        keys.append(_load_or_create_key_file(path))

    threads = [threading.Thread(target=load) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(keys) == 8 and len(set(keys)) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["secret_key"], "no temporary file is left behind"


def test_a_short_secret_key_is_refused():
    with pytest.raises(ValueError, match="SECRET_KEY"):
        Config.from_env({"SECRET_KEY": "short"}).secret_key()
    assert Config.from_env({"SECRET_KEY": SECRET}).secret_key() == SECRET.encode()


# -- two workers at once, on PostgreSQL -------------------------------------------------------

def test_the_same_request_twice_at_once_makes_one_token_and_one_email(pg_engine, pg_session):
    make_user(pg_session)
    pg_session.commit()
    results = race(pg_engine, *[partial(reset, key="req:same") for _ in range(3)])
    assert sorted(r.outcome for r in results) == ["already_requested", "already_requested", "sent"]
    pg_session.rollback()
    assert count(pg_session, PasswordResetToken) == 1 and count(pg_session, OutboxEmail) == 1


def test_two_requests_at_once_leave_exactly_one_open_token(pg_engine, pg_session):
    make_user(pg_session)
    pg_session.commit()
    results = race(pg_engine, partial(reset, key="req:a"), partial(reset, key="req:b"))
    assert [r.outcome for r in results] == ["sent", "sent"]
    pg_session.rollback()
    assert count(pg_session, PasswordResetToken) == 2
    assert count(pg_session, PasswordResetToken, PasswordResetToken.invalidated_at.is_(None)) == 1


def test_one_token_completed_twice_at_once_sets_the_password_once(pg_engine, pg_session):
    user = make_user(pg_session)
    done = reset(pg_session)
    pg_session.commit()
    token = token_of(pg_session, done.email_ids[0])
    outcomes: list[str] = []

    def complete(password: str, session: Session):
        try:
            complete_password_reset(session, token, password, now=NOW)
            outcomes.append(password)
        except InvalidResetToken:
            outcomes.append("refused")

    race(pg_engine, partial(complete, "first password"), partial(complete, "second password"))
    assert len(outcomes) == 2 and outcomes.count("refused") == 1, outcomes
    pg_session.rollback()
    winner = next(o for o in outcomes if o != "refused")
    assert verify_password(pg_session.get(User, user.id).password_hash, winner)


def test_two_users_at_once_cannot_overshoot_the_installation_limit(pg_engine, pg_session):
    make_user(pg_session)
    make_user(pg_session, "grace@example.com")
    make_user(pg_session, "alan@example.com")
    save_settings(pg_session, password_reset_installation_limit=2)
    reset(pg_session, "req:first", email="alan@example.com")
    pg_session.commit()
    results = race(pg_engine, partial(reset, key="req:a", email="ada@example.com"),
                   partial(reset, key="req:b", email="grace@example.com"))
    assert sorted(r.outcome for r in results) == ["installation_rate_limited", "sent"]
    pg_session.rollback()
    assert count(pg_session, PasswordResetToken) == 2 and count(pg_session, OutboxEmail) == 2


def test_a_request_and_a_completion_at_once_do_not_deadlock(pg_engine, pg_session):
    make_user(pg_session)
    done = reset(pg_session)
    pg_session.commit()
    token = token_of(pg_session, done.email_ids[0])

    def complete(session: Session):
        try:
            return complete_password_reset(session, token, "a new password", now=NOW)
        except InvalidResetToken:
            return None  # the new request got in first and invalidated it

    race(pg_engine, complete, partial(reset, key="req:new"))
    pg_session.rollback()
    assert count(pg_session, PasswordResetToken, PasswordResetToken.invalidated_at.is_(None),
                 PasswordResetToken.used_at.is_(None)) == 1
