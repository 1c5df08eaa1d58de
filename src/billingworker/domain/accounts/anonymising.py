"""Anonymising a client (SPEC §12, issue 12): the personal data goes, the fiscal records stay.

Replaced by neutral values or erased: the client's names, company, addresses, email, phone,
tax id, admin notes and last-login trail; its contacts and dated notes (deleted); its users'
logins (a user of no other client: email, names, password and security answer erased, reset
tokens deleted; a user shared with another client: only unlinked); its stored pay methods
(``pay_method_removal``: asked at the gateway, erased here whatever it answers); the subjects
of its tickets and quotes and the titles of its files; the bodies, subjects and addresses of its
email log; its export records (the files go after the commit). Its unsent emails are skipped.

Kept as they are, because the books need them (SPEC §12): invoices (numbers, dates, lines,
amounts, tax, notes), transactions, credit history, orders, the things billed (services,
addons, domains: they name the accounts on servers and registrars), the country (the place of
supply of the invoices' tax), and the worker's own history (module commands, job failures).

The client ends Closed, by the very rules of ``closing.close_client``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import date, datetime

from sqlalchemy import delete, exists, select, update
from sqlalchemy.orm import Session, aliased

from ...db import for_update
from ..errors import Conflict, NotFound
from ..models import (
    Addon,
    CancelRequest,
    Client,
    ClientExport,
    ClientFile,
    ClientNote,
    ClientUser,
    Contact,
    Domain,
    EmailLog,
    Invoice,
    InvoiceStatus,
    JobFailure,
    JobReceipt,
    OutboxEmail,
    OutboxStatus,
    PasswordResetToken,
    PayMethod,
    Quote,
    Service,
    Ticket,
    User,
)
from ..payments import pay_method_removal
from ..payments.pay_method_removal import GatewayCallFailed, GatewayFor, PayMethodRemoval
from . import closing

ACTOR = "anonymise_client"
#: Invoices that are still owed: an anonymisation waits for them unless told otherwise.
OWED_STATUSES = (InvoiceStatus.UNPAID, InvoiceStatus.PAYMENT_PENDING, InvoiceStatus.COLLECTIONS)
#: What replaces a name, a subject or a title.
ANONYMISED = "Anonymised"
REDACTED = "[anonymised]"
#: Why an unsent email was skipped (``email_outbox.last_error``).
SKIP_REASON = "skipped: the client was anonymised (its personal data is erased; the email is not sent)"
#: Emails not yet sent: skipped. ``sending`` too: a worker that is handing one to the mail server
#: right now finds it no longer ``sending`` and writes no log row (its copy may still go out).
_UNSENT = (OutboxStatus.QUEUED, OutboxStatus.SENDING, OutboxStatus.FAILED)
#: The client's profile fields erased, with their neutral value (``country`` is kept, see above).
_ERASED_PROFILE = {"first_name": ANONYMISED, "last_name": "", "company_name": "", "address1": "", "address2": "",
                   "city": "", "state": "", "postcode": "", "phone_number": "", "tax_id": "", "notes": "",
                   "last_login_at": None, "last_login_ip": "", "last_login_host": "", "parked_reason": ""}


def anonymised_email(kind: str, row_id: int) -> str:
    """``anonymised-<kind>-<id>@anonymised.invalid``: unique per row (``users.email`` is unique)
    and undeliverable (``.invalid`` is reserved, RFC 2606), so nothing can reach anyone."""
    return f"anonymised-{kind}-{row_id}@anonymised.invalid"


def anonymisation_key(client_id: int) -> str:
    """The ``job_receipts`` key of the anonymisation record (what was erased, when)."""
    return f"{ACTOR}:client:{client_id}"


@dataclass
class AnonymisationResult:
    client_id: int
    #: "anonymised", or "already_anonymised" (the client's ``anonymised_at`` was set)
    outcome: str
    anonymised_at: str | None = None
    #: What the close did (``closing.ClosingResult.as_dict``): with ``allow_unpaid``, the Unpaid
    #: invoices it cancelled.
    closing: dict = field(default_factory=dict)
    #: Rows changed (or deleted) per table.
    changed: dict[str, int] = field(default_factory=dict)
    #: Pay methods erased, by how: "deleted_at_gateway" (ids), "local" (ids: nothing remote),
    #: "erased_locally_only" (stored at a gateway that refused, was not active or failed: the
    #: token may still exist there; each with gateway, last four and the gateway's message).
    pay_methods: dict = field(default_factory=dict)
    #: Export files (names inside EXPORTS_DIR) the caller removes from disk after the commit.
    export_files: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def anonymise_client(session: Session, client_id: int, *, allow_unpaid: bool = False, gateway_for: GatewayFor,
                     as_of: date, now: datetime) -> AnonymisationResult:
    """Replace the client's personal data, keep its fiscal records, close it; record it all.

    Locks the client row first (then what ``close_client`` locks, then the pay methods, users and
    emails), so two runs are serialised: the second finds ``anonymised_at`` set and answers
    "already_anonymised" with the first run's record, calling no gateway. Raises ``NotFound``
    for an unknown client, ``Conflict`` (nothing changed) while an invoice is Unpaid, Payment
    Pending or in Collections, unless ``allow_unpaid``. The gateways are called while the locks
    are held; a rollback after a gateway deleted a token is safe (asking again answers
    "deleted"). The caller commits, then removes ``export_files``.
    """
    client = session.execute(for_update(select(Client).where(Client.id == client_id))).scalar()
    if client is None:
        raise NotFound("client_id", client_id, "client")
    if client.anonymised_at is not None:
        return _already(session, client)
    if not allow_unpaid:
        _refuse_while_owed(session, client_id)
    result = AnonymisationResult(client_id, "anonymised", anonymised_at=now.isoformat())
    result.closing = closing.close_client(session, client_id, as_of=as_of).as_dict()
    result.pay_methods = _erase_pay_methods(session, client_id, gateway_for, now=now)
    changed = result.changed
    changed["pay_methods"] = sum(len(v) for v in result.pay_methods.values())
    changed.update(_anonymise_users(session, client_id))
    changed["contacts"] = session.execute(delete(Contact).where(Contact.client_id == client_id)).rowcount
    changed["client_notes"] = session.execute(delete(ClientNote).where(ClientNote.client_id == client_id)).rowcount
    for model, column in ((Ticket, Ticket.subject), (Quote, Quote.subject), (ClientFile, ClientFile.title)):
        changed[model.__tablename__] = session.execute(
            update(model).where(model.client_id == client_id).values({column: REDACTED})).rowcount
    changed.update(_erase_free_text(session, client_id))
    changed.update(_silence_emails(session, client_id, anonymised_email("client", client_id)))
    result.export_files = list(session.scalars(
        select(ClientExport.filename).where(ClientExport.client_id == client_id).order_by(ClientExport.id)))
    changed["client_exports"] = session.execute(
        delete(ClientExport).where(ClientExport.client_id == client_id)).rowcount
    session.execute(update(Client).where(Client.id == client_id).values(
        **_ERASED_PROFILE, email=anonymised_email("client", client_id), anonymised_at=now, updated_at=now))
    session.add(ClientNote(client_id=client_id, created_at=now,
                           note=f"Personal data anonymised on {as_of.isoformat()} (job {ACTOR}); "
                                "invoices, transactions and credit history kept."))
    result.changed = {k: v for k, v in changed.items() if v}
    _record(session, client_id, result, now)
    session.expire(client)
    return result


def _record(session: Session, client_id: int, result: AnonymisationResult, now: datetime) -> None:
    """Write the anonymisation record (or overwrite one left by a deleted client whose id SQLite
    handed out again)."""
    key, payload = anonymisation_key(client_id), json.dumps(result.as_dict())
    if not session.execute(update(JobReceipt).where(JobReceipt.key == key).values(result=payload,
                                                                                created_at=now)).rowcount:
        session.add(JobReceipt(key=key, actor=ACTOR, result=payload, created_at=now))
    session.flush()


def _already(session: Session, client: Client) -> AnonymisationResult:
    receipt = session.execute(select(JobReceipt.result).where(JobReceipt.key == anonymisation_key(client.id))).scalar()
    before = json.loads(receipt) if receipt is not None else {}
    return AnonymisationResult(client.id, "already_anonymised", anonymised_at=client.anonymised_at.isoformat(),
                               closing=before.get("closing", {}), changed=before.get("changed", {}),
                               pay_methods=before.get("pay_methods", {}),
                               export_files=before.get("export_files", []))


def _refuse_while_owed(session: Session, client_id: int) -> None:
    owed = session.execute(select(Invoice.id, Invoice.number, Invoice.status).where(
        Invoice.client_id == client_id, Invoice.status.in_(OWED_STATUSES)).order_by(Invoice.id)).all()
    if owed:
        shown = ", ".join(f"#{row.number} ({row.status})" if row.number is not None else f"id {row.id} ({row.status})"
                          for row in owed[:10])
        more = f" and {len(owed) - 10} more" if len(owed) > 10 else ""
        raise Conflict(f"client {client_id} still owes {len(owed)} invoice(s): {shown}{more}; settle or cancel "
                       "them first, or send allow_unpaid=true (Unpaid ones are then cancelled, as a close does)")


def _erase_pay_methods(session: Session, client_id: int, gateway_for: GatewayFor, *,
                       now: datetime) -> dict[str, list]:
    """Erase every stored pay method; one stored at a gateway is asked to be deleted there first
    (the same step as ``remove_pay_method``), and is erased here whatever the gateway answers:
    the erasure does not wait for a gateway. Each removal leaves its ``remove_pay_method``
    receipt, so a later removal request answers "already_removed"."""
    out: dict[str, list] = {"deleted_at_gateway": [], "local": [], "erased_locally_only": []}
    methods = session.execute(for_update(select(PayMethod).where(PayMethod.client_id == client_id)
                                         .order_by(PayMethod.id))).scalars().all()
    for pm in methods:
        try:
            answer = pay_method_removal.ask_gateway_to_delete(pm, gateway_for)
            remote, message = answer.remote, answer.message
        except GatewayCallFailed as exc:
            remote, message = "error", exc.message
        if remote == "deleted":
            out["deleted_at_gateway"].append(pm.id)
        elif remote == "not_needed":
            out["local"].append(pm.id)
        else:
            out["erased_locally_only"].append({"pay_method_id": pm.id, "gateway": pm.gateway_name,
                                               "last_four": pm.card_last_four, "remote": remote,
                                               "message": message})
        removal = PayMethodRemoval(pm.id, "removed", client_id=client_id, remote=remote,
                                   message=f"anonymise_client: {message}" if message else "anonymise_client")
        session.execute(update(PayMethod).where(PayMethod.id == pm.id).values(is_default=False))
        pay_method_removal.erase_pay_method(session, pm, removal)
        pay_method_removal.remember_removal(session, removal, now=now)
    return out


def _anonymise_users(session: Session, client_id: int) -> dict[str, int]:
    """Users of this client only: login erased (email replaced, names, password and security
    answer emptied, last login forgotten), reset tokens deleted; the link stays. Users shared
    with another client are that client's login too: only their link to this client goes.
    The users are locked, so a concurrent invitation to another client waits."""
    link = aliased(ClientUser)
    rows = session.execute(
        select(User.id, exists().where(link.user_id == User.id, link.client_id != client_id).label("shared"))
        .join(ClientUser, ClientUser.user_id == User.id).where(ClientUser.client_id == client_id)
        .order_by(User.id).with_for_update()).all()
    own = [row.id for row in rows if not row.shared]
    shared = [row.id for row in rows if row.shared]
    for user_id in own:
        session.execute(update(User).where(User.id == user_id).values(
            email=anonymised_email("user", user_id), first_name=ANONYMISED, last_name="", password_hash="",
            security_question="", security_answer_hash="", last_login_at=None))
    tokens = (session.execute(delete(PasswordResetToken).where(PasswordResetToken.user_id.in_(own))).rowcount
              if own else 0)
    unlinked = session.execute(delete(ClientUser).where(ClientUser.client_id == client_id,
                                                        ClientUser.user_id.in_(shared))).rowcount if shared else 0
    return {"users": len(own), "client_users": unlinked, "password_reset_tokens": tokens}


def _erase_free_text(session: Session, client_id: int) -> dict[str, int]:
    """Free text that may hold the client's words or data, beside the fiscal records: the notes
    and logins of its services, addons and domains, its cancellation requests' reasons, and the
    reasons of the worker's failure rows (a refused phone number, an address is quoted there;
    the rows stay, with their job, field and error, for the operators' history)."""
    changed = {}
    for model in (Service, Addon, Domain):
        values = {"notes": ""} if model is not Service else {"notes": "", "username": ""}
        changed[f"{model.__tablename__}_notes"] = session.execute(
            update(model).where(model.client_id == client_id).values(values)).rowcount
    changed["cancel_requests"] = session.execute(update(CancelRequest).where(CancelRequest.service_id.in_(
        select(Service.id).where(Service.client_id == client_id))).values(reason=REDACTED)).rowcount
    changed["job_failures"] = session.execute(
        update(JobFailure).where(JobFailure.client_id == client_id).values(reason=REDACTED)).rowcount
    return changed


