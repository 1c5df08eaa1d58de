"""Pay-method jobs (docs/jobs.md#remove_pay_method, SPEC §12): remove a stored card or bank account.

Thin: validate, one unit of work around the domain function, commit. A gateway that raised is
transient: its message is written on the pay method in a transaction of its own, then Dramatiq
retries; the last attempt keeps the record and stops.
"""

from __future__ import annotations

from ..domain.failures import ClientFailure, record_failures
from ..domain.payments import pay_method_removal
from ..runtime import runtime
from .arguments import argument_rules, parse_bool, parse_id
from .base import current_message_id, job, last_attempt, once_per_message
from .unit_of_work import UnitOfWork

#: ``job_failures.error`` of a removal that kept the record (refused, gateway not active or failing).
KEPT_ERROR = "PayMethodKept"


@job(calls_outside=True)
@argument_rules(pay_method_id=parse_id, force=parse_bool)
def remove_pay_method(pay_method_id, force=False):
    """Remove a stored pay method: at its gateway first (unless ``force``), then our record."""
    pay_method_id = parse_id("pay_method_id", pay_method_id)
    force = parse_bool("force", force)
    rt = runtime()
    try:
        with UnitOfWork(rt.engine) as work:

            def remove() -> dict:
                done = pay_method_removal.remove_pay_method(work.session, pay_method_id, gateway_for=rt.gateway_for,
                                                            force=force, now=rt.clock.now())
                if done.outcome == "kept":
                    _record_kept(work.session, done.client_id, pay_method_id, done.message)
                return done.as_dict()

            # The message's receipt, besides the domain's "already removed": on SQLite a new pay
            # method can be given a removed one's id, and a redelivery must never remove that one;
            # a redelivered refusal repeats its answer without a second failure row.
            result = once_per_message(work.session, "remove_pay_method", remove)
            work.commit()
    except pay_method_removal.GatewayCallFailed as exc:
        # Nothing of ours changed. Say so on the record for the admin panel, then retry: asking
        # the gateway again is safe (a token it no longer knows answers "deleted").
        give_up = last_attempt(remove_pay_method)
        with UnitOfWork(rt.engine) as work:
            pay_method_removal.record_removal_error(
                work.session, pay_method_id, exc.message + ("" if give_up else " (will be retried)"),
                now=rt.clock.now())
            if give_up:
                client_id = work.session.scalar(pay_method_removal.client_of(pay_method_id))
                _record_kept(work.session, client_id, pay_method_id, exc.message)
            work.commit()
        if not give_up:
            raise
        return {"pay_method_id": pay_method_id, "outcome": "kept", "remote": "error", "message": exc.message}
    return result


def _record_kept(session, client_id: int | None, pay_method_id: int, message: str) -> None:
    """A ``job_failures`` row for the operators (``billingworker failures``); it parks nobody."""
    record_failures(session, [ClientFailure(client_id, "pay_method_id", pay_method_id,
                                            f"kept: the gateway did not delete it: {message}", parks=False)],
                    actor="remove_pay_method", message_id=current_message_id(), now=runtime().clock.now(),
                    error=KEPT_ERROR)
