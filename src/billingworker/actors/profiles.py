"""Client-profile jobs (docs/jobs.md): convert stored phone numbers (SPEC §11), manage credits
(SPEC §8). Thin: validate, one unit of work, commit."""

from __future__ import annotations

from decimal import Decimal
from functools import partial

from sqlalchemy import exists, select

from ..domain.accounts.phones import client_id_batches, normalize_stored_phones
from ..domain.errors import NotFound, ValidationError
from ..domain.failures import record_failures
from ..domain.models import Client, Currency, JobFailure
from ..domain.money import format_money, parse_amount, parse_money, round_money
from ..domain.payments.credit import change_credit
from ..domain.receipts import run_once
from ..domain.settings import load_settings
from ..runtime import runtime
from .arguments import MAX_BATCH_CLIENTS, argument_rules, parse_id, parse_id_list, parse_optional_id, parse_text
from .base import current_message_id, job, receipt_key
from .unit_of_work import UnitOfWork

#: The width of ``credit_history.description``.
MAX_DESCRIPTION_LENGTH = 500


@job()
@argument_rules(client_id=parse_optional_id)
def normalize_phone_numbers(client_id=None):
    """Rewrite stored phone numbers as ``+CC.number``: one client (and its contacts), or every
    client, fanned out in batches. Bad numbers are reported per record and left as they are."""
    client_id = parse_optional_id("client_id", client_id)
    rt = runtime()
    if client_id is None:
        batches = 0
        with UnitOfWork(rt.engine) as work:
            if not load_settings(work.session).phone_number_formatting:
                return {"formatting": False, "batches": 0}
            for ids in client_id_batches(work.session, rt.batch_size):
                normalize_phone_numbers_batch.send(client_ids=ids)
                batches += 1
        return {"formatting": True, "batches": batches}
    with UnitOfWork(rt.engine) as work:
        if work.session.get(Client, client_id) is None:
            raise NotFound("client_id", client_id, "client")
        result = _normalize(work.session, [client_id], rt)
        work.commit()
    return result


@job()
@argument_rules(client_ids=partial(parse_id_list, max_length=MAX_BATCH_CLIENTS))
def normalize_phone_numbers_batch(client_ids):
    """One batch of the fan-out (a stable contract: a caller may send it for chosen clients)."""
    ids = parse_id_list("client_ids", client_ids, max_length=MAX_BATCH_CLIENTS)
    rt = runtime()
    with UnitOfWork(rt.engine) as work:
        result = _normalize(work.session, ids, rt)
        work.commit()
    return result


def _normalize(session, client_ids: list[int], rt) -> dict:
    result = normalize_stored_phones(session, client_ids)
    message_id = current_message_id()
    # A redelivered message (the first delivery committed but was not acknowledged) finds its
    # failures already recorded: the operator sees each bad number once per message.
    already = bool(message_id) and session.execute(select(exists().where(
        JobFailure.actor == "normalize_phone_numbers", JobFailure.message_id == message_id))).scalar()
    if not already:
        record_failures(session, result.failures, actor="normalize_phone_numbers", message_id=message_id,
                        now=rt.clock.now())
    return result.as_dict()


@job()
@argument_rules(client_id=parse_id, amount=parse_amount,
                description=partial(parse_text, max_length=MAX_DESCRIPTION_LENGTH))
def adjust_credit(client_id, amount, description, request_id=None):
    """Add (``"25.00"``) or remove (``"-25.00"``) credit with a history line; never below zero.

    Runs once per message id or ``request_id`` (a receipt in the same transaction); the client
    row lock of ``change_credit`` serialises concurrent changes of one client.
    """
    client_id = parse_id("client_id", client_id)
    description = parse_text("description", description, max_length=MAX_DESCRIPTION_LENGTH)
    key = receipt_key("adjust_credit", request_id)
    rt = runtime()
    with UnitOfWork(rt.engine) as work:
        currency = work.session.execute(select(Currency).join(Client, Client.currency_id == Currency.id)
                                   .where(Client.id == client_id)).scalar()
        if currency is None and work.session.get(Client, client_id) is None:
            raise NotFound("client_id", client_id, "client")
        minor_units = currency.minor_units if currency is not None else 2
        value = parse_money("amount", amount, minor_units=minor_units, allow_negative=True, allow_zero=True)
        if value == 0:
            raise ValidationError("amount", amount, "must not be zero: a positive amount adds credit, "
                                  "a negative one removes it")

        def money(v: Decimal) -> str:
            if currency is None:
                return str(round_money(v, minor_units))
            return format_money(v, currency.prefix, currency.suffix, minor_units)

        def change() -> dict:
            try:
                change = change_credit(work.session, client_id, value, description, as_of=rt.clock.today(),
                                       source="job:adjust_credit")
            except ValidationError as exc:
                if exc.field != "amount" or value > 0:
                    raise  # (adding: only beyond what the books hold, said by change_credit)
                # change_credit read the balance under the client row lock: say it in the currency.
                balance = Decimal(work.session.execute(select(Client.credit_balance)
                                                  .where(Client.id == client_id)).scalar_one())
                raise ValidationError("amount", amount, f"would take the credit balance below zero: removing "
                                      f"{money(-value)} from a balance of {money(balance)}") from None
            return {"client_id": client_id, "amount": str(value),
                    "balance_after": str(round_money(change.balance_after, minor_units)),
                    "history_id": change.history_id}

        result, _ = run_once(work.session, key, "adjust_credit", change)
        work.commit()
    return result
