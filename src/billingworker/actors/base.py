"""What every actor shares: argument binding, dead-lettering bad input, logging, failures.

Bad input (``ValidationError``, including arguments that do not fit the signature) is in the
actor's ``throws``: Dramatiq fails the message at once (dead-letter queue) instead of retrying
it 10 times, and a row in ``job_failures`` tells the operator why. Any other error is taken
to be transient (database restarting, SMTP down) and retried with exponential backoff.
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
from collections.abc import Callable
from typing import Any

import dramatiq
from dramatiq.middleware import CurrentMessage

from ..domain.errors import Conflict, ValidationError
from ..domain.failures import ClientFailure, record_failures, stored_reason
from ..domain.receipts import run_once
from ..message_guard import REFUSE_ACTOR, BadMessage
from ..queue_names import BILLING_QUEUE
from ..runtime import runtime
from ..store.conflicts import unstorable_value
from .arguments import check_characters, parse_id
from .binding import UNBOUND
from .unit_of_work import UnitOfWork

log = logging.getLogger("billingworker.jobs")

#: Retries of transient errors: about 1 s, 2 s, 4 s ... capped at 5 minutes, 10 times (10 to 20 minutes
#: in all, with Dramatiq's jitter): long enough to ride out a database or SMTP restart.
MAX_RETRIES = 10
MIN_BACKOFF_MS = 1_000
MAX_BACKOFF_MS = 300_000
#: The priority of the email jobs (billing jobs have 0; lower runs first).
EMAIL_PRIORITY = 10
#: A single message may run this long (fan-out batches are small; 10 minutes is generous).
TIME_LIMIT_MS = 600_000


def current_message_id() -> str:
    message = CurrentMessage.get_current_message()
    return message.message_id if message is not None else ""


def last_attempt(actor: dramatiq.Actor) -> bool:
    """Whether the message being run is the actor's last attempt: its retries are spent (the
    actor's own ``max_retries``; a message cannot choose its own, see message_options.py)."""
    message = CurrentMessage.get_current_message()
    retries = message.options.get("retries", 0) if message is not None else 0
    return retries >= actor.options.get("max_retries", MAX_RETRIES)


def receipt_key(actor: str, request_id) -> str:
    """The run-once key: the caller's ``request_id`` (per job name), else the message id."""
    if request_id is not None:
        if not isinstance(request_id, str) or not request_id or len(request_id) > 150:
            raise ValidationError("request_id", request_id, "must be a non-empty string of at most 150 characters")
        return f"{actor}:request:{check_characters('request_id', request_id)}"
    message_id = current_message_id()
    if not message_id:
        raise ValidationError("request_id", request_id, "is required when the job is not run from a message")
    return f"{actor}:message:{message_id}"


