"""Phone numbers (SPEC §11): stored as ``+<country code>.<national number>``.

``normalize_phone`` is the one function every write of a phone number goes through (profile
updates, merges, the bulk job below). The client's (or contact's) country is the default
region; a number typed as ``+XX…`` (or with the region's international prefix, ``00XX…``)
picks its own country. With the ``phone_number_formatting`` setting off a number is stored as
typed. A number that cannot be read is a ``ValidationError``: never a silently mangled value.

``normalize_stored_phones`` converts numbers already in the database, client by client: a bad
number is reported per record and left as it was; the others are still converted.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import phonenumbers
from phonenumbers import NumberParseException, ValidationResult
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ...store.arrays import among
from ..errors import ValidationError
from ..failures import ClientFailure
from ..models import Client, Contact
from ..settings import load_settings

#: The width of the ``phone_number`` columns.
MAX_PHONE_LENGTH = 50

# phonenumbers reads letters as a keypad ("1-800-FLOWERS") and drops trailing words: either
# would store a number nobody typed. We refuse letters (extensions too: the stored form has no
# place for them).
_LETTERS = re.compile(r"[^\W\d_]")

_WHY_NOT_PARSED = {
    NumberParseException.INVALID_COUNTRY_CODE: "has an unknown country calling code",
    NumberParseException.TOO_SHORT_NSN: "is too short to be a phone number",
    NumberParseException.TOO_SHORT_AFTER_IDD: "is too short to be a phone number",
    NumberParseException.TOO_LONG: "is too long to be a phone number",
}
_WHY_NOT_POSSIBLE = {
    ValidationResult.INVALID_COUNTRY_CODE: "has an unknown country calling code",
    ValidationResult.TOO_SHORT: "is too short to be a phone number",
    ValidationResult.IS_POSSIBLE_LOCAL_ONLY: "is a local number only: include the area code",
    ValidationResult.INVALID_LENGTH: "has a length no number of its country has",
    ValidationResult.TOO_LONG: "is too long to be a phone number",
}


def normalize_phone(raw: str | None, country: str | None, *, formatting: bool = True,
                    field: str = "phone_number") -> str:
    """``raw`` as it is stored: ``+CC.national`` (formatting on) or as typed (off).

    Pure and idempotent: a stored value normalises to itself. Empty (or blank) stays empty.
    Raises ``ValidationError(field, raw, why)`` for a number that cannot be read, a number
    without a country code when ``country`` is blank, and anything longer than the column.
    """
    if raw is None:
        return ""
    if not isinstance(raw, str):
        raise ValidationError(field, raw, "must be a string")
    if not formatting:
        if len(raw) > MAX_PHONE_LENGTH:
            raise ValidationError(field, raw, f"is longer than {MAX_PHONE_LENGTH} characters")
        return raw
    # Tabs, line breaks and the narrow no-break spaces of pasted numbers are spaces to a reader.
    typed = " ".join(raw.split())
    if not typed:
        return ""
    if _LETTERS.search(typed):
        raise ValidationError(field, raw, "contains letters (vanity numbers and extensions are not stored)")
    region = (country or "").strip().upper() or None
    if region is not None and region not in phonenumbers.SUPPORTED_REGIONS:
        region = None  # an unknown country cannot be a default: only +XX numbers are readable then
    try:
        number = phonenumbers.parse(typed, region)
    except NumberParseException as exc:
        if exc.error_type == NumberParseException.INVALID_COUNTRY_CODE and region is None \
                and not typed.startswith("+"):
            why = f"has no country code (+XX) and the country {country!r} gives none"
        elif exc.error_type == NumberParseException.NOT_A_NUMBER and 0 < sum(ch.isdigit() for ch in typed) < 3:
            why = "is too short to be a phone number"
        else:
            why = _WHY_NOT_PARSED.get(exc.error_type, "is not a phone number")
        raise ValidationError(field, raw, why) from None
    verdict = phonenumbers.is_possible_number_with_reason(number)
    if verdict != ValidationResult.IS_POSSIBLE:
        raise ValidationError(field, raw, _WHY_NOT_POSSIBLE.get(verdict, "is not a phone number"))
    national = phonenumbers.national_significant_number(number)
    if not national.strip("0"):
        # Of the right length but all zeros ("0000000000"): a placeholder, no country's number.
        raise ValidationError(field, raw, "is not a phone number")
    return f"+{number.country_code}.{national}"


def normalize_phone_for_write(session: Session, raw: str | None, country: str | None, *,
                              field: str = "phone_number") -> str:
    """``normalize_phone`` with the installation's ``phone_number_formatting`` setting: what
    domain code that writes a client's or contact's phone number calls."""
    return normalize_phone(raw, country, formatting=load_settings(session).phone_number_formatting, field=field)


@dataclass
class PhoneNormalization:
    """What ``normalize_stored_phones`` did."""

    clients: int = 0
    #: Numbers rewritten (clients and contacts).
    changed: int = 0
    #: Numbers already in the stored form, empty, or left alone because formatting is off.
    unchanged: int = 0
    #: Numbers that could not be read: reported, left as they were.
    failures: list[ClientFailure] = field(default_factory=list)
    #: Numbers another writer changed between our read and our write: left to that writer.
    skipped: int = 0

    def as_dict(self) -> dict:
        return {"clients": self.clients, "changed": self.changed, "unchanged": self.unchanged,
                "skipped": self.skipped,
                "failures": [{"client_id": f.client_id, "field": f.field, "value": f.value, "reason": f.reason}
                             for f in self.failures]}


def normalize_stored_phones(session: Session, client_ids: Sequence[int], *,
                            formatting: bool | None = None) -> PhoneNormalization:
    """Rewrite the stored phone numbers of these clients and their contacts in the stored form.

    Idempotent (a normalised number is left as it is). Takes no lock: each row is updated only
    if its number is still the one we read (compare and set), so a number the client edits
    meanwhile is never overwritten with a conversion of the old one. Bad numbers are returned
    in ``failures`` (field ``phone_number`` or ``contacts[<id>].phone_number``) and not touched.
    With formatting off (the setting, unless ``formatting`` says) nothing is rewritten.
    """
    result = PhoneNormalization()
    if formatting is None:
        formatting = load_settings(session).phone_number_formatting
    ids = sorted(set(client_ids))
    if not ids:
        return result
    clients = session.execute(select(Client.id, Client.country, Client.phone_number)
                              .where(among(session, Client.id, ids)).order_by(Client.id)).all()
    result.clients = len(clients)
    country_of = {c.id: c.country for c in clients}
    contacts = session.execute(select(Contact.id, Contact.client_id, Contact.country, Contact.phone_number)
                               .where(among(session, Contact.client_id, ids)).order_by(Contact.id)).all()
    work = [(Client, c.id, c.id, c.country, c.phone_number, "phone_number") for c in clients]
    # A contact without a country of its own is taken to live in its client's country.
    work += [(Contact, c.id, c.client_id, c.country or country_of.get(c.client_id, ""), c.phone_number,
              f"contacts[{c.id}].phone_number") for c in contacts]
    for model, row_id, client_id, country, stored, label in work:
        if not formatting:
            result.unchanged += 1
            continue
        try:
            wanted = normalize_phone(stored, country, field=label)
        except ValidationError as exc:
            result.failures.append(ClientFailure(client_id, label, stored, exc.rule))
            continue
        if wanted == (stored or ""):
            result.unchanged += 1
            continue
        done = session.execute(update(model).where(model.id == row_id, model.phone_number == stored)
                               .values(phone_number=wanted).execution_options(synchronize_session=False))
        if done.rowcount:
            result.changed += 1
        else:
            result.skipped += 1
    return result


def client_id_batches(session: Session, batch_size: int) -> Iterator[list[int]]:
    """Every client's id (Closed ones too: their numbers are kept), ``batch_size`` at a time
    (keyset pagination: memory stays flat however many clients there are)."""
    after = 0
    while True:
        ids = list(session.execute(select(Client.id).where(Client.id > after).order_by(Client.id)
                                   .limit(batch_size)).scalars())
        if not ids:
            return
        yield ids
        after = ids[-1]
