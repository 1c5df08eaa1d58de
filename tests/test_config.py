"""Settings from the environment: the secret key (strength, key file, rotation) and the switches
of the test doubles (PAYMENT_GATEWAYS, SERVER_MODULES)."""

from __future__ import annotations

import os
import random
import secrets
import stat
from pathlib import Path

import pytest

from billingworker.config import (
    GENERATE_KEY_COMMAND,
    Config,
    SecretKeyError,
    check_secret_key,
    payment_gateways,
    secret_key_bits,
    server_modules,
)

STRONG = "q7Rk2-VpXw9_LmZ3bNc8TyHd4FgJs6Ae"


def config(tmp_path: Path, **env: str) -> Config:
    return Config.from_env({"DATABASE_URL": f"sqlite:///{tmp_path}/billing.sqlite3", **env})


# -- how strong a SECRET_KEY must be -----------------------------------------------------------

@pytest.mark.parametrize(("key", "why"), [
    ("a" * 16, "estimated strength"),
    (" " * 16, "whitespace"),
    ("\t \n" * 8, "whitespace"),
    ("Password1234!!!!", "estimated strength"),  # 16 characters, yet a run and repeats
    ("passwordpassword", "estimated strength"),
    ("x7#Kp2", "has 6 characters"),
    ("ab" * 16, "estimated strength"),  # a repeated pattern
    ("Zq8!vR3x" * 4, "estimated strength"),  # a random-looking pattern, repeated: 8 characters' worth
    ("abcdefghijklmnopqrstuvwxyz", "estimated strength"),  # a run
    ("0123456789" * 2, "estimated strength"),
    ("abbabaabbaababbaabbabaabbaab", "estimated strength"),  # a two-letter alphabet
    ("1971" + "0" * 12, "estimated strength"),
])
def test_a_weak_secret_key_is_refused_with_how_to_make_one(key, why):
    with pytest.raises(SecretKeyError) as caught:
        Config.from_env({"SECRET_KEY": key}).secret_key()
    message = str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert message.startswith("SECRET_KEY is too weak") and why in message
    assert "at least 16 characters" in message and GENERATE_KEY_COMMAND in message
    if key.strip():
        assert key not in message, "the key itself is never in an error"


@pytest.mark.parametrize("key", [
    STRONG,
    secrets.token_urlsafe(48),
    secrets.token_hex(16),
    "test-secret-key-for-reset-tokens",  # the fixtures of the test suite
    "actor-tests-secret-key-0123456789",
    "another-secret-key-entirely",
])
def test_a_strong_secret_key_is_accepted(key):
    assert Config.from_env({"SECRET_KEY": key}).secret_key() == key.encode()


def test_generated_keys_always_pass_with_a_wide_margin():
    assert min(secret_key_bits(secrets.token_urlsafe(48)) for _ in range(300)) > 250


def test_the_estimate_counts_a_repeated_pattern_once():
    unit = "Zq8!vR3xLm2#"
    assert secret_key_bits(unit * 3) == secret_key_bits(unit)
    assert secret_key_bits("a" * 64) == 0
    # a key of few distinct characters counts as drawn from a small alphabet
    rng = random.Random(7)
    assert secret_key_bits("".join(rng.choice("ab") for _ in range(64))) < 64


def test_a_weak_key_in_the_key_file_is_refused(tmp_path):
    path = tmp_path / "secret_key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("a" * 32 + "\n")
    with pytest.raises(SecretKeyError, match=f"the secret key in {path} is too weak"):
        config(tmp_path).secret_key()


# -- the key file ------------------------------------------------------------------------------

def test_the_key_file_is_created_0600_even_with_a_permissive_umask(tmp_path):
    old = os.umask(0)
    try:
        cfg = config(tmp_path)
        key = cfg.secret_key()
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(cfg.secret_key_file).st_mode) == 0o600
    check_secret_key(key.decode())
    assert config(tmp_path).secret_key() == key, "read back, not generated again"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o602])
