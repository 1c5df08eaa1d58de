"""Argument bounds (ids within INTEGER, no control characters in text) and the message guard:
what the database cannot store, and what Dramatiq cannot decode, is refused as bad input.

The same refusals through a real worker over Redis: tests/integration/test_fuzz.py.
"""

from __future__ import annotations

import json
from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select

from billingworker.actors import broker
from billingworker.actors.arguments import (
    MAX_ID,
    check_characters,
    parse_count,
    parse_date,
    parse_id,
    parse_id_list,
    parse_optional_id,
    parse_text,
)
from billingworker.actors.base import _log_client_id, receipt_key
from billingworker.actors.invoicing import create_invoice
from billingworker.actors.payments import apply_payment
from billingworker.actors.services import mass_update
from billingworker.domain.errors import ValidationError
from billingworker.domain.models import Invoice, JobFailure
from billingworker.message_guard import REFUSE_ACTOR, BadMessage, GuardedEncoder, check_message
from tests import factories as f

from .conftest import dead_letters, drain

ID_RULE = "must be a positive integer id of at most 2147483647"


# --- ids ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [
    (1, 1), (MAX_ID, MAX_ID), ("1", 1), ("0000000012", 12), (str(MAX_ID), MAX_ID),
])
def test_an_id_in_the_integer_range_is_taken(value, expected):
    assert parse_id("client_id", value) == expected


@pytest.mark.parametrize("value", [
    0, -1, MAX_ID + 1, 2**63, 2**70, 10**400, "0", str(MAX_ID + 1), "9" * 11, "9" * 400, "9" * 5000,
    "", " 12", "12 ", "+12", "-12", "1_2", "١٢", "12a", "0x1f", 1.0, 1.5, True, False, None, [1], {"id": 1},
])
def test_anything_else_is_refused_naming_the_field_and_the_range(value):
    with pytest.raises(ValidationError) as refused:
        parse_id("invoice_id", value)
    assert refused.value.field == "invoice_id" and refused.value.rule == ID_RULE
    assert len(str(refused.value)) < 200, "a huge value is quoted short"


def test_a_5000_digit_string_is_refused_before_int_sees_it():
    # int() refuses more than 4300 digits with a ValueError, which a job would take as transient.
    with pytest.raises(ValidationError) as refused:
        parse_id("email_id", "7" * 5000)
    assert "(5000 characters)" in str(refused.value)


@given(st.integers())
def test_an_integer_is_an_id_exactly_when_it_fits_an_integer_column(n):
    if 1 <= n <= MAX_ID:
        assert parse_id("x", n) == n
    else:
        with pytest.raises(ValidationError):
            parse_id("x", n)


@given(st.text(max_size=30))
def test_a_string_is_an_id_exactly_when_it_is_up_to_ten_ascii_digits_in_range(text):
    ok = text.isascii() and text.isdigit() and len(text) <= 10 and 1 <= int(text) <= MAX_ID
    if ok:
        assert parse_id("x", text) == int(text)
    else:
        with pytest.raises(ValidationError):
            parse_id("x", text)


def test_lists_and_optional_ids_are_bounded_too():
    assert parse_optional_id("user_id", None) is None
    with pytest.raises(ValidationError, match="user_id"):
        parse_optional_id("user_id", 2**31)
    with pytest.raises(ValidationError) as refused:
        parse_id_list("email_ids", [1, 2, 2**70], max_length=100)
    assert refused.value.field == "email_ids[2]"


@pytest.mark.parametrize("value", [-1, MAX_ID + 1, 2**70, "5", 1.5, True, None])
def test_a_count_is_an_integer_from_zero_to_its_maximum(value):
    assert parse_count("older_than_seconds", 0) == 0 and parse_count("batch_no", MAX_ID) == MAX_ID
    with pytest.raises(ValidationError, match="older_than_seconds"):
        parse_count("older_than_seconds", value)


