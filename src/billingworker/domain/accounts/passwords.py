"""Password hashes (SPEC §10): argon2id through ``argon2-cffi``, the format the panel shares.

A password never leaves this module in clear: not in an error (the value of a
``ValidationError`` about a password is ``[hidden]``), not in a log, not in an email.
"""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from ..errors import ValidationError

#: Shortest password accepted, in characters.
MIN_PASSWORD_LENGTH = 8
#: Longest password accepted, in characters: argon2 hashes anything, but a megabyte "password"
#: is an attack on the worker's CPU, not a password.
MAX_PASSWORD_LENGTH = 1024
#: What a ValidationError shows instead of a password.
HIDDEN = "[hidden]"

# argon2-cffi's defaults (argon2id, RFC 9106 low-memory profile); the parameters are kept in
# each hash, so raising them later still verifies the old hashes.
_hasher = PasswordHasher()


def check_new_password(password: object, *, field: str = "new_password") -> str:
    """``password`` if it is acceptable, else a ``ValidationError`` naming ``field`` (never the value)."""
    if not isinstance(password, str):
        raise ValidationError(field, HIDDEN, "must be a string")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValidationError(field, HIDDEN, f"must be at least {MIN_PASSWORD_LENGTH} characters long")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise ValidationError(field, HIDDEN, f"must be at most {MAX_PASSWORD_LENGTH} characters long")
    if password.strip() == "":
        raise ValidationError(field, HIDDEN, "must not be only spaces")
    return password


def hash_password(password: str) -> str:
    """The argon2id hash of ``password`` (``$argon2id$v=19$...``), salted at random."""
    return _hasher.hash(check_new_password(password, field="password"))


def verify_password(password_hash: str, password: str) -> bool:
    """Whether ``password`` matches ``password_hash``; False for a hash that is not argon2."""
    if not password_hash or not isinstance(password, str):
        return False
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False
