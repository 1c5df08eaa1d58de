"""Dramatiq actors: ``dramatiq billingworker.actors`` loads them all.

Importing this package binds the actors to the broker named by BROKER_URL.
"""

from ..broker import setup_broker

broker = setup_broker()

from .accounts import send_password_reset_email  # noqa: E402
from .base import refuse_undecodable_message  # noqa: E402 - internal: refuses what message_guard cannot run
from .clients import close_client, delete_client, export_client_data, merge_clients  # noqa: E402
from .daily import (  # noqa: E402
    advance_daily_run,
    apply_late_fees,
    capture_due_payments,
    run_daily_automation,
    run_daily_batch,
    run_task_batch,
    send_overdue_reminders,
)
from .emails import deliver_email, deliver_emails, relay_outbox  # noqa: E402
from .invoicing import (  # noqa: E402
    create_add_funds_invoice,
    create_invoice,
    generate_due_invoices,
    generate_due_invoices_batch,
    invoice_selected_items,
)
from .messages import send_client_email  # noqa: E402
from .payments import apply_payment  # noqa: E402
from .profiles import adjust_credit, normalize_phone_numbers, normalize_phone_numbers_batch  # noqa: E402
from .services import delete_selected_items, mass_update, relay_module_commands, run_module_command  # noqa: E402

__all__ = [
    "advance_daily_run", "apply_late_fees", "capture_due_payments", "run_daily_automation", "run_daily_batch",
    "run_task_batch", "send_overdue_reminders",
    "broker", "apply_payment", "create_add_funds_invoice", "create_invoice", "deliver_email", "deliver_emails",
    "generate_due_invoices", "generate_due_invoices_batch", "invoice_selected_items", "relay_outbox",
    "send_password_reset_email", "close_client", "delete_client", "export_client_data", "merge_clients",
    "send_client_email", "adjust_credit", "normalize_phone_numbers", "normalize_phone_numbers_batch",
    "delete_selected_items", "mass_update", "relay_module_commands", "run_module_command",
    "refuse_undecodable_message",
]
