"""Run-once receipts for jobs whose effect is "create something new" (SPEC "done": a job
delivered twice has the effect of running once)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .models import JobReceipt


def run_once(session: Session, key: str, actor: str, work: Callable[[], dict[str, Any]]) -> tuple[dict, bool]:
    """Do ``work`` unless a receipt for ``key`` exists; returns (result, done_now).

    The receipt is inserted before the work, in the caller's transaction: a concurrent twin
    waits on the primary key and, once the first commits, finds the receipt instead of working.
    If the caller rolls back, the receipt goes too and a redelivery does the work.
    """
    found = session.execute(select(JobReceipt.result).where(JobReceipt.key == key)).scalar()
    if found is not None:
        return json.loads(found), False
    try:
        with session.begin_nested():
            session.execute(insert(JobReceipt).values(key=key, actor=actor, result="{}"))
    except IntegrityError:
        found = session.execute(select(JobReceipt.result).where(JobReceipt.key == key)).scalar_one()
        return json.loads(found), False
    result = work()
    session.execute(update(JobReceipt).where(JobReceipt.key == key).values(result=json.dumps(result, default=str)))
    return result, True