def test_the_log_reads_a_client_id_without_ever_failing():
    assert _log_client_id({"client_id": "12"}) == 12 and _log_client_id({"client_id": 12}) == 12
    assert _log_client_id({"client_id": "9" * 5000}) is None
    assert _log_client_id({"client_id": 2**70}) is None and _log_client_id({}) is None


# --- text ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("char", ["\x00", "\x01", "\t", "\n", "\r", "\x1b", "\x7f", "\x85", "\x9f", "\ud800",
                                  "\udfff"])
def test_a_control_character_or_lone_surrogate_inside_a_text_is_refused(char):
    with pytest.raises(ValidationError) as refused:
        parse_text("gateway", f"str{char}ipe", max_length=50)
    assert refused.value.field == "gateway"
    assert f"U+{ord(char):04X} at position 3" in refused.value.rule


def test_a_multiline_text_keeps_tabs_and_line_breaks_but_never_nul():
    body = "Dear client,\r\n\tyour invoice is paid.\n"
    assert parse_text("body", body, max_length=1000, multiline=True) == body.strip()
    for char in ("\x00", "\x0b", "\x0c", "\x1b", "\x7f", "\ud800"):
        with pytest.raises(ValidationError, match="other than tab, line feed and carriage return"):
            parse_text("body", f"Hel{char}lo", max_length=1000, multiline=True)


def test_surrounding_whitespace_is_trimmed_not_refused():
    assert parse_text("transaction_id", "  ch_1\n") == "ch_1"
    assert parse_text("description", "Café 25 € — ok") == "Café 25 € — ok"


@given(st.text(max_size=40))
def test_an_accepted_text_is_printable_and_trimmed(text):
    try:
        parsed = parse_text("description", text)
    except ValidationError:
        return
    assert parsed == text.strip() and "\x00" not in parsed
    assert all(not (0xD800 <= ord(c) <= 0xDFFF) and not (c < " " or "\x7f" <= c <= "\x9f") for c in parsed)


def test_check_characters_lets_other_types_through_for_the_domain_to_judge():
    assert check_characters("template", None) is None and check_characters("changes.x", 12) == 12
    assert check_characters("subject", "Hello") == "Hello"


def test_a_request_id_with_a_nul_is_refused():
    with pytest.raises(ValidationError, match="request_id"):
        receipt_key("adjust_credit", "order-\x001")
    assert receipt_key("adjust_credit", "order-1") == "adjust_credit:request:order-1"


# --- through the worker (in-process broker) -----------------------------------------------------

def refusals(session) -> list[JobFailure]:
    session.rollback()
    return list(session.scalars(select(JobFailure).order_by(JobFailure.id)))


@pytest.mark.parametrize("kwargs, field", [
    ({"invoice_id": 2**70}, "invoice_id"),
    ({"invoice_id": "9" * 5000}, "invoice_id"),
    ({"gateway": "str\x00ipe"}, "gateway"),
    ({"transaction_id": "ch_\ud800"}, "transaction_id"),
])
def test_a_payment_beyond_the_columns_is_refused_once_with_its_field(session, worker, kwargs, field):
    c = f.client(session)
    invoice = Invoice(client_id=c.id, currency_id=c.currency_id, number=1, date_created=date(2026, 1, 1),
                      date_due=date(2026, 1, 1), total=10, balance_due=10)
    session.add(invoice)
    session.commit()
    apply_payment.send(**{"invoice_id": invoice.id, "amount": "10.00", "gateway": "stripe",
                          "transaction_id": "ch_1", **kwargs})
    drain()
    [row] = refusals(session)
    assert (row.actor, row.field, row.error) == ("apply_payment", field, "ValidationError")
    assert len(dead_letters()) == 1 and dead_letters()[0].options.get("retries", 0) == 0
    assert session.get(Invoice, invoice.id).balance_due == 10


