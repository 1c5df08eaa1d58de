"""Anonymising a client (SPEC §12, issue 12), on SQLite and PostgreSQL: personal data gone,
fiscal records kept, refused while invoices are owed, twice is once, recorded."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import date
from decimal import Decimal

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from billingworker.adapters.gateway import TEST_GATEWAY, gateway_for
from billingworker.adapters.mailer import MemoryMailer
from billingworker.domain.accounts.anonymising import SKIP_REASON, anonymise_client, anonymised_email
from billingworker.domain.accounts.exporting import client_document
from billingworker.domain.errors import Conflict, NotFound
from billingworker.domain.messaging.delivery import deliver_emails
from billingworker.domain.models import (
    Client,
    ClientExport,
    ClientNote,
    ClientUser,
    Contact,
    CreditHistory,
    EmailLog,
    Invoice,
    InvoiceItem,
    JobReceipt,
    OutboxEmail,
    PasswordResetToken,
    PayMethod,
    Transaction,
    User,
)
from billingworker.domain.payments.pay_method_removal import remove_pay_method
from billingworker.domain.reports.statements import account_statement
from billingworker.domain.reports.summary import client_summary
from tests import factories as f
from tests.domain.client_records_factories import NOW, TODAY, client_with_every_record
from tests.factories import race

#: The personal data planted on the client (beside what client_with_every_record plants).
PROFILE = {"company_name": "Analytical Engines Ltd", "address1": "12 Marylebone Road", "city": "Marylebone",
           "postcode": "NW1 5LR", "state": "Greater London", "phone_number": "+44.2071234567",
           "tax_id": "GB123456789", "last_login_ip": "203.0.113.7", "last_login_host": "ada-laptop.example"}
#: Every piece of personal data the export of the client tagged "a" held before.
PERSONAL = ["Lovelace", "Ada", "a@client.example", "owner-a@client.example", "bob-a@client.example", "Bob",
            "Admin notes of a", "Called a", "Visa of a", "First pet?", "Your invoice", "Dedicated server",
            "Contract", *PROFILE.values()]


def anonymise(session: Session, client_id: int, **kw):
    return anonymise_client(session, client_id, gateway_for=gateway_for, as_of=TODAY, now=NOW, **kw)


def count(session: Session, model, *where) -> int:
    return session.scalar(select(func.count()).select_from(model).where(*where))


def settle_owed_invoices(session: Session, client_id: int) -> None:
    """The fixture's Unpaid and Payment Pending invoices, marked Paid (an admin settled them)."""
    session.execute(update(Invoice).where(Invoice.client_id == client_id, Invoice.status.in_(
        ["Unpaid", "Payment Pending"])).values(status="Paid", balance_due=0, date_paid=TODAY))


def test_refused_while_invoices_are_owed_and_nothing_changes(session):
    # Given a client owing an Unpaid and a Payment Pending invoice
    r = client_with_every_record(session, **PROFILE)
    session.commit()

    # When it is anonymised without allowing unpaid invoices
    with pytest.raises(Conflict) as refused:
        anonymise(session, r.client_id)
    session.rollback()

    # Then it is refused naming the invoices and the flag, and nothing changed
    assert "still owes 2 invoice(s)" in str(refused.value) and "allow_unpaid" in str(refused.value)
    assert "(Unpaid)" in str(refused.value) and "(Payment Pending)" in str(refused.value)
    session.expire_all()
    client = session.get(Client, r.client_id)
    assert (client.last_name, client.status, client.anonymised_at) == ("Lovelace", "Active", None)
    assert TEST_GATEWAY.deletion_calls == 0
    with pytest.raises(NotFound):
        anonymise(session, 424242)


