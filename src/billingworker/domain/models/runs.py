"""The daily run (SPEC §15): what it did, task by task, for an operator to read."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import Boolean, Date, ForeignKey, Index, Integer, String, text
from sqlalchemy.orm import Mapped, mapped_column

from .base import LONG_TEXT, Base


class DailyRun(Base):
    """One daily run. A real run is unique per installation day (partial unique index), so it
    fires once however many schedulers or crontabs trigger it; dry runs are not limited."""

    __tablename__ = "daily_runs"
    __table_args__ = (
        Index("uq_daily_runs_day", "run_date", unique=True,
              postgresql_where=text("NOT dry_run"), sqlite_where=text("NOT dry_run")),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    run_date: Mapped[date] = mapped_column(Date)
    dry_run: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    #: running | succeeded | failed
    status: Mapped[str] = mapped_column(String(12), default="running", server_default="running")
    #: Who asked: scheduler, cron, cli, job.
    trigger: Mapped[str] = mapped_column(String(30), default="", server_default="")
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    #: JSON: the dry run's preview, or notes.
    summary: Mapped[str] = mapped_column(LONG_TEXT, default="{}", server_default="{}")


class DailyRunTask(Base):
    """One task of a run (generate, credit, capture, late fees, reminders) and its counts."""

    __tablename__ = "daily_run_tasks"

    run_id: Mapped[int] = mapped_column(ForeignKey("daily_runs.id", ondelete="CASCADE"), primary_key=True)
    task: Mapped[str] = mapped_column(String(30), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)
    #: pending | running | done
    status: Mapped[str] = mapped_column(String(10), default="pending", server_default="pending")
    #: JSON list of [first client id, last client id] per batch, fixed when the task starts, so
    #: that a resumed task re-sends exactly the batches it began with.
    batches: Mapped[str] = mapped_column(LONG_TEXT, default="[]", server_default="[]")
    batches_total: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    batches_done: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    clients: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    invoices_created: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    emails_queued: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    fees_added: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    captures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    credit_applied: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class DailyRunBatch(Base):
    """A batch of a task that completed: written with the batch's work, so a redelivered batch
    message is counted once."""

    __tablename__ = "daily_run_batches"

    run_id: Mapped[int] = mapped_column(ForeignKey("daily_runs.id", ondelete="CASCADE"), primary_key=True)
    task: Mapped[str] = mapped_column(String(30), primary_key=True)
    batch_no: Mapped[int] = mapped_column(Integer, primary_key=True)
    done_at: Mapped[datetime]


class DailyRunReconciliation(Base):
    """What the reconciliation found when a daily run finished (SPEC §15), recorded with the run:
    whether the books were clean, the findings per check, and the first findings with their rows
    (``domain/reports/reconciliation.py``)."""

    __tablename__ = "daily_run_reconciliations"

    run_id: Mapped[int] = mapped_column(ForeignKey("daily_runs.id", ondelete="CASCADE"), primary_key=True)
    #: The day the books were checked for (the run's day).
    as_of: Mapped[date] = mapped_column(Date)
    checked_at: Mapped[datetime]
    #: No finding that needs an operator (explained ones aside).
    clean: Mapped[bool] = mapped_column(Boolean)
    #: JSON object: per check, {"findings": n, "explained": m}.
    counts: Mapped[str] = mapped_column(LONG_TEXT, default="{}", server_default="{}")
    #: JSON list of the findings (capped; each names its check, table, row ids and reason).
    findings: Mapped[str] = mapped_column(LONG_TEXT, default="[]", server_default="[]")
