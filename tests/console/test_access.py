"""Who may see and do what: nothing without signing in, a viewer never acts, no action without
the session's CSRF token, sign-ins slowed after failures, sessions that end. Every refusal is
audited and changes nothing."""

from __future__ import annotations

import asyncio
import re
from concurrent.futures import ThreadPoolExecutor

import httpx2 as httpx
import pytest
from sqlalchemy import func, select
from starlette.routing import Route

from billingworker.console.auth import ConsoleConfigError, parse_users
from billingworker.console.web import SESSION_LIFETIME
from billingworker.db import unit_of_work
from billingworker.domain.models import ConsoleSession

from .conftest import PASSWORDS, audit_count, audit_rows, csrf_of, sign_in, signed_in
from .seed import dead_ids, email_status, is_parked, seed

PARAMS = {"run_id": "1", "client_id": "1", "email_id": "1", "queue": "billing", "ident": "x"}


def app_routes(client) -> list[tuple[str, str]]:
    """Every (method, path) the console serves, path parameters filled in."""
    out = []
    for route in client.app.routes:
        if not isinstance(route, Route) or route.path == "/healthz":
            continue
        path = re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: PARAMS[m.group(1)], route.path)
        for method in sorted(route.methods - {"HEAD"}):
            out.append((method, path))
    return out


def action_routes(client, seeded) -> list[str]:
    """Every POST action, aimed at the seeded rows."""
    paths = []
    for method, path in app_routes(client):
        if method == "POST" and not path.startswith(("/sign-in", "/sign-out")):
            paths.append(path.replace("/1/", f"/{seeded.client_id}/", 1) if path.startswith("/parked/") else
                         path.replace("/x/", f"/{seeded.letter_id}/") if path.startswith("/dead-letters/") else
                         path.replace("/1/", f"/{seeded.email_id}/") if path.startswith("/outbox/") else path)
    return paths


def test_signed_out_every_page_goes_to_sign_in_and_every_action_is_refused(engine, console_client, redis_broker,
                                                                            redis_client):
    # Given data every action could change, and a visitor who has not signed in
    seeded = seed(engine, redis_broker)
    client = console_client(engine)
    routes = app_routes(client)
    assert len([m for m, _ in routes if m == "GET"]) >= 14 and len([m for m, _ in routes if m == "POST"]) >= 9

    # When it asks for every page, and posts every action (even with a token of its own)
    token = csrf_of(client)
    for method, path in routes:
        if path.startswith("/sign-in"):
            continue
        response = client.request(method, path, data={"csrf_token": token, "confirm": "yes"} if method == "POST"
                                  else None)
        # Then a page sends it to the sign-in page (coming back afterwards), an action is refused
        if method == "GET":
            assert response.status_code == 303, path
            assert response.headers["location"].startswith("/sign-in?next=/"), path
        else:
            assert response.status_code == 403, path
    for path in action_routes(client, seeded):
        assert client.post(path, data={"csrf_token": token, "confirm": "yes"}).status_code == 403
    # An htmx poll is told where to go instead of getting the sign-in page swapped in
    polled = client.get("/queues/live", headers={"HX-Request": "true"})
    assert polled.status_code == 401 and polled.headers["HX-Redirect"] == "/sign-in"
    # And nothing changed
    assert is_parked(engine, seeded.client_id)
    assert dead_ids(redis_client) == [seeded.letter_id]
    assert email_status(engine, seeded.email_id) == "failed"
    # The public parts say nothing sensitive
    assert client.get("/healthz").text == "ok"
    assert client.get("/static/htmx.min.js").status_code == 200


def test_a_sign_in_with_a_wrong_password_is_denied_and_audited_then_the_right_one_works(engine, console_client):
    client = console_client(engine)

    wrong = sign_in(client, "alice", "not-her-password")
    assert wrong.status_code == 401 and "Wrong user name or password" in wrong.text
    assert client.get("/queues").status_code == 303
    unknown = sign_in(client, "mallory", "whatever-password")
    assert unknown.status_code == 401

    right = sign_in(client, "alice")
    assert right.status_code == 303 and right.headers["location"] == "/queues"
    assert client.get("/parked").status_code == 200

    rows = audit_rows(engine, "sign_in")
    assert [(r.username, r.role, r.outcome, r.detail) for r in rows] == [
        ("alice", "admin", "denied", "wrong password"), ("mallory", "", "denied", "unknown user"),
        ("alice", "admin", "ok", "")]
    assert all(r.remote_addr for r in rows)


