"""Emails an admin sends to a client from the profile (SPEC §14): a named template, or a message
the admin wrote, rendered in Jinja2's sandbox.

An admin-written subject and body are Jinja2 templates over a plain dict of the client's fields
(``{{ first_name }}``, ``{{ company_name }}``, ``{{ credit_balance }}``...; no ORM object reaches
the template). They are rendered by ``ImmutableSandboxedEnvironment``: ``{{ ''.__class__ }}``
and friends raise ``SecurityError``, which becomes a ``ValidationError`` naming the field. The
body is plain text; the HTML part is built from the rendered text by the ``client_message``
file template with autoescaping, so a client called ``<script>`` (or an admin typing ``<b>``)
shows as text.

The message is rendered once by the job (to refuse a broken one before anything is written)
and again at delivery (``render_client_message``), with the client as it is then. Both renders
run under the sandbox's budget (``message_sandbox``: steps, size, depth, 2 s of wall clock).
The job does it in three steps so that no transaction is open while an admin's text renders
(on SQLite a transaction holds the writer lock): ``prepare_client_email`` reads, in its own
transaction, everything the render needs; ``check_client_email`` renders, reading nothing;
``record_client_email`` writes the outbox row in a second transaction.
``send_client_email`` runs the three on one session (scripts and tests).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..errors import NotFound, ValidationError
from ..models import Client, Currency, EmailTemplate, OutboxEmail
from ..settings import BillingSettings, load_settings
from .emails import (
    CLIENT_MESSAGE_TEMPLATE,
    COPY_TO_GENERAL_CONTACTS,
    PASSWORD_RESET_TEMPLATE,
    TEMPLATES,
    RenderedEmail,
    general_contacts,
    load_context,
    money_formatter,
    render,
    render_from_ids,
)
from .message_sandbox import RenderBudget, render_written
from .outbox import QueuedEmail, queue_emails

#: ``email_templates.subject`` is VARCHAR(500), ``email_templates.name`` VARCHAR(100).
MAX_SUBJECT_LENGTH = 500
MAX_NAME_LENGTH = 100
#: Longest admin-written body, in characters (the rendered text: message_sandbox.MAX_RENDERED_LENGTH).
MAX_BODY_LENGTH = 65_536
#: File templates that cannot be sent by name from here: the wrapper of written messages, and
#: the reset email (it needs a token, see ``password_reset``).
NOT_BY_NAME = frozenset({CLIENT_MESSAGE_TEMPLATE, PASSWORD_RESET_TEMPLATE})
ClientEmailOutcome = Literal["queued", "already_queued"]


@dataclass(frozen=True)
class ClientEmail:
    """What ``send_client_email`` did; ``email_ids`` are to be sent after the commit."""

    outcome: ClientEmailOutcome
    template: str
    email_ids: tuple[int, ...] = ()
    #: The ``email_templates`` row the message was saved as (``save_message``), if any.
    saved_template_id: int | None = None


@dataclass(frozen=True)
class MessageInputs:
    """What rendering a written message needs, read from the database beforehand: plain values."""

    values: dict[str, Any]
    settings: BillingSettings
    to: list[str]
    cc: list[str]
    client_id: int


@dataclass(frozen=True)
class ClientEmailDraft:
    """A request ``prepare_client_email`` accepted: the outbox row to write, and for a written or
    saved message the text to render and what it is rendered with. No ORM object."""

    client_id: int
    template: str
    context: dict[str, Any]
    dedupe_key: str
    message: MessageInputs | None = None
    #: (name, field) to save the written message as, with ``save_message``.
    save_as: tuple[str, str] | None = None


def client_fields(session: Session, client: Client) -> dict[str, Any]:
    """The client as plain values for a written message: strings and numbers only."""
    currency = session.get(Currency, client.currency_id) if client.currency_id is not None else None
    full_name = " ".join(part for part in (client.first_name, client.last_name) if part)
    return {
        "client_id": client.id,
        "first_name": client.first_name or "",
        "last_name": client.last_name or "",
        "full_name": full_name,
        "company_name": client.company_name or "",
        "email": client.email or "",
        "address1": client.address1 or "",
        "address2": client.address2 or "",
        "city": client.city or "",
        "state": client.state or "",
        "postcode": client.postcode or "",
        "country": client.country or "",
        "phone_number": client.phone_number or "",
        "status": client.status or "",
        "signup_date": client.signup_date.isoformat() if client.signup_date else "",
        "currency": currency.code if currency is not None else "",
        "credit_balance": money_formatter(currency)(Decimal(client.credit_balance or 0)),
    }


def message_context(session: Session, client: Client, settings: BillingSettings) -> dict[str, Any]:
    """The whole context of a written message: the client's fields at the top level and as
    ``client``, plus ``settings.company_name`` and ``settings.system_url`` (plain dicts)."""
    fields = client_fields(session, client)
    return {**fields, "client": dict(fields),
            "settings": {"company_name": settings.company_name, "system_url": settings.system_url}}


def _paragraphs(text: str) -> list[list[str]]:
    """Blank-line separated paragraphs, each a list of lines (the HTML part's ``<p>`` and ``<br>``)."""
    paragraphs: list[list[str]] = [[]]
    for line in text.strip().splitlines():
        if line.strip():
            paragraphs[-1].append(line.rstrip())
        elif paragraphs[-1]:
            paragraphs.append([])
    return [p for p in paragraphs if p]


def message_inputs(session: Session, client: Client, settings: BillingSettings) -> MessageInputs:
    """Read what a written message to ``client`` is rendered with. Reads only."""
    email = (client.email or "").strip()
    return MessageInputs(values=message_context(session, client, settings), settings=settings,
                         to=[email] if email else [], cc=general_contacts(session, client.id, email),
                         client_id=client.id)


def render_message(subject: str, body: str, inputs: MessageInputs) -> RenderedEmail:
    """Render a written subject and body, and lay them out (``client_message`` file template).

    Reads nothing: call it with no transaction open. The subject and body share one budget.
    Raises ``ValidationError`` naming ``subject`` or ``body``.
    """
    budget = RenderBudget()
    rendered_subject = " ".join(render_written("subject", subject, inputs.values, budget).split())
    if not rendered_subject:
        raise ValidationError("subject", subject, "renders to an empty subject")
    text = render_written("body", body, inputs.values, budget)
    return render(CLIENT_MESSAGE_TEMPLATE, {
        "message_subject": rendered_subject,
        "message_text": text.strip(),
        "paragraphs": _paragraphs(text),
        "settings": inputs.settings,
        "client": inputs.values,
    }, to=inputs.to, cc=inputs.cc, client_id=inputs.client_id)


def render_client_message(session: Session, outbox: OutboxEmail,
                          settings: BillingSettings | None = None) -> RenderedEmail:
    """Render a ``client_message`` outbox row (an admin-written or saved message). Reads only.

    To the client's email, copied to the contacts that receive general emails.
    """
    context = load_context(outbox)
    if not isinstance(context.get("subject"), str) or not isinstance(context.get("body"), str):
        raise ValidationError("email_outbox.context", outbox.id, "is not a client message context")
    client = session.get(Client, outbox.client_id) if outbox.client_id is not None else None
    if client is None:
        raise NotFound("client_id", outbox.client_id, "client")
    settings = settings if settings is not None else load_settings(session)
    return render_message(context["subject"], context["body"], message_inputs(session, client, settings))


def _written_text(field: str, value: Any, max_length: int) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(field, value, "must be a non-empty string")
    if len(value) > max_length:
        raise ValidationError(field, value[:40] + "...", f"is longer than {max_length} characters")
    return value.strip()


def _save_message(session: Session, field: str, name: str, subject: str, body: str, now: datetime) -> int:
    """Save the message as ``name``; an existing row with the same text is reused (a no-op),
    one with another text is a ``ValidationError`` (nothing is overwritten)."""
    def same_or_refuse(row: EmailTemplate) -> int:
        if row.subject != subject or row.body != body:
            raise ValidationError(field, name, "is already the name of a saved email template with another "
                                               "message: choose another name")
        return row.id

    found = session.scalar(select(EmailTemplate).where(EmailTemplate.name == name))
    if found is not None:
        return same_or_refuse(found)
    try:
        with session.begin_nested():
            row = EmailTemplate(name=name, subject=subject, body=body, created_at=now)
            session.add(row)
            session.flush()
            return row.id
    except IntegrityError:
        # Saved by a concurrent request meanwhile (the unique name is the last guard).
        return same_or_refuse(session.scalar(select(EmailTemplate).where(EmailTemplate.name == name)))


def prepare_client_email(session: Session, client_id: int, *, template: str | None = None,
                         subject: str | None = None, body: str | None = None, save_message: bool = False,
                         save_as: str | None = None, dedupe_key: str, now: datetime) -> ClientEmail | ClientEmailDraft:
    """Check a request and read what sending it needs. Reads only; the caller may end its
    transaction before ``check_client_email`` renders.

    Returns ``ClientEmail("already_queued")`` when the outbox already holds ``dedupe_key``.
    Raises ``ValidationError`` (``NotFound``) for a bad request. A file template (ours, not an
    admin's) is rendered here, to refuse one that needs more than the client.
    """
    if now.tzinfo is None:
        raise ValidationError("now", now, "must be timezone-aware")
    if session.scalar(select(OutboxEmail.id).where(OutboxEmail.dedupe_key == dedupe_key)) is not None:
        return ClientEmail("already_queued", template or CLIENT_MESSAGE_TEMPLATE)
    client = session.get(Client, client_id)
    if client is None:
        raise NotFound("client_id", client_id, "client")
    if not (client.email or "").strip():
        raise ValidationError("client_id", client_id, "has no email address")

    if save_as is not None and not save_message:
        raise ValidationError("save_as", save_as, "is only used with save_message=true")
    if template is not None:
        template = _written_text("template", template, MAX_NAME_LENGTH)
        if subject is not None or body is not None:
            raise ValidationError("template", template, "give either a template, or a subject and a body, not both")
        if save_message:
            raise ValidationError("save_message", save_message, "only a written subject and body can be saved")
        if template in TEMPLATES and template not in NOT_BY_NAME:
            context = {"copy_to": COPY_TO_GENERAL_CONTACTS}
            try:
                render_from_ids(session, OutboxEmail(template=template, client_id=client.id,
                                                     context=json.dumps(context, sort_keys=True)))
            except ValidationError as exc:
                if exc.field == "context":
                    raise ValidationError("template", template, "needs more than the client (an invoice...): "
                                                                "it cannot be sent from the client profile") from None
                raise
            return ClientEmailDraft(client.id, template, context, dedupe_key)
        saved = session.scalar(select(EmailTemplate).where(EmailTemplate.name == template))
        if saved is None:
            raise ValidationError("template", template, "is neither an email template file nor a saved template")
        context = {"subject": saved.subject, "body": saved.body, "saved_template": saved.name}
        return ClientEmailDraft(client.id, CLIENT_MESSAGE_TEMPLATE, context, dedupe_key,
                                message=message_inputs(session, client, load_settings(session)))

    written = (_written_text("subject", subject, MAX_SUBJECT_LENGTH), _written_text("body", body, MAX_BODY_LENGTH))
    saving = None
    if save_message:
        saving = ((_written_text("save_as", save_as, MAX_NAME_LENGTH), "save_as") if save_as is not None
                  else (written[0][:MAX_NAME_LENGTH].strip(), "subject"))
    return ClientEmailDraft(client.id, CLIENT_MESSAGE_TEMPLATE, {"subject": written[0], "body": written[1]},
                            dedupe_key, message=message_inputs(session, client, load_settings(session)),
                            save_as=saving)


def check_client_email(draft: ClientEmailDraft) -> None:
    """Render a written or saved message as delivery will, within the sandbox's budget.

    Reads nothing: call it with no transaction open. Raises ``ValidationError`` naming
    ``subject`` or ``body`` (a breach of the budget: "exceeds the rendering budget (...)").
    """
    if draft.message is not None:
        render_message(draft.context["subject"], draft.context["body"], draft.message)


def record_client_email(session: Session, draft: ClientEmailDraft, *, now: datetime) -> ClientEmail:
    """Write the outbox row of a checked draft (and save the message, with ``save_message``)
    in the caller's transaction; the caller commits.

    One outbox row per ``dedupe_key`` (unique): a twin that wrote it first (a redelivery, a
    concurrent request) makes this one ``already_queued``, and nothing is written.
    """
    if session.scalar(select(OutboxEmail.id).where(OutboxEmail.dedupe_key == draft.dedupe_key)) is not None:
        return ClientEmail("already_queued", draft.template)
    if session.get(Client, draft.client_id) is None:  # deleted since it was read
        raise NotFound("client_id", draft.client_id, "client")
    try:
        with session.begin_nested():
            email_ids = queue_emails(session, [QueuedEmail(template=draft.template, client_id=draft.client_id,
                                                           context=draft.context, dedupe_key=draft.dedupe_key)])
    except IntegrityError:
        if session.scalar(select(OutboxEmail.id).where(OutboxEmail.dedupe_key == draft.dedupe_key)) is None:
            raise
        return ClientEmail("already_queued", draft.template)

    saved_id = None
    if draft.save_as is not None:
        name, field = draft.save_as
        saved_id = _save_message(session, field, name, draft.context["subject"], draft.context["body"],
                                 now.astimezone(UTC))
    return ClientEmail("queued", draft.template, email_ids=tuple(email_ids), saved_template_id=saved_id)


def send_client_email(session: Session, client_id: int, *, template: str | None = None, subject: str | None = None,
                      body: str | None = None, save_message: bool = False, save_as: str | None = None,
                      dedupe_key: str, now: datetime) -> ClientEmail:
    """Queue one email to a client: a file template that needs only the client, a saved
    ``email_templates`` row (by name), or a ``subject`` + ``body`` written by an admin.

    Guarantees: one outbox row per ``dedupe_key`` (unique): a redelivered or concurrent twin
    finds it and queues nothing (``already_queued``). The message is rendered once here: a
    syntax error, an unknown placeholder, a sandbox violation or a breach of the rendering
    budget is a ``ValidationError`` naming the field, and nothing is written. ``save_message``
    saves the written subject and body in ``email_templates`` as ``save_as`` (default: the
    subject, cut to 100 characters).

    The three steps on one session: the render runs inside the caller's transaction. The job
    (actors/messages.py) runs them in two transactions instead, with the render between.
    """
    draft = prepare_client_email(session, client_id, template=template, subject=subject, body=body,
                                 save_message=save_message, save_as=save_as, dedupe_key=dedupe_key, now=now)
    if isinstance(draft, ClientEmail):
        return draft
    check_client_email(draft)
    return record_client_email(session, draft, now=now)
