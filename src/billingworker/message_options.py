"""No sender decides how a job is retried: message options are reset to the actor's own.

Dramatiq reads its policy from the message first and the actor second: a message that carries
``max_retries``, ``min_backoff``/``max_backoff``, ``time_limit``, ``max_age``, callbacks
(``on_success``, ``on_failure``, ``on_retry_exhausted``), a pipeline or group callbacks gets that
policy, whoever sent it (306 attempts of one message in 10 s were seen). Every message reaching
our jobs comes from outside the worker's trust (another application writes to the broker), so
before any other middleware looks at it, ``TrustedOptions`` keeps only the options that carry
delivery state — set by the broker or by Dramatiq's own retries — and drops the rest: the
actor's settings (``actors.base.job``) then apply.

Types are checked earlier, by the guarded consumers (``message_guard.OPTION_TYPES``).
"""

from __future__ import annotations

from dramatiq.broker import Broker, MessageProxy
from dramatiq.logging import get_logger
from dramatiq.middleware import Middleware

#: Options that say where a message is in its delivery, not how it is to be run:
#: ``redis_message_id`` (the Redis broker's key), ``retries``/``traceback``/``requeue_timestamp``
#: (written by Dramatiq's Retries when it re-enqueues a failed attempt) and ``eta`` (a delayed
#: message; a sender may delay its own message).
DELIVERY_OPTIONS = frozenset({"redis_message_id", "retries", "traceback", "requeue_timestamp", "eta"})


class TrustedOptions(Middleware):
    """Drop every message option that is not delivery state; keep ``retries`` from 0 up."""

    def __init__(self) -> None:
        self.logger = get_logger(__name__, type(self))

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        options = message.options
        dropped = sorted(name for name in options if name not in DELIVERY_OPTIONS)
        for name in dropped:
            del options[name]
        retries = options.get("retries")
        if isinstance(retries, int) and retries < 0:
            options["retries"] = 0  # a negative count would buy extra attempts
        if dropped:
            self.logger.warning("message %s (%s): options %s ignored: a job's retries, backoff, time limit and "
                                "callbacks are its own", message.message_id, message.actor_name,
                                ", ".join(name[:40] for name in dropped[:10]))