def once_per_message(session: Any, actor: str, work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``work`` once per message (a ``job_receipts`` row keyed by the message id), so that a
    redelivery repeats the first answer; called outside a message (a script, a test) it just runs."""
    if not current_message_id():
        return work()
    result, _ = run_once(session, receipt_key(actor, None), actor, work)
    return result


def job(*, queue_name: str = BILLING_QUEUE, max_retries: int = MAX_RETRIES, priority: int = 0,
        on_retry_exhausted: str | None = None, calls_outside: bool = False) -> Callable:
    """Declare a public job: ``@job()`` over a function whose name is the actor name.

    ``priority`` orders the messages a worker has already fetched (lower runs first): the email
    jobs take EMAIL_PRIORITY so that, while a daily run fans out, its billing batches go before
    the emails they queued instead of sharing the CPU with them. ``on_retry_exhausted`` names
    the job Dramatiq's Retries sends (the failed message and its retry counts) once the last
    retry failed; a message cannot choose its own (``message_options.TrustedOptions``).

    A value the database refuses to store (``store.conflicts.unstorable_value``) refuses the
    message, as bad input: it would fail the same way on every try. Not for ``calls_outside``
    jobs (a gateway, a server module, the mail server): there it may come after the outside call
    took effect and after some of the work committed, so it is retried like any other error and
    the job's own last-attempt handling (or ``on_retry_exhausted``) settles it.
    """

    def decorate(fn: Callable[..., Any]) -> dramatiq.Actor:
        signature = inspect.signature(fn)
        name = fn.__name__

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            message_id = current_message_id()
            started = time.perf_counter()

            def fields(outcome: str, **more: Any) -> dict[str, Any]:
                # The structured fields of every job log line (docs/operations.md).
                return {"actor": name, "message_id": message_id, "client_id": _log_client_id(kwargs),
                        "outcome": outcome, "duration_ms": round((time.perf_counter() - started) * 1000, 1), **more}

            try:
                try:
                    signature.bind(*args, **kwargs)
                except TypeError as exc:
                    raise ValidationError("arguments", sorted(kwargs), f"do not fit {name}{signature}: {exc}") from None
                try:
                    result = fn(*args, **kwargs)
                except Exception as exc:
                    # The last guard, under the domain's own checks: a value the database refuses
                    # to store (a sum beyond NUMERIC(18,4), a text beyond its column) fails the
                    # same way on every try; the transaction is rolled back: refuse the input.
                    reason = None if calls_outside else unstorable_value(exc)
                    if reason is None:
                        raise
                    raise ValidationError("arguments", sorted(kwargs),
                                          f"lead to a value the database cannot store: {reason}") from None
            except (ValidationError, Conflict) as exc:
                log.warning("job %s message %s refused: %s", name, message_id, _refusal_text(exc),
                            extra=fields("refused"))
                _record_refusal(name, message_id, kwargs, exc)
                raise
            except BaseException as exc:  # also Dramatiq's time limit, an Interrupt
                # Dramatiq logs the traceback and retries; this line carries the job's fields.
                log.warning("job %s message %s failed: %s", name, message_id, type(exc).__name__,
                            extra=fields("error", error=type(exc).__name__))
                raise
            # What the job did goes to the log (and the database), not to a result backend:
            # nothing waits for job results here.
            log.info("job %s message %s done in %.3fs: %s", name, message_id, time.perf_counter() - started,
                     result, extra=fields("ok"))

        return dramatiq.actor(run, broker=UNBOUND, actor_name=name, queue_name=queue_name, priority=priority,
                              max_retries=max_retries, min_backoff=MIN_BACKOFF_MS, max_backoff=MAX_BACKOFF_MS,
                              time_limit=TIME_LIMIT_MS, throws=(ValidationError, Conflict),
                              **({"on_retry_exhausted": on_retry_exhausted} if on_retry_exhausted else {}))

    return decorate


@dramatiq.actor(broker=UNBOUND, actor_name=REFUSE_ACTOR, queue_name=BILLING_QUEUE, max_retries=0, throws=(BadMessage,))
def refuse_undecodable_message(actor: str, field: str, value: Any, rule: str) -> None:
    """Internal: the guarded consumers (``message_guard``) turn a message the worker cannot run
    into this one, which keeps the broker's handle on the raw message. It records the refusal
    (``job_failures``: the job the message named, else this actor) and fails, so Dramatiq
    dead-letters the raw message after this one attempt. Never sent by anyone else."""
    exc = BadMessage(field, value, rule)
    message_id = current_message_id()
    log.warning("message %s refused: %s", message_id, _refusal_text(exc), extra={
        "actor": actor or REFUSE_ACTOR, "message_id": message_id, "client_id": None, "outcome": "refused"})
    _record_refusal(actor or REFUSE_ACTOR, message_id, {}, exc)
    raise exc


def _log_client_id(kwargs: dict) -> int | None:
    """The message's client, for the log: a valid id in ``client_id`` (an integer or a string of digits)."""
    try:
        return parse_id("client_id", kwargs.get("client_id"))
    except ValidationError:
        return None


#: ``job_failures.field`` is VARCHAR(100); the rule quoted in a reason is cut (the value is
#: quoted, cut and masked by ``ClientFailure.message``, the reason bounded by ``record_failures``).
MAX_FIELD_LENGTH = 100
MAX_RULE_LENGTH = 2000


def _refusal_text(exc: ValidationError | Conflict) -> str:
    """What a log line says of a refusal: the reason ``job_failures`` keeps (its value cut and
    masked), not ``str(exc)``, which quotes the whole value."""
    if isinstance(exc, ValidationError):
        return stored_reason(ClientFailure(None, _printable(exc.field, MAX_FIELD_LENGTH), exc.value,
                                           _printable(exc.rule, MAX_RULE_LENGTH, keep_lines=True)))
    return stored_reason(ClientFailure(None, "", None, str(exc)))


def _printable(text: str, limit: int, *, keep_lines: bool = False) -> str:
    """``text`` as the database can store it: control characters (but line breaks and tabs if
    ``keep_lines``) and lone surrogates escaped, cut at ``limit`` characters."""
    if not text.isprintable():
        text = "".join(c if c.isprintable() or (keep_lines and c in "\t\n\r") else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _record_refusal(actor: str, message_id: str, kwargs: dict, exc: ValidationError | Conflict) -> None:
    """Write the refusal in its own transaction (the job's own work was rolled back). What the
    message put in it (a field name, a value) is escaped and cut to fit the columns."""
    client_id = _log_client_id(kwargs) if isinstance(kwargs.get("client_id"), int) else None
    try:
        with UnitOfWork(runtime().engine) as work:
            failure = (ClientFailure(client_id, _printable(exc.field, MAX_FIELD_LENGTH), exc.value,
                                     _printable(exc.rule, MAX_RULE_LENGTH, keep_lines=True))
                       if isinstance(exc, ValidationError) else ClientFailure(client_id, "", None, str(exc)))
            record_failures(work.session, [failure], actor=actor,
                            message_id=message_id, now=runtime().clock.now(), error=type(exc).__name__)
            work.commit()
    except Exception:  # noqa: BLE001 - the refusal itself must still reach the dead-letter queue
        log.exception("could not record the refusal of %s message %s", actor, message_id)

