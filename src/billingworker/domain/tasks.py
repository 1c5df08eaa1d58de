"""What a daily-run task does to one batch of clients, and what it reports.

Every task of the daily run (SPEC §15) has a batch function with one shape::

    fn(session, client_ids, as_of, *, dry_run=False) -> TaskResult

It works in the caller's transaction (the caller commits, or rolls back for a dry run), locks
the clients it touches, never lets one client's bad data stop the others (recorded in
``failures``), and says what it did in counts plus ``preview`` lines an operator can read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from .failures import ClientFailure
from .money import ZERO


@dataclass
class TaskResult:
    task: str
    clients: int = 0
    invoices_created: int = 0
    fees_added: int = 0
    captures: int = 0
    credit_applied: int = 0
    amount: Decimal = ZERO
    email_ids: list[int] = field(default_factory=list)
    failures: list[ClientFailure] = field(default_factory=list)
    #: Clients that were processed without failure (their failure streak ends).
    succeeded_clients: set[int] = field(default_factory=set)
    #: Human-readable lines of what was (or, in a dry run, would be) done.
    preview: list[dict] = field(default_factory=list)

    @property
    def emails_queued(self) -> int:
        return len(self.email_ids)

    def merge(self, other: TaskResult) -> None:
        self.clients += other.clients
        self.invoices_created += other.invoices_created
        self.fees_added += other.fees_added
        self.captures += other.captures
        self.credit_applied += other.credit_applied
        self.amount += other.amount
        self.email_ids += other.email_ids
        self.failures += other.failures
        self.succeeded_clients |= other.succeeded_clients
        self.preview += other.preview
