"""Render the emails of ``templates/emails`` (SPEC §14).

Each template is one Jinja2 file with three blocks: ``subject``, ``text`` and ``html``. The
``html`` block is rendered with autoescaping (a client named ``<script>`` stays text); the
subject and the plain-text body are rendered without it, so they show what the client typed.
Both environments use ``StrictUndefined``: a template that asks for a value the context lacks
fails loudly (as a ``ValidationError``) instead of sending an email with holes in it.

Outbox rows carry only ids (``{"invoice_id": 12}``); ``render_from_ids`` loads the rows at
delivery time, so an email always shows the invoice as it is when it is sent. Which renderer an
outbox row takes is chosen in ``rendering.py`` (``render_outbox_email``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import jinja2
from sqlalchemy import select
from sqlalchemy.orm import Session

from ..errors import NotFound, ValidationError
from ..models import Client, Contact, Currency, Invoice, InvoiceItem, OutboxEmail, Transaction
from ..money import format_money
from ..settings import BillingSettings, load_settings

TEMPLATE_SUFFIX = ".j2"
#: Rendered by their own modules (``password_reset``, ``client_email``), not from ids alone.
PASSWORD_RESET_TEMPLATE = "password_reset"
CLIENT_MESSAGE_TEMPLATE = "client_message"
#: ``{"copy_to": "general_contacts"}`` in an outbox context: copy the email to the client's
#: contacts that receive general emails (emails an admin sends from the client profile).
COPY_TO_GENERAL_CONTACTS = "general_contacts"


def template_dir() -> Path:
    """Where the templates are: inside the installed package first (the wheel force-includes
    ``templates/`` as ``billingworker/templates``), else ``templates/emails`` at the repo root."""
    package = Path(__file__).resolve().parents[2]  # billingworker/domain/messaging/emails.py
    packaged = package / "templates" / "emails"
    if packaged.is_dir():
        return packaged
    return package.parents[1] / "templates" / "emails"


TEMPLATE_DIR = template_dir()

#: The names of the email templates available (file names without ``.j2``).
TEMPLATES: frozenset[str] = frozenset(
    p.name.removesuffix(TEMPLATE_SUFFIX) for p in TEMPLATE_DIR.glob(f"*{TEMPLATE_SUFFIX}") if p.is_file()
) if TEMPLATE_DIR.is_dir() else frozenset()

_loader = jinja2.FileSystemLoader(str(TEMPLATE_DIR))
_common: dict[str, Any] = {
    "loader": _loader,
    "undefined": jinja2.StrictUndefined,
    "trim_blocks": True,
    "lstrip_blocks": True,
    # The templates ship with the package and change only with a release (a worker restart):
    # checking each file's mtime at every render was a tenth of a worker's time per email.
    "auto_reload": False,
}
#: Used only for the html block.
_html_env = jinja2.Environment(autoescape=True, **_common)
#: Used for the subject and the plain-text body, which are not HTML.
_text_env = jinja2.Environment(autoescape=False, **_common)


@dataclass(frozen=True)
class RenderedEmail:
    """An email ready to be handed to a mailer. ``subject`` is always a single line."""

    template: str
    subject: str
    text: str
    html: str
    to: list[str] = field(default_factory=list)
    cc: list[str] = field(default_factory=list)
    #: The client the email is about (set by ``render_from_ids``), for the email log.
    client_id: int | None = None
    #: Secrets the message must carry but the email log must not keep (a password-reset
    #: token): each is replaced by ``[redacted]`` in the logged copy.
    log_redactions: tuple[str, ...] = ()

    def for_log(self) -> tuple[str, str, str]:
        """(subject, text, html) as the email log keeps them: with the redactions applied."""
        parts = [self.subject, self.text, self.html]
        for secret in self.log_redactions:
            if secret:
                parts = [part.replace(secret, "[redacted]") for part in parts]
        return parts[0], parts[1], parts[2]


def money_formatter(currency: Currency | None) -> Callable[[Decimal], str]:
    """``money(amount)`` for templates: ``$12.50 USD`` in the invoice's currency."""
    if currency is None:
        return lambda amount: format_money(Decimal(amount))
    prefix, suffix, minor_units = currency.prefix or "", currency.suffix or "", currency.minor_units

    def money(amount: Decimal) -> str:
        return format_money(Decimal(amount), prefix, suffix, minor_units)

    return money


def format_percent(rate: Decimal) -> str:
    """A tax rate without trailing zeros: 20.000000 -> ``20``, 8.250000 -> ``8.25``."""
    return format(Decimal(rate).normalize(), "f")


