"""Auto CC capture (SPEC §8, settings in §2): charge the balance of due invoices to the client's
default stored card, through a payment gateway, never twice for one invoice.

The gateway is never called inside a transaction: holding the client's lock across a network
call would stall every other job of that client, and a rollback after the charge would forget
money that moved. So ``capture_due_payments_for_clients`` runs its own transactions, in three steps:

1. **Recover.** A ``pending`` attempt that exists when the call starts was left by a run that
   crashed (or is still running) between recording it and recording the gateway's answer. It is
   asked again with its SAME idempotency key (``capture-<id>``): a gateway that already charged
   returns that first answer and charges nothing; one that never saw the request charges now.
   Either way the invoice is charged once. A gateway that does not answer leaves it pending
   (and the invoice gets no new attempt) until a later run gets an answer.
2. **Record.** One transaction locks the clients, picks the invoices due an attempt today, inserts
   a ``pending`` ``payment_captures`` row for each and commits. The row is the promise not to
   charge blindly again: at most one pending and one succeeded row per invoice, one attempt per
   invoice per day (unique indexes), and a second worker waits for the client lock and then
   sees the rows the first committed.
3. **Charge and finish.** The rows are sent to the gateway (outside any transaction, several at
   once), then the answers are recorded, a group per transaction (one by one if a group fails):
   a success marks the row ``succeeded`` and pays the invoice through ``payments.apply_payments``
   (idempotent per gateway transaction id; it advances what the invoice billed and queues the
   payment confirmation); a decline or a gateway error is recorded with the gateway's message
   and retried on the schedule.

A card whose gateway cannot be used here (a name nobody registered, or the test gateway in a
process that did not switch it on with ``PAYMENT_GATEWAYS=test``) is a setup problem, not the
client's: no capture row, no charge, nothing marked paid, and a ``job_failures`` row that names
the gateway and does not count towards parking the client (``parks=False``). The invoice is
attempted on the first run after the gateway is configured (if the schedule still allows it).

Card numbers are never logged or stored: only the card's last four digits.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from decimal import Decimal

from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from ...db import for_update
from ...store.arrays import among
from ...store.conflicts import insert_ignoring_conflicts_ids_by
from ..billing.invoice_store import lock_clients
from ..errors import ValidationError
from ..failures import ClientFailure
from ..models import (
    CaptureStatus,
    Client,
    ClientStatus,
    Currency,
    Invoice,
    InvoiceKind,
    InvoiceStatus,
    PaymentCapture,
    PayMethod,
)
from ..money import ZERO, round_money
from ..ports import CaptureRequest, CaptureResult, GatewayUnavailable, PaymentGateway
from ..redaction import escape_unprintable, redact_card_numbers
from ..settings import BillingSettings, load_settings
from ..tasks import TaskResult
from .payments import PaymentRequest, apply_payments

log = logging.getLogger(__name__)

TASK = "capture_due_payments"
#: Pay method types that are cards; only those with a gateway token can be charged by the job.
CARD_TYPES = ("CreditCard", "RemoteCreditCard")
FAILED = (CaptureStatus.DECLINED, CaptureStatus.ERROR)
#: Gateway requests in flight at once per batch: a real gateway answers in a few hundred
#: milliseconds, so a batch of a thousand captures one by one would take minutes.
GATEWAY_CONCURRENCY = 8
#: Gateway answers recorded per transaction.
RECORD_GROUP_SIZE = 100


def attempt_due(date_due: date, as_of: date, failed_on: Sequence[date], settings: BillingSettings) -> bool:
    """Whether the schedule allows an attempt on ``as_of``, given the days earlier attempts failed.

    The first attempt: any day from ``date_due - card_capture_days_before_due`` on. After a
    failure: never with ``card_capture_attempt_once``; the next day and every day after with
    ``card_capture_retry_weeks`` 0; otherwise only on ``date_due + 7k`` days, k = 1..N (a retry
    day the run missed is not caught up, and there is none after the N-th week).
    """
    if as_of < date_due - timedelta(days=settings.card_capture_days_before_due):
        return False
    if not failed_on:
        return True
    if settings.card_capture_attempt_once or as_of <= max(failed_on):
        return False
    weeks = settings.card_capture_retry_weeks
    if weeks <= 0:
        return True
    days = (as_of - date_due).days
    return days > 0 and days % 7 == 0 and days // 7 <= weeks


@dataclass(frozen=True)
class _Attempt:
    """A pending capture, with what the gateway needs (held in memory only)."""

    capture_id: int
    client_id: int
    invoice_id: int
    invoice_label: str
    amount: Decimal
    currency: str
    gateway: str
    token: str = field(repr=False)
    last_four: str
    #: True for a pending row from an earlier run (asked again, never charged anew blindly).
    recovered: bool = False

    def request(self) -> CaptureRequest:
        # The invoice is part of the key: a capture id alone could come back after rows are deleted
        # (SQLite reuses the highest ids), and a gateway must never take it for an old charge.
        return CaptureRequest(idempotency_key=f"capture-{self.capture_id}-invoice-{self.invoice_id}",
                              amount=self.amount,
                              currency=self.currency, token=self.token, last_four=self.last_four,
                              description=f"Invoice {self.invoice_label}")

    def line(self, outcome: str) -> dict:
        return {"client_id": self.client_id, "invoice_id": self.invoice_id, "amount": str(self.amount),
                "outcome": outcome}


def capture_due_payments_for_clients(
    session_factory: Callable[[], Session],
    client_ids: Sequence[int],
    as_of: date,
    gateway_for: Callable[[str], PaymentGateway],
    *,
    dry_run: bool = False,
    now: datetime,
) -> TaskResult:
    """Charge today's due invoices of ``client_ids`` to their default cards (the module docstring
    tells how); commits its own transactions, one per step and per capture.

    Never charges an invoice twice, however often or concurrently it runs, and after a crash.
    The caller sends ``result.email_ids`` (payment confirmations) once this returns. With
    ``dry_run`` it returns what it would attempt in ``preview``, writes nothing and calls no gateway.
    """
    result = TaskResult(task=TASK)
    if dry_run:
        with _transaction(session_factory) as session:
            for attempt in _pending(session, client_ids):
                result.preview.append(attempt.line("pending: would ask the gateway again"))
            clients, attempts = _plan(session, client_ids, as_of, gateway_for, result, dry_run=True)
        for attempt in attempts:
            result.preview.append(attempt.line("would capture"))
        result.captures = len(attempts)
        result.amount = sum((a.amount for a in attempts), ZERO)
        _count_clients(result, clients)
        return result

    with _transaction(session_factory) as session:
        stale = _pending(session, client_ids)
    _charge_all(session_factory, stale, gateway_for, result, as_of=as_of, now=now)

    with _transaction(session_factory) as session:
        clients, attempts = _plan(session, client_ids, as_of, gateway_for, result, dry_run=False)
        session.commit()
    _charge_all(session_factory, attempts, gateway_for, result, as_of=as_of, now=now)
    _count_clients(result, clients)
    return result


@contextmanager
def _transaction(session_factory: Callable[[], Session]) -> Iterator[Session]:
    """A session kept only if the body commits (the unit of work of ``db.py``, for a factory)."""
    session = session_factory()
    try:
        yield session
    finally:
        session.rollback()
        session.close()


def _count_clients(result: TaskResult, clients: Sequence[int]) -> None:
    failed = {f.client_id for f in result.failures}
    result.clients = len(clients)
    result.succeeded_clients = set(clients) - failed


def _pending(session: Session, client_ids: Sequence[int]) -> list[_Attempt]:
    """Pending captures of the clients as they are now: left by a crash, or by a run in flight."""
    if not client_ids:
        return []
    rows = session.execute(
        select(PaymentCapture.id, PaymentCapture.client_id, PaymentCapture.invoice_id, PaymentCapture.amount,
               PaymentCapture.gateway, Invoice.number, Currency.code, Currency.minor_units, PayMethod.gateway_token,
               PayMethod.card_last_four)
        .join(Invoice, Invoice.id == PaymentCapture.invoice_id)
        .join(Client, Client.id == PaymentCapture.client_id)
        # The currency the first request named (the invoice's, else the client's): a gateway
        # may refuse a replayed key whose request differs.
        .outerjoin(Currency, Currency.id == func.coalesce(Invoice.currency_id, Client.currency_id))
        .outerjoin(PayMethod, PayMethod.id == PaymentCapture.pay_method_id)
        .where(among(session, PaymentCapture.client_id, sorted(set(client_ids))),
               PaymentCapture.status == CaptureStatus.PENDING)
        .order_by(PaymentCapture.id)).all()
    return [_Attempt(r.id, r.client_id, r.invoice_id, _label(r.invoice_id, r.number),
                     round_money(Decimal(r.amount), 2 if r.minor_units is None else r.minor_units),
                     r.code or "", r.gateway, r.gateway_token or "", r.card_last_four or "", recovered=True)
            for r in rows]


def _label(invoice_id: int, number: int | None) -> str:
    return f"#{number}" if number is not None else f"id {invoice_id}"


def _plan(session: Session, client_ids: Sequence[int], as_of: date, gateway_for: Callable[[str], PaymentGateway],
          result: TaskResult, *, dry_run: bool) -> tuple[list[int], list[_Attempt]]:
    """Lock the clients and choose the invoices due an attempt today, then insert a pending
    capture for each (the caller commits). Returns the clients and the attempts.

    A ``dry_run`` reads the same rows without locking or writing: the daily run's preview calls
    it while its own session holds the clients' locks, and a preview must never wait for them.
    """
    if dry_run:
        client_currency = dict(session.execute(select(Client.id, Client.currency_id).where(
            among(session, Client.id, sorted(set(client_ids))))).all()) if client_ids else {}
    else:
        client_currency = {cid: info.currency_id for cid, info in lock_clients(session, client_ids).items()}
    clients = sorted(client_currency)
    if not clients:
        return [], []
    settings = load_settings(session)
    auto = list(session.execute(select(Client.id).where(
        among(session, Client.id, clients), Client.auto_cc_processing.is_(True),
        Client.status != ClientStatus.CLOSED)).scalars())
    if not auto:
        return clients, []
    cards = {pm.client_id: pm for pm in session.execute(select(PayMethod).where(
        among(session, PayMethod.client_id, auto), PayMethod.is_default.is_(True),
        PayMethod.type.in_(CARD_TYPES), PayMethod.gateway_token != "")).scalars()}
    if not cards:
        return clients, []
    horizon = as_of + timedelta(days=max(settings.card_capture_days_before_due, 0))
    invoices = session.execute(
        select(Invoice.id, Invoice.client_id, Invoice.number, Invoice.date_due, Invoice.balance_due,
               Invoice.currency_id)
        .where(among(session, Invoice.client_id, sorted(cards)), Invoice.status == InvoiceStatus.UNPAID,
               Invoice.kind == InvoiceKind.STANDARD, Invoice.balance_due > 0, Invoice.date_due <= horizon)
        .order_by(Invoice.client_id, Invoice.date_due, Invoice.id)).all()
    if not invoices:
        return clients, []
    history: dict[int, list[tuple[str, date]]] = {}
    for invoice_id, status, attempt_on in session.execute(
            select(PaymentCapture.invoice_id, PaymentCapture.status, PaymentCapture.attempt_on)
            .where(among(session, PaymentCapture.invoice_id, [i.id for i in invoices]))):
        history.setdefault(invoice_id, []).append((status, attempt_on))
    currencies = {r.id: r for r in session.execute(select(Currency.id, Currency.code, Currency.minor_units))}

    attempts: list[_Attempt] = []
    refused_gateways: set[tuple[int, str]] = set()
    unusable_gateways: dict[str, str | None] = {}
    for inv in invoices:
        past = history.get(inv.id, [])
        if any(s in (CaptureStatus.SUCCEEDED, CaptureStatus.PENDING) for s, _ in past):
            continue
        if any(day == as_of for _, day in past):
            continue
        failed_on = [day for s, day in past if s in FAILED]
        if not attempt_due(inv.date_due, as_of, failed_on, settings):
            continue
        card = cards[inv.client_id]
        if card.gateway_name not in unusable_gateways:
            unusable_gateways[card.gateway_name] = _unusable_gateway(card.gateway_name, gateway_for)
        unusable = unusable_gateways[card.gateway_name]
        if unusable is not None:
            if (inv.client_id, card.gateway_name) not in refused_gateways:
                refused_gateways.add((inv.client_id, card.gateway_name))
                # A configuration problem, not the client's data: reported, never parks the client.
                result.failures.append(ClientFailure(inv.client_id, "pay_method.gateway_name", card.gateway_name,
                                                     f"{unusable}: nothing charged, the invoice stays unpaid",
                                                     parks=False))
                log.warning("capture for client %s skipped: gateway %r %s", inv.client_id, card.gateway_name[:50],
                            unusable)
            continue
        currency = currencies.get(inv.currency_id or client_currency.get(inv.client_id))
        if currency is None or not currency.code:
            result.failures.append(ClientFailure(inv.client_id, "invoice.currency_id", inv.currency_id,
                                                 f"has no currency, so invoice {inv.id} cannot be charged"))
            continue
        amount = round_money(Decimal(inv.balance_due), currency.minor_units)
        attempts.append(_Attempt(0, inv.client_id, inv.id, _label(inv.id, inv.number), amount,
                                 currency.code, card.gateway_name, card.gateway_token, card.card_last_four))
    if dry_run:
        return clients, attempts
    ids = _insert_pending(session, [(a, cards[a.client_id].id) for a in attempts], as_of)
    return clients, [replace(a, capture_id=ids[a.invoice_id]) for a in attempts if a.invoice_id in ids]


def _unusable_gateway(name: str, gateway_for: Callable[[str], PaymentGateway]) -> str | None:
    """Why ``name`` cannot be used to charge in this process, or None if it can."""
    try:
        gateway_for(name)
    except (ValidationError, KeyError) as exc:
        return _refusal(exc)
    return None


def _refusal(exc: Exception) -> str:
    """The registry's reason (``gateway_for`` raises ``ValidationError``; a test's dict ``KeyError``)."""
    return exc.rule if isinstance(exc, ValidationError) else "is not a registered payment gateway"


#: Pending rows per INSERT statement (a few parameters each, far below the drivers' limits).
INSERT_CHUNK = 500


def _insert_pending(session: Session, attempts: Sequence[tuple[_Attempt, int]], as_of: date) -> dict[int, int]:
    """Insert the pending rows (``ON CONFLICT DO NOTHING``); returns invoice id -> capture id.

    An invoice missing from the answer already has a pending or succeeded row, or an attempt
    today, made by a path that does not lock the client (another application): already done.
    """
    rows = [{"invoice_id": a.invoice_id, "client_id": a.client_id, "pay_method_id": pay_method_id,
             "attempt_on": as_of, "gateway": a.gateway, "amount": a.amount, "status": CaptureStatus.PENDING}
            for a, pay_method_id in attempts]
    return insert_ignoring_conflicts_ids_by(session, PaymentCapture, rows, "invoice_id",
                                            rows_per_statement=INSERT_CHUNK)


def _charge_all(session_factory: Callable[[], Session], attempts: Sequence[_Attempt],
                gateway_for: Callable[[str], PaymentGateway], result: TaskResult, *, as_of: date,
                now: datetime) -> None:
    """Send the pending captures to their gateways, GATEWAY_CONCURRENCY at a time (no transaction
    open: a gateway answers in a few hundred milliseconds), then record the answers a group of
    RECORD_GROUP_SIZE per transaction."""
    if not attempts:
        return
    if len(attempts) == 1:
        answers = [_ask(attempts[0], gateway_for)]
    else:
        with ThreadPoolExecutor(max_workers=min(GATEWAY_CONCURRENCY, len(attempts)),
                                thread_name_prefix="gateway") as pool:
            answers = list(pool.map(lambda attempt: _ask(attempt, gateway_for), attempts))
    answered = []
    for attempt, (answer, unanswered) in zip(attempts, answers, strict=True):
        if answer is None:
            _unanswered(result, attempt, unanswered)
        else:
            answered.append((attempt, answer, escape_unprintable(redact_card_numbers(answer.message))[:2000]))
    for start in range(0, len(answered), RECORD_GROUP_SIZE):
        group = answered[start:start + RECORD_GROUP_SIZE]
        try:
            _finish_group(session_factory, group, result, as_of=as_of, now=now)
        except DBAPIError:
            raise  # the database is gone: the job is retried, and its recovery asks again with these keys
        except Exception:  # noqa: BLE001 - one capture's bad data: record the group one by one
            log.warning("recording %s capture answers together failed; recording them one by one", len(group),
                        exc_info=True)
            for attempt, answer, message in group:
                _record(session_factory, attempt, answer, message, result, as_of=as_of, now=now)


def _ask(attempt: _Attempt, gateway_for: Callable[[str], PaymentGateway]) -> tuple[CaptureResult | None, str]:
    """The gateway's answer to one capture, or (None, why) when there is no answer to record."""
    try:
        gateway = gateway_for(attempt.gateway)
    except (ValidationError, KeyError) as exc:
        # Nobody was asked: the capture stays pending (whatever an earlier run may have charged)
        # and is asked again, with its key, once the gateway is configured.
        return None, f"gateway {attempt.gateway!r} {_refusal(exc)}: not asked"
    try:
        return gateway.capture(attempt.request()), ""
    except GatewayUnavailable as exc:
        if attempt.recovered:
            # The gateway is down now: that says nothing about the first request. Ask again later.
            return None, f"gateway {attempt.gateway} unavailable: {exc}"
        # Our only request with this key charged nothing: a failed attempt, retried on the schedule.
        return CaptureResult("error", "", f"gateway unavailable: {exc}"), ""
    except Exception as exc:  # noqa: BLE001 - any other failure: the charge may or may not have happened
        return None, f"gateway {attempt.gateway} gave no answer ({type(exc).__name__}: {exc})"


