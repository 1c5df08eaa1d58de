"""Queue emails inside the billing transaction (the outbox, SPEC §14 / DEVELOPERS "done").

Only ids go into the outbox row's context; the email is rendered when it is delivered.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from ...store.bulk import insert_rows_returning_ids
from ..models import OutboxEmail


@dataclass(frozen=True)
class QueuedEmail:
    template: str
    client_id: int | None
    context: dict[str, Any] = field(default_factory=dict)
    #: One email per event, e.g. "invoice_created:12"; a second one with the same key is refused
    #: by the database (unique index).
    dedupe_key: str | None = None


def queue_emails(session: Session, emails: Sequence[QueuedEmail]) -> list[int]:
    """Insert outbox rows in the caller's transaction; returns their ids in order."""
    if not emails:
        return []
    rows = [
        {
            "template": e.template,
            "client_id": e.client_id,
            "context": json.dumps(e.context, sort_keys=True),
            "dedupe_key": e.dedupe_key,
        }
        for e in emails
    ]
    return insert_rows_returning_ids(session, OutboxEmail.__table__, rows)