def test_a_key_file_other_users_can_open_is_refused(tmp_path, mode):
    # Given a key file another user (or the group) may read or write
    cfg = config(tmp_path)
    cfg.secret_key()
    os.chmod(cfg.secret_key_file, mode)
    # When the worker loads it, then it refuses, naming the file and the fix
    with pytest.raises(SecretKeyError) as caught:
        config(tmp_path).secret_key()
    message = str(caught.value)
    assert str(cfg.secret_key_file) in message and f"chmod 600 {cfg.secret_key_file}" in message
    assert f"{mode:04o}" in message
    assert cfg.secret_key_file.read_text().strip() not in message
    # And once fixed it is read again
    os.chmod(cfg.secret_key_file, 0o600)
    assert config(tmp_path).secret_key()


def test_a_secret_key_in_the_environment_needs_no_file(tmp_path):
    assert config(tmp_path, SECRET_KEY=STRONG).secret_key() == STRONG.encode()
    assert not (tmp_path / "secret_key").exists()
    # an empty SECRET_KEY is no SECRET_KEY: the key file is used
    assert config(tmp_path, SECRET_KEY="").secret_key() == (tmp_path / "secret_key").read_text().strip().encode()


# -- rotation ----------------------------------------------------------------------------------

def test_fallback_keys_are_separated_by_commas_or_whitespace(tmp_path):
    old, older = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    cfg = config(tmp_path, SECRET_KEY=STRONG, SECRET_KEY_FALLBACKS=f" {old},\n {older} , {STRONG}")
    assert cfg.secret_key_fallbacks() == (old.encode(), older.encode()), "the current key is not a fallback"
    assert cfg.secret_keys() == (STRONG.encode(), old.encode(), older.encode())
    assert old not in repr(cfg), "keys stay out of the config's repr"
    assert config(tmp_path, SECRET_KEY=STRONG).secret_keys() == (STRONG.encode(),)


def test_a_weak_fallback_key_is_refused_without_showing_it(tmp_path):
    cfg = config(tmp_path, SECRET_KEY=STRONG, SECRET_KEY_FALLBACKS=f"{secrets.token_urlsafe(32)},aaaaaaaaaaaaaaaaaaaa")
    with pytest.raises(SecretKeyError) as caught:
        cfg.secret_keys()
    assert "SECRET_KEY_FALLBACKS (key 2 of 2) is too weak" in str(caught.value)
    assert "aaaaaaaaaaaaaaaaaaaa" not in str(caught.value)


def test_fallbacks_work_with_a_generated_key_file(tmp_path):
    old = secrets.token_urlsafe(32)
    cfg = config(tmp_path, SECRET_KEY_FALLBACKS=old)
    current = cfg.secret_key()
    assert cfg.secret_keys() == (current, old.encode())


# -- the switches of the test doubles ----------------------------------------------------------

@pytest.mark.parametrize(("value", "expected"), [
    (None, frozenset()), ("", frozenset()), ("test", {"test"}), (" Test, ", {"test"}), ("test test", {"test"}),
])
def test_the_test_doubles_are_off_unless_switched_on(value, expected):
    env = {} if value is None else {"PAYMENT_GATEWAYS": value, "SERVER_MODULES": value}
    assert payment_gateways(env) == expected and server_modules(env) == expected
    cfg = Config.from_env(env)
    assert cfg.payment_gateways == expected and cfg.server_modules == expected


@pytest.mark.parametrize(("name", "read"), [("PAYMENT_GATEWAYS", payment_gateways),
                                            ("SERVER_MODULES", server_modules)])
def test_an_unknown_switch_is_refused(name, read):
    with pytest.raises(ValueError) as caught:
        read({name: "test,stripe"})
    assert str(caught.value).startswith(f"{name}: 'stripe' cannot be switched on (known: test)")