def test_anonymise_erases_personal_data_and_keeps_the_fiscal_records(session):
    # Given a client with a record of every kind (one user shared with another client), owing
    # an Unpaid and a Payment Pending invoice, and another client that must not change
    shared = User(email="shared@example.com", first_name="Sam")
    session.add(shared)
    session.flush()
    other = client_with_every_record(session, tag="o", shared_user=shared)
    r = client_with_every_record(session, tag="a", shared_user=shared, **PROFILE)
    session.add(OutboxEmail(client_id=r.client_id, template="invoice_created", status="queued",
                            context=json.dumps({"invoice_id": r.paid_invoice_id})))
    session.commit()
    invoices_before = invoice_facts(session, r.client_id)
    money_before = money_facts(session, r.client_id)
    other_before = client_document_of(session, other.client_id)

    # When it is anonymised although invoices are owed
    result = anonymise(session, r.client_id, allow_unpaid=True)
    session.commit()
    session.expire_all()

    # Then the profile holds neutral values, the client is Closed and the time is recorded
    client = session.get(Client, r.client_id)
    assert (client.first_name, client.last_name, client.company_name, client.address1, client.city,
            client.phone_number, client.tax_id, client.notes, client.last_login_ip) == (
        "Anonymised", "", "", "", "", "", "", "", "")
    assert client.email == anonymised_email("client", r.client_id)
    assert client.email == f"anonymised-client-{r.client_id}@anonymised.invalid"
    assert client.country == "US", "the place of supply of the invoices' tax stays"
    assert client.status == "Closed" and client.anonymised_at is not None
    assert result.outcome == "anonymised"
    # the Unpaid invoice was cancelled as a close does; Payment Pending stays
    assert result.closing["invoices_cancelled"] == 1
    assert session.get(Invoice, r.pending_invoice_id).status == "Payment Pending"
    # contacts and dated notes are gone (one note says what happened), users' logins erased
    assert count(session, Contact, Contact.client_id == r.client_id) == 0
    notes = session.scalars(select(ClientNote.note).where(ClientNote.client_id == r.client_id)).all()
    assert len(notes) == 1 and notes[0].startswith(f"Personal data anonymised on {TODAY.isoformat()} (job")
    owner = session.get(User, r.user_id)
    assert (owner.email, owner.first_name, owner.password_hash, owner.security_answer_hash) == (
        f"anonymised-user-{r.user_id}@anonymised.invalid", "Anonymised", "", "")
    assert count(session, PasswordResetToken, PasswordResetToken.user_id == r.user_id) == 0
    # the shared user is the other client's login: unlinked here, untouched
    assert session.get(User, shared.id).email == "shared@example.com"
    assert count(session, ClientUser, ClientUser.client_id == r.client_id) == 1
    assert count(session, ClientUser, ClientUser.user_id == shared.id) == 1
    # the card was deleted at the gateway, then here; a later removal finds it removed
    assert result.pay_methods == {"deleted_at_gateway": [r.pay_method_id], "local": [], "erased_locally_only": []}
    assert count(session, PayMethod, PayMethod.client_id == r.client_id) == 0
    assert remove_pay_method(session, r.pay_method_id, gateway_for=gateway_for, now=NOW).outcome == "already_removed"
    # emails: the unsent one is skipped with the reason, the log keeps only that one went
    queued = session.scalars(select(OutboxEmail).where(OutboxEmail.client_id == r.client_id,
                                                       OutboxEmail.status == "skipped")).all()
    assert [(e.last_error, e.context) for e in queued] == [(SKIP_REASON, "{}")]
    logs = session.scalars(select(EmailLog).where(EmailLog.client_id == r.client_id)).all()
    assert [(e.template, e.subject, e.body_text, e.to_address) for e in logs] == [
        ("invoice_created", "[anonymised]", "", client.email)]
    # export records go (their files are removed by the job after the commit)
    assert result.export_files == [f"client-{r.client_id}-old.json"]
    assert count(session, ClientExport, ClientExport.client_id == r.client_id) == 0
    # the books: invoices (numbers, dates, lines, amounts), transactions and credit history kept
    assert invoice_facts(session, r.client_id) == {**invoices_before, r.unpaid_invoice_id: {
        **invoices_before[r.unpaid_invoice_id], "status": "Cancelled", "credit_applied": Decimal("0.0000"),
        "balance_due": Decimal("10.0000")}}
    assert money_facts(session, r.client_id)["transactions"] == money_before["transactions"]
    assert money_facts(session, r.client_id)["credit_history"] == [
        *money_before["credit_history"], (TODAY, Decimal("4.0000"))], "only the close's returned credit is new"
    # and the record, in job_receipts, says what was done
    record = json.loads(session.scalar(select(JobReceipt.result).where(
        JobReceipt.key == f"anonymise_client:client:{r.client_id}")))
    assert record["changed"]["users"] == 1 and record["changed"]["email_log"] == 1
    # nothing of the other client changed
    assert client_document_of(session, other.client_id) == other_before