def _silence_emails(session: Session, client_id: int, address: str) -> dict[str, int]:
    """Unsent emails of the client are skipped with a reason; every outbox row's context (which
    may hold a message an admin wrote) is emptied; the email log keeps that an email of a template
    went at a time, with its subject, bodies and addresses redacted.

    The outbox rows are locked first (the lock delivery takes to claim or mark a row), so an email
    being sent now is either marked sent before (and its log row is redacted below) or finds
    itself skipped and writes no log row.
    """
    session.execute(select(OutboxEmail.id).where(OutboxEmail.client_id == client_id)
                    .order_by(OutboxEmail.id).with_for_update()).all()
    skipped = session.execute(update(OutboxEmail).where(
        OutboxEmail.client_id == client_id, OutboxEmail.status.in_(_UNSENT)).values(
        status=OutboxStatus.SKIPPED, last_error=SKIP_REASON)).rowcount
    session.execute(update(OutboxEmail).where(OutboxEmail.client_id == client_id).values(context="{}"))
    # A mail server's refusal quotes the address ("450 <a@client.example> greylisted").
    session.execute(update(OutboxEmail).where(OutboxEmail.client_id == client_id,
                                              OutboxEmail.last_error != SKIP_REASON).values(last_error=""))
    redacted = session.execute(update(EmailLog).where(EmailLog.client_id == client_id).values(
        subject=REDACTED, body_text="", body_html="", to_address=address, cc="")).rowcount
    return {"email_outbox": skipped, "email_log": redacted}
