"""The daily run's tasks, in order (SPEC §15), and the batch function of each.

Referenced by import path so that this module stays free of the tasks' own imports.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module

#: (task name, "module:function"), in the order the daily run performs them. Each function has
#: the shape documented in ``domain/tasks.py``; capture alone takes a session factory and a
#: gateway, because it must commit before it calls the gateway.
DAILY_TASKS: tuple[tuple[str, str], ...] = (
    ("generate_due_invoices", "billingworker.domain.runs.daily_tasks:generate_task"),
    ("apply_credit", "billingworker.domain.runs.daily_tasks:apply_credit_task"),
    ("capture_due_payments", "billingworker.domain.payments.captures:capture_for_clients"),
    ("apply_late_fees", "billingworker.domain.collections.late_fees:apply_late_fees_for_clients"),
    ("send_overdue_reminders", "billingworker.domain.collections.reminders:send_reminders_for_clients"),
)

TASK_NAMES = tuple(name for name, _ in DAILY_TASKS)
#: Tasks whose function manages its own transactions (it talks to the outside world).
SELF_COMMITTING = {"capture_due_payments"}


def task_function(name: str) -> Callable:
    for task, path in DAILY_TASKS:
        if task == name:
            module, _, attr = path.partition(":")
            return getattr(import_module(module), attr)
    raise KeyError(name)