def _record(session_factory: Callable[[], Session], attempt: _Attempt, answer: CaptureResult, message: str,
            result: TaskResult, *, as_of: date, now: datetime) -> None:
    """Record one gateway answer in its own transaction (the fallback when its group failed)."""
    try:
        _finish_group(session_factory, [(attempt, answer, message)], result, as_of=as_of, now=now)
    except DBAPIError:
        raise  # the database is gone: the job is retried, and its recovery asks again with this key
    except Exception as exc:  # noqa: BLE001 - one capture's bad data must not stop the others
        log.exception("capture %s of invoice %s: the answer could not be recorded", attempt.capture_id,
                      attempt.invoice_id)
        _unanswered(result, attempt, f"{answer.status} but not recorded ({type(exc).__name__}: {exc})")


def _unanswered(result: TaskResult, attempt: _Attempt, reason: str) -> None:
    reason = redact_card_numbers(reason)[:2000]
    log.warning("capture %s of invoice %s stays pending: %s", attempt.capture_id, attempt.invoice_id, reason)
    result.failures.append(ClientFailure(attempt.client_id, "invoice_id", attempt.invoice_id,
                                         f"capture {attempt.capture_id} stays pending, asked again next run: {reason}",
                                         parks=False))
    result.preview.append(attempt.line(CaptureStatus.PENDING.value))