def test_the_export_after_shows_no_personal_data(session):
    # Given an anonymised client
    r = client_with_every_record(session, tag="a", **PROFILE)
    settle_owed_invoices(session, r.client_id)
    session.commit()
    before = json.dumps(client_document_of(session, r.client_id))
    assert all(value in before for value in PERSONAL), "the planted data is in the export before"
    anonymise(session, r.client_id)
    session.commit()

    # When its data is exported
    after = json.dumps(client_document_of(session, r.client_id))

    # Then none of the personal data is in it, but the invoices and transactions are
    assert [value for value in PERSONAL if value in after] == []
    document = json.loads(after)
    assert len(document["invoices"]) == 4 and len(document["transactions"]) == 2
    assert document["pay_methods"] == [] and document["contacts"] == []


def test_statements_and_revenue_stay_true(session):
    # Given a client who owes nothing, with its statement and summary figures
    r = client_with_every_record(session, **PROFILE)
    settle_owed_invoices(session, r.client_id)
    session.commit()
    statement_before = statement_rows(session, r.client_id)
    summary_before = summary_figures(session, r.client_id)

    # When it is anonymised
    anonymise(session, r.client_id)
    session.commit()
    session.expire_all()

    # Then every statement row and every money figure is the same
    assert statement_rows(session, r.client_id) == statement_before
    assert summary_figures(session, r.client_id) == summary_before


def test_a_second_run_is_already_anonymised_and_changes_nothing(session):
    # Given an anonymised client
    r = client_with_every_record(session)
    session.commit()
    first = anonymise(session, r.client_id, allow_unpaid=True)
    session.commit()
    notes = count(session, ClientNote)

    # When it is anonymised again (even without allowing unpaid invoices)
    again = anonymise(session, r.client_id)
    session.commit()

    # Then the first run's record is the answer, no gateway is asked, nothing is added
    assert again.outcome == "already_anonymised"
    assert (again.anonymised_at[:19], again.pay_methods, again.changed) == (
        first.anonymised_at[:19], first.pay_methods, first.changed)
    assert again.export_files == first.export_files, "a redelivery still knows which files to remove"
    assert TEST_GATEWAY.deletion_calls == 1 and count(session, ClientNote) == notes
    assert count(session, JobReceipt, JobReceipt.actor == "anonymise_client") == 1


def test_pay_methods_the_gateway_will_not_delete_are_erased_here_and_listed(session):
    # Given a client with a local card, a card the gateway refuses to delete and one at a
    # gateway that is unreachable
    c = f.client(session)
    local = f.card(session, c, type="CreditCard", gateway_name="", gateway_token="", encrypted_data=b"x")
    refused = f.card(session, c, gateway_token="tok_refuse_1", card_last_four="1111", is_default=False)
    down = f.card(session, c, gateway_token="tok_unavailable_2", card_last_four="2222", is_default=False)
    session.commit()

    # When the client is anonymised
    result = anonymise(session, c.id)
    session.commit()

    # Then all three are erased; the two left at their gateway are listed with its words
    assert count(session, PayMethod) == 0
    assert result.pay_methods["local"] == [local.id]
    assert [(m["pay_method_id"], m["last_four"], m["remote"]) for m in result.pay_methods["erased_locally_only"]] == [
        (refused.id, "1111", "refused"), (down.id, "2222", "error")]
    assert "temporarily unavailable" in result.pay_methods["erased_locally_only"][1]["message"]


def test_unsent_emails_are_skipped_and_never_delivered(session):
    # Given a queued and a failed email of the client
    c = f.client(session, email="ada@home.example")
    queued = OutboxEmail(client_id=c.id, template="client_email", status="queued", context='{"subject": "Hi Ada"}')
    failed = OutboxEmail(client_id=c.id, template="client_email", status="failed", context='{"subject": "Hi"}')
    session.add_all([queued, failed])
    session.commit()

    # When the client is anonymised, then the delivery job reaches them
    anonymise(session, c.id)
    session.commit()
    mailer = MemoryMailer()
    batch = deliver_emails(session, [queued.id, failed.id], mailer, sender="billing@example.com", now=NOW)

    # Then nothing was sent and nothing logged
    assert [r.status for r in batch.results] == ["skipped", "skipped"]
    assert mailer.sent == [] and count(session, EmailLog) == 0


