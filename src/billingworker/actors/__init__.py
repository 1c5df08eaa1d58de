"""Dramatiq actors: every public job, declared here and bound to a broker by ``bootstrap``.

Importing this package builds no broker and reads no environment (``binding.py``); worker
processes start with ``dramatiq billingworker.worker``, which bootstraps and then loads these.
"""

from .accounts import send_password_reset_email
from .base import refuse_undecodable_message  # internal: refuses what message_guard cannot run
from .batches import run_task_batch
from .clients import close_client, delete_client, export_client_data, merge_clients
from .daily import (
    advance_daily_run,
    apply_late_fees,
    capture_due_payments,
    run_daily_automation,
    run_daily_batch,
    send_overdue_reminders,
)
from .emails import deliver_email, deliver_emails, relay_outbox
from .invoicing import (
    create_add_funds_invoice,
    create_invoice,
    generate_due_invoices,
    generate_due_invoices_batch,
    invoice_selected_items,
)
from .messages import send_client_email
from .pay_methods import remove_pay_method
from .payments import apply_payment
from .privacy import anonymise_client
from .profiles import adjust_credit, normalize_phone_numbers, normalize_phone_numbers_batch
from .services import delete_selected_items, mass_update, relay_module_commands, run_module_command

__all__ = [
    "advance_daily_run", "apply_late_fees", "capture_due_payments", "run_daily_automation", "run_daily_batch",
    "run_task_batch", "send_overdue_reminders",
    "apply_payment", "create_add_funds_invoice", "create_invoice", "deliver_email", "deliver_emails",
    "generate_due_invoices", "generate_due_invoices_batch", "invoice_selected_items", "relay_outbox",
    "send_password_reset_email", "close_client", "delete_client", "export_client_data", "merge_clients",
    "send_client_email", "adjust_credit", "normalize_phone_numbers", "normalize_phone_numbers_batch",
    "delete_selected_items", "mass_update", "relay_module_commands", "run_module_command",
    "refuse_undecodable_message", "remove_pay_method", "anonymise_client",
]


def __getattr__(name: str):
    # ``billingworker.actors.broker``: the broker the jobs are bound to (after ``bootstrap``).
    if name == "broker":
        from .binding import bound_broker

        return bound_broker()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