def test_a_refusal_naming_a_field_the_database_cannot_store_is_still_recorded(session, worker):
    c = f.client(session)
    session.commit()
    # The domain names the unknown key as the field: a NUL and 300 characters, escaped and cut.
    mass_update.send(client_id=c.id, items=[{"type": "service", "id": 1}], changes={"a\x00" + "b" * 300: "x"})
    drain()
    [row] = refusals(session)
    assert row.field.startswith("changes.a\\x00bbb") and len(row.field) == 100
    assert "\x00" not in row.reason


# --- the message itself -------------------------------------------------------------------------

def message(**changes) -> dict:
    valid = {"queue_name": "billing", "actor_name": "close_client", "args": [], "kwargs": {"client_id": 1},
             "options": {"redis_message_id": "r-1", "retries": 0}, "message_id": "m-1",
             "message_timestamp": 1_764_050_000_000}
    return {k: v for k, v in {**valid, **changes}.items() if v is not ...}


@pytest.mark.parametrize("data, field, rule", [
    ([1, 2], "message", "is an array, not a JSON object"),
    ("close_client", "message", "is a string, not a JSON object"),
    (message(actor_name=...), "message.actor_name", "is missing"),
    (message(args={"client_id": 1}), "message.args", "must be an array, not an object"),
    (message(kwargs=[1]), "message.kwargs", "must be an object, not an array"),
    (message(options=None), "message.options", "must be an object, not null"),
    (message(priority=1), "message", "is not a field of a Dramatiq message"),
    (message(actor_name=""), "message.actor_name", "is not a job name"),
    (message(actor_name=REFUSE_ACTOR), "message.actor_name", "is internal to the worker"),
    (message(message_id="x" * 101), "message.message_id", "must be a string of 1 to 100"),
    (message(message_id="m\x00"), "message.message_id", "must be a string of 1 to 100"),
    (message(message_timestamp="now"), "message.message_timestamp", "must be a number of milliseconds"),
    (message(options={"retries": "x"}), "message.options.retries", "must be an integer from 0"),
    (message(options={"retries": True}), "message.options.retries", "must be an integer from 0"),
    (message(options={"max_retries": 2**60}), "message.options.max_retries", "or null"),
    (message(options={"throws": "ValueError"}), "message.options.throws", "must be null"),
    (message(options={"eta": "soon"}), "message.options.eta", "must be an integer"),
    (message(options={"eta": float("nan")}), "message.options.eta", "must be an integer"),
    (message(options={"on_failure": 3}), "message.options.on_failure", "must be a string or null"),
])
def test_a_message_dramatiq_would_choke_on_is_named_by_its_field(data, field, rule):
    with pytest.raises(BadMessage) as refused:
        check_message(data)
    assert refused.value.field == field and rule in refused.value.rule


def test_a_message_as_dramatiq_or_a_php_app_writes_it_passes():
    check_message(message())
    check_message(message(message_id=..., message_timestamp=..., options={}))
    check_message(message(message_timestamp=1_764_050_000_000.5, options={"eta": 1_764_050_000_000.5}))
    check_message(message(options={"redis_message_id": "r", "retries": 3, "traceback": "...", "eta": 1,
                                   "max_retries": None, "some_other_option": [1]}))


@pytest.mark.parametrize("payload, rule", [
    (b"\xff\xfe", "is not UTF-8 text"),
    (b"not json", "is not JSON (JSONDecodeError"),
    (b"[" * 100_000, "is not JSON (RecursionError"),
    (b'{"kwargs": {"client_id": ' + b"9" * 5000 + b"}}", "is not JSON (ValueError"),
    (b"[1]", "is an array, not a JSON object"),
])
def test_the_encoder_turns_an_undecodable_payload_into_a_refusal(payload, rule):
    encoder = GuardedEncoder()
    data = encoder.decode(payload)
    assert data["actor_name"] == REFUSE_ACTOR and rule in data["kwargs"]["rule"]
    assert data["kwargs"]["field"] == "message" and encoder.last_payload() == payload
    json.dumps(data)  # it is a message like any other