def test_concurrent_anonymisations_on_postgresql_act_once(pg_engine, pg_session):
    # Given a client with a card at the gateway
    r = client_with_every_record(pg_session)
    pg_session.commit()

    # When three workers anonymise it at the same moment
    outcomes = race(pg_engine, *[lambda s: anonymise(s, r.client_id, allow_unpaid=True).outcome] * 3)

    # Then one did it, the others found it done; the gateway and the close acted once
    assert sorted(outcomes) == ["already_anonymised", "already_anonymised", "anonymised"]
    assert TEST_GATEWAY.deletion_calls == 1
    assert count(pg_session, ClientNote, ClientNote.client_id == r.client_id) == 1
    assert count(pg_session, CreditHistory, CreditHistory.client_id == r.client_id) == 3, "credit returned once"


# --- what the tests compare ---------------------------------------------------------------------

def invoice_facts(session: Session, client_id: int) -> dict[int, dict]:
    out = {}
    for inv in session.scalars(select(Invoice).where(Invoice.client_id == client_id)):
        out[inv.id] = {"number": inv.number, "status": inv.status, "date_created": inv.date_created,
                       "date_due": inv.date_due, "total": inv.total, "tax1": inv.tax1, "subtotal": inv.subtotal,
                       "credit_applied": inv.credit_applied, "balance_due": inv.balance_due,
                       "items": sorted((i.description, i.amount) for i in session.scalars(
                           select(InvoiceItem).where(InvoiceItem.invoice_id == inv.id)))}
    return out


def money_facts(session: Session, client_id: int) -> dict[str, list]:
    transactions = session.scalars(select(Transaction).where(Transaction.client_id == client_id))
    return {"transactions": sorted((t.transaction_id, t.amount_in, t.fees, t.amount_out, t.description)
                                   for t in transactions),
            "credit_history": [(h.date, h.amount) for h in session.scalars(
                select(CreditHistory).where(CreditHistory.client_id == client_id).order_by(CreditHistory.id))]}


def client_document_of(session: Session, client_id: int) -> dict:
    session.expire_all()
    document = client_document(session, session.get(Client, client_id), now=NOW)
    return document


def statement_rows(session: Session, client_id: int) -> tuple:
    statement = account_statement(session, client_id, date(2025, 1, 1), date(2026, 12, 31))
    return (statement.opening_balance, statement.closing_balance,
            tuple((row.type, row.date, row.description, row.credit, row.debit, row.balance) for row in statement.rows))


def summary_figures(session: Session, client_id: int) -> tuple:
    summary = client_summary(session, client_id)
    return (tuple(asdict(s) for s in summary.invoices), summary.gross_revenue, summary.client_expenses,
            summary.credit_balance)


def test_no_text_column_of_the_whole_database_keeps_the_clients_data(session):
    from sqlalchemy import String, Text

    from billingworker.domain.failures import ClientFailure, record_failures
    from billingworker.domain.models import Base, Client, Invoice, OutboxEmail, Service

    # Given a client with every record, its data also quoted where the worker wrote it: a refused
    # phone number (job_failures), a greylisted then sent email (last_error), a parked reason,
    # and its services' notes and login
    r = client_with_every_record(session, tag="a", phone_number="+44 20 7946 0958 ext ZZ99")
    session.execute(update(Invoice).where(Invoice.client_id == r.client_id,
                                          Invoice.status.in_(["Unpaid", "Payment Pending"]))
                    .values(status="Paid", balance_due=0))
    record_failures(session, [ClientFailure(r.client_id, "phone_number", "+44 20 7946 0958 ext ZZ99",
                                            "is not a phone number")],
                    actor="normalize_phone_numbers", message_id="m1", now=NOW)
    session.add(OutboxEmail(client_id=r.client_id, template="invoice_created", context="{}", status="sent",
                            sent_at=NOW, last_error="SMTP 450 <a@client.example>: greylisted"))
    session.execute(update(Client).where(Client.id == r.client_id)
                    .values(parked_reason="apply_late_fees: about a@client.example"))
    session.execute(update(Service).where(Service.client_id == r.client_id)
                    .values(notes="Ada Lovelace's birthday", username="adalovelace"))
    session.commit()

    # When the client is anonymised
    anonymise_client(session, r.client_id, gateway_for=gateway_for, as_of=TODAY, now=NOW)
    session.commit()

    # Then no text column of any table still holds its phone, its email address or its name
    needles = ["7946 0958", "a@client.example", "Lovelace", "adalovelace"]
    hits = []
    for table in Base.metadata.sorted_tables:
        columns = [c.name for c in table.columns if isinstance(c.type, String | Text)]
        for row in session.execute(select(table)).mappings() if columns else ():
            hits += [(table.name, name, needle) for name in columns for needle in needles
                     if isinstance(row[name], str) and needle in row[name]]
    assert hits == []