def test_sign_ins_slow_down_after_failures_even_with_the_right_password(engine, console_client, clock, caplog):
    client = console_client(engine)
    for _ in range(3):
        assert sign_in(client, "alice", "guess-guess-guess").status_code == 401

    # The fourth attempt waits, whatever the password
    throttled = sign_in(client, "alice")
    assert throttled.status_code == 429 and "try again in" in throttled.text
    assert client.get("/queues").status_code == 303
    # The refusal is logged; the audit table keeps the three denied attempts only
    assert [r.outcome for r in audit_rows(engine, "sign_in")] == ["denied"] * 3
    assert "sign-in refused: throttled" in caplog.text

    # Once the wait is over, the right password works
    clock.advance(1.5)
    assert sign_in(client, "alice").status_code == 303


def test_a_session_ends_after_its_lifetime(engine, console_client, clock):
    client = console_client(engine)
    signed_in(client)
    assert client.get("/runs").status_code == 200
    clock.advance(SESSION_LIFETIME + 1)
    assert client.get("/runs").status_code == 303


def test_sign_in_refuses_a_form_without_its_token_and_next_never_leaves_the_console(engine, console_client):
    client = console_client(engine)
    client.get("/sign-in")
    response = client.post("/sign-in", data={"username": "alice", "password": PASSWORDS["alice"]})
    assert response.status_code == 403
    assert client.get("/queues").status_code == 303
    token = csrf_of(client)
    for elsewhere in ("//evil.example/", "/\\evil.example/", "https://evil.example/"):
        away = client.post("/sign-in", data={"username": "alice", "password": PASSWORDS["alice"],
                                             "csrf_token": csrf_of(client), "next": elsewhere})
        assert away.headers["location"] == "/queues", elsewhere
        client.cookies.clear()
    assert token


def test_a_viewer_sees_every_page_but_every_action_is_refused_and_audited(engine, console_client, redis_broker,
                                                                           redis_client):
    seeded = seed(engine, redis_broker)
    client = console_client(engine)
    token = signed_in(client, "victor")
    for path in ("/queues", "/retries", "/dead-letters", "/runs", "/parked", "/outbox", "/audit",
                 f"/clients/{seeded.client_id}"):
        assert client.get(path).status_code == 200, path
    before = audit_count(engine)

    actions = action_routes(client, seeded)
    for path in actions:
        response = client.post(path, data={"csrf_token": token, "confirm": "yes", "set": "invoice_id=8"})
        assert response.status_code == 403, path
        assert "can look but not act" in response.text

    assert is_parked(engine, seeded.client_id)
    assert dead_ids(redis_client) == [seeded.letter_id]
    assert email_status(engine, seeded.email_id) == "failed"
    refused = audit_rows(engine)[before:]
    assert len(refused) == len(actions)
    assert {(r.username, r.role, r.outcome) for r in refused} == {("victor", "viewer", "refused")}


@pytest.mark.parametrize("token", [None, "", "forged-token"])
def test_an_action_without_the_sessions_csrf_token_is_refused_and_changes_nothing(engine, console_client,
                                                                                 redis_broker, redis_client, token):
    seeded = seed(engine, redis_broker)
    client = console_client(engine)
    signed_in(client, "alice")
    data = {} if token is None else {"csrf_token": token}

    for path in action_routes(client, seeded):
        response = client.post(path, data={**data, "confirm": "yes"})
        assert response.status_code == 403, path
        assert "CSRF" in response.text

    assert is_parked(engine, seeded.client_id)
    assert dead_ids(redis_client) == [seeded.letter_id]
    assert email_status(engine, seeded.email_id) == "failed"
    assert {(r.outcome, r.detail) for r in audit_rows(engine) if r.action != "sign_in"} == {
        ("refused", "CSRF token missing or wrong")}


def test_another_sessions_token_is_refused(engine, console_client, redis_broker):
    seeded = seed(engine, redis_broker)
    mine, theirs = console_client(engine), console_client(engine)
    signed_in(mine, "alice")
    their_token = signed_in(theirs, "alice")
    assert mine.post(f"/parked/{seeded.client_id}/unpark", data={"csrf_token": their_token}).status_code == 403
    assert is_parked(engine, seeded.client_id)


def test_cookie_and_headers_keep_the_session_to_this_site(engine, console_client):
    client = console_client(engine)
    response = sign_in(client, "alice")
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "max-age=" in cookie
    page = client.get("/queues")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"


def test_console_users_are_checked_when_read():
    with pytest.raises(ConsoleConfigError, match="entry 1 .*role must be one of admin, viewer"):
        parse_users("alice:root:$argon2id$v=19$m=65536,t=3,p=4$abc$def")
    with pytest.raises(ConsoleConfigError, match="argon2 hash"):
        parse_users("alice:admin:plaintext")
    with pytest.raises(ConsoleConfigError, match="listed twice"):
        parse_users("a:admin:$argon2id$x;a:viewer:$argon2id$y")
    users = parse_users("a:admin:$argon2id$v=19$m=65536,t=3,p=4$s$h\nb:viewer:$argon2id$v=19$m=1,t=1,p=1$s$h")
    assert {u.name: (u.role, u.can_act) for u in users.values()} == {"a": ("admin", True), "b": ("viewer", False)}


