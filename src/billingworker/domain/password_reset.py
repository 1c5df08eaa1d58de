"""The public import path of the password-reset functions that other Python applications call
(docs/jobs.md#send_password_reset_email), kept as documented since 0.2. The code lives in
``domain/accounts/password_reset.py``."""

from .accounts.password_reset import InvalidResetToken, complete_password_reset, verify_reset_token

__all__ = ["InvalidResetToken", "complete_password_reset", "verify_reset_token"]
