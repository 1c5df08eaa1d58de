"""Phone numbers (SPEC §11): the stored form, the client's country as default region, ``+XX``
picking its own country, the setting off, bad input refused; the bulk conversion of stored
numbers (per record, never mangled, idempotent)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from billingworker.domain.accounts.phones import normalize_phone, normalize_phone_for_write, normalize_stored_phones
from billingworker.domain.errors import ValidationError
from billingworker.domain.models import Client, Contact
from billingworker.domain.settings import save_settings
from tests import factories as f

COUNTRIES = [
    ("US", "(202) 555-0143", "+1.2025550143"),
    ("GB", "020 7123 4567", "+44.2071234567"),
    ("DE", "030 12345678", "+49.3012345678"),
    ("FR", "01 23 45 67 89", "+33.123456789"),
    ("IN", "098765 43210", "+91.9876543210"),
    ("AU", "02 9876 5432", "+61.298765432"),
    ("BR", "(11) 91234-5678", "+55.11912345678"),
    ("JP", "03-1234-5678", "+81.312345678"),
    ("ZA", "021 123 4567", "+27.211234567"),
    ("NL", "020 123 4567", "+31.201234567"),
    # Italy keeps its leading zero after the country code.
    ("IT", "06 1234 5678", "+39.0612345678"),
    ("ES", "912 34 56 78", "+34.912345678"),
    ("CA", "416.555.0199", "+1.4165550199"),
]


@pytest.mark.parametrize("country, typed, stored", COUNTRIES)
def test_a_national_number_takes_the_country_code_of_the_client(country, typed, stored):
    assert normalize_phone(typed, country) == stored


@pytest.mark.parametrize("country, typed, stored", COUNTRIES)
def test_normalising_a_stored_number_gives_it_back(country, typed, stored):
    assert normalize_phone(stored, country) == stored
    assert normalize_phone(stored, "") == stored, "the stored form carries its own country"
    assert normalize_phone(stored, "JP") == stored


@pytest.mark.parametrize("typed, country, stored", [
    ("+44 20 7123 4567", "US", "+44.2071234567"),
    ("+49 (0)30 12345678", "FR", "+49.3012345678"),
    ("0044 20 7123 4567", "DE", "+44.2071234567"),  # the region's international prefix
    ("011 44 20 7123 4567", "US", "+44.2071234567"),
    ("+1 202 555 0143", "", "+1.2025550143"),  # no country needed when the number says it
    ("+44.2071234567", "gb", "+44.2071234567"),
])
def test_a_number_typed_with_its_country_code_picks_its_own_country(typed, country, stored):
    assert normalize_phone(typed, country) == stored


@pytest.mark.parametrize("typed", ["(202) 555-0143", "  +44 20 7123 4567 ", "call me", "12", ""])
def test_with_formatting_off_the_number_is_kept_as_typed(typed):
    assert normalize_phone(typed, "US", formatting=False) == typed


@pytest.mark.parametrize("typed", ["", "   ", None])
def test_empty_stays_empty(typed):
    assert normalize_phone(typed, "US") == ""


@pytest.mark.parametrize("typed, country, why", [
    ("call me", "US", "letters"),
    ("1-800-FLOWERS", "US", "letters"),  # never read as a keypad
    ("555-1234 ext. 12", "US", "letters"),
    ("abc", "GB", "letters"),
    ("123", "US", "too short"),
    ("1", "GB", "too short"),
    ("555-1234", "US", "area code"),
    ("12345678901234567890", "US", "too long"),
    ("020 7123 4567", "", "no country code"),
    ("020 7123 4567", "XX", "no country code"),
    ("+999 1234 5678", "US", "unknown country calling code"),
    ("+", "US", "not a phone number"),
    ("---", "US", "not a phone number"),
    ("0000000000", "US", "not a phone number"),  # the right length, but a placeholder
    ("+44 0000000000", "US", "not a phone number"),
])
def test_an_unreadable_number_is_a_clear_validation_error(typed, country, why):
    with pytest.raises(ValidationError) as error:
        normalize_phone(typed, country)
    assert error.value.field == "phone_number" and error.value.value == typed
    assert why in error.value.rule


@pytest.mark.parametrize("typed", ["+44\t20 7123 4567", "020\u202f7123\u202f4567", "+44 20\n7123 4567",
                                   " 020 7123 4567\r\n"])
def test_tabs_line_breaks_and_narrow_spaces_of_a_pasted_number_are_spaces(typed):
    assert normalize_phone(typed, "GB") == "+44.2071234567"


def test_the_error_names_the_field_it_was_given():
    with pytest.raises(ValidationError) as error:
        normalize_phone("nope", "US", field="contacts[3].phone_number")
    assert error.value.field == "contacts[3].phone_number"


def test_a_value_longer_than_the_column_is_refused_even_as_typed():
    with pytest.raises(ValidationError):
        normalize_phone("1" * 51, "US", formatting=False)


def test_the_write_helper_follows_the_installation_setting(session):
    assert normalize_phone_for_write(session, "020 7123 4567", "GB") == "+44.2071234567"
    save_settings(session, phone_number_formatting=False)
    assert normalize_phone_for_write(session, "020 7123 4567", "GB") == "020 7123 4567"


# --- the stored numbers -------------------------------------------------------------------------

def contact(session, client: Client, phone: str, country: str = "") -> Contact:
    c = Contact(client_id=client.id, email=f"c{client.id}-{phone[:3]}@example.com", phone_number=phone,
                country=country)
    session.add(c)
    session.flush()
    return c


def phone_of(session, model, row_id) -> str:
    session.expire_all()
    return session.execute(select(model.phone_number).where(model.id == row_id)).scalar_one()


def test_stored_numbers_are_converted_and_bad_ones_reported_and_left_alone(session):
    gb = f.client(session, country="GB", phone_number="020 7123 4567")
    de = f.client(session, country="DE", phone_number="+49 30 12345678")
    bad = f.client(session, country="US", phone_number="call me maybe")
    empty = f.client(session, country="FR", phone_number="")
    done = f.client(session, country="JP", phone_number="+81.312345678")
    own_country = contact(session, gb, "01 23 45 67 89", country="FR")
    clients_country = contact(session, de, "030 87654321")
    bad_contact = contact(session, done, "12")
    session.commit()

    result = normalize_stored_phones(session, [gb.id, de.id, bad.id, empty.id, done.id])
    session.commit()

    assert phone_of(session, Client, gb.id) == "+44.2071234567"
    assert phone_of(session, Client, de.id) == "+49.3012345678"
    assert phone_of(session, Client, bad.id) == "call me maybe", "never mangled"
    assert phone_of(session, Client, empty.id) == ""
    assert phone_of(session, Client, done.id) == "+81.312345678"
    assert phone_of(session, Contact, own_country.id) == "+33.123456789"
    assert phone_of(session, Contact, clients_country.id) == "+49.3087654321", "a contact without country: client's"
    assert phone_of(session, Contact, bad_contact.id) == "12"
    assert result.clients == 5 and result.changed == 4 and result.unchanged == 2
    assert sorted((x.client_id, x.field, x.value) for x in result.failures) == sorted([
        (bad.id, "phone_number", "call me maybe"), (done.id, f"contacts[{bad_contact.id}].phone_number", "12")])
    assert "letters" in result.failures[0].reason or "letters" in result.failures[1].reason

    again = normalize_stored_phones(session, [gb.id, de.id, bad.id, empty.id, done.id])
    assert again.changed == 0 and again.unchanged == 6 and len(again.failures) == 2, "idempotent"


def test_with_formatting_off_nothing_is_converted(session):
    c = f.client(session, country="GB", phone_number="020 7123 4567")
    save_settings(session, phone_number_formatting=False)
    session.commit()
    result = normalize_stored_phones(session, [c.id])
    assert result.changed == 0 and result.failures == []
    assert phone_of(session, Client, c.id) == "020 7123 4567"


def test_a_number_changed_since_it_was_read_is_not_overwritten(session, monkeypatch):
    c = f.client(session, country="GB", phone_number="020 7123 4567")
    session.commit()
    from billingworker.domain.accounts import phones

    real = phones.normalize_phone

    def meanwhile(raw, country, **kw):
        # Another application saves a new number between our read and our write.
        session.execute(Client.__table__.update().where(Client.id == c.id).values(phone_number="+33.123456789"))
        return real(raw, country, **kw)

    monkeypatch.setattr(phones, "normalize_phone", meanwhile)
    result = normalize_stored_phones(session, [c.id])
    assert result.skipped == 1 and result.changed == 0
    assert phone_of(session, Client, c.id) == "+33.123456789"
