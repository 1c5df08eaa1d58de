"""Emails an admin sends to a client from the profile (SPEC §14): a named template, or a message
the admin wrote, rendered in Jinja2's sandbox.

An admin-written subject and body are Jinja2 templates over a plain dict of the client's fields
(``{{ first_name }}``, ``{{ company_name }}``, ``{{ credit_balance }}``...; no ORM object reaches
the template). They are rendered by ``ImmutableSandboxedEnvironment``: ``{{ ''.__class__ }}``
and friends raise ``SecurityError``, which becomes a ``ValidationError`` naming the field. The
body is plain text; the HTML part is built from the rendered text by the ``client_message``
file template with autoescaping, so a client called ``<script>`` (or an admin typing ``<b>``)
shows as text.

The message is rendered once inside the job (to refuse a broken one before anything is
written) and again at delivery (``render_client_message``), with the client as it is then.
"""

from __future__ import annotations

import json
import operator
import re
import string
import types
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

import jinja2
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.nodes import Concat
from jinja2.sandbox import ImmutableSandboxedEnvironment
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .emails import (
    CLIENT_MESSAGE_TEMPLATE,
    COPY_TO_GENERAL_CONTACTS,
    PASSWORD_RESET_TEMPLATE,
    TEMPLATES,
    RenderedEmail,
    general_contacts,
    money_formatter,
    render,
    render_outbox_email,
)
from .errors import NotFound, ValidationError
from .models import Client, Currency, EmailTemplate, OutboxEmail
from .outbox import QueuedEmail, queue_emails
from .settings import BillingSettings, load_settings

#: ``email_templates.subject`` is VARCHAR(500), ``email_templates.name`` VARCHAR(100).
MAX_SUBJECT_LENGTH = 500
MAX_NAME_LENGTH = 100
#: Longest admin-written body, and longest rendered subject or body, in characters.
MAX_BODY_LENGTH = 65_536
MAX_RENDERED_LENGTH = 262_144
#: File templates that cannot be sent by name from here: the wrapper of written messages, and
#: the reset email (it needs a token, see ``password_reset``).
NOT_BY_NAME = frozenset({CLIENT_MESSAGE_TEMPLATE, PASSWORD_RESET_TEMPLATE})
#: Largest ``range()`` and exponent a written message may use: enough for any letter, too
#: little to keep a worker busy for minutes.
MAX_RANGE = 1000
MAX_EXPONENT = 64
#: Largest whole number ``*`` and ``**`` may make, in bits (about 1,200 digits).
MAX_NUMBER_BITS = 4096

ClientEmailOutcome = Literal["queued", "already_queued"]


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _refuse_long(length: int) -> None:
    if length > MAX_RENDERED_LENGTH:
        raise SecurityError(f"the text would be longer than {MAX_RENDERED_LENGTH} characters")


def _ints(values: Any) -> list[int]:
    """The whole numbers among ``values`` (one level into tuples, lists and dicts)."""
    found: list[int] = []
    for value in values:
        inner = value.values() if isinstance(value, dict) else value if isinstance(value, list | tuple) else (value,)
        found.extend(v for v in inner if _whole(v))
    return found


#: A width or precision in a ``%`` or ``format`` spec (``%*d`` and ``{:{w}}`` take it from the arguments).
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0 +-]*(\*|\d*)(?:\.(\*|\d*))?")


def _check_format(fmt: str, args: Any, *, percent: bool) -> None:
    """Refuse a ``%`` or ``str.format`` whose widths could build a huge string (``%999999999s``)."""
    if percent:
        specs = ["".join(m.groups(default="")) for m in _PERCENT_SPEC.finditer(fmt)]
    else:
        try:
            specs = [spec or "" for _, _, spec, _ in string.Formatter().parse(fmt)]
        except ValueError:
            return  # a malformed format fails by itself
    for spec in specs:
        if any(len(d) > 6 or int(d) > MAX_RENDERED_LENGTH for d in re.findall(r"\d+", spec)):
            raise SecurityError(f"a width in the format is larger than {MAX_RENDERED_LENGTH}")
        if ("*" in spec or "{" in spec) and any(abs(n) > MAX_RENDERED_LENGTH for n in _ints(args)):
            raise SecurityError(f"a width given to the format is larger than {MAX_RENDERED_LENGTH}")


def _joined_length(separator: str, items: list[Any]) -> int:
    return sum(len(str(item)) for item in items) + len(separator) * max(len(items) - 1, 0)