def _with_helpers(context: Mapping[str, Any]) -> dict[str, Any]:
    ctx: dict[str, Any] = {
        "money": money_formatter(context.get("currency")),
        "percent": format_percent,
    }
    ctx.update(context)
    settings = ctx.get("settings")
    # The invoice link is "{{ settings.system_url }}viewinvoice.php": an admin who typed the
    # URL without its trailing slash must not get a broken link.
    if isinstance(settings, BillingSettings) and not settings.system_url.endswith("/"):
        ctx["settings"] = replace(settings, system_url=settings.system_url + "/")
    return ctx


def _render_block(env: jinja2.Environment, template_name: str, block: str, ctx: dict[str, Any]) -> str:
    template = env.get_template(template_name + TEMPLATE_SUFFIX)
    if block not in template.blocks:
        raise ValidationError("template", template_name, f"has no {{% block {block} %}}")
    return "".join(template.blocks[block](template.new_context(ctx)))


def _check_known(template_name: str) -> None:
    if template_name not in TEMPLATES:
        raise ValidationError("template", template_name, "is not a known email template")


def render(template_name: str, context: Mapping[str, Any], *, to: Iterable[str] = (),
           cc: Iterable[str] = (), client_id: int | None = None) -> RenderedEmail:
    """Render ``template_name`` with a plain ``context`` (``money`` and ``percent`` are added
    unless given). Raises ``ValidationError`` for an unknown template or a missing value."""
    _check_known(template_name)
    ctx = _with_helpers(context)
    try:
        subject = _render_block(_text_env, template_name, "subject", ctx)
        text = _render_block(_text_env, template_name, "text", ctx)
        html = _render_block(_html_env, template_name, "html", ctx)
    except jinja2.UndefinedError as exc:
        raise ValidationError("context", template_name, f"lacks a value the template uses ({exc})") from None
    return RenderedEmail(
        template=template_name,
        subject=" ".join(subject.split()),
        text=text.strip() + "\n",
        html=html.strip() + "\n",
        to=list(to),
        cc=list(cc),
        client_id=client_id,
    )


def load_context(outbox: OutboxEmail) -> dict[str, Any]:
    """The row's context (a JSON object); ``ValidationError`` when it is not one."""
    try:
        ids = json.loads(outbox.context or "{}")
    except json.JSONDecodeError:
        ids = None
    if not isinstance(ids, dict):
        raise ValidationError("email_outbox.context", outbox.context, "is not a JSON object")
    return ids


def _invoice_contacts(session: Session, client_id: int, exclude: str,
                      cache: RenderCache | None = None) -> list[str]:
    if cache is not None and client_id in cache.invoice_contacts:
        return _distinct(cache.invoice_contacts[client_id], exclude)
    return _distinct(session.scalars(
        select(Contact.email)
        .where(Contact.client_id == client_id, Contact.invoice_emails.is_(True))
        .order_by(Contact.id)).all(), exclude)


def general_contacts(session: Session, client_id: int, exclude: str) -> list[str]:
    """The emails of the client's contacts that receive general emails, in id order, without
    ``exclude`` (the client's own address) and without duplicates."""
    return _distinct(session.scalars(
        select(Contact.email)
        .where(Contact.client_id == client_id, Contact.general_emails.is_(True))
        .order_by(Contact.id)).all(), exclude)


def _distinct(emails: Iterable[str | None], exclude: str) -> list[str]:
    """The addresses in order, trimmed, without blanks, ``exclude`` and repeats (case-insensitive)."""
    seen = {exclude.strip().lower()}
    cc: list[str] = []
    for email in emails:
        email = (email or "").strip()
        if email and email.lower() not in seen:
            seen.add(email.lower())
            cc.append(email)
    return cc


