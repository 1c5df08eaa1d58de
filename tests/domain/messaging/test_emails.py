"""Rendering the email templates (SPEC §14), with real rows on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from sqlalchemy.orm import Session

from billingworker.domain.billing.tax import Rate
from billingworker.domain.errors import NotFound, ValidationError
from billingworker.domain.messaging.emails import TEMPLATES, render
from billingworker.domain.messaging.rendering import render_outbox_email
from billingworker.domain.models import (
    Client,
    Contact,
    Invoice,
    OutboxEmail,
    Transaction,
)
from billingworker.domain.settings import BillingSettings, save_settings
from tests import factories
from tests.factories import EMAIL_INVOICE_LINE as LINE
from tests.factories import email_invoice as make_invoice


def queue(session: Session, template: str, client: Client, **ids: int) -> OutboxEmail:
    outbox = OutboxEmail(template=template, client_id=client.id, context=json.dumps(ids))
    session.add(outbox)
    session.flush()
    return outbox


def test_templates_lists_the_three_emails():
    assert {"invoice_created", "add_funds_invoice", "payment_confirmation"} <= TEMPLATES


def test_invoice_created_shows_the_invoice(session):
    # Given a client with an invoice of two lines, VAT 20 % on the taxed one
    client = factories.client(session, first_name="Grace", email="grace@example.com")
    save_settings(session, company_name="Acme Hosting", system_url="https://my.acme.test/")
    invoice = make_invoice(session, client, lines=[(LINE, "10.00", True), ("Setup fee", "5.00", False)],
                           rate1=Rate("VAT", Decimal("20")))
    outbox = queue(session, "invoice_created", client, invoice_id=invoice.id)

    # When it is rendered
    email = render_outbox_email(session, outbox)

    # Then both bodies carry the invoice, with money in the client's currency
    assert email.template == "invoice_created"
    assert email.to == ["grace@example.com"]
    assert email.subject == f"Invoice #{invoice.number} from Acme Hosting"
    link = f"https://my.acme.test/viewinvoice.php?id={invoice.id}"
    for body in (email.text, email.html):
        assert "Grace" in body
        assert f"#{invoice.number}" in body
        assert "2024-05-01" in body and "2024-05-15" in body
        assert LINE in body and "Setup fee" in body
        assert "$10.00 USD" in body and "$5.00 USD" in body
        assert "VAT (20%)" in body
        assert "$2.00 USD" in body  # 20 % of the taxed 10.00
        assert "$17.00 USD" in body  # total and balance due
        assert "banktransfer" in body
        assert link in body
        assert "Credit applied" not in body
    assert email.text.count("$17.00 USD") == 2
    assert f'href="{link}"' in email.html


def test_taxes_are_shown_only_when_not_zero(session):
    client = factories.client(session)
    invoice = make_invoice(session, client, lines=[(LINE, "10.00", False)], rate1=Rate("VAT", Decimal("20")),
                           rate2=Rate("Eco levy", Decimal("2.5")))
    email = render_outbox_email(session, queue(session, "invoice_created", client, invoice_id=invoice.id))
    assert invoice.tax1 == 0 and invoice.tax2 == 0
    for body in (email.text, email.html):
        assert "VAT" not in body and "Eco levy" not in body and "%)" not in body
        assert "Subtotal" in body


def test_both_tax_levels_with_their_rates(session):
    client = factories.client(session)
    invoice = make_invoice(session, client, lines=[(LINE, "100.00", True)], rate1=Rate("GST", Decimal("5")),
                           rate2=Rate("PST", Decimal("7.25")))
    email = render_outbox_email(session, queue(session, "invoice_created", client, invoice_id=invoice.id))
    assert "GST (5%): $5.00 USD" in email.text
    assert "PST (7.25%): $7.25 USD" in email.text
    assert "Total:          $112.25 USD" in email.text


def test_credit_applied_is_shown_when_some_was_applied(session):
    client = factories.client(session)
    invoice = make_invoice(session, client, lines=[(LINE, "10.00", False)], credit_applied="4.00")
    email = render_outbox_email(session, queue(session, "invoice_created", client, invoice_id=invoice.id))
    assert "Credit applied: -$4.00 USD" in email.text
    assert "Balance due:    $6.00 USD" in email.text
    # total, then what was taken off it, then what is left
    for body in (email.text, email.html):
        assert body.index("Total") < body.index("Credit applied") < body.index("Balance due")


def test_html_is_escaped_but_text_and_subject_are_not(session):
    # Given a client whose name is markup
    client = factories.client(session, first_name="<script>alert(1)</script>", company_name="Tom & Jerry")
    save_settings(session, company_name="A&B <Hosting>")
    invoice = make_invoice(session, client, lines=[("<b>Bold</b> plan", "10.00", False)])
    email = render_outbox_email(session, queue(session, "invoice_created", client, invoice_id=invoice.id))

    # Then the html shows it as text, and the plain parts show it as typed
    assert "<script>" not in email.html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in email.html
    assert "&lt;b&gt;Bold&lt;/b&gt; plan" in email.html
    assert "A&amp;B &lt;Hosting&gt;" in email.html
    assert "Dear <script>alert(1)</script>," in email.text
    assert "<b>Bold</b> plan" in email.text
    assert email.subject.endswith("from A&B <Hosting>")


def test_subject_is_a_single_line(session):
    client = factories.client(session)
    save_settings(session, company_name="Acme\n  Hosting\r\nLtd")
    invoice = make_invoice(session, client)
    email = render_outbox_email(session, queue(session, "invoice_created", client, invoice_id=invoice.id))
    assert "\n" not in email.subject and "\r" not in email.subject
    assert email.subject == f"Invoice #{invoice.number} from Acme Hosting Ltd"


def test_money_uses_the_invoice_currency(session):
    # Given a client billed in yen (no minor unit) and one in euro
    yen = factories.currency(session, "JPY", prefix="¥", minor_units=0)
    client = factories.client(session, currency_id=yen.id)
    invoice = make_invoice(session, client, lines=[("Dedicated server", "12345", False)])
    email = render_outbox_email(session, queue(session, "invoice_created", client, invoice_id=invoice.id))
    assert "¥12,345 JPY" in email.text
    assert "12,345.00" not in email.text

    eur = factories.currency(session, "EUR", prefix="€")
    client2 = factories.client(session, currency_id=eur.id)
    invoice2 = make_invoice(session, client2, lines=[("VPS", "1234.5", False)])
    email2 = render_outbox_email(session, queue(session, "invoice_created", client2, invoice_id=invoice2.id))
    assert "€1,234.50 EUR" in email2.text


def test_invoice_contacts_are_copied(session):
    client = factories.client(session, email="owner@example.com")
    session.add_all([
        Contact(client_id=client.id, email="accounts@example.com", invoice_emails=True),
        Contact(client_id=client.id, email="tech@example.com", invoice_emails=False, support_emails=True),
        Contact(client_id=client.id, email="OWNER@example.com", invoice_emails=True),
    ])
    session.flush()
    invoice = make_invoice(session, client)
    email = render_outbox_email(session, queue(session, "invoice_created", client, invoice_id=invoice.id))
    assert email.to == ["owner@example.com"]
    assert email.cc == ["accounts@example.com"]
    assert email.client_id == client.id


def test_add_funds_invoice_says_it_credits_the_account(session):
    client = factories.client(session, first_name="Linus")
    invoice = make_invoice(session, client, lines=[("Add Funds", "50.00", False)], kind="add_funds")
    email = render_outbox_email(session, queue(session, "add_funds_invoice", client, invoice_id=invoice.id))
    assert email.subject.startswith(f"Add funds invoice #{invoice.number}")
    for body in (email.text, email.html):
        assert "Linus" in body
        assert "$50.00 USD" in body
        assert "added to your account credit" in body
        assert f"viewinvoice.php?id={invoice.id}" in body


def test_payment_confirmation_shows_the_transaction(session):
    client = factories.client(session)
    # A card is on file: its number must never appear in an email.
    factories.card(session, client, card_last_four="4242", gateway_token="tok_4242424242424242")
    invoice = make_invoice(session, client, lines=[(LINE, "30.00", False)], payment_method="stripe")
    invoice.amount_paid = Decimal("20.00")
    invoice.balance_due = Decimal("10.00")
    txn = Transaction(client_id=client.id, invoice_id=invoice.id, currency_id=client.currency_id,
                      date=datetime(2024, 5, 3, tzinfo=UTC), gateway="stripe", transaction_id="ch_3PxYz",
                      amount_in=Decimal("20.00"))
    session.add(txn)
    session.flush()
    email = render_outbox_email(
        session, queue(session, "payment_confirmation", client, invoice_id=invoice.id, transaction_id=txn.id))
    assert email.subject == f"Payment received for invoice #{invoice.number} - Example Hosting"
    for body in (email.text, email.html):
        assert "ch_3PxYz" in body
        assert "$20.00 USD" in body  # received
        assert "$10.00 USD" in body  # remaining
        assert "4242" not in body and "tok_" not in body
    assert "Amount received:   $20.00 USD" in email.text
    assert "Balance remaining: $10.00 USD" in email.text
    assert "paid in full" not in email.text


def test_payment_confirmation_without_transaction_uses_amount_paid(session):
    client = factories.client(session)
    invoice = make_invoice(session, client, lines=[(LINE, "30.00", False)])
    invoice.amount_paid, invoice.balance_due = Decimal("30.00"), Decimal("0")
    session.flush()
    email = render_outbox_email(session, queue(session, "payment_confirmation", client, invoice_id=invoice.id))
    assert "Amount received:   $30.00 USD" in email.text
    assert "Transaction ID" not in email.text
    assert "This invoice is now paid in full." in email.text


def test_render_with_a_plain_context():
    # Given unsaved rows: render() needs no database
    from billingworker.domain.models import Currency

    client = Client(first_name="Ada", email="ada@example.com")
    invoice = Invoice(id=7, number=None, date_created=date(2024, 1, 1), date_due=date(2024, 1, 8),
                      payment_method="", subtotal=Decimal("1"), tax1=Decimal("0"), tax2=Decimal("0"),
                      total=Decimal("1"), credit_applied=Decimal("0"), amount_paid=Decimal("0"),
                      balance_due=Decimal("1"))
    currency = Currency(code="GBP", prefix="£", suffix="GBP", minor_units=2)
    email = render("invoice_created", {"client": client, "invoice": invoice, "items": [],
                                       "currency": currency,
                                       "settings": BillingSettings(system_url="https://x.test")})
    # the invoice id stands in for a draft's missing number; the URL gets its slash
    assert email.subject == "Invoice #7 from Example Hosting"
    assert "£1.00 GBP" in email.text
    assert "https://x.test/viewinvoice.php?id=7" in email.text
    assert "Payment method" not in email.text
    assert email.to == [] and email.cc == []


def test_unknown_template_is_refused(session):
    with pytest.raises(ValidationError) as err:
        render("../../etc/passwd", {})
    assert err.value.field == "template"
    assert err.value.rule == "is not a known email template"

    client = factories.client(session)
    with pytest.raises(ValidationError) as err:
        render_outbox_email(session, queue(session, "no_such_email", client))
    assert err.value.field == "template" and err.value.value == "no_such_email"


def test_missing_context_is_a_validation_error(session):
    client = factories.client(session)
    with pytest.raises(ValidationError) as err:
        render_outbox_email(session, queue(session, "invoice_created", client))  # no invoice_id
    assert err.value.field == "context"
    assert "invoice" in err.value.rule


def test_deleted_invoice_is_not_found(session):
    client = factories.client(session)
    with pytest.raises(NotFound) as err:
        render_outbox_email(session, queue(session, "invoice_created", client, invoice_id=999999))
    assert err.value.field == "invoice_id"
