"""Reconciliation (SPEC §15, issue 12): do the books hold together on a day?

``reconcile(session, as_of)`` runs the seven checks of ``reconciliation_checks`` (what each one
holds, and which departures are explained rather than errors, is said there) and returns a
``Reconciliation``: the findings, each naming its check, the rows (table and ids) and a short
reason. ``billingworker reconcile`` prints it; every daily run ends with one, stored with the run
by ``record_reconciliation``; the metrics exporter reads that record back
(``recorded_reconciliation``); the benchmarks print it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from ..models import DailyRun
from ..models.runs import DailyRunReconciliation
from .reconciliation_checks import CHECK_FUNCTIONS, CHECKS, EMAIL_SETTLE_AFTER, Finding

__all__ = ["CHECKS", "EMAIL_SETTLE_AFTER", "Finding", "Reconciliation", "reconcile", "record_reconciliation",
           "RecordedReconciliation", "recorded_reconciliation", "findings_by_check"]

#: How many findings are recorded with a daily run (the counts are always complete).
RECORDED_FINDINGS = 200
#: How many row ids a recorded finding keeps.
RECORDED_IDS = 50


@dataclass
class Reconciliation:
    """The findings of one reconciliation of the books as of ``as_of``."""

    as_of: date
    checked_at: datetime
    findings: list[Finding] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """No finding that needs an operator (explained findings aside)."""
        return not any(not f.explained for f in self.findings)

    def errors(self, check: str | None = None) -> list[Finding]:
        return [f for f in self.findings if not f.explained and (check is None or f.check == check)]

    def explained(self, check: str | None = None) -> list[Finding]:
        return [f for f in self.findings if f.explained and (check is None or f.check == check)]

    def counts(self) -> dict[str, dict[str, int]]:
        """Per check (all of them, in order): how many findings, and how many explained."""
        out = {name: {"findings": 0, "explained": 0} for name in CHECKS}
        for f in self.findings:
            out[f.check]["explained" if f.explained else "findings"] += 1
        return out

    def as_dict(self, *, max_findings: int | None = None, max_ids: int | None = None) -> dict[str, Any]:
        findings = self.findings if max_findings is None else self.findings[:max_findings]
        return {"as_of": self.as_of.isoformat(), "checked_at": self.checked_at.isoformat(), "clean": self.clean,
                "checks": [{"check": name, "description": CHECKS[name], "ok": c["findings"] == 0, **c}
                           for name, c in self.counts().items()],
                "findings": [f.as_dict(max_ids=max_ids) for f in findings],
                "findings_left_out": len(self.findings) - len(findings)}


def reconcile(session: Session, as_of: date, *, now: datetime | None = None) -> Reconciliation:
    """Check the books as of ``as_of`` (see the module docstring); reads only.

    ``now`` (aware) is when the check runs, for the age of outbox emails; by default the end of
    ``as_of`` in UTC, so that a replay of a past day is judged as of that day.
    """
    now = now or datetime.combine(as_of + timedelta(days=1), time(0), tzinfo=UTC)
    result = Reconciliation(as_of=as_of, checked_at=now)
    for check in CHECK_FUNCTIONS.values():
        result.findings.extend(check(session, as_of, now))
    return result


# --- recorded with the daily run ----------------------------------------------------------------

def record_reconciliation(session: Session, run_id: int, result: Reconciliation) -> None:
    """Store ``result`` with daily run ``run_id`` (replacing what an earlier call stored, so a
    repeated finish records once): the counts in full, the first ``RECORDED_FINDINGS`` findings
    with up to ``RECORDED_IDS`` row ids each. The caller commits."""
    data = result.as_dict(max_findings=RECORDED_FINDINGS, max_ids=RECORDED_IDS)
    session.execute(delete(DailyRunReconciliation).where(DailyRunReconciliation.run_id == run_id))
    session.execute(insert(DailyRunReconciliation).values(
        run_id=run_id, as_of=result.as_of, checked_at=result.checked_at, clean=result.clean,
        counts=json.dumps(result.counts()), findings=json.dumps(data["findings"])))


@dataclass(frozen=True)
class RecordedReconciliation:
    """A reconciliation as recorded with a daily run."""

    run_id: int
    as_of: date
    checked_at: datetime
    clean: bool
    counts: dict[str, dict[str, int]]
    findings: list[dict[str, Any]]


def recorded_reconciliation(session: Session, run_id: int | None = None) -> RecordedReconciliation | None:
    """The reconciliation recorded with daily run ``run_id``, or with the latest real run that has
    one (None: none recorded)."""
    stmt = select(DailyRunReconciliation)
    if run_id is not None:
        stmt = stmt.where(DailyRunReconciliation.run_id == run_id)
    else:
        stmt = stmt.join(DailyRun, DailyRun.id == DailyRunReconciliation.run_id).where(
            DailyRun.dry_run.is_(False)).order_by(DailyRun.run_date.desc(), DailyRun.id.desc())
    row = session.execute(stmt.limit(1)).scalar_one_or_none()
    if row is None:
        return None
    return RecordedReconciliation(row.run_id, row.as_of, row.checked_at, bool(row.clean), json.loads(row.counts),
                                  json.loads(row.findings))


def findings_by_check(findings: Iterable[Finding]) -> dict[str, list[Finding]]:
    out: dict[str, list[Finding]] = {name: [] for name in CHECKS}
    for f in findings:
        out[f.check].append(f)
    return out