def _check_str_call(text: str, name: str, args: tuple, kwargs: dict) -> tuple:
    """Refuse a call of a ``str`` method that would build a string over the length limit,
    before it is built; returns ``args`` (``join`` needs its iterable as a list)."""
    if name in ("ljust", "rjust", "center", "zfill"):
        _refuse_long(max([len(text), *(abs(n) for n in _ints([*args, *kwargs.values()]))]))
    elif name == "expandtabs":
        size = max([8, *(abs(n) for n in _ints([*args, *kwargs.values()]))])
        _refuse_long(len(text) + text.count("\t") * size)
    elif name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        old, new = args[0], args[1]
        found = len(text) + 1 if old == "" else text.count(old)
        if len(args) > 2 and _whole(args[2]) and args[2] >= 0:
            found = min(found, args[2])
        _refuse_long(len(text) + found * max(len(new) - len(old), 0))
    elif name == "join" and args:
        items = list(args[0])
        _refuse_long(_joined_length(text, items))
        return (items, *args[1:])
    elif name in ("format", "format_map"):
        _check_format(text, [*args, *kwargs.values()], percent=False)
    return args


class _BoundedConcat(CodeGenerator):
    """``a ~ b ~ c`` through ``environment.bounded_concat``: the length is checked before the join."""

    def visit_Concat(self, node: Concat, frame: Frame) -> None:
        self.write("environment.bounded_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


_SIZED_STR_METHODS = frozenset({"ljust", "rjust", "center", "zfill", "expandtabs", "replace", "join", "format",
                                "format_map"})


class _MessageSandbox(ImmutableSandboxedEnvironment):
    """The sandbox, with everything that can build a huge string or number bounded before it
    does: ``*`` and ``**`` (``{{ 'x' * 10**9 }}``, a number of a million digits), ``%`` and
    ``format`` widths, the padding, ``replace`` and ``join`` methods and filters. Each is refused
    (``SecurityError``) instead of eating the worker's memory and time: the length check after
    rendering comes too late for a gigabyte."""

    intercepted_binops = frozenset({"*", "**", "%", "+"})
    code_generator_class = _BoundedConcat

    @staticmethod
    def bounded_concat(values: tuple) -> str:
        parts = [str(v) for v in values]
        _refuse_long(sum(len(p) for p in parts))
        return "".join(parts)

    def wrap_str_format(self, value: Any) -> Any:
        # Called by the sandbox for every attribute or item read: wrap the str methods that size
        # their result from an argument (format and format_map also keep the sandbox's own checks).
        if not isinstance(value, types.MethodType | types.BuiltinMethodType) \
                or not isinstance(getattr(value, "__self__", None), str) or value.__name__ not in _SIZED_STR_METHODS:
            return super().wrap_str_format(value)
        method = super().wrap_str_format(value) or value
        text, name = value.__self__, value.__name__

        def bounded(*args: Any, **kwargs: Any) -> Any:
            return method(*_check_str_call(text, name, args, kwargs), **kwargs)

        return bounded

    def call_binop(self, context: Any, op: str, left: Any, right: Any) -> Any:
        if op == "**":
            if isinstance(right, int | float) and abs(right) > MAX_EXPONENT:
                raise SecurityError(f"exponent {right} is larger than {MAX_EXPONENT}")
            if _whole(left) and _whole(right) and abs(left).bit_length() * abs(right) > MAX_NUMBER_BITS:
                raise SecurityError("the number would be too large")
            return operator.pow(left, right)
        if op == "*":
            if _whole(left) and _whole(right) and abs(left).bit_length() + abs(right).bit_length() > MAX_NUMBER_BITS:
                raise SecurityError("the number would be too large")
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and _whole(times) and len(seq) * times > MAX_RENDERED_LENGTH:
                    raise SecurityError("the repeated text would be too long")
                # A list of long strings repeated is cheap, but joined or printed it is not.
                if isinstance(seq, list | tuple) and _whole(times) \
                        and sum(len(x) for x in seq if isinstance(x, str)) * times > MAX_RENDERED_LENGTH:
                    raise SecurityError("the repeated text would be too long")
            return operator.mul(left, right)
        if op == "%" and isinstance(left, str):
            _check_format(left, [right], percent=True)
        if op == "+" and isinstance(left, str | list | tuple) and isinstance(right, str | list | tuple):
            _refuse_long(len(left) + len(right))
        return super().call_binop(context, op, left, right)


def _bounded_range(*args: int) -> range:
    numbers = range(*args)
    if len(numbers) > MAX_RANGE:
        raise SecurityError(f"range() of more than {MAX_RANGE} numbers")
    return numbers


_sandbox = _MessageSandbox(undefined=jinja2.StrictUndefined, autoescape=False)
_sandbox.globals = {"range": _bounded_range}  # no lipsum, cycler...: a letter needs none


def _bounded_filters(env: jinja2.Environment) -> None:
    """The filters that size their result from an argument, checked like the str methods."""
    center, indent, replace, join, fmt = (env.filters[n] for n in ("center", "indent", "replace", "join", "format"))

    def do_center(value: Any, width: int = 80) -> str:
        _refuse_long(max(len(str(value)), abs(width) if _whole(width) else 0))
        return center(value, width)

    def do_indent(value: Any, width: Any = 4, first: bool = False, blank: bool = False) -> str:
        text = str(value)
        size = len(width) if isinstance(width, str) else abs(width) if _whole(width) else 0
        _refuse_long(len(text) + (text.count("\n") + 1) * size)
        return indent(value, width, first, blank)

    @jinja2.pass_eval_context
    def do_replace(eval_ctx: Any, value: Any, old: Any, new: Any, count: int | None = None) -> str:
        _check_str_call(str(value), "replace", (str(old), str(new), -1 if count is None else count), {})
        return replace(eval_ctx, value, old, new, count)

    @jinja2.pass_eval_context
    def do_join(eval_ctx: Any, value: Any, d: str = "", attribute: Any = None) -> str:
        items = list(value) if attribute is None else [env.getattr(item, attribute) for item in value]
        _refuse_long(_joined_length(str(d), items))
        return join(eval_ctx, items, d)

    def do_format(value: Any, *args: Any, **kwargs: Any) -> str:
        _check_format(str(value), [kwargs or args], percent=True)
        return fmt(value, *args, **kwargs)

    env.filters.update(center=do_center, indent=do_indent, replace=do_replace, join=do_join, format=do_format)


_bounded_filters(_sandbox)


@dataclass(frozen=True)
class ClientEmail:
    """What ``send_client_email`` did; ``email_ids`` are to be sent after the commit."""

    outcome: ClientEmailOutcome
    template: str
    email_ids: tuple[int, ...] = ()
    #: The ``email_templates`` row the message was saved as (``save_message``), if any.
    saved_template_id: int | None = None


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


def render_written(field: str, source: str, context: dict[str, Any]) -> str:
    """``source`` rendered in the sandbox (no autoescaping: the result is plain text).

    A syntax error, an unknown placeholder, anything the sandbox forbids or any error while
    rendering is a ``ValidationError`` naming ``field``.
    """
    shown = source if len(source) <= 80 else source[:77] + "..."
    try:
        # Streamed, so that a loop printing a long text a million times stops at the limit
        # instead of building the whole output first.
        chunks, length = [], 0
        for chunk in _sandbox.from_string(source).generate(context):
            length += len(chunk)
            if length > MAX_RENDERED_LENGTH:
                raise ValidationError(field, shown, f"renders to more than {MAX_RENDERED_LENGTH} characters")
            chunks.append(chunk)
        text = "".join(chunks)
    except jinja2.TemplateSyntaxError as exc:
        raise ValidationError(field, shown, f"is not a valid template: {exc.message} (line {exc.lineno})") from None
    except SecurityError as exc:
        raise ValidationError(field, shown, f"uses something the sandbox forbids: {exc}") from None
    except jinja2.UndefinedError as exc:
        raise ValidationError(field, shown, f"uses an unknown placeholder: {exc}") from None
    except (jinja2.TemplateError, ArithmeticError, TypeError, ValueError, LookupError, AttributeError,
            RecursionError) as exc:
        raise ValidationError(field, shown, f"cannot be rendered: {type(exc).__name__}: {exc}") from None
    if len(text) > MAX_RENDERED_LENGTH:
        raise ValidationError(field, shown, f"renders to more than {MAX_RENDERED_LENGTH} characters")
    return text


def _paragraphs(text: str) -> list[list[str]]:
    """Blank-line separated paragraphs, each a list of lines (the HTML part's ``<p>`` and ``<br>``)."""
    paragraphs: list[list[str]] = [[]]
    for line in text.strip().splitlines():
        if line.strip():
            paragraphs[-1].append(line.rstrip())
        elif paragraphs[-1]:
            paragraphs.append([])
    return [p for p in paragraphs if p]


def render_client_message(session: Session, outbox: OutboxEmail,
                          settings: BillingSettings | None = None) -> RenderedEmail:
    """Render a ``client_message`` outbox row (an admin-written or saved message). Reads only.

    To the client's email, copied to the contacts that receive general emails.
    """
    try:
        context = json.loads(outbox.context or "{}")
    except json.JSONDecodeError:
        context = None
    if not isinstance(context, dict) or not isinstance(context.get("subject"), str) \
            or not isinstance(context.get("body"), str):
        raise ValidationError("email_outbox.context", outbox.id, "is not a client message context")
    client = session.get(Client, outbox.client_id) if outbox.client_id is not None else None
    if client is None:
        raise NotFound("client_id", outbox.client_id, "client")
    settings = settings if settings is not None else load_settings(session)
    values = message_context(session, client, settings)
    subject = " ".join(render_written("subject", context["subject"], values).split())
    if not subject:
        raise ValidationError("subject", context["subject"], "renders to an empty subject")
    text = render_written("body", context["body"], values)
    email = (client.email or "").strip()
    return render(CLIENT_MESSAGE_TEMPLATE, {
        "message_subject": subject,
        "message_text": text.strip(),
        "paragraphs": _paragraphs(text),
        "settings": settings,
        "client": values,
    }, to=[email] if email else [], cc=general_contacts(session, client.id, email), client_id=client.id)


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


def send_client_email(session: Session, client_id: int, *, template: str | None = None, subject: str | None = None,
                      body: str | None = None, save_message: bool = False, save_as: str | None = None,
                      dedupe_key: str, now: datetime) -> ClientEmail:
    """Queue one email to a client: a file template that needs only the client, a saved
    ``email_templates`` row (by name), or a ``subject`` + ``body`` written by an admin.

    Guarantees: one outbox row per ``dedupe_key`` (unique): a redelivered or concurrent twin
    finds it and queues nothing (``already_queued``). The message is rendered once here: a
    syntax error, an unknown placeholder or a sandbox violation is a ``ValidationError`` naming
    the field, and nothing is written. ``save_message`` saves the written subject and body in
    ``email_templates`` as ``save_as`` (default: the subject, cut to 100 characters).
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
    written: tuple[str, str] | None = None
    if template is not None:
        template = _written_text("template", template, MAX_NAME_LENGTH)
        if subject is not None or body is not None:
            raise ValidationError("template", template, "give either a template, or a subject and a body, not both")
        if save_message:
            raise ValidationError("save_message", save_message, "only a written subject and body can be saved")
        if template in TEMPLATES and template not in NOT_BY_NAME:
            outbox_template, context = template, {"copy_to": COPY_TO_GENERAL_CONTACTS}
        else:
            saved = session.scalar(select(EmailTemplate).where(EmailTemplate.name == template))
            if saved is None:
                raise ValidationError("template", template, "is neither an email template file nor a saved template")
            outbox_template = CLIENT_MESSAGE_TEMPLATE
            context = {"subject": saved.subject, "body": saved.body, "saved_template": saved.name}
    else:
        written = (_written_text("subject", subject, MAX_SUBJECT_LENGTH),
                   _written_text("body", body, MAX_BODY_LENGTH))
        outbox_template, context = CLIENT_MESSAGE_TEMPLATE, {"subject": written[0], "body": written[1]}

    # Render it as delivery will, on a row that is never added to the session.
    try:
        render_outbox_email(session, OutboxEmail(template=outbox_template, client_id=client.id,
                                                 context=json.dumps(context, sort_keys=True)))
    except ValidationError as exc:
        if outbox_template != CLIENT_MESSAGE_TEMPLATE and exc.field == "context":
            raise ValidationError("template", template, "needs more than the client (an invoice...): "
                                                        "it cannot be sent from the client profile") from None
        raise

    try:
        with session.begin_nested():
            email_ids = queue_emails(session, [QueuedEmail(template=outbox_template, client_id=client.id,
                                                           context=context, dedupe_key=dedupe_key)])
    except IntegrityError:
        if session.scalar(select(OutboxEmail.id).where(OutboxEmail.dedupe_key == dedupe_key)) is None:
            raise
        return ClientEmail("already_queued", outbox_template)

    saved_id = None
    if save_message and written is not None:
        if save_as is not None:
            name, field = _written_text("save_as", save_as, MAX_NAME_LENGTH), "save_as"
        else:
            name, field = written[0][:MAX_NAME_LENGTH].strip(), "subject"
        saved_id = _save_message(session, field, name, written[0], written[1], now.astimezone(UTC))
    return ClientEmail("queued", outbox_template, email_ids=tuple(email_ids), saved_template_id=saved_id)
