"""Rows and messages the console's actions work on: a parked client, a dead letter, a failed email."""

from __future__ import annotations

from dataclasses import dataclass

from dramatiq import Message
from dramatiq.brokers.redis import RedisBroker
from sqlalchemy import Engine, select

from billingworker.db import unit_of_work
from billingworker.domain.models import Client, OutboxEmail
from tests.ops.conftest import add_parked_client, kill


@dataclass(frozen=True)
class Seeded:
    client_id: int
    letter_id: str
    email_id: int


def dead_letter(broker: RedisBroker, actor: str = "apply_payment", **kwargs) -> str:
    """A message dead-lettered the way the worker does it; its redis id."""
    msg = Message(queue_name="billing", actor_name=actor, args=(), kwargs=kwargs or {"invoice_id": 7, "amount": "1.00"},
                  options={})
    return kill(broker, msg)


def failed_email(engine: Engine, client_id: int | None, error: str = "SMTP 550 mailbox unavailable") -> int:
    with unit_of_work(engine) as session:
        row = OutboxEmail(client_id=client_id, template="invoice_created", context='{"invoice_id": 1}',
                          status="failed", attempts=3, last_error=error)
        session.add(row)
        session.commit()
        return row.id


def seed(engine: Engine, broker: RedisBroker) -> Seeded:
    client_id = add_parked_client(engine)
    return Seeded(client_id, dead_letter(broker), failed_email(engine, client_id))


def is_parked(engine: Engine, client_id: int) -> bool:
    with unit_of_work(engine) as session:
        return session.execute(select(Client.parked_at).where(Client.id == client_id)).scalar() is not None


def email_status(engine: Engine, email_id: int) -> str:
    with unit_of_work(engine) as session:
        return session.get(OutboxEmail, email_id).status


def dead_ids(client, queue: str = "billing") -> list[str]:
    return [m.decode() for m in client.zrange(f"dramatiq:{queue}.XQ", 0, -1)]