@dataclass
class RenderCache:
    """Rows shared by the emails of one delivery batch, loaded once instead of once per email.

    ``preload`` fills it for a batch of outbox rows: invoices, clients, currencies and
    transactions go into the session's identity map (``session.get`` then needs no query),
    invoice items and invoice contacts into the dicts below, and the settings are read once.
    """

    settings: BillingSettings | None = None
    #: Invoice id -> its items, ordered by id.
    items: dict[int, list[InvoiceItem]] = field(default_factory=dict)
    #: Client id -> the emails of its contacts that receive invoice emails, ordered by id.
    invoice_contacts: dict[int, list[str]] = field(default_factory=dict)
    #: The preloaded rows: the session's identity map holds objects weakly, so the cache keeps
    #: them alive for ``session.get`` to find.
    rows: list[Any] = field(default_factory=list)

    @classmethod
    def preload(cls, session: Session, rows: Iterable[OutboxEmail]) -> RenderCache:
        contexts = []
        for row in rows:
            try:
                contexts.append((row, load_context(row)))
            except ValidationError:
                continue  # the renderer refuses it with the proper error
        invoice_ids = {int(c["invoice_id"]) for _, c in contexts if isinstance(c.get("invoice_id"), int)}
        transaction_ids = {int(c["transaction_id"]) for _, c in contexts if isinstance(c.get("transaction_id"), int)}
        invoices = list(session.scalars(select(Invoice).where(Invoice.id.in_(invoice_ids)))) if invoice_ids else []
        client_ids = {r.client_id for r, _ in contexts if r.client_id} | {i.client_id for i in invoices}
        clients = list(session.scalars(select(Client).where(Client.id.in_(client_ids)))) if client_ids else []
        cache = cls(settings=load_settings(session), rows=[*invoices, *clients])
        if transaction_ids:
            cache.rows.extend(session.scalars(select(Transaction).where(Transaction.id.in_(transaction_ids))))
        currency_ids = {i.currency_id for i in invoices} | {c.currency_id for c in clients}
        currency_ids.discard(None)
        if currency_ids:
            cache.rows.extend(session.scalars(select(Currency).where(Currency.id.in_(currency_ids))))
        cache.items = {invoice_id: [] for invoice_id in invoice_ids}
        if invoice_ids:
            for item in session.scalars(select(InvoiceItem).where(InvoiceItem.invoice_id.in_(invoice_ids))
                                        .order_by(InvoiceItem.id)):
                cache.items[item.invoice_id].append(item)
        cache.invoice_contacts = {client_id: [] for client_id in client_ids}
        if client_ids:
            for client_id, email in session.execute(
                    select(Contact.client_id, Contact.email)
                    .where(Contact.client_id.in_(client_ids), Contact.invoice_emails.is_(True))
                    .order_by(Contact.id)):
                cache.invoice_contacts[client_id].append(email)
        return cache


def render_from_ids(session: Session, outbox: OutboxEmail, cache: RenderCache | None = None) -> RenderedEmail:
    """Render an outbox row of a template file: load the client, invoice (items by id), currency
    and transaction named by the ids in its context, and the installation settings.

    ``to`` is the client's email; an email about an invoice (its context has ``invoice_id``) is
    copied to the client's contacts that receive invoice emails, one with ``copy_to`` to those
    that receive general emails. ``password_reset`` and ``client_message`` rows are rendered by
    their own modules (``rendering.render_outbox_email`` chooses). Reads only; never writes.
    Raises ``ValidationError`` (unknown template, bad context) or ``NotFound`` (a row is gone).
    """
    _check_known(outbox.template)
    ids = load_context(outbox)
    # Plain values (a link, a reason...) pass through; the ids are turned into rows below.
    ctx: dict[str, Any] = dict(ids)

    invoice: Invoice | None = None
    if ids.get("invoice_id") is not None:
        invoice = session.get(Invoice, ids["invoice_id"])
        if invoice is None:
            raise NotFound("invoice_id", ids["invoice_id"])
        ctx["invoice"] = invoice
        if cache is not None and invoice.id in cache.items:
            ctx["items"] = list(cache.items[invoice.id])
        else:
            ctx["items"] = list(
                session.scalars(select(InvoiceItem).where(InvoiceItem.invoice_id == invoice.id)
                                .order_by(InvoiceItem.id))
            )

    client_id = outbox.client_id or ids.get("client_id") or (invoice.client_id if invoice else None)
    client = session.get(Client, client_id) if client_id is not None else None
    if client is None:
        raise NotFound("client_id", client_id)
    ctx["client"] = client

    currency_id = invoice.currency_id if invoice and invoice.currency_id else client.currency_id
    ctx["currency"] = session.get(Currency, currency_id) if currency_id is not None else None

    transaction: Transaction | None = None
    if ids.get("transaction_id") is not None:
        transaction = session.get(Transaction, ids["transaction_id"])
        if transaction is None:
            raise NotFound("transaction_id", ids["transaction_id"])
    ctx["transaction"] = transaction
    ctx["settings"] = cache.settings if cache is not None and cache.settings is not None else load_settings(session)

    to = [client.email.strip()] if client.email and client.email.strip() else []
    if invoice is not None:
        cc = _invoice_contacts(session, client.id, client.email or "", cache)
    elif ids.get("copy_to") == COPY_TO_GENERAL_CONTACTS:
        cc = general_contacts(session, client.id, client.email or "")
    else:
        cc = []
    return render(outbox.template, ctx, to=to, cc=cc, client_id=client.id)