def test_the_throttle_forgets_old_failures_when_its_table_is_full():
    from billingworker.console.auth import SignInThrottle

    now = [0.0]
    throttle = SignInThrottle(max_keys=3, clock=lambda: now[0])
    for name in ("a", "b", "c", "d"):
        throttle.attempt(name, "10.0.0.1")
    now[0] = 1000.0
    throttle.attempt("e", "10.0.0.2")
    assert set(throttle._failures) == {"user:e@10.0.0.2", "addr:10.0.0.2"}


def test_parallel_wrong_passwords_get_no_more_checks_than_a_sequence(engine, console_client):
    # Given a sign-in form (its cookie and CSRF token), as an attacker would fetch it once
    client = console_client(engine)
    token = csrf_of(client)
    form = {"username": "alice", "password": "guess-guess-guess", "csrf_token": token, "next": "/queues"}

    async def burst() -> list[int]:
        # 40 attempts at once: each password check runs in a thread while the others arrive
        transport = httpx.ASGITransport(app=client.app, client=("198.51.100.7", 4000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver",
                                     cookies=dict(client.cookies)) as browser:
            answers = await asyncio.gather(*(browser.post("/sign-in", data=form) for _ in range(40)))
        return [a.status_code for a in answers]

    # In a thread of its own: the browser tests' Playwright keeps an event loop running in this one.
    with ThreadPoolExecutor(1) as thread:
        codes = thread.submit(lambda: asyncio.run(burst())).result()

    # Then only the three free attempts were checked; the rest waited without a check
    assert sorted(codes) == [401] * 3 + [429] * 37
    assert [r.outcome for r in audit_rows(engine, "sign_in")] == ["denied"] * 3


def test_failures_from_elsewhere_do_not_lock_an_operator_out(engine, console_client):
    # Given someone failing on purpose with alice's name from another address until throttled
    mallory = console_client(engine, address="203.0.113.66")
    for _ in range(3):
        assert sign_in(mallory, "alice", "guess-guess-guess").status_code == 401
    assert sign_in(mallory, "alice").status_code == 429

    # Then alice, from her own address, signs in at once
    alice = console_client(engine, address="192.0.2.10")
    assert sign_in(alice, "alice").status_code == 303
    # And the audit log says where each attempt came from
    assert [(r.remote_addr, r.outcome) for r in audit_rows(engine, "sign_in")] == [
        ("203.0.113.66", "denied")] * 3 + [("192.0.2.10", "ok")]


def test_one_address_trying_many_names_is_slowed_down_too(engine, console_client):
    client = console_client(engine, address="203.0.113.77")
    codes = [sign_in(client, f"name{n}", "guess-guess-guess").status_code for n in range(25)]
    assert codes == [401] * 20 + [429] * 5
    # A throttled attempt writes no audit row: at most the allowance of rows from one address
    assert len(audit_rows(engine, "sign_in")) == 20


def test_sign_in_posts_without_a_token_do_not_write_the_audit_table(engine, console_client, caplog):
    # Given nobody signed in, posting forms without a CSRF token in an operator's name
    client = console_client(engine)
    for _ in range(50):
        response = client.post("/sign-in", data={"username": "alice", "password": "x"})
        assert response.status_code == 403

    # Then the refusals went to the log, not to the audit table (which they would flood)
    assert audit_count(engine) == 0
    assert caplog.text.count("sign-in refused: CSRF token missing or wrong (user name 'alice'") == 50


def test_sign_out_ends_the_session_a_saved_cookie_is_worth_nothing(engine, console_client, redis_broker):
    # Given alice signed in twice (two browsers), and a copy of one browser's cookie
    seeded = seed(engine, redis_broker)
    client, other = console_client(engine), console_client(engine)
    token = signed_in(client)
    signed_in(other)
    saved = dict(client.cookies)
    assert session_count(engine) == 2

    # When she signs out in that browser
    assert client.post("/sign-out", data={"csrf_token": token}).headers["location"] == "/sign-in"

    # Then the saved cookie, replayed, signs nobody in: no page, no action
    thief = console_client(engine)
    thief.cookies.update(saved)
    assert thief.get("/queues").status_code == 303
    assert thief.post(f"/parked/{seeded.client_id}/unpark", data={"csrf_token": token}).status_code == 403
    assert is_parked(engine, seeded.client_id)
    # And her other browser is still signed in (only that session ended)
    assert other.get("/queues").status_code == 200
    assert session_count(engine) == 1


def session_count(engine) -> int:
    with unit_of_work(engine) as session:
        return session.execute(select(func.count()).select_from(ConsoleSession)).scalar_one()
