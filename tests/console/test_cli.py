"""``billingworker console hash-password`` prints a CONSOLE_USERS entry; ``billingworker console``
refuses to start when nobody could sign in."""

from __future__ import annotations

import click
from click.testing import CliRunner

from billingworker.console.auth import check_password, parse_users
from billingworker.console.cli import register


def main() -> click.Group:
    group = click.Group("billingworker")
    register(group)
    return group


def test_hash_password_prints_an_entry_that_signs_in():
    result = CliRunner().invoke(main(), ["console", "hash-password", "alice", "--role", "admin"],
                                input="a-long-password\na-long-password\n")

    assert result.exit_code == 0, result.output
    # Only the entry is on standard output (the questions are on stderr): $(...) captures it alone
    assert len(result.stdout.strip().splitlines()) == 1
    entry = result.stdout.strip()
    assert "a-long-password" not in result.stdout
    user = parse_users(entry)["alice"]
    assert user.role == "admin" and check_password(user, "a-long-password")
    assert not check_password(user, "another-password")


def test_hash_password_refuses_a_short_password():
    result = CliRunner().invoke(main(), ["console", "hash-password", "bob", "--password", "short"])
    assert result.exit_code == 1 and "at least 8 characters" in result.output


def test_console_refuses_to_start_without_users_or_with_a_bad_entry(tmp_path):
    env = {"SECRET_KEY": "k7Qp2xZr9LmW4vB8nT3yH6jDk7Qp2xZr9LmW4vB8", "DATABASE_URL": f"sqlite:///{tmp_path}/c.db"}
    empty = CliRunner().invoke(main(), ["console"], env={**env, "CONSOLE_USERS": ""})
    bad = CliRunner().invoke(main(), ["console"], env={**env, "CONSOLE_USERS": "alice:root:x"})

    assert empty.exit_code == 1 and "CONSOLE_USERS is empty" in empty.output
    assert bad.exit_code == 1 and "entry 1 ('alice'): the role must be one of admin, viewer" in bad.output
    assert "Traceback" not in empty.output + bad.output


def test_console_listens_on_this_machine_only_unless_told_otherwise():
    from billingworker.console.cli import console

    host = next(p for p in console.params if p.name == "host")
    assert host.default == "127.0.0.1"