def _finish_group(session_factory: Callable[[], Session], group: Sequence[tuple[_Attempt, CaptureResult, str]],
                  result: TaskResult, *, as_of: date, now: datetime) -> None:
    """Record a group of gateway answers in ONE transaction.

    Locks the clients, then the capture rows (id order), then pays every success through
    ``payments.apply_payments``. A success always counts, even if a racing worker recorded a
    failure for the same key first: money that moved is never forgotten. Any other answer only
    finishes a capture that is still pending. The group's effects reach ``result`` only after the commit; if
    anything raises, nothing is recorded and the caller records the group one by one.
    """
    effects = TaskResult(task=TASK)
    lines: list[dict] = []
    with _transaction(session_factory) as session:
        client_ids = sorted({attempt.client_id for attempt, _, _ in group})
        session.execute(for_update(select(Client.id).where(among(session, Client.id, client_ids))
                                   .order_by(Client.id))).all()
        captures = {c.id: c for c in session.execute(for_update(
            select(PaymentCapture).where(among(session, PaymentCapture.id, [a.capture_id for a, _, _ in group]))
            .order_by(PaymentCapture.id))).scalars()}
        succeeded_before = {}
        for capture_id, invoice_id in session.execute(select(PaymentCapture.id, PaymentCapture.invoice_id).where(
                among(session, PaymentCapture.invoice_id, sorted({a.invoice_id for a, _, _ in group})),
                PaymentCapture.status == CaptureStatus.SUCCEEDED)):
            succeeded_before.setdefault(invoice_id, capture_id)
        payments: list[PaymentRequest] = []
        paid_attempts: list[tuple[_Attempt, bool]] = []
        for attempt, answer, message in group:
            capture = captures.get(attempt.capture_id)
            if capture is None:
                lines.append(attempt.line(_vanished(effects, attempt, answer)))
                continue
            if answer.status != "succeeded":
                if capture.status != CaptureStatus.PENDING:
                    lines.append(attempt.line(str(capture.status)))  # a racing worker finished it first
                    continue
                capture.status = CaptureStatus.DECLINED if answer.status == "declined" else CaptureStatus.ERROR
                capture.gateway_reference = answer.transaction_id[:255]
                capture.error = message or answer.status
                capture.updated_at = now
                effects.failures.append(ClientFailure(
                    attempt.client_id, "invoice_id", attempt.invoice_id,
                    f"card capture {capture.status} (card ending {attempt.last_four}): {capture.error}", parks=False))
                lines.append(attempt.line(str(capture.status)))
                continue
            if capture.status == CaptureStatus.SUCCEEDED:
                lines.append(attempt.line(CaptureStatus.SUCCEEDED))  # a racing worker recorded it first
                continue
            other = succeeded_before.get(capture.invoice_id)
            if other is None or other == capture.id:
                capture.status = CaptureStatus.SUCCEEDED
                capture.error = ""
                succeeded_before[capture.invoice_id] = capture.id
            else:
                # Two different keys both charged: record the money (it becomes credit) and say so.
                capture.status = CaptureStatus.ERROR
                capture.error = f"charged after capture {other} had already succeeded: refund or keep as credit"
                effects.failures.append(ClientFailure(attempt.client_id, "invoice_id", attempt.invoice_id,
                                                      capture.error))
            capture.gateway_reference = answer.transaction_id[:255]
            capture.updated_at = now
            # (the gateway's id, cut as the column holds it: transactions.transaction_id is VARCHAR(255))
            payments.append(PaymentRequest(capture.invoice_id, Decimal(capture.amount), capture.gateway,
                                           capture.gateway_reference or f"capture-{capture.id}"))
            paid_attempts.append((attempt, capture.status == CaptureStatus.SUCCEEDED))
            lines.append(attempt.line(str(capture.status)))
        session.flush()
        paid = apply_payments(session, payments, as_of=as_of, now=now)
        session.commit()
    for payment in paid:
        if payment.outcome == "recorded":
            effects.email_ids.extend(payment.email_ids)
    for attempt, counted in paid_attempts:
        if counted:
            effects.captures += 1
            effects.amount += attempt.amount
    result.failures.extend(effects.failures)
    result.email_ids.extend(effects.email_ids)
    result.captures += effects.captures
    result.amount += effects.amount
    result.preview.extend(lines)
    for (attempt, _, message), line in zip(group, lines, strict=True):
        log.info("capture %s of invoice %s (card ending %s, %s %s): %s %s", attempt.capture_id, attempt.invoice_id,
                 attempt.last_four or "????", attempt.amount, attempt.currency, line["outcome"], message)


def _vanished(result: TaskResult, attempt: _Attempt, answer: CaptureResult) -> str:
    """The capture row is gone (its invoice or client was deleted while the gateway answered)."""
    if answer.status == "succeeded":
        reason = (f"charged {attempt.amount} {attempt.currency} (gateway transaction {answer.transaction_id}) "
                  "but the capture's invoice was deleted meanwhile: record or refund it by hand")
        log.error("capture %s of invoice %s: %s", attempt.capture_id, attempt.invoice_id, reason)
        result.failures.append(ClientFailure(attempt.client_id, "invoice_id", attempt.invoice_id, reason))
    return "vanished"
