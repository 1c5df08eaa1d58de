"""One transaction and the messages it causes: they leave only once it has committed.

A job that bills and then enqueues (the invoice emails' delivery, the next batch of a run)
must never send for work that was rolled back, and must not hold the messages in local
variables it has to remember to send after ``commit()``. ``UnitOfWork`` keeps both: the
session, and the messages given to ``send_after_commit``. ``commit()`` commits and then
enqueues them; anything else (an exception, a forgotten commit) rolls back and sends nothing.

A broker that does not answer after the commit fails the job, which Dramatiq retries: the
work is done once (receipts, row locks, unique keys) and the emails' outbox rows are found by
the relay (``relay_outbox``) if every retry fails too.
"""

from __future__ import annotations

from types import TracebackType

from dramatiq import Message
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from ..db import session_factory
from ..runtime import runtime
from .binding import bound_broker


class UnitOfWork:
    """``with UnitOfWork() as work: ... work.session ...; work.send_after_commit(m); work.commit()``."""

    def __init__(self, engine: Engine | None = None) -> None:
        self.session: Session = session_factory(engine or runtime().engine)()
        self._messages: list[Message] = []

    def __enter__(self) -> UnitOfWork:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._messages.clear()
        self.session.rollback()
        self.session.close()

    def send_after_commit(self, *messages: Message) -> None:
        """Enqueue ``messages`` (``actor.message(...)``) once, and only if, ``commit()`` succeeds."""
        self._messages.extend(messages)

    def commit(self) -> None:
        """Commit, then enqueue the messages held for the commit, in the order given."""
        self.session.commit()
        messages, self._messages = self._messages, []
        if messages:
            broker = bound_broker()
            for message in messages:
                broker.enqueue(message)
