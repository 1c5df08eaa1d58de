"""The public import path of the phone-number functions that other Python applications call
(docs/jobs.md#normalize_phone_numbers), kept as documented since 0.2. The code lives in
``domain/accounts/phones.py``."""

from .accounts.phones import normalize_phone, normalize_phone_for_write

__all__ = ["normalize_phone", "normalize_phone_for_write"]