def test_the_encoder_keeps_a_good_message_as_it_is():
    assert GuardedEncoder().decode(json.dumps(message()).encode()) == message()


@given(st.binary(max_size=300) | st.builds(lambda v: json.dumps(v).encode(), st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["queue_name", "actor_name", "args", "kwargs", "options", "message_id", "x"]), children,
        max_size=7))))
def test_the_encoder_never_raises(payload):
    data = GuardedEncoder().decode(payload)
    if data.get("actor_name") != REFUSE_ACTOR:
        check_message(data)


def test_an_undecodable_payload_is_dead_lettered_with_a_reason_and_the_next_message_runs(session, worker):
    c = f.client(session)
    session.commit()
    # Given garbage, a message for no job and one for another queue, ahead of a good message
    broker.queues["billing"].put(b"\xff not a message")
    broker.queues["billing"].put(json.dumps(message(actor_name="no_such_job", message_id="m-2")).encode())
    broker.queues["billing"].put(json.dumps(message(queue_name="emails", message_id="m-3")).encode())
    good = create_invoice.send(client_id=c.id)
    drain()
    # Then each bad one is dead-lettered once, with a row naming why; the good one ran
    rows = {r.field: r for r in refusals(session)}
    assert {(r.actor, r.field, r.error) for r in rows.values()} == {
        (REFUSE_ACTOR, "message", "BadMessage"), (REFUSE_ACTOR, "message.actor_name", "BadMessage"),
        ("close_client", "message.queue_name", "BadMessage")}
    assert "is not UTF-8 text" in rows["message"].reason
    assert "is not a job of this worker" in rows["message.actor_name"].reason
    assert (rows["message.actor_name"].message_id, rows["message.queue_name"].message_id) == ("m-2", "m-3")
    assert len(dead_letters()) == 3 and good.message_id not in {d.message_id for d in dead_letters()}
    assert session.scalar(select(Invoice.id).where(Invoice.client_id == c.id)) is not None


def test_lists_of_things_and_batches_of_clients_have_a_documented_maximum():
    from billingworker.actors.arguments import MAX_BATCH_CLIENTS, MAX_ITEMS, parse_id_list, parse_items

    items = [{"type": "service", "id": n} for n in range(1, MAX_ITEMS + 2)]
    assert len(parse_items("items", items[:MAX_ITEMS], ("service",))) == MAX_ITEMS
    with pytest.raises(ValidationError, match=f"more than {MAX_ITEMS} items") as err:
        parse_items("items", items, ("service",))
    assert err.value.field == "items"
    with pytest.raises(ValidationError, match="more than 10000 ids"):
        parse_id_list("client_ids", list(range(1, MAX_BATCH_CLIENTS + 2)), max_length=MAX_BATCH_CLIENTS)


def test_a_message_over_a_megabyte_is_refused_before_it_is_parsed():
    # a million ids: 1.8 GB once parsed into Python objects; refused from its size alone
    payload = json.dumps({"queue_name": "billing", "actor_name": "generate_due_invoices_batch", "args": [],
                          "kwargs": {"client_ids": list(range(1, 1_000_001)), "as_of": "2026-01-10"},
                          "options": {}, "message_id": "m1", "message_timestamp": 0}).encode()
    fields = GuardedEncoder().decode(payload)
    assert fields["actor_name"] == REFUSE_ACTOR
    assert fields["kwargs"]["field"] == "message" and "larger than 1048576 bytes" in fields["kwargs"]["rule"]


@pytest.mark.parametrize("value", ["9999-12-31", "0001-01-01", "2200-01-01"])
def test_a_date_far_from_today_is_refused_not_retried(value):
    # 9999-12-31 plus the generation days overflowed (OverflowError, retried 10 times)
    with pytest.raises(ValidationError, match="is outside 1970-01-01 .. 2199-12-31") as err:
        parse_date("as_of", value)
    assert err.value.field == "as_of"
    assert parse_date("as_of", "2199-12-31") == date(2199, 12, 31)
