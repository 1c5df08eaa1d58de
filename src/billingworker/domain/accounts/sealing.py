"""Secrets in server-module parameters are stored only sealed, and only until the command ran.

A module command may need a secret (the new password of ``change_password``, an API token for
the account). ``module_commands.params`` is read by other applications and shown to operators,
so a secret never goes there: the parameters are stored with each secret value replaced by
``[sealed]``, and the whole parameters sealed (Fernet: AES-128-CBC with HMAC-SHA256, through the
``cryptography`` library) under a key derived from ``SECRET_KEY`` go to ``sealed_params``, which
is erased once the command has run (succeeded, or failed for good). During a key rotation the
keys of ``SECRET_KEY_FALLBACKS`` still open what was sealed before.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from ..errors import ValidationError

#: A parameter whose key contains one of these (any case, at any depth) is a secret.
SECRET_KEY_NAMES = re.compile(r"pass|secret|token|api_?key|private|credential", re.IGNORECASE)
#: What stands in ``module_commands.params`` for a sealed value.
SEALED = "[sealed]"
#: How deep a parameters object may nest (they are small JSON objects).
MAX_DEPTH = 8


def _fernet_key(secret_key: bytes) -> bytes:
    # A key of its own for this use, so that a sealed value never reveals anything about the
    # password-reset tokens derived from the same SECRET_KEY.
    return base64.urlsafe_b64encode(hmac.new(secret_key, b"billingworker:module-params:v1", hashlib.sha256).digest())


class ParamSealer:
    """Seals with the first key; opens with any of them (the current one, then the fallbacks)."""

    def __init__(self, secret_keys: Sequence[bytes]) -> None:
        if not secret_keys:
            raise ValueError("ParamSealer needs at least one key")
        self._fernet = MultiFernet([Fernet(_fernet_key(k)) for k in secret_keys])

    def seal(self, params: Mapping[str, Any]) -> str:
        return self._fernet.encrypt(json.dumps(params, sort_keys=True).encode()).decode()

    def unseal(self, sealed: str) -> dict[str, Any]:
        try:
            return json.loads(self._fernet.decrypt(sealed.encode()))
        except (InvalidToken, ValueError):
            raise ValidationError("module_commands.sealed_params", "***", "cannot be opened with SECRET_KEY or a "
                                  "key of SECRET_KEY_FALLBACKS (was the key rotated away?)") from None


def public_params(params: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """``params`` with every secret value replaced by ``[sealed]``, and whether there was one."""
    found = False

    def walk(value: Any, depth: int) -> Any:
        nonlocal found
        if depth > MAX_DEPTH:
            raise ValidationError("params", "…", f"nests deeper than {MAX_DEPTH} levels")
        if isinstance(value, Mapping):
            out = {}
            for key, item in value.items():
                if isinstance(key, str) and SECRET_KEY_NAMES.search(key):
                    found = True
                    out[key] = SEALED
                else:
                    out[key] = walk(item, depth + 1)
            return out
        if isinstance(value, list):
            return [walk(item, depth + 1) for item in value]
        return value

    return walk(params, 0), found
